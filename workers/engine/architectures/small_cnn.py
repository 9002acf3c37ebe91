"""Torch implementation of the ``small_cnn`` architecture (layout: see ``small_cnn_param_shapes``)."""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import nn

from workers.engine.architectures import CONV_KERNEL_SIZE, SmallCNNConfig

POOL_FACTOR = 2


class ConvBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        # No conv bias: the BatchNorm shift right after it makes one redundant.
        self.conv = nn.Conv2d(
            in_channels, out_channels, CONV_KERNEL_SIZE, padding=CONV_KERNEL_SIZE // 2, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.pool = nn.MaxPool2d(POOL_FACTOR)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.bn(self.conv(inputs))))


class SmallCNN(nn.Module):
    def __init__(self, config: SmallCNNConfig) -> None:
        super().__init__()
        widths = [config.in_channels, *config.channels]
        self.blocks = nn.Sequential(*(ConvBlock(fan_in, fan_out) for fan_in, fan_out in pairwise(widths)))
        self.head = nn.Linear(widths[-1], config.num_classes)
        self.activation_layers = [f"blocks.{index}" for index in range(len(self.blocks))]

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(inputs).mean(dim=(2, 3)))


def build(config: SmallCNNConfig) -> nn.Module:
    return SmallCNN(config)
