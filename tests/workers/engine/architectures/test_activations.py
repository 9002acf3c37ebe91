"""Every architecture returns its block outputs together with exactly the logits of ``forward``."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from workers.engine.architectures import ARCHITECTURES
from workers.engine.architectures.activations import activation_names, collect_activations
from workers.engine.architectures.build import build_model
from workers.engine.errors import EngineError

CASES: list[tuple[str, dict[str, Any], tuple[int, ...], list[str], list[tuple[int, ...]]]] = [
    (
        "mlp",
        {"input_shape": [1, 8, 8], "hidden": [16, 8], "num_classes": 3},
        (5, 1, 8, 8),
        ["layers.0", "layers.1"],
        [(5, 16), (5, 8)],
    ),
    (
        "small_cnn",
        {"in_channels": 1, "image_size": 8, "channels": [4, 6], "num_classes": 3},
        (5, 1, 8, 8),
        ["blocks.0", "blocks.1"],
        [(5, 4, 4, 4), (5, 6, 2, 2)],
    ),
    (
        "resnet18",
        {"in_channels": 1, "num_classes": 3, "width": 2},
        (5, 1, 8, 8),
        ["layer1", "layer2", "layer3", "layer4"],
        [(5, 2, 8, 8), (5, 4, 4, 4), (5, 8, 2, 2), (5, 16, 1, 1)],
    ),
    (
        "speedrun_cnn",
        {"in_channels": 1, "num_classes": 3, "widths": [4, 6]},
        (5, 1, 8, 8),
        ["blocks.0", "blocks.1"],
        [(5, 4, 3, 3), (5, 6, 1, 1)],
    ),
]


@pytest.mark.parametrize(("name", "config", "input_shape", "names", "shapes"), CASES)
@pytest.mark.parametrize("train_mode", [False, True])
def test_block_outputs_come_with_the_forward_logits(
    name: str,
    config: dict[str, Any],
    input_shape: tuple[int, ...],
    names: list[str],
    shapes: list[tuple[int, ...]],
    train_mode: bool,
) -> None:
    torch.manual_seed(0)
    model = build_model(name, config)
    model.train(train_mode)
    inputs = torch.rand(input_shape)
    logits, activations = collect_activations(model, inputs)
    assert activation_names(model) == names
    assert [tuple(activation.shape) for activation in activations] == shapes
    if not train_mode:  # train-mode BN updates running stats on each call, so compare in eval mode only
        assert torch.equal(logits, model(inputs))
    assert all(activation.requires_grad for activation in activations)  # usable in a loss
    # The interface adds methods only: the state_dict layout is still the torch-free spec's.
    assert set(model.state_dict()) == set(ARCHITECTURES.get(name).expected_state(config))


def test_the_last_block_output_determines_the_logits() -> None:
    torch.manual_seed(0)
    model = build_model("small_cnn", CASES[1][1]).eval()
    logits, activations = collect_activations(model, torch.rand(3, 1, 8, 8))
    head = model.head
    assert isinstance(head, nn.Linear)
    assert torch.allclose(logits, head(activations[-1].mean(dim=(2, 3))))


def test_linear_mlp_has_no_activations() -> None:
    model = build_model("mlp", {"input_shape": [4], "hidden": [], "num_classes": 2})
    logits, activations = collect_activations(model, torch.rand(3, 4))
    assert logits.shape == (3, 2) and activations == [] and activation_names(model) == []


def test_models_without_the_interface_are_refused() -> None:
    with pytest.raises(EngineError, match="does not expose"):
        collect_activations(nn.Linear(4, 2), torch.rand(3, 4))
