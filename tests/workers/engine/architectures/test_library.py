"""torchvision / timm entries: the torch-free shape table equals the library model's real state_dict, the
configs pass nothing but their declared fields, and the input checks follow each model's needs."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from workers.engine.architectures import ARCHITECTURES, library
from workers.engine.architectures.build import build_model, state_to_numpy
from workers.engine.architectures.library import library_state_shapes
from workers.engine.errors import InvalidInputError

SMALL_CONFIGS: dict[str, dict[str, Any]] = {
    "torchvision.resnet18": {"num_classes": 3, "cifar_stem": True},
    "torchvision.resnet34": {"num_classes": 3, "in_channels": 1},
    "torchvision.resnet50": {"num_classes": 3},
    "torchvision.vgg16_bn": {"num_classes": 3},
    "torchvision.mobilenet_v3_small": {"num_classes": 3, "width_mult": 0.25},
    "torchvision.vit_b_16": {"num_classes": 3, "image_size": 32},
    "timm.resnet18": {"num_classes": 3, "channels": [4, 8, 8, 8], "in_channels": 1},
    "timm.convnext_atto": {"num_classes": 3, "dims": [8, 8, 8, 8], "depths": [1, 1, 1, 1]},
    "timm.vit_tiny_patch16_224": {"num_classes": 3, "image_size": 16, "patch_size": 8, "depth": 2},
}


def test_every_library_entry_has_a_case() -> None:
    assert {name for name in ARCHITECTURES.names() if name.startswith(("torchvision.", "timm."))} == set(
        SMALL_CONFIGS
    )


@pytest.mark.parametrize("name", sorted(SMALL_CONFIGS))
def test_shape_table_is_the_real_state_dict(name: str, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LETHE_SHAPE_TABLE_DIR", str(tmp_path))
    monkeypatch.setattr(library, "_MEMORY", {})  # computed here, not remembered from another test
    spec = ARCHITECTURES.get(name)
    expected = spec.expected_state(SMALL_CONFIGS[name])
    torch.manual_seed(0)
    state = state_to_numpy(build_model(name, SMALL_CONFIGS[name]))
    assert list(state) == list(expected)  # the library's own keys, in its order
    dtypes = {"F32": "float32", "I64": "int64"}
    assert {key: (array.shape, str(array.dtype)) for key, array in state.items()} == {
        key: (shape, dtypes[dtype]) for key, (shape, dtype) in expected.items()
    }
    cached = list(tmp_path.glob("*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())


def test_cifar_stem_replaces_the_stem_only() -> None:
    plain = ARCHITECTURES.get("torchvision.resnet18").expected_state({"num_classes": 10})
    cifar = ARCHITECTURES.get("torchvision.resnet18").expected_state({"num_classes": 10, "cifar_stem": True})
    assert plain.keys() == cifar.keys()
    assert plain["conv1.weight"][0] == (64, 3, 7, 7) and cifar["conv1.weight"][0] == (64, 3, 3, 3)
    assert {key for key in plain if plain[key] != cifar[key]} == {"conv1.weight"}
    model = build_model("torchvision.resnet18", {"num_classes": 10, "cifar_stem": True}).eval()
    assert model(torch.rand(2, 3, 8, 8)).shape == (2, 10)  # 8x8 keeps its resolution into layer1


@pytest.mark.parametrize(
    ("name", "config"),
    [
        ("torchvision.resnet18", {"weights": "IMAGENET1K_V1"}),
        ("timm.resnet18", {"pretrained": True}),
        ("timm.resnet18", {"checkpoint_path": "/etc/passwd"}),
        ("timm.vit_tiny_patch16_224", {"image_size": 20, "patch_size": 8}),
        ("torchvision.vit_b_16", {"image_size": 20}),
    ],
)
def test_configs_refuse_anything_undeclared_or_inconsistent(name: str, config: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError):
        ARCHITECTURES.get(name).parse_config(config)


def test_helper_reports_config_errors_as_invalid_input() -> None:
    from workers.engine.architectures.shape_table import compute_table

    with pytest.raises(InvalidInputError, match=r"invalid timm\.resnet18 config"):
        compute_table("timm.resnet18", {"checkpoint_path": "/etc/passwd"})


def test_vgg_budget_admits_vgg16_bn_only_by_its_own_limit() -> None:
    spec = ARCHITECTURES.get("torchvision.vgg16_bn")
    assert spec.max_parameters > 134_000_000 > ARCHITECTURES.get("torchvision.resnet50").max_parameters
    spec.parse_config({"num_classes": 10})


@pytest.mark.parametrize(
    ("name", "config", "shape", "ok"),
    [
        ("torchvision.vit_b_16", {"image_size": 32}, (3, 32, 32), True),
        ("torchvision.vit_b_16", {"image_size": 32}, (3, 16, 16), False),
        ("torchvision.vgg16_bn", {}, (3, 16, 16), False),
        ("torchvision.mobilenet_v3_small", {}, (1, 32, 32), False),
        ("torchvision.resnet18", {"in_channels": 1}, (1, 28, 28), True),
        ("timm.convnext_atto", {}, (3, 16, 16), False),
    ],
)
def test_input_checks(name: str, config: dict[str, Any], shape: tuple[int, ...], ok: bool) -> None:
    spec = ARCHITECTURES.get(name)
    parsed = spec.config_model.model_validate({"num_classes": 10, **config})
    assert spec.check_input is not None
    if ok:
        spec.check_input(parsed, shape, 10)
    else:
        with pytest.raises(InvalidInputError):
            spec.check_input(parsed, shape, 10)


def test_in_process_table_is_memoised(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LETHE_SHAPE_TABLE_DIR", str(tmp_path))
    config = ARCHITECTURES.get("timm.resnet18").config_model.model_validate({"channels": [2, 2, 2, 2]})
    first = library_state_shapes("timm.resnet18", config)
    assert library_state_shapes("timm.resnet18", config) is first


def test_a_broken_helper_is_the_service_s_fault(tmp_path, monkeypatch) -> None:
    from workers.engine.errors import ShapeTableUnavailable

    monkeypatch.setenv("LETHE_SHAPE_TABLE_DIR", str(tmp_path))
    monkeypatch.setattr(library.sys, "executable", str(tmp_path / "no-python"))
    config = ARCHITECTURES.get("timm.resnet18").config_model.model_validate({})
    with pytest.raises(ShapeTableUnavailable, match="could not start"):
        library._compute("timm.resnet18", config, in_process=False)
    monkeypatch.setattr(library.sys, "executable", "/bin/false")
    with pytest.raises(ShapeTableUnavailable, match="helper failed"):
        library._compute("timm.resnet18", config, in_process=False)
