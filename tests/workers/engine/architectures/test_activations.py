"""Hook-collected block outputs: exactly the logits of ``forward`` and exactly what the hand-written
``forward_with_activations`` the registry architectures had before returned (re-derived here by hand)."""

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
        ["hidden_taps.0", "hidden_taps.1"],
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
    with pytest.raises(EngineError, match="does not name its activation layers"):
        collect_activations(nn.Linear(4, 2), torch.rand(3, 4))


def _by_hand(name: str, model: Any, inputs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The removed ``forward_with_activations`` of each registry architecture, step by step."""
    activations: list[torch.Tensor] = []
    if name == "mlp":
        hidden = inputs.flatten(1)
        for layer in model.layers:
            hidden = model.dropout(torch.relu(layer(hidden)))
            activations.append(hidden)
        return model.head(hidden), activations
    if name == "small_cnn":
        features = inputs
        for block in model.blocks:
            features = block(features)
            activations.append(features)
        return model.head(features.mean(dim=(2, 3))), activations
    if name == "resnet18":
        out = torch.relu(model.bn1(model.conv1(inputs)))
        for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
            out = stage(out)
            activations.append(out)
        return model.fc(out.mean(dim=(2, 3))), activations
    features = torch.nn.functional.gelu(model.whiten(inputs))
    for block in model.blocks:
        features = block(features)
        activations.append(features)
    logits = model.head(features.amax(dim=(2, 3))) * model.head_scale
    flipped = model.blocks(torch.nn.functional.gelu(model.whiten(inputs.flip(-1))))
    return 0.5 * (logits + model.head(flipped.amax(dim=(2, 3))) * model.head_scale), activations


@pytest.mark.parametrize(("name", "config", "input_shape"), [case[:3] for case in CASES])
def test_hooks_return_what_the_hand_written_forward_returned(
    name: str, config: dict[str, Any], input_shape: tuple[int, ...]
) -> None:
    torch.manual_seed(0)
    model = build_model(name, config).eval()
    inputs = torch.rand(input_shape)
    logits, activations = collect_activations(model, inputs)
    expected_logits, expected = _by_hand(name, model, inputs)
    assert torch.equal(logits, expected_logits)
    assert len(activations) == len(expected)
    assert all(torch.equal(own, old) for own, old in zip(activations, expected, strict=True))


@pytest.mark.parametrize(
    ("name", "config", "names"),
    [
        (
            "torchvision.resnet18",
            {"num_classes": 3, "cifar_stem": True},
            ["layer1", "layer2", "layer3", "layer4"],
        ),
        (
            "timm.convnext_atto",
            {"num_classes": 3, "dims": [8, 8, 8, 8], "depths": [1, 1, 1, 1]},
            ["stages.0", "stages.1", "stages.2", "stages.3"],
        ),
    ],
)
def test_library_models_expose_their_stages_through_hooks(
    name: str, config: dict[str, Any], names: list[str]
) -> None:
    torch.manual_seed(0)
    model = build_model(name, config).eval()
    inputs = torch.rand(2, 3, 32, 32)  # ConvNeXt's stem and downsamples divide by 32
    logits, activations = collect_activations(model, inputs)
    assert activation_names(model) == names and len(activations) == 4
    assert torch.equal(logits, model(inputs))
    assert all(activation.dim() == 4 for activation in activations)
