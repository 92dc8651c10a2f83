"""Trained weights by reference (the config's `weights`): a user's file loaded into the network a
run builds, so that the train stage imports it instead of training.

Files are taken as training scripts leave them, so that nobody has to rewrite one: a state_dict,
or a checkpoint dict holding one beside its metadata (epoch, scores, optimizer) under one of
CONTAINERS or under the key the entry names (`key: ema`); torch.save's format, or safetensors';
tensors saved on a GPU, read onto the CPU; keys behind a wrapper's prefix (WRAPPERS: stripped when
every key has one) or a framework's (`prefix: model.`, Lightning's: keys outside it are ignored).
torch.load runs with weights_only=True: tensors and plain containers only, no code of the file's
runs. The keys must then fit exactly as PyTorch's strict load_state_dict has them fit, neither
looser nor stricter: missing keys PyTorch fills itself (BatchNorm's num_batches_tracked, in a file
without version metadata) are filled; what else is missing, unexpected or of another shape is
refused, all of it listed at once, since a partly loaded network would measure as a broken one.
What was adapted is said, and returned for the run's record.
"""

import copy
import hashlib
import os
from collections import OrderedDict

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from quantpipe.artifacts import ArtifactError, load_torch

# Where a checkpoint dict keeps its state_dict, first found first: torchvision's, timm's and
# Lightning's scripts among them. An EMA copy ("ema", "model_ema") only where the entry's key asks.
CONTAINERS = ("state_dict", "model", "model_state_dict", "net")
WRAPPERS = ("module.", "_orig_mod.")  # DataParallel and DistributedDataParallel; torch.compile
SHOWN = 20  # keys listed per kind of mismatch; the rest are counted
LAYOUT = (
    "Save the weights as a state_dict (torch.save(net.state_dict(), path), or a .safetensors "
    "file) or a checkpoint dict holding one under "
    f"{', '.join(map(repr, CONTAINERS))}, or under the key the weights entry names (key: ema)."
)


class WeightsError(ValueError):
    """A weights file whose contents do not fit the network it is meant for."""


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read(path: str | os.PathLike) -> tuple[object, str]:
    """What the file at `path` holds, on the CPU wherever it was saved, and its format: safetensors
    by the name's suffix, torch.save's otherwise."""
    if not str(path).endswith(".safetensors"):
        return load_torch(path, (), LAYOUT, map_location="cpu"), "torch"
    try:
        return load_file(path, device="cpu"), "safetensors"
    except FileNotFoundError:
        raise ArtifactError(f"{path} does not exist. {LAYOUT}") from None
    except SafetensorError as error:
        raise ArtifactError(
            f"{path} cannot be loaded as a safetensors file (truncated, corrupt or another "
            f"format: {str(error)[:200]}). {LAYOUT}"
        ) from None


def state_dict_of(path: str | os.PathLike, key: str | None = None) -> tuple[dict, dict]:
    """The state_dict the file at `path` holds (under `key`, if given), on the CPU, and where it
    was found: {"format": ..., "container": the checkpoint's key, or None}."""
    loaded, form = read(path)
    if key is not None and not (isinstance(loaded, dict) and isinstance(loaded.get(key), dict)):
        inside = (
            f"its keys: {_listed(list(map(str, loaded)))}"
            if isinstance(loaded, dict)
            else f"it holds a {type(loaded).__name__}"
        )
        raise WeightsError(f"{path} holds no dict under {key!r}, the entry's key ({inside}).")
    container = key
    if key is None and isinstance(loaded, dict):
        container = next((name for name in CONTAINERS if isinstance(loaded.get(name), dict)), None)
    state = loaded[container] if container is not None else loaded
    if not isinstance(state, dict) or not state:
        raise WeightsError(f"{path} holds a {type(state).__name__}, not a state_dict. {LAYOUT}")
    foreign = [str(name) for name, value in state.items() if not isinstance(value, torch.Tensor)]
    if foreign:
        raise WeightsError(
            f"{path} is a dict, but not a state_dict: {_listed(foreign)} hold no tensor. {LAYOUT}"
        )
    return state, {"format": form, "container": container}


