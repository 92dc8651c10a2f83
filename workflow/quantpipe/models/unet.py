"""U-Nets for membrane prediction on EM, written so both quantize methods apply unchanged.

`unet2d` sees one section (N, 1, Y, X); `unet3d_aniso` sees a stack of sections (N, 1, Z, Y, X)
and is anisotropic as serial-section EM (4 nm pixels, 50 nm sections) needs: its finest levels
convolve in-plane only (kernel 1x3x3), its coarser ones across sections too (3x3x3), and it pools
and upsamples in-plane only (1x2x2), so any number of sections goes through. Both take float32
images holding uint8/255 (no other normalisation) and return membrane logits (1 channel) of the
input's size: every convolution pads to keep its size; Y and X must be multiples of 2**(depth-1).

Every convolution is an nn.Conv2d, the 3D network's included. torchao's X86InductorQuantizer
annotates conv1d/conv2d/linear only: an nn.Conv3d stays FP32 in the PT2E graph (checked: the
converted graph keeps aten.conv3d on FP32 weights). So the 3D network holds its activations as
sections-in-the-batch (N*Z, C, Y, X): a 1x3x3 convolution is then a Conv2d on each section, 1x2x2
pooling and upsampling are 2D ones, and a 3x3x3 convolution is a Conv2d over each section stacked
with its neighbours above and below along the channels ((N*Z, 3C, Y, X), gathered along the
batch and joined by one concatenation; the top and bottom sections see themselves replicated,
not zeros). That is the same linear map as a Conv3d (its kernel reshaped from (C', C, 3, 3, 3)
to (C', 3C, 3, 3)), made of modules both methods quantize: Conv2d + BatchNorm2d + ReLU (fused
by the eager method, annotated by PT2E), MaxPool2d, nn.Upsample and concatenations through
FloatFunctional.cat (a quantized cat in eager mode; torch.cat, which PT2E annotates, otherwise).
"""

import torch
from torch import nn
from torch.ao.nn.quantized import FloatFunctional

UNETS = ("unet2d", "unet3d_aniso")
DEPTH = 4  # levels: the input's Y and X must be multiples of 2**(DEPTH-1) = 8
PLANAR_LEVELS = 2  # unet3d_aniso: the finest levels convolve in-plane only
MIN_SIZE = 2 ** (DEPTH - 1)


class ConvBnReLU(nn.Module):
    """3x3 in-plane convolution, batch norm, ReLU: one eager fusion group."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x, sections: int):
        return self.relu(self.bn(self.conv(x)))

    def fusion_groups(self, prefix: str) -> list[list[str]]:
        return [[f"{prefix}conv", f"{prefix}bn", f"{prefix}relu"]]


class SectionConvBnReLU(ConvBnReLU):
    """3x3x3 convolution on sections-in-the-batch activations (N*Z, C, Y, X): each section is
    stacked with its neighbours (z-1, z, z+1) along the channels, then convolved in-plane.

    The neighbours are gathered along the batch and stacked by one 4D concatenation, not sliced
    and concatenated in 5D: quantized cat has a fast kernel for 4D channels-last inputs only
    (stacking a 5 x 128 x 136 x 136 activation: 14 ms, against 116 ms for the same inputs not
    channels-last), and eager INT8 activations are channels-last, which a gather on their NHWC
    view keeps (0.8 ms, against 13 ms for a plain index_select, whose output is not)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(3 * in_channels, out_channels)
        self.stack = FloatFunctional()

    def forward(self, x, sections: int):
        index = torch.arange(x.shape[0], device=x.device)
        position = index % sections  # the top and bottom sections see themselves replicated
        below = index - (position > 0).to(index.dtype)
        above = index + (position < sections - 1).to(index.dtype)
        if x.is_quantized:  # eager INT8: gather on the NHWC view, keeping channels-last
            nhwc = x.permute(0, 2, 3, 1)
            neighbours = [nhwc.index_select(0, i).permute(0, 3, 1, 2) for i in (below, above)]
        else:
            neighbours = [x.index_select(0, i) for i in (below, above)]
        x = self.stack.cat([neighbours[0], x, neighbours[1]], dim=1)
        return super().forward(x, sections)


class DoubleConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, across_sections: bool) -> None:
        super().__init__()
        block = SectionConvBnReLU if across_sections else ConvBnReLU
        self.first = block(in_channels, out_channels)
        self.second = block(out_channels, out_channels)

    def forward(self, x, sections: int):
        return self.second(self.first(x, sections), sections)

    def fusion_groups(self, prefix: str) -> list[list[str]]:
        return self.first.fusion_groups(f"{prefix}first.") + self.second.fusion_groups(
            f"{prefix}second."
        )


class UNet(nn.Module):
    """U-Net of DEPTH levels with width * 2**level channels; `dims` 2 (sections) or 3 (stacks).

    `section_levels`: the levels whose convolutions span 3 sections (none for 2D)."""

    def __init__(self, width: int, dims: int, section_levels: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.dims = dims
        channels = [width * 2**level for level in range(DEPTH)]
        self.down = nn.ModuleList()
        in_channels = 1
        for level, out_channels in enumerate(channels):
            self.down.append(DoubleConv(in_channels, out_channels, level in section_levels))
            in_channels = out_channels
        self.pool = nn.MaxPool2d(2)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.up = nn.ModuleList()
        self.skips = nn.ModuleList()
        for level in reversed(range(DEPTH - 1)):
            self.up.append(
                DoubleConv(
                    channels[level] + channels[level + 1], channels[level], level in section_levels
                )
            )
            self.skips.append(FloatFunctional())
        self.head = nn.Conv2d(channels[0], 1, 1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        if self.dims == 3:  # (N, 1, Z, Y, X) -> sections in the batch: (N*Z, 1, Y, X)
            batch, _, sections, height, width = x.shape
            x = x.reshape(batch * sections, 1, height, width)
        else:
            sections = 1
        skips = []
        for level, block in enumerate(self.down):
            if level:
                x = self.pool(x)
            x = block(x, sections)
            skips.append(x)
        x = skips.pop()
        for block, skip in zip(self.up, self.skips, strict=True):
            x = block(skip.cat([skips.pop(), self.upsample(x)], dim=1), sections)
        x = self.head(x)
        if self.dims == 3:
            x = x.reshape(batch, 1, sections, height, width)
        return x

    def fusion_groups(self) -> list[list[str]]:
        """Module names the eager method fuses: every conv + bn + relu (the head stays alone)."""
        groups = []
        for name, blocks in (("down", self.down), ("up", self.up)):
            for index, block in enumerate(blocks):
                groups += block.fusion_groups(f"{name}.{index}.")
        return groups


def build_unet(name: str, width: int) -> UNet:
    if name == "unet2d":
        return UNet(width, dims=2)
    if name == "unet3d_aniso":
        return UNet(width, dims=3, section_levels=tuple(range(PLANAR_LEVELS, DEPTH)))
    raise ValueError(f"unknown U-Net {name!r}: choose one of {', '.join(UNETS)}")
