"""ResNet18 in the two forms the study and CIFAR practice use, with a width knob.

`resnet18` is torchvision's ResNet18 (7x7 stride-2 stem and max-pool), the model the study
quantized; at width 64 its state_dict has torchvision's exact keys and shapes (tests check it), so
torchvision weights load into it. `resnet18_cifar` swaps the stem for one 3x3 stride-1 convolution
and drops the max-pool, the usual CIFAR variant. Each residual add goes through a FloatFunctional so
the eager quantization backend can replace it with a quantized add; every ReLU is its own module,
which both fusion and PT2E annotation need."""

from torch import nn
from torch.ao.nn.quantized import FloatFunctional

RESNETS = ("resnet18", "resnet18_cifar")


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride, bias=False), nn.BatchNorm2d(channels)
            )
        self.add_relu = FloatFunctional()

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.add_relu.add_relu(out, identity)

    def fusion_groups(self, prefix: str) -> list[list[str]]:
        groups = [
            [f"{prefix}conv1", f"{prefix}bn1", f"{prefix}relu1"],
            [f"{prefix}conv2", f"{prefix}bn2"],
        ]
        if self.downsample is not None:
            groups.append([f"{prefix}downsample.0", f"{prefix}downsample.1"])
        return groups


class ResNet18(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 64, cifar_stem: bool = False) -> None:
        super().__init__()
        if cifar_stem:
            self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        widths = [width, 2 * width, 4 * width, 8 * width]
        in_channels = width
        for index, channels in enumerate(widths):
            stride = 1 if index == 0 else 2
            layer = nn.Sequential(
                BasicBlock(in_channels, channels, stride), BasicBlock(channels, channels, 1)
            )
            self.add_module(f"layer{index + 1}", layer)
            in_channels = channels
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)
        # torchvision's initialisation, so a run here matches one with torchvision's model.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))

    def fusion_groups(self) -> list[list[str]]:
        """Module names the eager backend fuses: conv+bn(+relu) triples and pairs."""
        groups = [["conv1", "bn1", "relu"]]
        for layer_index in range(1, 5):
            for block_index, block in enumerate(getattr(self, f"layer{layer_index}")):
                groups += block.fusion_groups(f"layer{layer_index}.{block_index}.")
        return groups
