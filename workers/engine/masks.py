"""Sparsity masks: which weights a pruned model keeps. Enforced after every optimiser step of every method,
so a pruned weight stays exactly zero through unlearning, and applied at initialisation for the retrain of
a pruned model (the reference's "sparse retrain" reuses the mask, optml.md §2.2 / §2.8)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from workers.engine.errors import InvalidInputError

Masks = dict[str, torch.Tensor]


def masks_to_device(masks: Mapping[str, np.ndarray], model: nn.Module, device: torch.device) -> Masks:
    """Validate numpy masks against the model's parameters and move them to ``device`` as bool tensors."""
    parameters = dict(model.named_parameters())
    unknown = sorted(set(masks) - set(parameters))
    if unknown:
        raise InvalidInputError(f"mask names that are not parameters of the model: {unknown[:5]}")
    result: Masks = {}
    for name, mask in masks.items():
        array = np.asarray(mask)
        if tuple(array.shape) != tuple(parameters[name].shape):
            raise InvalidInputError(
                f"mask {name!r} has shape {tuple(array.shape)}, the parameter {tuple(parameters[name].shape)}"
            )
        result[name] = torch.as_tensor(array != 0, device=device)
    return result


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Masks | None) -> None:
    """Zero every masked-out weight in place."""
    if not masks:
        return
    parameters = dict(model.named_parameters())
    for name, mask in masks.items():
        parameters[name].mul_(mask.to(parameters[name].dtype))


def masks_to_numpy(masks: Masks | None) -> dict[str, np.ndarray] | None:
    if masks is None:
        return None
    return {name: mask.detach().cpu().numpy().astype(np.uint8) for name, mask in masks.items()}


def sparsity(masks: Masks) -> float:
    """Fraction of masked-out entries among the masked parameters: what a mask asks for, not what the
    weights are (see :func:`weight_sparsity` for the reported figure)."""
    total = sum(int(mask.numel()) for mask in masks.values())
    kept = sum(int(mask.sum().item()) for mask in masks.values())
    return 1.0 - kept / total if total else 0.0


def prunable_parameters(model: nn.Module) -> list[str]:
    """Names of the weights OMP prunes: all Conv2d weights (the reference's rule for CNNs); for models with at
    most one convolution — none (an MLP) or only a patch-embedding stem (a ViT) — also the Linear weights
    except the classifier (the last Linear layer registered), where such a model keeps its weights."""
    convolutions = [
        f"{name}.weight" for name, module in model.named_modules() if isinstance(module, nn.Conv2d)
    ]
    if len(convolutions) > 1:
        return convolutions
    linears = [f"{name}.weight" for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    return convolutions + linears[:-1]


@torch.no_grad()
def weight_sparsity(model: nn.Module, masks: Masks | None = None) -> float:
    """Fraction of exactly-zero entries among the prunable weights (plus any other masked parameter), read
    from the weights themselves: a mask that was not enforced, or weights that reached zero on their own,
    show up here, while a mask's own fraction (:func:`sparsity`) would hide both."""
    parameters = dict(model.named_parameters())
    names = list(dict.fromkeys([*prunable_parameters(model), *(masks or {})]))
    total = sum(int(parameters[name].numel()) for name in names)
    zeros = sum(int((parameters[name] == 0).sum().item()) for name in names)
    return zeros / total if total else 0.0
