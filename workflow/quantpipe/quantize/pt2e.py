"""PT2E static INT8 quantization: torch.export, torchao's X86InductorQuantizer, Inductor kernels.

Works on any eval-mode CNN written in plain PyTorch: it needs nothing from the model but a forward
that torch.export can trace. The artifact is a `torch.export.save` file holding only the tensors the
quantized graph uses (INT8 weights and their scales), so its size is the deployable size.
"""

import copy
import dataclasses
import io
import os
import warnings
import zipfile
from collections.abc import Iterable

import torch
from torch import nn

from quantpipe.artifacts import ArtifactError

# torchao and torch.ao print deprecation notices on import that say nothing about this flow.
warnings.filterwarnings("ignore", message=".*register_constant.*")
# Inductor's oneDNN lowering copies a zero-point tensor with torch.tensor(tensor) and says so.
warnings.filterwarnings(
    "ignore", message="To copy construct from a tensor", module=r"torch\._inductor.*"
)

from torchao.quantization.pt2e import (  # noqa: E402
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    PerChannelMinMaxObserver,
    allow_exported_model_train_eval,
)
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e  # noqa: E402
from torchao.quantization.pt2e.quantizer import QuantizationConfig  # noqa: E402
from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq  # noqa: E402

from quantpipe.quantize.calibration import Calibration, observer_settings, parse  # noqa: E402

MAX_BATCH = 65536


def _batch_dim():
    """The batch dimension stays dynamic: one artifact serves batch 1 and batch 256."""
    return ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},)


def _split_reused_module_calls(graph_module: torch.fx.GraphModule) -> None:
    """Give each call of a reused module its own partition name.

    torch.export already tells calls apart in nn_module_stack keys ("layer1.0.relu@1") but not in
    the module path the quantizer groups by, so a module called twice (torchvision's BasicBlock uses
    one ReLU for two activations) looks like one partition with two outputs and annotation fails
    ("Input partition has more than one output node").
    """
    for node in graph_module.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if not stack:
            continue
        key, (path, module_type) = next(reversed(stack.items()))
        if "@" in key and "@" not in path:
            stack = dict(stack)
            stack[key] = (f"{path}@{key.rsplit('@', 1)[1]}", module_type)
            node.meta["nn_module_stack"] = stack


# The layers this backend quantizes (X86InductorQuantizer's conv1d, conv2d and linear patterns),
# which accuracy control may leave in FP32 by module name.
LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Linear)


def prepare(
    model: nn.Module,
    example: torch.Tensor,
    calibration: str | Calibration | None = None,
    keep_fp32: tuple[str, ...] = (),
) -> torch.fx.GraphModule:
    """The eval-mode `model` exported and annotated, observers inserted, ready to calibrate.
    quantpipe.quantize.readiness.check runs it on a model by reference before any job, so one that
    cannot be traced or annotated is refused there, not halfway through a run."""
    return prepare_pt2e(export(model, example), quantizer(calibration, keep_fp32))


