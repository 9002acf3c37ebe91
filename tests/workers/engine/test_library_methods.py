"""Every classification method, prune and the worst-case search run on a timm CNN (BatchNorm, ``layerN``
stages) and a timm ViT (LayerNorm, 3-D token activations, a patch-embedding conv only), through
``execute`` as a worker calls it. Tiny widths and 8x8 images: seconds in all."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from workers.engine.datasets import ArrayDataset, build_dataset
from workers.engine.execute import EngineRequest, EngineResult, execute
from workers.engine.methods import METHODS
from workers.engine.task_types import TaskType

MODELS: dict[str, dict[str, Any]] = {
    "timm.resnet18": {"channels": [4, 4, 8, 8]},
    "timm.vit_tiny_patch16_224": {
        "image_size": 8,
        "patch_size": 4,
        "depth": 1,
        "embed_dim": 16,
        "num_heads": 2,
    },
}
RECIPE = {"epochs": 1, "batch_size": 16, "lr": 0.05}
ONE_EPOCH = {"epochs": 1, "batch_size": 16}
PARAMS: dict[str, dict[str, Any]] = {
    "iu": {"woodfisher_samples": 8, "line_search_samples": 16},
    "scrub": {"epochs": 1, "msteps": 1, "batch_size": 16, "lr_decay_epochs": []},
    "blindspot": {"epochs": 1, "blindspot_epochs": 1},
    "prune": {"sparsity": 0.5},
    "worst_case_search": {"fraction": 0.1, "outer_iterations": 1, "lower_epochs": 1, "batch_size": 16},
    "identity": {},
}
CLASSIFICATION_METHODS = sorted(
    spec.name
    for spec in METHODS
    if TaskType.classification in spec.task_types and spec.name not in ("train", "retrain")
)


@pytest.fixture(scope="module")
def data() -> ArrayDataset:
    return build_dataset("procedural", {"n_train": 48, "n_test": 24, "image_size": 8, "seed": 0})


@pytest.fixture(scope="module")
def originals(data: ArrayDataset) -> dict[str, EngineResult]:
    return {
        name: execute(
            EngineRequest(
                kind="train",
                method="train",
                params={"recipe": RECIPE},
                seed=0,
                device="cpu",
                dataset=data,
                architecture=name,
                arch_config=config,
            )
        )
        for name, config in MODELS.items()
    }


@pytest.mark.parametrize("architecture", sorted(MODELS))
@pytest.mark.parametrize("method", CLASSIFICATION_METHODS)
def test_method_runs_on_library_models(
    data: ArrayDataset, originals: dict[str, EngineResult], architecture: str, method: str
) -> None:
    kind = {"prune": "prune", "worst_case_search": "worst_case_search"}.get(method, "unlearn")
    forget = None if kind == "prune" else np.arange(0, 48, 10, dtype=np.int64)
    if kind == "worst_case_search":
        forget = None
    result = execute(
        EngineRequest(
            kind=kind,
            method=method,
            params=PARAMS.get(method, ONE_EPOCH),
            seed=1,
            device="cpu",
            dataset=data,
            architecture=architecture,
            arch_config=MODELS[architecture],
            weights=originals[architecture].weights,
            forget_indices=forget,
            original_recipe=RECIPE,
        )
    )
    assert all(np.isfinite(value) for value in result.metrics.values()), result.metrics
    if method == "blindspot":
        layers = result.details["attention_layers"]
        # The CNN's four stages (4-D maps) and the ViT's block (3-D tokens: a map per token) carry attention.
        assert layers == (
            ["layer1", "layer2", "layer3", "layer4"] if "resnet" in architecture else ["blocks.0"]
        )
    if method == "prune":
        assert abs(result.metrics["sparsity"] - 50.0) < 2.0, result.metrics  # percent
