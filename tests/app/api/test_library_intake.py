"""Model intake for torchvision / timm architectures when the torch helper cannot answer: 503
problem+json, nothing stored."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient

from workers.engine.architectures import library
from workers.engine.errors import ShapeTableUnavailable


def test_unavailable_shape_table_answers_503_and_stores_nothing(api: TestClient, tenant, monkeypatch) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise ShapeTableUnavailable("the helper is gone")

    monkeypatch.setattr(library, "_compute", broken)
    monkeypatch.setattr(library, "_MEMORY", {})
    monkeypatch.setenv("LETHE_SHAPE_TABLE_DIR", "/nonexistent/lethe-shape-tables")
    before = api.get("/v1/models", headers=tenant.headers("read")).json()
    response = api.post(
        "/v1/models",
        data={"architecture": "timm.resnet18", "config": json.dumps({"channels": [3, 3, 3, 3]})},
        files={"weights": ("m.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")},
        headers=tenant.headers("submit"),
    )
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == "shape-table-unavailable"
    assert api.get("/v1/models", headers=tenant.headers("read")).json() == before
