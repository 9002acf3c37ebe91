"""npz uploads of uint8 images: stored as uint8 (not float32, x4), normalised on the device, the transforms
and normalisation recorded in the dataset's config and in every job result; a model trained on the uint8
upload scores as one trained on the same pixels uploaded as float32 / 255; and the decoded-size cap that
refuses an npz whose arrays would widen past the limit before any member is decoded."""

from __future__ import annotations

import io
import uuid
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings
from app.intake import npz_check
from app.intake.errors import IntakeError
from app.models import Dataset, Job, JobStatus
from app.services.data.dataset_sources import DatasetRef, load_dataset
from app.storage import LocalArtifactStore
from tests.in_process import run_job_in_process

PROBLEM = "application/problem+json"
N_TRAIN, N_TEST, SIDE = 96, 32, 8
# What np.savez adds around the arrays: a 128-byte .npy header per member, zip records, the small members.
ARCHIVE_OVERHEAD_BYTES = 2048


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def pixel_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """Channels-last RGB pixels whose class sets the mean brightness of one channel (learnable)."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        labels = np.arange(n) % 4
        pixels = rng.integers(0, 120, size=(n, SIDE, SIDE, 3))
        pixels[np.arange(n), :, :, labels % 3] += 60 * (1 + labels // 3)[:, None, None]
        arrays[f"x_{split}"], arrays[f"y_{split}"] = pixels.astype(np.uint8), labels
    return arrays


def upload(api: TestClient, tenant, data: bytes, **form: str):  # type: ignore[no-untyped-def]
    return api.post(
        "/v1/datasets/upload", files={"file": ("d.npz", data)}, data=form, headers=tenant.headers("submit")
    )


def dataset_count(sessions: sessionmaker[Session], tenant_id: uuid.UUID) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).where(Dataset.tenant_id == tenant_id)) or 0)


def test_uint8_images_are_stored_as_uint8(
    api: TestClient, tenant, sessions: sessionmaker[Session], migrated: Settings
) -> None:
    arrays = pixel_arrays()
    created = upload(api, tenant, npz_bytes(**arrays))
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["input_shape"] == [3, SIDE, SIDE]
    pixels = arrays["x_train"].nbytes + arrays["x_test"].nbytes
    labels = 8 * (N_TRAIN + N_TEST)  # int64
    assert pixels + labels <= body["size_bytes"] <= pixels + labels + ARCHIVE_OVERHEAD_BYTES
    floats = {
        **arrays,
        "x_train": arrays["x_train"] / np.float32(255),
        "x_test": arrays["x_test"] / np.float32(255),
    }
    float_row = upload(api, tenant, npz_bytes(**floats)).json()
    assert 4 * pixels + labels <= float_row["size_bytes"] <= 4 * pixels + labels + ARCHIVE_OVERHEAD_BYTES
    with sessions() as session:
        row = session.get(Dataset, uuid.UUID(body["id"]))
        assert row is not None
        assert row.config["stored_dtype"] == "uint8" and row.config["normalization"] is None
        assert any("channels-first" in step for step in row.config["transforms"])
        assert session.get(Dataset, uuid.UUID(float_row["id"])).config["stored_dtype"] == "float32"  # type: ignore[union-attr]
        loaded = load_dataset(LocalArtifactStore(migrated.artifacts), DatasetRef.of(row))
    assert loaded.x_train.dtype == np.uint8
    np.testing.assert_array_equal(loaded.x_train, arrays["x_train"].transpose(0, 3, 1, 2))
    assert loaded.input_record()["scale"] == 1 / 255


def test_normalisation_given_or_computed_is_recorded(
    api: TestClient, tenant, sessions: sessionmaker[Session], migrated: Settings
) -> None:
    arrays = pixel_arrays(1)
    data = npz_bytes(**arrays)
    given = upload(api, tenant, data, normalization='{"mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]}')
    assert given.status_code == 201, given.text
    computed = upload(api, tenant, data, normalization="computed")
    plain = upload(api, tenant, data)
    # The same pixels under three normalisations are three datasets (the normalisation is in the digest).
    assert len({given.json()["id"], computed.json()["id"], plain.json()["id"]}) == 3
    expected = arrays["x_train"].astype(np.float64) / 255
    store = LocalArtifactStore(migrated.artifacts)
    with sessions() as session:
        row = session.get(Dataset, uuid.UUID(computed.json()["id"]))
        assert row is not None
        recorded = row.config["normalization"]
        assert recorded["source"] == "computed"
        np.testing.assert_allclose(recorded["mean"], expected.mean(axis=(0, 1, 2)), rtol=1e-9)
        np.testing.assert_allclose(recorded["std"], expected.std(axis=(0, 1, 2)), rtol=1e-9)
        loaded = load_dataset(store, DatasetRef.of(row))
        assert loaded.normalization is not None and list(loaded.normalization.mean) == recorded["mean"]
        given_row = session.get(Dataset, uuid.UUID(given.json()["id"]))
        assert given_row is not None
        assert given_row.config["normalization"] == {
            "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3], "source": "uploader",
        }  # fmt: skip


@pytest.mark.parametrize(
    ("arrays", "normalization", "fragment"),
    [
        (pixel_arrays(), '{"mean": [0.5], "std": [0.2]}', "one mean and one std per channel (3)"),
        (pixel_arrays(), '{"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.0, 0.2]}', "normalization must be"),
        (pixel_arrays(), "sometimes", "normalization must be"),
        (
            {"x_train": np.ones((8, 5), np.float32), "y_train": np.arange(8) % 2,
             "x_test": np.ones((4, 5), np.float32), "y_test": np.arange(4) % 2},
            "computed",
            "applies to images",
        ),
    ],
)  # fmt: skip
def test_bad_normalisation_is_a_problem_and_writes_nothing(
    api: TestClient, tenant, sessions: sessionmaker[Session], arrays: dict[str, Any], normalization: str,
    fragment: str,
) -> None:  # fmt: skip
    response = upload(api, tenant, npz_bytes(**arrays), normalization=normalization)
    assert response.status_code == 422 and response.headers["content-type"].startswith(PROBLEM)
    assert response.json()["code"] == "invalid-dataset-config" and fragment in response.text
    assert dataset_count(sessions, tenant.id) == 0


def train_in_process(
    api: TestClient, tenant, sessions: sessionmaker[Session], migrated: Settings, dataset_id: str
) -> dict[str, Any]:
    """Submit a train job over HTTP, run it through the worker's job path in this process, read it back."""

    submitted = api.post(
        "/v1/jobs",
        json={
            "kind": "train",
            "dataset_id": dataset_id,
            "architecture": "small_cnn",
            "arch_config": {"in_channels": 3, "image_size": SIDE, "num_classes": 4, "channels": [8, 16]},
            "params": {"recipe": {"epochs": 3, "batch_size": 32, "lr": 0.05, "augment": False}},
            "seed": 5,
            "device": "cpu",
        },
        headers=tenant.headers("submit"),
    )
    assert submitted.status_code == 202, submitted.text
    job_id = uuid.UUID(submitted.json()["id"])
    run_job_in_process(sessions, migrated, job_id)
    with sessions() as session:
        done = session.get(Job, job_id)
        assert done is not None and done.status is JobStatus.succeeded, done.error
    read: dict[str, Any] = api.get(f"/v1/jobs/{job_id}", headers=tenant.headers("read")).json()
    return read


