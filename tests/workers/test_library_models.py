"""Issue 16's evidence: a torchvision and a timm model trained in plain user code, saved with
``safetensors.torch.save_file(model.state_dict(), ...)``, uploaded as is, then retrain / ft / l1_sparse /
prune / evaluate / audit through the API on real workers, and the output weights loaded back into the
library's own model with ``strict=True``. Bad uploads (wrong keys, wrong shapes) answer problem+json and
leave no model behind.

Kept cheap: 8x8 images, 60 training samples, one epoch per job, K = 3 shadows (the minimum).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file
from torch import nn

from tests.workers.test_job_flow import run
from workers.engine.datasets import build_dataset

pytestmark = [pytest.mark.broker, pytest.mark.slow]

DATASET = {"n_train": 60, "n_test": 30, "image_size": 8, "seed": 0}
RECIPE = {"epochs": 1, "batch_size": 32, "lr": 0.02, "momentum": 0.9}
ONE_EPOCH = {"epochs": 1, "lr": 0.01, "batch_size": 32}


def torchvision_resnet18() -> nn.Module:
    """What a user of the OPTML code writes: torchvision's resnet18 with a CIFAR stem."""
    import torchvision

    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def timm_resnet18() -> nn.Module:
    import timm

    return timm.create_model("resnet18", pretrained=False, num_classes=10, channels=(8, 16, 32, 64))


# (architecture, config, the user's own constructor)
LIBRARIES: dict[str, tuple[str, dict[str, Any], Any]] = {
    "torchvision": ("torchvision.resnet18", {"cifar_stem": True}, torchvision_resnet18),
    "timm": ("timm.resnet18", {"channels": [8, 16, 32, 64]}, timm_resnet18),
}


def user_trained_weights(constructor: Any, steps: int = 3) -> bytes:
    """Plain user code: a few SGD steps on the same images, then state_dict() saved by safetensors."""
    data = build_dataset("procedural", DATASET)
    torch.manual_seed(0)
    model = constructor()
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    inputs = torch.from_numpy(data.x_train).float()
    labels = torch.from_numpy(data.y_train).long()
    model.train()
    for _ in range(steps):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(inputs), labels).backward()
        optimiser.step()
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "model.safetensors"
        save_file(model.state_dict(), path)
        return path.read_bytes()


def upload(api: TestClient, tenant, dataset_id: str, architecture: str, config: dict, weights: bytes):
    return api.post(
        "/v1/models",
        data={"architecture": architecture, "config": json.dumps(config), "dataset_id": dataset_id},
        files={"weights": ("model.safetensors", weights)},
        headers=tenant.headers("submit"),
    )


@pytest.fixture(scope="module")
def big_api(migrated) -> Iterator[TestClient]:
    """The session's service with room for a full-width ResNet-18 upload (45 MB; the session's limit is 8)."""
    from app.main import create_app

    with TestClient(create_app(migrated.model_copy(update={"max_upload_bytes": 64 * 1024 * 1024}))) as client:
        yield client


@pytest.fixture(scope="module")
def setting(big_api: TestClient, worker_group, sessions, migrated) -> dict:
    from tests.conftest import make_tenant

    live_api = big_api

    tenant = make_tenant(sessions, migrated)
    dataset = live_api.post(
        "/v1/datasets", json={"builtin": "procedural", "config": DATASET}, headers=tenant.headers("submit")
    )
    assert dataset.status_code in (200, 201), dataset.text
    dataset_id = dataset.json()["id"]
    forget = live_api.post(
        "/v1/forget-sets",
        json={"dataset_id": dataset_id, "spec": {"kind": "random", "fraction": 0.1, "seed": 0}},
        headers=tenant.headers("submit"),
    )
    assert forget.status_code == 201, forget.text
    return {"tenant": tenant, "dataset": dataset_id, "forget_set": forget.json()["id"]}


def load_back(api: TestClient, tenant, model_id: str, constructor: Any) -> nn.Module:
    download = api.get(f"/v1/models/{model_id}/weights", headers=tenant.headers("read"))
    assert download.status_code == 200, download.text
    model = constructor()
    model.load_state_dict(load_safetensors(download.content), strict=True)
    return model