def export(model: nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    """The graph PT2E annotates: `model` as torch.export traces it, batch dimension dynamic."""
    graph_module = torch.export.export(model, (example,), dynamic_shapes=_batch_dim()).module()
    _split_reused_module_calls(graph_module)
    _unshare_reused_tensors(graph_module)
    return graph_module


def _unshare_reused_tensors(graph_module: torch.fx.GraphModule) -> None:
    """Give each call of a reused module its own copy of the weights and statistics it reads.

    prepare_pt2e folds each batch norm into the convolution before it by rewriting the
    convolution's weight in place, once per call: a block called twice would have its shared
    weight folded twice (tests/userpkg/usernets.py: logits off by 0.7 of their norm before any
    rounding). Each further reader gets a copy, so each call's INT8 weights are stored, which is
    the deployable size.
    """
    readers: dict[str, list[tuple[torch.fx.Node, torch.fx.Node]]] = {}
    for node in graph_module.graph.nodes:
        if node.op == "get_attr":
            readers.setdefault(node.target, []).extend((node, user) for user in node.users)
    for target, uses in readers.items():
        if len(uses) < 2:
            continue
        owner, _, name = target.rpartition(".")
        source = getattr(graph_module.get_submodule(owner), name)
        for index, (node, user) in enumerate(uses[1:], 1):
            copy_name = f"{target.replace('.', '_')}_call{index}"
            copied = source.detach().clone()
            if isinstance(source, nn.Parameter):
                graph_module.register_parameter(
                    copy_name, nn.Parameter(copied, source.requires_grad)
                )
            else:
                graph_module.register_buffer(copy_name, copied)
            with graph_module.graph.inserting_after(node):
                user.replace_input_with(node, graph_module.graph.get_attr(copy_name))
    graph_module.recompile()


ACTIVATION_OBSERVERS = {
    "minmax": MinMaxObserver,
    "moving_average": MovingAverageMinMaxObserver,
    "histogram": HistogramObserver,
}
REDUCE_RANGE_DEFAULT = (
    False  # torchao's x86 default: 8-bit activations (VNNI and AMX need no guard)
)


class PerTensorAsPerChannelObserver(PerChannelMinMaxObserver):
    """One scale for the whole weight tensor, written out once per output channel.

    Inductor fuses INT8 convolutions into oneDNN kernels only for per-channel weight dequantization
    (a per-tensor one falls back to dequantize + FP32 convolution, about 2x slower): repeating the
    tensor's scale per channel gives per-tensor numerics on the fast kernels.
    """

    def calculate_qparams(self):
        low = self.min_val.min().expand_as(self.min_val)
        high = self.max_val.max().expand_as(self.max_val)
        return self._calculate_qparams(low, high)


def settings(calibration: str | Calibration | None = None) -> dict:
    """What this backend applies for a calibration method name."""
    return observer_settings(parse(calibration), ACTIVATION_OBSERVERS, REDUCE_RANGE_DEFAULT)


def quantizer(
    calibration: str | Calibration | None = None, keep_fp32: tuple[str, ...] = ()
) -> xiq.X86InductorQuantizer:
    """torchao's x86 Inductor config (uint8 activations, int8 symmetric weights) with the chosen
    activation observer, weight granularity and activation range; the default is torchao's own
    (histogram observers on activations, per-channel min-max on weights). The modules named in
    `keep_fp32` are left unannotated: they run in FP32, their inputs unquantized."""
    calibration = parse(calibration)
    reduce_range = calibration.reduce_range(REDUCE_RANGE_DEFAULT)
    default = xiq.get_default_x86_inductor_quantization_config(reduce_range=reduce_range)
    observer_args = {"eps": 2**-12}  # as torchao's default config
    activation = dataclasses.replace(
        default.input_activation,
        observer_or_fake_quant_ctr=ACTIVATION_OBSERVERS[calibration.observer].with_args(
            **observer_args
        ),
    )
    weight = default.weight
    if calibration.weights == "per_tensor":
        weight = dataclasses.replace(
            weight,
            observer_or_fake_quant_ctr=PerTensorAsPerChannelObserver.with_args(**observer_args),
        )
    config = QuantizationConfig(activation, activation, weight, None, False)
    chosen = xiq.X86InductorQuantizer().set_global(config)
    for name in keep_fp32:
        chosen.set_module_name_qconfig(name, None)
    return chosen


def quantize(
    model: nn.Module,
    calibration_batches: Iterable[torch.Tensor],
    example: torch.Tensor,
    log=print,
    calibration: str | Calibration | None = None,
    keep_fp32: tuple[str, ...] = (),
) -> torch.fx.GraphModule:
    """Export `model`, insert observers, run the calibration batches, convert to an INT8 graph.

    `calibration` is a calibration method name (quantpipe.quantize.calibration); None: histogram.
    `keep_fp32`: module names left in FP32 (accuracy control).
    """
    return requantizer(model, calibration_batches, example, calibration)(keep_fp32, log)


def requantizer(
    model: nn.Module,
    calibration_batches: Iterable[torch.Tensor],
    example: torch.Tensor,
    calibration: str | Calibration | None = None,
):
    """quantize() for many choices of FP32 layers, `(keep_fp32, log) -> INT8 graph`: the model
    is exported once (about half the time of one quantization) and each call annotates a copy."""
    if example.shape[0] < 2:
        raise ValueError(
            "the example batch needs at least 2 images so the batch size stays dynamic"
        )
    exported = export(model.eval(), example)
    batches = list(calibration_batches)

    def quantize_keeping(keep_fp32: tuple[str, ...] = (), log=print) -> torch.fx.GraphModule:
        with torch.no_grad():
            prepared = prepare_pt2e(copy.deepcopy(exported), quantizer(calibration, keep_fp32))
            seen = 0
            for step, batch in enumerate(batches, 1):
                prepared(batch)
                seen += batch.shape[0]
                log(f"calibrate step {step}: {seen} images")
            if seen == 0:
                raise ValueError("calibration needs at least one batch of images")
            converted = convert_pt2e(prepared)
        # Scoring calls .eval(), which exported graphs refuse unless told how (they have no
        # train-only ops left after conversion).
        allow_exported_model_train_eval(converted)
        return converted

    return quantize_keeping


def _drop_unused_tensors(graph_module: torch.fx.GraphModule) -> None:
    """convert_pt2e keeps the FP32 originals beside the INT8 ones: drop the unused."""
    used = {node.target for node in graph_module.graph.nodes if node.op == "get_attr"}
    for name, _ in list(graph_module.named_parameters()) + list(graph_module.named_buffers()):
        if name not in used:
            owner_name, _, attr = name.rpartition(".")
            owner = graph_module.get_submodule(owner_name) if owner_name else graph_module
            delattr(owner, attr)
    graph_module.delete_all_unused_submodules()


# Per-node debugging records (source lines, module paths, pass history): half the graph's JSON.
DEBUG_METADATA = ("stack_trace", "from_node", "nn_module_stack", "source_fn_stack", "torch_fn")


def save(quantized: torch.fx.GraphModule, path: str | os.PathLike, example: torch.Tensor) -> None:
    """A torch.export archive holding only what inference needs, so its size is the INT8 size.

    Unused FP32 tensors and debug metadata are dropped, and the graph's JSON is deflated (the
    archive reader inflates it); tensors stay stored as they are.
    """
    _drop_unused_tensors(quantized)
    example = example.clone()  # the file keeps the example: a view would drag its whole storage
    program = torch.export.export(quantized, (example,), dynamic_shapes=_batch_dim())
    for node in program.graph_module.graph.nodes:
        for key in DEBUG_METADATA:
            node.meta.pop(key, None)
    archive = io.BytesIO()
    torch.export.save(program, archive)
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(path, "w") as target:
        for entry in source.infolist():
            deflate = entry.filename.endswith(".json")
            target.writestr(
                entry,
                source.read(entry),
                compress_type=zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED,
            )


def load(path: str | os.PathLike) -> nn.Module:
    try:
        return torch.export.load(path).module()
    except Exception as error:  # torch.export reports truncation in several ways
        raise ArtifactError(
            f"{path} cannot be loaded as a PT2E INT8 program ({type(error).__name__}: "
            f"{str(error)[:200]}). Rerun the quantize stage to make it again."
        ) from None


# Batches up to this size run the graph compiled with Inductor's C++ wrapper: it cuts the per-call
# Python overhead (batch 1: 2.4 -> 2.0 ms, width-64 ResNet18, 2 threads) but was slower and noisier
# at batch 128-256 here, where the Python wrapper runs (workflow/notes/int8_speed.md: the figures).
CPP_WRAPPER_MAX_BATCH = 64


class CompiledForCpu(nn.Module):
    """One INT8 graph compiled twice by Inductor: with the C++ wrapper for small batches, the
    Python wrapper for large ones. Each keeps torch.compile's default shape handling, so each
    specialises on the batch sizes it sees first (the benchmark uses 1, 16 and 256) and turns
    dynamic after that instead of recompiling without end."""

    def __init__(self, module: nn.Module, cpp_wrapper_max_batch: int = CPP_WRAPPER_MAX_BATCH):
        super().__init__()
        self.cpp_wrapper_max_batch = cpp_wrapper_max_batch
        self.small = torch.compile(copy.deepcopy(module), options={"cpp_wrapper": True})
        self.large = torch.compile(module)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[0] <= self.cpp_wrapper_max_batch:
            return self.small(images)
        return self.large(images)


def compile_for_cpu(module: nn.Module) -> nn.Module:
    """Inductor with freezing folds the Q/DQ pattern into oneDNN INT8 convolutions and matmuls.

    Freezing is set globally: as a per-compile option it fails (UnsupportedOperatorException:
    onednn.qconv_prepack), because it must be on when the graph is traced, not only when lowered.
    """
    torch._inductor.config.freezing = True
    return CompiledForCpu(module)
