"""Intermediate activations of every architecture, returned together with the logits.

Each architecture's module implements ``forward_with_activations(inputs) -> (logits, activations)`` and
``activation_names() -> list[str]`` (same order); ``forward`` is the first element of the former, so the two
agree exactly. The returned tensors are the block outputs, still attached to the autograd graph:

* ``mlp``: each hidden layer after ReLU and dropout (2-D, batch x width; none for a linear model);
* ``small_cnn``: each conv block after max-pooling (4-D, batch x channels x H x W);
* ``resnet18``: the outputs of the four stages ``layer1`` .. ``layer4`` (4-D).

State_dict keys are unchanged by this interface (it adds methods, no modules).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn

from workers.engine.errors import EngineError


@runtime_checkable
class ExposesActivations(Protocol):
    def activation_names(self) -> list[str]: ...

    def forward_with_activations(self, inputs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]: ...


def _checked(model: nn.Module) -> ExposesActivations:
    if not isinstance(model, ExposesActivations):
        raise EngineError(f"{type(model).__name__} does not expose intermediate activations")
    return model


def collect_activations(model: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``(logits, [block outputs])`` of ``model`` on ``inputs`` in the model's current train/eval mode."""
    return _checked(model).forward_with_activations(inputs)


def activation_names(model: nn.Module) -> list[str]:
    """Names of the block outputs :func:`collect_activations` returns, in the same order."""
    return _checked(model).activation_names()
