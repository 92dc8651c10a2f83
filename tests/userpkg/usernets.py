"""A user's own CNN, written the way plain PyTorch code is, that quantpipe has never seen.

It stands for a network in the user's package, outside quantpipe: the tests put this folder on
PYTHONPATH (for Snakemake and its jobs) and name it `usernets:make_net`. On purpose it uses what
quantpipe's own models avoid: functional ReLUs and adds instead of modules, a shortcut that
subsamples by slicing with a stride and pads the new channels with zeros (no 1x1 convolution), and
one module called twice. It has no `fusion_groups`, so the eager method cannot take it.
"""

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.stride, self.extra = stride, channels - in_channels

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x[:, :, :: self.stride, :: self.stride]
        if self.extra:  # zero channels appended: (left, right, top, bottom, front, back)
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.extra))
        return F.relu(out + shortcut)


class UserNet(nn.Module):
    def __init__(self, num_classes: int, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.stage1 = Block(width, width, 1)
        self.stage2 = Block(width, 2 * width, 2)
        # One block applied twice in a row: the same weights, two calls in the graph.
        self.repeated = Block(2 * width, 2 * width, 1)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = self.stage2(self.stage1(x))
        x = self.repeated(self.repeated(x))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


def make_net(num_classes: int) -> nn.Module:
    return UserNet(num_classes)


def not_a_module(num_classes: int) -> dict:
    """A factory that returns the wrong thing, for the error message."""
    return {"num_classes": num_classes}


class Untraceable(UserNet):
    """Branches in Python on a tensor's value: torch.export cannot trace that."""

    def forward(self, x):
        if x.mean() > 0:
            x = x * 2
        return super().forward(x)


def make_untraceable(num_classes: int) -> nn.Module:
    return Untraceable(num_classes)


class FixedBatch(UserNet):
    """Reshapes with a literal batch size: torch.export must then fix the batch dimension."""

    def forward(self, x):
        return super().forward(x).reshape(2, -1)


def make_fixed_batch(num_classes: int) -> nn.Module:
    return FixedBatch(num_classes)


def make_wrong_head(num_classes: int) -> nn.Module:
    """Ignores num_classes: its logits have the wrong width."""
    return UserNet(num_classes + 1)


class ZeroFeature(nn.Module):
    """Appends one input feature that is always zero, in front."""

    def forward(self, x):
        return F.pad(x, (1, 0))


def make_fragile(num_classes: int) -> nn.Module:
    """UserNet with a fragile head, the layer accuracy control must find: a plain nn.Linear
    (quantizers match layers by exact type) that also reads an always-zero feature with weights
    1000x any other. Its FP32 output is that of the head without the feature, but INT8's one
    weight scale per output, set by the outlier, rounds every real weight to nothing: INT8
    predicts one class. Training leaves the outlier alone (its input, so its gradient, is 0)."""
    net = UserNet(num_classes)
    head = nn.Linear(net.head.in_features + 1, num_classes)
    with torch.no_grad():
        head.weight[:, 0] = 1000.0
    net.head = nn.Sequential(ZeroFeature(), head)
    return net
