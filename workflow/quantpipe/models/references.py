"""Models by reference: the three forms `models:` takes, their result folders, building, checking.

- A built-in name: `resnet18`, `resnet18_cifar` (quantpipe.models), `unet2d`, `unet3d_aniso`
  (quantpipe.models.unet). Only these take `width`; their runs keep the folder
  `{model}-w{width}-s{seed}`.
- `torchvision.NAME`: any torchvision classification model
  (`torchvision.models.list_models(module=torchvision.models)`), built by
  `torchvision.models.get_model(NAME, weights=None, num_classes=N)`: randomly initialised, nothing
  is downloaded.
- `package.module:callable`: a factory of your own, found by Python's import system (installed in
  the environment, or on PYTHONPATH for Snakemake and its jobs alike) and called with exactly one
  keyword argument, `num_classes=N` (the config's `num_classes`). It returns an `nn.Module` that
  takes a float batch (N, 3, H, W) of normalised images and returns (N, num_classes) logits, in
  training and in eval mode. `callable` may be dotted (`pkg.nets:Factory.small`).

A reference's runs live in `{folder}-s{seed}`: the folder is the reference with the colon turned
into a dot (`pkg.nets:make_net` -> `pkg.nets.make_net`, `torchvision.mobilenet_v3_small` as it
is), readable and safe on any filesystem (letters, digits, `_` and `.`). It has no `-w`: width
means nothing to a network quantpipe did not write, so no width is recorded for it either.

Before any job, quantpipe.quantize.readiness builds each reference and tries on two images what
the stages will do.

This module imports no torch at import time: the Snakefile uses parse, folder and run naming.
`build` imports torch when called.
"""

import difflib
import importlib
import inspect
import os
import re
import sys
import sysconfig
import traceback
from dataclasses import dataclass

# quantpipe.models.MODELS (ResNets, then quantpipe.models.unet.UNETS), spelled out so that the
# Snakefile need not import torch; tests/test_model_refs.py checks they agree.
BUILTIN = ("resnet18", "resnet18_cifar", "unet2d", "unet3d_aniso")
TORCHVISION = "torchvision."
DEFAULT_WIDTHS = [16]  # the schema's default for `widths`
IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]*"
DOTTED = rf"{IDENTIFIER}(?:\.{IDENTIFIER})*"
# A run's folder: built-ins `{model}-w{width}-s{seed}`, references `{folder}-s{seed}`. A reference
# folder has no `-`, so the two never match the same name.
RUN_FOLDER = r"[a-z0-9_]+-w[0-9]+-s[0-9]+|[A-Za-z0-9_.]+-s[0-9]+"
FORMS = (
    "a built-in name (resnet18, resnet18_cifar, unet2d, unet3d_aniso), torchvision.NAME (a "
    "torchvision classification model, e.g. torchvision.mobilenet_v3_small) or "
    "package.module:callable (your factory, called with num_classes=)"
)
EXPORT_METHODS = ("pt2e", "qat")  # the methods that start with torch.export
EAGER_NEEDS = (
    "method 'eager' needs a model written for eager-mode quantization: a `fusion_groups()` method "
    "listing its conv-bn(-relu) groups, residual adds through FloatFunctional, and every op "
    "quantizable between the QuantStub and DeQuantStub it is wrapped in"
)


class ModelReferenceError(ValueError):
    """A model reference that cannot be parsed, imported, built or quantized as asked."""


@dataclass(frozen=True)
class ModelRef:
    text: str  # as the config gives it
    kind: str  # builtin | torchvision | factory
    module: str  # torchvision.models for torchvision, the factory's module; "" for built-ins
    name: str  # the built-in's or torchvision's model name, or the factory's attribute path

    @property
    def folder(self) -> str:
        return self.text.replace(":", ".")


def parse(text: str) -> ModelRef:
    """The reference `text` in one of the three forms, else an error listing them."""
    if text in BUILTIN:
        return ModelRef(text, "builtin", "", text)
    if text.startswith(TORCHVISION) and re.fullmatch(IDENTIFIER, text[len(TORCHVISION) :]):
        return ModelRef(text, "torchvision", "torchvision.models", text[len(TORCHVISION) :])
    found = re.fullmatch(rf"({DOTTED}):({DOTTED})", text)
    if found:
        return ModelRef(text, "factory", found[1], found[2])
    hint = f" (torchvision's would be torchvision.{text})" if re.fullmatch(IDENTIFIER, text) else ""
    raise ModelReferenceError(f"model {text!r} is not a model reference{hint}: give {FORMS}")


def is_builtin(text: str) -> bool:
    return text in BUILTIN


def run_folder(model: str, width: int | None, seed: int) -> str:
    """The folder of one run under results/{stage}/."""
    if is_builtin(model):
        return f"{model}-w{width}-s{seed}"
    return f"{parse(model).folder}-s{seed}"


def run_of_folder(folder: str, models: list[str]) -> dict:
    """{model, width, seed} of a run folder; references are looked up among `models`."""
    found = re.fullmatch(r"([a-z0-9_]+)-w([0-9]+)-s([0-9]+)", folder)
    if found and is_builtin(found[1]):
        return {"model": found[1], "width": int(found[2]), "seed": int(found[3])}
    found = re.fullmatch(r"([A-Za-z0-9_.]+)-s([0-9]+)", folder)
    references = {parse(model).folder: model for model in models if not is_builtin(model)}
    if found and found[1] in references:
        return {"model": references[found[1]], "width": None, "seed": int(found[2])}
    raise ModelReferenceError(
        f"{folder!r} is no run folder of this config's models {models}: expected "
        "{model}-w{width}-s{seed} for a built-in model, {folder}-s{seed} for a reference"
    )