def test_training_on_the_uint8_upload_scores_as_on_the_float_upload(
    api: TestClient, tenant, sessions: sessionmaker[Session], migrated: Settings
) -> None:
    arrays = pixel_arrays(2)
    floats = {
        **arrays,
        "x_train": arrays["x_train"] / np.float32(255),
        "x_test": arrays["x_test"] / np.float32(255),
    }
    norm = '{"mean": [0.3, 0.35, 0.4], "std": [0.2, 0.2, 0.25]}'
    as_uint8 = upload(api, tenant, npz_bytes(**arrays), normalization=norm).json()
    as_float = upload(api, tenant, npz_bytes(**floats), normalization=norm).json()
    assert as_uint8["size_bytes"] * 3 < as_float["size_bytes"]
    uint8_job = train_in_process(api, tenant, sessions, migrated, as_uint8["id"])
    float_job = train_in_process(api, tenant, sessions, migrated, as_float["id"])
    # 1/255 applied on the device against x / 255 at intake: the inputs differ by float rounding at most.
    assert uint8_job["metrics"].keys() == float_job["metrics"].keys() and uint8_job["metrics"]
    for name, value in uint8_job["metrics"].items():
        assert value == pytest.approx(float_job["metrics"][name], abs=1e-6), name
    assert uint8_job["metrics"]["train_accuracy"] > 40  # it learned something (4 classes: chance is 25)
    inputs = uint8_job["result"]["dataset_inputs"]
    assert inputs["dtype"] == "uint8" and inputs["scale"] == 1 / 255 and inputs["mean"] == [0.3, 0.35, 0.4]
    assert inputs["dataset"]["source"] == "upload" and inputs["dataset"]["id"] == as_uint8["id"]
    assert inputs["dataset"]["config"]["stored_dtype"] == "uint8"
    assert inputs["dataset"]["config"]["normalization"]["source"] == "uploader"
    assert float_job["result"]["dataset_inputs"]["dtype"] == "float32"
    assert float_job["result"]["dataset_inputs"]["scale"] == 1.0


def test_decoded_size_cap_refuses_widening_labels_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """uint8 labels decode to int64 (x8): an archive under the declared-size limit whose labels would decode
    past it is refused from the .npy headers; no member is decoded."""
    n = 100_000
    data = npz_bytes(
        x_train=np.zeros((n, 1), np.uint8), y_train=(np.arange(n) % 2).astype(np.uint8),
        x_test=np.zeros((2, 1), np.uint8), y_test=np.array([0, 1], np.uint8),
    )  # fmt: skip
    limit = 1024 * 1024
    assert len(data) < limit  # under the declared (uncompressed) limit

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("a member was decoded")

    monkeypatch.setattr(npz_check, "_load_member", never)
    with pytest.raises(IntakeError) as caught:
        npz_check.inspect_npz(io.BytesIO(data), max_bytes=limit, max_uncompressed_bytes=limit)
    assert caught.value.code == "zip-bomb" and "would decode to 1200024 bytes" in caught.value.detail
