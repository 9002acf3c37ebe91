from __future__ import annotations

from dataclasses import dataclass

import pytest

from workers.engine.errors import EngineError, UnknownEntryError
from workers.engine.registry import Registry


@dataclass(frozen=True)
class Entry:
    name: str
    value: int = 0


def test_register_get_names_iter_contains() -> None:
    registry: Registry[Entry] = Registry("widget")
    first = registry.register(Entry("b", 1))
    registry.register(Entry("a", 2))
    assert first == Entry("b", 1)
    assert registry.get("a").value == 2
    assert registry.names() == ["a", "b"]
    assert [entry.name for entry in registry] == ["b", "a"]
    assert "a" in registry and "c" not in registry
    assert len(registry) == 2


def test_duplicate_name_is_rejected() -> None:
    registry: Registry[Entry] = Registry("widget")
    registry.register(Entry("a"))
    with pytest.raises(ValueError, match="already registered"):
        registry.register(Entry("a", 5))
    assert registry.get("a").value == 0


def test_unknown_name_lists_available() -> None:
    registry: Registry[Entry] = Registry("widget")
    registry.register(Entry("alpha"))
    registry.register(Entry("beta"))
    with pytest.raises(UnknownEntryError, match=r"unknown widget 'gamma'; available: alpha, beta") as caught:
        registry.get("gamma")
    assert isinstance(caught.value, LookupError)
    assert isinstance(caught.value, EngineError)


def test_builtin_catalogs_are_registered() -> None:
    from workers.engine.architectures import ARCHITECTURES
    from workers.engine.datasets import DATASETS
    from workers.engine.methods import METHODS

    assert ARCHITECTURES.names() == [
        "mlp",
        "mlp_regressor",
        "resnet18",
        "resnet18_regressor",
        "small_cnn",
        "small_cnn_regressor",
        "speedrun_cnn",
        "timm.convnext_atto",
        "timm.resnet18",
        "timm.vit_tiny_patch16_224",
        "torchvision.mobilenet_v3_small",
        "torchvision.resnet18",
        "torchvision.resnet34",
        "torchvision.resnet50",
        "torchvision.vgg16_bn",
        "torchvision.vit_b_16",
        "unet_ddpm",
        "unet_one_step",
    ]
    assert DATASETS.names() == [
        "diabetes",
        "digits",
        "gaussian_poisoned",
        "procedural",
        "procedural_regression",
    ]
    assert METHODS.names() == sorted(METHODS.names())
    job_kinds = {spec.name: spec.job_kind for spec in METHODS}
    expected = {
        "train": "train",
        "retrain": "retrain",
        "ft": "unlearn",
        "ga": "unlearn",
        "rl": "unlearn",
        "l1_sparse": "unlearn",
        "salun": "unlearn",
        "prune": "prune",
        "identity": "unlearn",
    }
    assert {name: job_kinds.get(name) for name in expected} == expected


def test_every_registered_implementation_resolves() -> None:
    from workers.engine.architectures import ARCHITECTURES
    from workers.engine.imports import import_by_path
    from workers.engine.methods import METHODS

    for architecture in ARCHITECTURES:
        assert callable(import_by_path(architecture.builder))
    for method in METHODS:
        assert callable(import_by_path(method.impl))


def test_import_by_path_rejects_malformed_paths() -> None:
    from workers.engine.imports import import_by_path

    with pytest.raises(ValueError, match="module:attribute"):
        import_by_path("workers.engine.errors")
    assert import_by_path("workers.engine.errors:EngineError") is EngineError
