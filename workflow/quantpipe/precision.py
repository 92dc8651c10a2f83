"""Reduced precision on the GPU: the benchmark's `{precision}-gpu` variants.

`fp32-gpu` runs the FP32 model as it is; `bf16-gpu` and `fp16-gpu` run the same FP32 model under
`torch.autocast` to that type (convolutions and matrix multiplies in half precision, reductions
and batch norm where autocast keeps FP32), channels_last, eager and torch.compile'd, and return FP32
logits. The weights stay FP32 in memory and on disk, so a row's size is the FP32 size.

Where a variant cannot run, `unusable(precision)` says why, and its rows say skipped with that
reason and carry no number.
"""

import os

import torch
from torch import nn

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
GPU_VARIANTS = tuple(f"{precision}-gpu" for precision in AUTOCAST_DTYPES)


class Autocast(nn.Module):
    """`module` under torch.autocast to `dtype` on the device of its input; FP32 logits out."""

    def __init__(self, module: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.module = module
        self.dtype = dtype

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(images.device.type, dtype=self.dtype):
            return self.module(images).float()


def for_precision(module: nn.Module, precision: str) -> nn.Module:
    """`module` as the variant of `precision` runs it (fp32: unchanged)."""
    if precision not in AUTOCAST_DTYPES:
        raise ValueError(
            f"unknown precision {precision!r}: choose one of {', '.join(AUTOCAST_DTYPES)}"
        )
    dtype = AUTOCAST_DTYPES[precision]
    return module if dtype is None else Autocast(module, dtype)


def unusable(precision: str) -> str | None:
    """Why the GPU variant of `precision` cannot run on this node; None when it can."""
    if not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible:
            return f"CUDA cannot use the allocated GPU (CUDA_VISIBLE_DEVICES={visible})"
        return "no CUDA device on this node"
    if precision == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
        major, minor = torch.cuda.get_device_capability()
        return (
            f"{torch.cuda.get_device_name()} (compute capability {major}.{minor}) has no native "
            "bf16 support (needs 8.0 or newer)"
        )
    return None
