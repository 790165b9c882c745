"""The built-in models. Each has `features` (the penultimate representation) and `head`."""

from __future__ import annotations

import math

import torch
from torch import nn

from kdcli.models.registry import register_model


class Classifier(nn.Module):
    """features -> head; kept uniform so `cka` can find the penultimate layer."""

    def __init__(self, features: nn.Module, head: nn.Module):
        super().__init__()
        self.features = features
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_model("mlp")
def mlp(num_classes: int, input_shape, hidden: int = 256, depth: int = 2) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    return Classifier(nn.Sequential(*layers), nn.Linear(width, num_classes))


@register_model("cnn1d")
def cnn1d(num_classes: int, input_shape, channels: int = 32) -> nn.Module:
    """The MNIST-1D paper's convolutional baseline: three strided convolutions, then linear."""
    in_ch, length = input_shape
    features = nn.Sequential(
        nn.Conv1d(in_ch, channels, 5, stride=2, padding=1), nn.ReLU(),
        nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
    )
    with torch.no_grad():
        width = features(torch.zeros(1, in_ch, length)).shape[1]
    return Classifier(features, nn.Linear(width, num_classes))


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


@register_model("cnn")
def cnn(num_classes: int, input_shape, width: int = 32) -> nn.Module:
    """A small image CNN: two conv-bn-relu stages with pooling, global average pool, linear."""
    in_ch = input_shape[0]
    features = nn.Sequential(
        *_conv_bn(in_ch, width), *_conv_bn(width, width), nn.MaxPool2d(2),
        *_conv_bn(width, 2 * width), *_conv_bn(2 * width, 2 * width),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )
    return Classifier(features, nn.Linear(2 * width, num_classes))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:  # projection shortcut (option B)
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


@register_model("resnet_cifar")
def resnet_cifar(num_classes: int, input_shape, depth: int = 20, width: int = 16) -> nn.Module:
    """He et al. (2016) CIFAR ResNet: depth 6n+2, three stages of width w, 2w, 4w."""
    if (depth - 2) % 6:
        raise ValueError(f"depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
    n = (depth - 2) // 6
    layers: list[nn.Module] = [nn.Conv2d(input_shape[0], width, 3, padding=1, bias=False),
                               nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
    cin = width
    for stage, cout in enumerate((width, 2 * width, 4 * width)):
        for i in range(n):
            layers.append(BasicBlock(cin, cout, stride=2 if stage > 0 and i == 0 else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    model = Classifier(nn.Sequential(*layers), nn.Linear(cin, num_classes))
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model


@register_model("resnet20")
def resnet20(num_classes: int, input_shape, width: int = 16) -> nn.Module:
    return resnet_cifar(num_classes, input_shape, depth=20, width=width)


@register_model("resnet56")
def resnet56(num_classes: int, input_shape, width: int = 16) -> nn.Module:
    return resnet_cifar(num_classes, input_shape, depth=56, width=width)


# Tiny entries for tests: every registry test runs them in milliseconds.
@register_model("test_mlp")
def test_mlp(num_classes: int, input_shape) -> nn.Module:
    return mlp(num_classes, input_shape, hidden=16, depth=1)


@register_model("test_cnn1d")
def test_cnn1d(num_classes: int, input_shape) -> nn.Module:
    return cnn1d(num_classes, input_shape, channels=4)


@register_model("test_cnn")
def test_cnn(num_classes: int, input_shape) -> nn.Module:
    return cnn(num_classes, input_shape, width=4)


@register_model("test_resnet")
def test_resnet(num_classes: int, input_shape) -> nn.Module:
    return resnet_cifar(num_classes, input_shape, depth=8, width=4)