def unprefixed(
    state: dict, own: dict, prefix: str | None, path: str | os.PathLike
) -> tuple[str | None, list[str]]:
    """Strip, in place, the entry's `prefix` (dropping the keys outside it) and then every wrapper's
    prefix that all keys carry but not all of the network's `own`: (what was stripped, the keys
    dropped). PyTorch's own helper strips them, version metadata included."""
    stripped, ignored = "", []
    if prefix:
        prefix = prefix.rstrip(".") + "."
        ignored = [name for name in state if not name.startswith(prefix)]
        if len(ignored) == len(state):
            raise WeightsError(
                f"{path}: no key starts with the entry's prefix {prefix!r}; the file's keys: "
                f"{_listed(ignored)}. Name the prefix its model's keys carry, or drop `prefix`."
            )
        for name in ignored:
            del state[name]
        consume_prefix_in_state_dict_if_present(state, prefix)
        stripped = prefix
    while wrapper := next(
        (w for w in WRAPPERS if all(name.startswith(w) for name in state)
         and not all(name.startswith(w) for name in own)),
        None,
    ):  # fmt: skip
        consume_prefix_in_state_dict_if_present(state, wrapper)
        stripped += wrapper
    return stripped or None, ignored


def load_weights(
    net: nn.Module,
    path: str | os.PathLike,
    model: str,
    prefix: str | None = None,
    key: str | None = None,
    log=print,
) -> dict:
    """Load the file at `path` into `net` (model `model`), its state_dict under `key` and `prefix`
    where the weights entry names them; say what was adapted and return it for the record."""
    state, adapted = state_dict_of(path, key)
    own = net.state_dict()
    stripped, ignored = unprefixed(state, own, prefix, path)
    missing = [name for name in own if name not in state]
    unexpected = [name for name in state if name not in own]
    shapes = [
        f"{name} (file {tuple(state[name].shape)}, model {tuple(own[name].shape)})"
        for name in own
        if name in state and state[name].shape != own[name].shape
    ]
    filled = _filled_by_pytorch(net, state, own) if missing else []
    missing = [name for name in missing if name not in filled]
    if not (missing or unexpected or shapes):
        net.load_state_dict(state)
        adapted |= {"prefix_stripped": stripped, "ignored_keys": len(ignored),
                    "counters_filled": len(filled)}  # fmt: skip
        _say(adapted, ignored, filled, prefix, path, log)
        return adapted
    problems = [
        f"{len(found)} {kind}: {_listed(found)}"
        for kind, found in (("missing keys", missing), ("unexpected keys", unexpected),
                            ("of another shape", shapes))
        if found
    ]  # fmt: skip
    raise WeightsError(
        f"{path} does not fit model {model!r}: {'; '.join(problems)}. The file must hold the "
        f"weights of exactly the network {model!r} builds (a built-in's width and the config's "
        f"num_classes included).{_prefix_hint(state, own)}"
    )


def _filled_by_pytorch(net: nn.Module, state: dict, own: dict) -> list[str]:
    """The network's keys missing from `state` that PyTorch's strict load_state_dict accepts
    missing, filling them itself, asked of PyTorch on a copy of `net`: BatchNorm's
    num_batches_tracked where the file has no version metadata saying it was saved with one."""
    fitting = OrderedDict(
        (name, value)
        for name, value in state.items()
        if name not in own or value.shape == own[name].shape
    )
    fitting._metadata = getattr(state, "_metadata", None)
    unfilled = copy.deepcopy(net).load_state_dict(fitting, strict=False).missing_keys
    return [name for name in own if name not in state and name not in unfilled]


def _prefix_hint(state: dict, own: dict) -> str:
    """The prefix under which the file's keys fit better than as they are, as the fix."""
    heads = {name.split(".", 1)[0] + "." for name in state if "." in name}
    fits = {
        head: sum(name[len(head) :] in own for name in state if name.startswith(head))
        for head in heads
    }
    best = max(sorted(fits), key=fits.get, default=None)
    if best is None or fits[best] <= sum(name in own for name in state):
        return ""
    return f" Its keys fit under the prefix {best!r}: name it in the entry (prefix: {best})."


def _say(adapted: dict, ignored: list, filled: list, prefix, path, log) -> None:
    notes = [
        note
        for note, shown in (
            ("read from safetensors", adapted["format"] == "safetensors"),
            (f"the state_dict under {adapted['container']!r}", adapted["container"]),
            (f"prefix {adapted['prefix_stripped']!r} stripped", adapted["prefix_stripped"]),
            (f"{len(ignored)} keys outside prefix {prefix!r} ignored: {_listed(ignored)}", ignored),
            (f"{len(filled)} missing counters filled by PyTorch: {_listed(filled)}", filled),
        )
        if shown
    ]
    if notes:
        log(f"weights {path}: {'; '.join(notes)}")


def _listed(keys: list[str]) -> str:
    more = f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else ""
    return ", ".join(keys[:SHOWN]) + more