@pytest.mark.parametrize("library", sorted(LIBRARIES))
def test_user_checkpoint_runs_every_job_and_loads_back(
    big_api: TestClient, setting: dict, library: str
) -> None:
    live_api = big_api
    architecture, config, constructor = LIBRARIES[library]
    tenant, dataset_id, forget_set = setting["tenant"], setting["dataset"], setting["forget_set"]
    weights = user_trained_weights(constructor)
    uploaded = upload(live_api, tenant, dataset_id, architecture, config, weights)
    assert uploaded.status_code == 201, uploaded.text
    model_id = uploaded.json()["id"]
    original = load_back(live_api, tenant, model_id, constructor)  # the upload is stored byte for byte

    jobs = {
        "retrain": {"kind": "retrain", "params": {"recipe": RECIPE}},
        "ft": {"kind": "unlearn", "method": "ft", "params": ONE_EPOCH},
        "l1_sparse": {"kind": "unlearn", "method": "l1_sparse", "params": ONE_EPOCH},
        "evaluate": {"kind": "evaluate", "params": {}},
    }
    results = {}
    for name, body in jobs.items():
        body = {**body, "model_id": model_id, "forget_set_id": forget_set, "seed": 1}
        results[name] = run(live_api, tenant, body)
    for name in ("ft", "l1_sparse", "evaluate", "retrain"):
        metrics = results[name]["metrics"]
        assert 0.0 <= metrics["test_accuracy"] <= 100.0, (name, metrics)
        assert results[name]["environment"]["device"] == "cpu"
    for name in ("retrain", "ft", "l1_sparse"):
        output = load_back(live_api, tenant, results[name]["output_model_id"], constructor)
        moved = any(
            not torch.equal(a, b)
            for a, b in zip(output.state_dict().values(), original.state_dict().values(), strict=True)
        )
        assert moved, f"{name} returned the uploaded weights unchanged"

    audit = run(
        live_api,
        tenant,
        {
            "kind": "audit",
            "model_id": model_id,
            "forget_set_id": forget_set,
            "params": {
                "method": "ft",
                "method_params": ONE_EPOCH,
                "shadows": 3,
                "n_bootstrap": 10,
                "recipe": RECIPE,
            },
            "seed": 2,
        },
    )
    assert audit["metrics"]["models_trained"] == 18, audit["metrics"]
    assert 0.0 <= audit["metrics"]["ulira_auc"] <= 1.0


def test_pruned_timm_model_keeps_its_zeros_and_loads_back(big_api: TestClient, setting: dict) -> None:
    live_api = big_api
    architecture, config, constructor = LIBRARIES["timm"]
    tenant = setting["tenant"]
    uploaded = upload(
        live_api, tenant, setting["dataset"], architecture, config, user_trained_weights(constructor, 1)
    )
    assert uploaded.status_code == 201, uploaded.text
    pruned = run(
        live_api,
        tenant,
        {
            "kind": "prune",
            "model_id": uploaded.json()["id"],
            "params": {"sparsity": 0.5},
            "seed": 1,
        },
    )
    model = load_back(live_api, tenant, pruned["output_model_id"], constructor)
    convs = [module.weight for module in model.modules() if isinstance(module, nn.Conv2d)]
    zeros = sum(int((weight == 0).sum()) for weight in convs) / sum(weight.numel() for weight in convs)
    assert abs(zeros - 0.5) < 0.01, zeros


@pytest.mark.parametrize(
    ("case", "mangle"),
    [
        ("prefixed keys", lambda state: {f"module.{key}": value for key, value in state.items()}),
        ("ImageNet stem for a cifar_stem config", None),
    ],
)
def test_wrong_keyed_or_shaped_upload_is_refused_with_nothing_written(
    big_api: TestClient, setting: dict, case: str, mangle: Any
) -> None:
    import torchvision
    from safetensors.torch import save

    live_api = big_api
    tenant = setting["tenant"]
    torch.manual_seed(0)
    if mangle is None:
        model = torchvision.models.resnet18(num_classes=10)  # 7x7 conv1: not what cifar_stem declares
        state = model.state_dict()
    else:
        state = mangle(torchvision_resnet18().state_dict())
    before = live_api.get("/v1/models", headers=tenant.headers("read")).json()
    response = upload(
        live_api, tenant, setting["dataset"], "torchvision.resnet18", {"cifar_stem": True}, save(state)
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == 422 and "conv1.weight" in problem["detail"] + json.dumps(
        problem.get("errors")
    )
    after = live_api.get("/v1/models", headers=tenant.headers("read")).json()
    assert after == before
