"""Datasets, models and forget sets through the HTTP API."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

PROBLEM = "application/problem+json"


def assert_problem(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status and body["type"].endswith(body["code"]) and body["title"]
    if code is not None:
        assert body["code"] == code, body
    return body


def create_digits(api: TestClient, tenant) -> dict:
    response = api.post("/v1/datasets", json={"builtin": "digits"}, headers=tenant.headers("submit"))
    assert response.status_code in (200, 201), response.text
    return response.json()


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def small_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.random((40, 1, 4, 4), dtype=np.float32),
        "y_train": np.arange(40) % 4,
        "x_test": rng.random((12, 1, 4, 4), dtype=np.float32),
        "y_test": np.arange(12) % 4,
    }


class TestDatasets:
    def test_builtin_is_content_addressed(self, api: TestClient, tenant) -> None:
        first = api.post("/v1/datasets", json={"builtin": "digits"}, headers=tenant.headers("submit"))
        assert first.status_code == 201
        body = first.json()
        assert body["n_train"] + body["n_test"] == 1797 and body["input_shape"] == [1, 8, 8]
        assert body["num_classes"] == 10 and sum(body["class_counts"]) == body["n_train"]
        again = api.post("/v1/datasets", json={"builtin": "digits"}, headers=tenant.headers("submit"))
        assert again.status_code == 200 and again.json()["id"] == body["id"]

    def test_list_includes_builtin_registry(self, api: TestClient, tenant) -> None:
        create_digits(api, tenant)
        page = api.get("/v1/datasets", headers=tenant.headers("read")).json()
        assert len(page["data"]) == 1
        names = {b["name"] for b in page["builtins"]}
        assert {"digits", "procedural"} <= names
        assert all("properties" in b["params_schema"] for b in page["builtins"])

    def test_procedural_config_validated(self, api: TestClient, tenant) -> None:
        response = api.post(
            "/v1/datasets",
            json={"builtin": "procedural", "config": {"n_train": -5}},
            headers=tenant.headers("submit"),
        )
        assert_problem(response, 422, "invalid-dataset-config")
        assert_problem(
            api.post("/v1/datasets", json={"builtin": "nope"}, headers=tenant.headers("submit")),
            422,
            "unknown-dataset",
        )

    def test_upload_npz(self, api: TestClient, tenant) -> None:
        data = npz_bytes(**small_arrays())
        response = api.post(
            "/v1/datasets/upload", files={"file": ("d.npz", data)}, headers=tenant.headers("submit")
        )
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["n_train"] == 40 and body["num_classes"] == 4 and body["source"] == "upload"

    def test_upload_pickle_is_never_unpickled(self, api: TestClient, tenant, tmp_path: Path) -> None:
        marker = tmp_path / "pwned"
        payload = pickle.dumps(Exploit(str(marker)))
        response = api.post(
            "/v1/datasets/upload", files={"file": ("d.npz", payload)}, headers=tenant.headers("submit")
        )
        assert_problem(response, 422, "pickle-rejected")
        assert not marker.exists()

    def test_upload_object_array_rejected(self, api: TestClient, tenant) -> None:
        arrays = small_arrays()
        buffer = io.BytesIO()
        np.savez(buffer, **{**arrays, "x_train": np.array([{"a": 1}] * 40, dtype=object)})
        response = api.post(
            "/v1/datasets/upload",
            files={"file": ("d.npz", buffer.getvalue())},
            headers=tenant.headers("submit"),
        )
        body = assert_problem(response, 422)
        assert body["code"] in {"pickle-rejected", "dtype-not-allowed"}

    def test_upload_label_out_of_range_rejected(self, api: TestClient, tenant) -> None:
        arrays = small_arrays()
        arrays["y_train"] = np.full(40, -1)
        response = api.post(
            "/v1/datasets/upload",
            files={"file": ("d.npz", npz_bytes(**arrays))},
            headers=tenant.headers("submit"),
        )
        assert_problem(response, 422)

    def test_oversized_upload_rejected(self, api: TestClient, tenant, settings) -> None:
        data = b"\0" * (settings.max_upload_bytes + 1)
        response = api.post(
            "/v1/datasets/upload", files={"file": ("d.npz", data)}, headers=tenant.headers("submit")
        )
        assert_problem(response, 413)


class Exploit:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def model_weights(architecture: str, config: dict) -> bytes:
    from safetensors.torch import save

    from workers.engine.architectures.build import build_model

    model = build_model(architecture, config)
    return save({k: v.contiguous() for k, v in model.state_dict().items()})


class TestModels:
    def test_upload_valid_safetensors_and_download(self, api: TestClient, tenant) -> None:
        dataset = create_digits(api, tenant)
        config = {"input_shape": [1, 8, 8], "hidden": [16], "num_classes": 10}
        weights = model_weights("mlp", config)
        response = api.post(
            "/v1/models",
            data={"architecture": "mlp", "config": json.dumps(config), "dataset_id": dataset["id"]},
            files={"weights": ("m.safetensors", weights)},
            headers=tenant.headers("submit"),
        )
        assert response.status_code == 201, response.text
        model = response.json()
        assert model["architecture"] == "mlp" and model["num_params"] > 0
        download = api.get(f"/v1/models/{model['id']}/weights", headers=tenant.headers("read"))
        assert download.status_code == 200 and download.content == weights

    def test_torch_pickle_rejected_without_unpickling(self, api: TestClient, tenant, tmp_path: Path) -> None:
        import torch

        marker = tmp_path / "pwned-torch"
        buffer = io.BytesIO()
        torch.save({"w": torch.zeros(2), "evil": Exploit(str(marker))}, buffer)
        response = api.post(
            "/v1/models",
            data={
                "architecture": "mlp",
                "config": json.dumps({"input_shape": [4], "hidden": [], "num_classes": 2}),
            },
            files={"weights": ("m.pt", buffer.getvalue())},
            headers=tenant.headers("submit"),
        )
        assert_problem(response, 422, "pickle-rejected")
        assert not marker.exists()

    def test_wrong_architecture_shapes_rejected(self, api: TestClient, tenant) -> None:
        weights = model_weights("mlp", {"input_shape": [1, 8, 8], "hidden": [16], "num_classes": 10})
        response = api.post(
            "/v1/models",
            data={
                "architecture": "mlp",
                "config": json.dumps({"input_shape": [1, 8, 8], "hidden": [32], "num_classes": 10}),
            },
            files={"weights": ("m.safetensors", weights)},
            headers=tenant.headers("submit"),
        )
        body = assert_problem(response, 422)
        assert "shape" in body["detail"].lower() or body["code"] == "shape-mismatch"

    def test_unknown_architecture_and_bad_config(self, api: TestClient, tenant) -> None:
        files = {"weights": ("m.safetensors", b"x")}
        bad_arch = api.post(
            "/v1/models", data={"architecture": "gpt5"}, files=files, headers=tenant.headers("submit")
        )
        assert_problem(bad_arch, 422, "unknown-architecture")
        bad_json = api.post(
            "/v1/models",
            data={"architecture": "mlp", "config": "{nope"},
            files=files,
            headers=tenant.headers("submit"),
        )
        assert_problem(bad_json, 422, "invalid-json")

    def test_nan_weights_rejected(self, api: TestClient, tenant) -> None:
        import torch
        from safetensors.torch import save

        from workers.engine.architectures.build import build_model

        config = {"input_shape": [4], "hidden": [3], "num_classes": 2}
        state = {k: v.clone() for k, v in build_model("mlp", config).state_dict().items()}
        first = next(k for k, v in state.items() if v.is_floating_point())
        state[first][0] = float("nan")
        response = api.post(
            "/v1/models",
            data={"architecture": "mlp", "config": json.dumps(config)},
            files={"weights": ("m.safetensors", save(state))},
            headers=tenant.headers("submit"),
        )
        assert_problem(response, 422, "non-finite-values")
        assert torch.isnan(state[first]).any()


class TestForgetSets:
    @pytest.fixture
    def dataset(self, api: TestClient, tenant) -> dict:
        return create_digits(api, tenant)

    def post(self, api: TestClient, tenant, dataset: dict, spec: dict):
        return api.post(
            "/v1/forget-sets",
            json={"dataset_id": dataset["id"], "spec": spec},
            headers=tenant.headers("submit"),
        )

    def test_indices_sorted_and_hashed(self, api: TestClient, tenant, dataset) -> None:
        response = self.post(api, tenant, dataset, {"kind": "indices", "indices": [5, 3, 9]})
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["size"] == 3 and len(body["sha256"]) == 64
        indices = api.get(f"/v1/forget-sets/{body['id']}/indices", headers=tenant.headers("read")).json()
        assert indices["indices"] == [3, 5, 9]

    def test_class_selects_exactly_that_class(self, api: TestClient, tenant, dataset) -> None:
        body = self.post(api, tenant, dataset, {"kind": "class", "class": 3}).json()
        assert body["forget_class"] == 3 and body["size"] == dataset["class_counts"][3]

    def test_random_fraction_is_seeded(self, api: TestClient, tenant, dataset) -> None:
        a = self.post(api, tenant, dataset, {"kind": "random", "fraction": 0.1, "seed": 7}).json()
        b = self.post(api, tenant, dataset, {"kind": "random", "fraction": 0.1, "seed": 7}).json()
        c = self.post(api, tenant, dataset, {"kind": "random", "fraction": 0.1, "seed": 8}).json()
        assert a["size"] == round(0.1 * dataset["n_train"])
        assert a["sha256"] == b["sha256"] != c["sha256"]

    @pytest.mark.parametrize(
        ("spec", "code"),
        [
            ({"kind": "indices", "indices": []}, "empty-forget-set"),
            ({"kind": "indices", "indices": [0, 100000]}, "index-out-of-range"),
            ({"kind": "indices", "indices": [-1]}, "index-out-of-range"),
            ({"kind": "indices", "indices": [1, 1, 2]}, "duplicate-indices"),
            ({"kind": "indices", "indices": [1.5]}, "validation-error"),
            ({"kind": "indices", "indices": ["3"]}, "validation-error"),
            ({"kind": "class", "class": 10}, "unknown-class"),
            ({"kind": "class", "class": -1}, "validation-error"),
            ({"kind": "random", "fraction": 1.0}, "validation-error"),
            ({"kind": "random", "fraction": 0.0}, "validation-error"),
            ({"kind": "random", "fraction": 1e-9}, "empty-forget-set"),
            ({"kind": "everything"}, "validation-error"),
        ],
    )
    def test_invalid_specs(self, api: TestClient, tenant, dataset, spec: dict, code: str) -> None:
        assert_problem(self.post(api, tenant, dataset, spec), 422, code)

    def test_whole_dataset_rejected(self, api: TestClient, tenant, dataset) -> None:
        spec = {"kind": "indices", "indices": list(range(dataset["n_train"]))}
        assert_problem(self.post(api, tenant, dataset, spec), 422, "whole-dataset")

    def test_nothing_persisted_on_error(self, api: TestClient, tenant, dataset) -> None:
        self.post(api, tenant, dataset, {"kind": "indices", "indices": [1, 1]})
        listing = api.get("/v1/forget-sets", headers=tenant.headers("read")).json()
        assert listing["data"] == []
