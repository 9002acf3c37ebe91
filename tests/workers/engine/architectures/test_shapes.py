"""param_shapes (torch-free) must describe the real state_dict exactly: keys, shapes and dtypes."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from workers.engine.architectures import ARCHITECTURES, MAX_PARAMETER_COUNT, parameter_count
from workers.engine.architectures.build import build_model
from workers.engine.errors import InvalidInputError

TORCH_DTYPE_NAMES = {torch.float32: "F32", torch.int64: "I64"}

CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("mlp", {"input_shape": [64]}),
    ("mlp", {"input_shape": [1, 8, 8], "hidden": [32, 16], "num_classes": 3, "dropout": 0.2}),
    ("mlp", {"input_shape": [3, 4, 4], "hidden": []}),
    ("small_cnn", {}),
    ("small_cnn", {"in_channels": 1, "image_size": 8, "channels": [4], "num_classes": 2}),
    ("small_cnn", {"in_channels": 3, "image_size": 16, "channels": [8, 8, 16, 16]}),
    ("resnet18", {"width": 4}),
    ("resnet18", {"in_channels": 1, "num_classes": 7, "width": 2}),
    ("resnet18", {}),
    ("speedrun_cnn", {}),
    ("speedrun_cnn", {"in_channels": 1, "num_classes": 100, "widths": [8, 16]}),
]


@pytest.mark.parametrize(("name", "config"), CONFIGS)
def test_param_shapes_match_state_dict(name: str, config: dict[str, Any]) -> None:
    spec = ARCHITECTURES.get(name)
    expected = spec.expected_state(config)
    state = build_model(name, config).state_dict()
    actual = {key: (tuple(value.shape), TORCH_DTYPE_NAMES[value.dtype]) for key, value in state.items()}
    assert actual == expected
    assert list(actual) == list(expected)  # same order too, so exports are stable
    model = build_model(name, config)
    trainable = sum(parameter.numel() for parameter in model.parameters())
    buffers = sum(buffer.numel() for buffer in model.buffers())
    assert parameter_count(expected) == trainable + buffers


def test_resnet18_at_standard_width_has_the_familiar_size() -> None:
    shapes = ARCHITECTURES.get("resnet18").expected_state({"num_classes": 10})
    trainable = sum(
        count
        for key, (shape, _) in shapes.items()
        if not key.endswith(("running_mean", "running_var", "num_batches_tracked"))
        for count in [int(torch.tensor(shape).prod().item()) if shape else 1]
    )
    assert trainable == 11_173_962  # CIFAR ResNet-18, 10 classes
    assert "layer2.0.downsample.0.weight" in shapes and "layer1.0.downsample.0.weight" not in shapes


@pytest.mark.parametrize(
    ("name", "config", "message"),
    [
        ("mlp", {}, "input_shape"),
        ("mlp", {"input_shape": [64], "dropout": float("nan")}, "dropout"),
        ("mlp", {"input_shape": [64], "unknown": 1}, "unknown"),
        ("small_cnn", {"image_size": 4, "channels": [8, 8, 8]}, "too small"),
        ("resnet18", {"width": 0}, "width"),
        ("resnet18", {"num_classes": 1}, "num_classes"),
        ("speedrun_cnn", {"widths": []}, "widths"),
        ("speedrun_cnn", {"head_scale": 0}, "head_scale"),
    ],
)
def test_invalid_configs_are_user_errors(name: str, config: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        ARCHITECTURES.get(name).parse_config(config)


def test_parameter_budget_is_enforced() -> None:
    huge = {"input_shape": [4096, 4096], "hidden": [16_384]}
    with pytest.raises(InvalidInputError, match=f"{MAX_PARAMETER_COUNT:,}"):
        ARCHITECTURES.get("mlp").parse_config(huge)


@pytest.mark.parametrize(
    ("name", "config", "input_shape", "classes", "ok"),
    [
        ("mlp", {"input_shape": [1, 8, 8]}, (64,), 10, True),
        ("mlp", {"input_shape": [1, 8, 8]}, (1, 8, 9), 10, False),
        ("mlp", {"input_shape": [64]}, (64,), 9, False),
        ("small_cnn", {"in_channels": 1, "image_size": 8}, (1, 8, 8), 10, True),
        ("small_cnn", {"in_channels": 1, "image_size": 8}, (3, 8, 8), 10, False),
        ("resnet18", {"in_channels": 3}, (3, 20, 24), 10, True),
        ("resnet18", {"in_channels": 3}, (48,), 10, False),
        ("speedrun_cnn", {}, (3, 32, 32), 10, True),
        ("speedrun_cnn", {"in_channels": 1, "widths": [8, 8]}, (1, 8, 12), 10, True),
        ("speedrun_cnn", {}, (3, 8, 8), 10, False),  # 3 poolings need 9 px
        ("speedrun_cnn", {}, (1, 32, 32), 10, False),
        ("speedrun_cnn", {}, (3, 32, 32), 100, False),
    ],
)
def test_check_input(
    name: str, config: dict[str, Any], input_shape: tuple[int, ...], classes: int, ok: bool
) -> None:
    spec = ARCHITECTURES.get(name)
    assert spec.check_input is not None
    parsed = spec.parse_config(config)
    if ok:
        spec.check_input(parsed, input_shape, classes)
    else:
        with pytest.raises(InvalidInputError):
            spec.check_input(parsed, input_shape, classes)


@pytest.mark.parametrize(
    ("name", "config", "sample_shape"),
    [
        ("mlp", {"input_shape": [1, 8, 8], "num_classes": 4}, (1, 8, 8)),
        ("small_cnn", {"in_channels": 3, "image_size": 16, "num_classes": 4}, (3, 16, 16)),
        ("resnet18", {"width": 4, "num_classes": 4}, (3, 32, 32)),
        ("speedrun_cnn", {"widths": [8, 16, 16], "num_classes": 4}, (3, 32, 32)),
    ],
)
def test_forward_produces_one_logit_per_class(
    name: str, config: dict[str, Any], sample_shape: tuple[int, ...]
) -> None:
    model = build_model(name, config).eval()
    with torch.no_grad():
        logits = model(torch.rand(5, *sample_shape))
    assert logits.shape == (5, 4)
    assert torch.isfinite(logits).all()