def check_config(models: list[str], widths: list[int]) -> None:
    """The torch-free rules: every reference parses, no two share a folder, and width is given
    only where it applies (built-ins)."""
    folders: dict[str, str] = {}
    for model in models:
        folder = parse(model).folder
        if folder in folders:
            raise ModelReferenceError(
                f"models {folders[folder]!r} and {model!r} would share the result folder "
                f"{folder!r}: keep one of them"
            )
        folders[folder] = model
    references = [model for model in models if not is_builtin(model)]
    if references and list(widths) != DEFAULT_WIDTHS:
        raise ModelReferenceError(
            f"widths {list(widths)} apply to the built-in models only, not to {references}: "
            "a reference builds the network its own way. Leave `widths` out of the config "
            f"(default {DEFAULT_WIDTHS}), or sweep widths of the built-in models in a separate run"
        )


# --- building (imports torch) ---------------------------------------------------------------


def _searched() -> str:
    """Where Python looked for a module: sys.path, '' shown as the directory it stands for."""
    paths = [entry or os.getcwd() for entry in sys.path]
    return f"sys.path = {paths} (the installed packages are in {sysconfig.get_paths()['purelib']})"


def _import(reference: ModelRef):
    try:
        return importlib.import_module(reference.module)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if reference.module == missing or reference.module.startswith(f"{missing}."):
            raise ModelReferenceError(
                f"model {reference.text!r}: no module named {missing!r}. Python searched "
                f"{_searched()}. Install the package that holds it into this environment "
                "(`pip install -e PATH`), or put the folder that holds it on PYTHONPATH where "
                "Snakemake runs (its jobs inherit it)"
            ) from None
        raise ModelReferenceError(
            f"model {reference.text!r}: module {reference.module!r} was found, but importing "
            f"it failed: it imports {missing!r}, which is not installed ({error}). Install it "
            "into this environment"
        ) from None
    except Exception as error:
        raise ModelReferenceError(
            f"model {reference.text!r}: importing module {reference.module!r} raised "
            f"{type(error).__name__}: {error} ({user_frame(error) or 'no frame of its own'})"
        ) from None


def _factory(reference: ModelRef):
    target = _import(reference)
    for depth, part in enumerate(reference.name.split(".")):
        if not hasattr(target, part):
            owner = ".".join([reference.module, *reference.name.split(".")[:depth]])
            callables = sorted(
                name
                for name, value in vars(target).items()
                if callable(value) and not name.startswith("_")
            )
            raise ModelReferenceError(
                f"model {reference.text!r}: {owner} ({getattr(target, '__file__', '')}) has no "
                f"attribute {part!r}; its public callables: {', '.join(callables) or 'none'}"
            )
        target = getattr(target, part)
    if not callable(target):
        raise ModelReferenceError(
            f"model {reference.text!r} names a {type(target).__name__}, not a callable: name a "
            "function or class that returns the network"
        )
    try:
        inspect.signature(target).bind(num_classes=0)
    except TypeError:
        raise ModelReferenceError(
            f"model {reference.text!r}: the factory must take the keyword argument num_classes "
            f"(quantpipe calls it as {reference.name}(num_classes=N)); its signature is "
            f"{reference.name}{inspect.signature(target)}"
        ) from None
    except ValueError:  # a builtin without a signature: the call itself will tell
        pass
    return target


def _torchvision_builder(reference: ModelRef):
    import torchvision.models

    classification = torchvision.models.list_models(module=torchvision.models)
    if reference.name in classification:
        return torchvision.models.get_model_builder(reference.name)
    if reference.name in torchvision.models.list_models():
        why = "is a torchvision model, but not a classification one (quantpipe classifies images)"
    else:
        why = "is no torchvision model"
    close = difflib.get_close_matches(reference.name, classification, n=3)
    hint = f"Did you mean {', '.join(TORCHVISION + name for name in close)}? " if close else ""
    raise ModelReferenceError(
        f"model {reference.text!r}: {reference.name!r} {why}. {hint}Its classification models: "
        f"{', '.join(classification)}"
    )


def build(text: str, num_classes: int):
    """The network of reference `text` (torchvision or factory), freshly initialised."""
    from torch import nn

    reference = parse(text)
    if reference.kind == "builtin":
        raise ValueError(f"{text!r} is a built-in model: build it with quantpipe.models")
    if reference.kind == "torchvision":
        return _torchvision_builder(reference)(weights=None, num_classes=num_classes)
    factory = _factory(reference)
    try:
        net = factory(num_classes=num_classes)
    except Exception as error:
        raise ModelReferenceError(
            f"model {text!r}: {reference.name}(num_classes={num_classes}) raised "
            f"{type(error).__name__}: {error} ({user_frame(error) or 'in the call'})"
        ) from error
    if not isinstance(net, nn.Module):
        raise ModelReferenceError(
            f"model {text!r}: {reference.name}(num_classes={num_classes}) returned a "
            f"{type(net).__module__}.{type(net).__name__}, not a torch.nn.Module: return the "
            "network itself (an instance of an nn.Module subclass)"
        )
    return net


def user_frame(error: BaseException) -> str:
    """The innermost frame of `error` in code that is not torch's or the standard library's, as
    'FILE:LINE in FUNCTION: CODE'; '' if there is none."""
    ours = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # quantpipe's own code
    libraries = {sysconfig.get_paths()[key] for key in ("stdlib", "purelib", "platlib")}
    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        path = os.path.abspath(frame.filename)
        if path.startswith(ours) or any(path.startswith(folder) for folder in libraries):
            continue
        if frame.filename.startswith("<"):
            continue
        return f"{frame.filename}:{frame.lineno} in {frame.name}: {(frame.line or '').strip()}"
    return ""


def first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"
