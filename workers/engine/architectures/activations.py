"""Intermediate activations of any model, collected with forward hooks on named layers.

Every model the engine builds carries ``activation_layers``: a plain attribute (not in the state_dict) listing
the module paths whose outputs count as its activations. The registry architectures set it in their
constructors; the torchvision / timm builders set it from the library model's stage layout. Hooks read those
modules' outputs during an ordinary ``model(inputs)``, so nothing needs a hand-written second forward:

* ``mlp``: each hidden layer after ReLU and dropout (2-D, batch x width; none for a linear model);
* ``small_cnn``, ``speedrun_cnn``: each conv block's output (4-D, batch x channels x H x W);
* ``resnet18``: the outputs of the four stages ``layer1`` .. ``layer4`` (4-D);
* ``resnet18_regressor``: the stem and all 8 BasicBlocks (blindspot_sfd.md §1.2);
* torchvision / timm models: their stages (ResNets ``layerN``, VGG the max-pools, ViTs the encoder blocks).

When a forward pass runs a layer more than once (``speedrun_cnn``'s test-time flip runs every block on the
input and on its mirror), the first output counts: the activations are the input's own.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from workers.engine.errors import EngineError


def activation_names(model: nn.Module) -> list[str]:
    """Module paths of the activations :func:`collect_activations` returns, in the same order."""
    layers = getattr(model, "activation_layers", None)
    if not isinstance(layers, list):
        raise EngineError(f"{type(model).__name__} does not name its activation layers")
    return list(layers)


def collect_activations(model: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``(model(inputs), [each named layer's output])`` in the model's current train/eval mode; the
    activations stay attached to the autograd graph."""
    names = activation_names(model)
    modules = dict(model.named_modules())
    missing = [name for name in names if name not in modules]
    if missing:
        raise EngineError(f"{type(model).__name__} has no layers {missing}")
    captured: dict[str, torch.Tensor] = {}

    def recorder(name: str) -> Any:
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            if name not in captured and isinstance(output, torch.Tensor):
                captured[name] = output

        return hook

    handles = [modules[name].register_forward_hook(recorder(name)) for name in names]
    try:
        outputs = model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    not_run = [name for name in names if name not in captured]
    if not_run:
        raise EngineError(f"layers {not_run} produced no tensor output in the forward pass")
    return outputs, [captured[name] for name in names]
