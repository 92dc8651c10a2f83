"""Trained weights by reference (the config's `weights`): a user's file loaded into the network a
run builds, so that the train stage imports it instead of training.

The file holds a state_dict, or a checkpoint dict with one under "state_dict" or "model" (the
usual layouts of training scripts, quantpipe's own model.pt among them). It is read with
torch.load(weights_only=True): tensors and plain containers only, no code of the file's runs.
Keys must match exactly; what is missing, unexpected or of another shape is refused, all of it
listed at once, since a partly loaded network would measure as a broken one.
"""

import hashlib
import os

import torch
from torch import nn

from quantpipe.artifacts import load_torch

CONTAINERS = ("state_dict", "model")  # where a checkpoint dict keeps its state_dict
SHOWN = 20  # keys listed per kind of mismatch; the rest are counted
LAYOUT = (
    "Save the weights as a state_dict (torch.save(net.state_dict(), path)) or a checkpoint dict "
    f"holding one under {' or '.join(map(repr, CONTAINERS))}."
)


class WeightsError(ValueError):
    """A weights file whose contents do not fit the network it is meant for."""


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def state_dict_of(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state_dict the file at `path` holds, on the CPU."""
    loaded = load_torch(path, (), LAYOUT, map_location="cpu")
    if isinstance(loaded, dict):
        inner = [key for key in CONTAINERS if isinstance(loaded.get(key), dict)]
        loaded = loaded[inner[0]] if inner else loaded
    if not isinstance(loaded, dict) or not loaded:
        raise WeightsError(f"{path} holds a {type(loaded).__name__}, not a state_dict. {LAYOUT}")
    foreign = [key for key, value in loaded.items() if not isinstance(value, torch.Tensor)]
    if foreign:
        raise WeightsError(
            f"{path} is a dict, but not a state_dict: {_listed(foreign)} hold no tensor. {LAYOUT}"
        )
    return loaded


def load_weights(net: nn.Module, path: str | os.PathLike, model: str) -> None:
    """Load the file at `path` into `net` (model `model`), every key matched exactly."""
    state, own = state_dict_of(path), net.state_dict()
    missing = [key for key in own if key not in state]
    unexpected = [key for key in state if key not in own]
    shapes = [
        f"{key} (file {tuple(state[key].shape)}, model {tuple(own[key].shape)})"
        for key in own
        if key in state and state[key].shape != own[key].shape
    ]
    if not (missing or unexpected or shapes):
        net.load_state_dict(state)
        return
    problems = [
        f"{len(found)} {kind}: {_listed(found)}"
        for kind, found in (("missing keys", missing), ("unexpected keys", unexpected),
                            ("of another shape", shapes))
        if found
    ]  # fmt: skip
    hint = ""
    if unexpected and all(key.startswith("module.") for key in unexpected):
        hint = " Its keys start with 'module.' (saved from DataParallel): save net.module's."
    raise WeightsError(
        f"{path} does not fit model {model!r}: {'; '.join(problems)}. The file must hold the "
        f"weights of exactly the network {model!r} builds (a built-in's width and the config's "
        f"num_classes included).{hint}"
    )


def _listed(keys: list[str]) -> str:
    more = f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else ""
    return ", ".join(keys[:SHOWN]) + more
