"""Torch implementation of the ``mlp`` architecture (state_dict layout: see ``mlp_param_shapes``)."""

from __future__ import annotations

from itertools import pairwise

import torch
from torch import nn

from workers.engine.architectures import MLPConfig


class MLP(nn.Module):
    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        widths = [config.in_features, *config.hidden]
        self.layers = nn.ModuleList(nn.Linear(fan_in, fan_out) for fan_in, fan_out in pairwise(widths))
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(widths[-1], config.num_classes)
        # Parameter-free taps after each hidden ReLU + dropout, where the activation hooks attach (the
        # state_dict is unchanged).
        self.hidden_taps = nn.ModuleList(nn.Identity() for _ in self.layers)
        self.activation_layers = [f"hidden_taps.{index}" for index in range(len(self.layers))]

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        hidden = inputs.flatten(1)
        for layer, tap in zip(self.layers, self.hidden_taps, strict=True):
            hidden = tap(self.dropout(torch.relu(layer(hidden))))
        return self.head(hidden)


def build(config: MLPConfig) -> nn.Module:
    return MLP(config)
