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

    def activation_names(self) -> list[str]:
        """Names of the activations :meth:`forward_with_activations` returns: each hidden layer's output."""
        return [f"layers.{index}" for index in range(len(self.layers))]

    def forward_with_activations(self, inputs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits plus every hidden layer's output after ReLU and dropout (2-D: batch x width)."""
        hidden = inputs.flatten(1)
        activations = []
        for layer in self.layers:
            hidden = self.dropout(torch.relu(layer(hidden)))
            activations.append(hidden)
        return self.head(hidden), activations

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.forward_with_activations(inputs)[0]


def build(config: MLPConfig) -> nn.Module:
    return MLP(config)
