"""Torch implementation of the CIFAR-style ``resnet18`` (layout: see ``resnet18_param_shapes``).

Written from the ResNet paper's BasicBlock definition with the CIFAR stem used by the reference
(optml.md §1.1); module names follow torchvision so state_dict keys are familiar.
"""

from __future__ import annotations

import torch
from torch import nn

from workers.engine.architectures import (
    CONV_KERNEL_SIZE,
    RESNET18_BLOCKS_PER_STAGE,
    RESNET18_STAGE_STRIDES,
    RESNET18_STAGE_WIDTH_FACTORS,
    ResNet18Config,
)


def _conv3x3(in_channels: int, out_channels: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(
        in_channels, out_channels, CONV_KERNEL_SIZE, stride=stride, padding=CONV_KERNEL_SIZE // 2, bias=False
    )


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels, 1)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            # Projection shortcut so the residual sum has matching shape.
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(inputs)))
        out = self.bn2(self.conv2(out))
        shortcut = inputs if self.downsample is None else self.downsample(inputs)
        return torch.relu(out + shortcut)


class ResNet18(nn.Module):
    def __init__(self, config: ResNet18Config) -> None:
        super().__init__()
        self.conv1 = _conv3x3(config.in_channels, config.width, 1)
        self.bn1 = nn.BatchNorm2d(config.width)
        fan_in = config.width
        stages: list[nn.Sequential] = []
        for blocks, first_stride, factor in zip(
            RESNET18_BLOCKS_PER_STAGE, RESNET18_STAGE_STRIDES, RESNET18_STAGE_WIDTH_FACTORS, strict=True
        ):
            width = config.width * factor
            layers = []
            for block_index in range(blocks):
                layers.append(BasicBlock(fan_in, width, first_stride if block_index == 0 else 1))
                fan_in = width
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(fan_in, config.num_classes)
        # A parameter-free tap on the stem's output (after its ReLU) for the activation hooks.
        self.stem = nn.Identity()
        self.activation_layers = ["layer1", "layer2", "layer3", "layer4"]

    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        out = self.stem(torch.relu(self.bn1(self.conv1(inputs))))
        return self.layer4(self.layer3(self.layer2(self.layer1(out))))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(inputs).mean(dim=(2, 3)))


def build(config: ResNet18Config) -> nn.Module:
    return ResNet18(config)
