"""lethe-client and the CLI verbs against a live API (uvicorn over real HTTP) with real Celery workers.

The first test builds a venv holding only the client (``./client`` with --no-deps, then httpx and pydantic
from constraints.txt), checks the server's stack is not importable there, and runs a script in it: upload a
dataset, a forget set, submit a job twice under one Idempotency-Key, follow it to the end. The second drives
`lethe upload`, `submit`, `jobs list`, `compare` and `campaign create|show` with typer's CliRunner.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.live_server import served_api

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.broker, pytest.mark.slow]
SERVER_STACK = ("fastapi", "sqlalchemy", "celery", "matplotlib", "torch", "numpy", "app", "workers")
QUICK_RECIPE = {"epochs": 2, "batch_size": 32, "lr": 0.05, "momentum": 0.9}

SCRIPT = r"""
import json, sys, uuid
from pathlib import Path

from lethe_client import Client, Job

url, key, npz = sys.argv[1], sys.argv[2], Path(sys.argv[3])
recipe = json.loads(sys.argv[4])
updates = []
with Client(url, key) as lethe:
    dataset = lethe.upload_dataset(npz, name="client-venv")
    forget = lethe.create_forget_set(dataset.id, {"kind": "random", "fraction": 0.1, "seed": 0})
    body = {"kind": "train", "dataset_id": dataset.id, "architecture": "mlp",
            "arch_config": {"hidden": [16]}, "params": {"recipe": recipe}, "seed": 3}
    key_ = uuid.uuid4().hex
    job = lethe.submit_job(body, idempotency_key=key_)
    again = lethe.submit_job(body, idempotency_key=key_)
    done = lethe.follow(job.id, lambda j: updates.append((j.status, j.progress.fraction)), poll_seconds=0.2)
    listed = [j.id for j in lethe.iter_jobs(limit=1)]
    try:
        lethe.upload_dataset_arrays([[0.0]], [0], [[0.0]], [0])
        numpy_message = None
    except ImportError as exc:
        numpy_message = str(exc)
print(json.dumps({
    "dataset": str(dataset.id), "n_train": dataset.n_train, "forget_size": forget.size,
    "job": str(job.id), "again": str(again.id), "status": done.status, "model": str(done.output_model_id),
    "metrics": done.metrics, "updates": updates, "listed": [str(i) for i in listed],
    "numpy_message": numpy_message, "typed": isinstance(done, Job),
}))
"""


@pytest.fixture(scope="module")
def server_url(migrated: Any) -> Iterator[str]:
    with served_api(migrated, "client-test-server") as url:
        yield url


@pytest.fixture(scope="module")
def blobs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three separable Gaussian blobs in 8 features: 150 train, 60 test rows."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (3, 8))

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % 3
        return (centres[y] + rng.normal(0, 1, (n, 8))).astype(np.float32), y.astype(np.int64)

    x_train, y_train = draw(150)
    x_test, y_test = draw(60)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    path = tmp_path_factory.mktemp("blobs") / "blobs.npz"
    path.write_bytes(buffer.getvalue())
    return path


def _client_only_venv(root: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-input"]
    # From a copy: pip builds in the source directory and must not leave build/ in the repository.
    source = shutil.copytree(
        REPO / "client", root.parent / "client-src", ignore=shutil.ignore_patterns("build", "*.egg-info")
    )
    subprocess.run([*pip, "--no-deps", str(source)], check=True)
    subprocess.run([*pip, "-c", str(REPO / "constraints.txt"), "httpx", "pydantic"], check=True)
    return python


def test_the_client_alone_in_a_venv_uploads_submits_and_follows(
    server_url: str, worker_group: Any, tenant: Any, blobs: Path, tmp_path: Path
) -> None:
    started = time.monotonic()
    python = _client_only_venv(tmp_path / "venv")
    built = time.monotonic() - started
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}  # no PYTHONPATH: the repo is not visible
    probe = "import importlib.util as u, json, sys; print(json.dumps([m for m in sys.argv[1:] if u.find_spec(m)]))"  # noqa: E501
    found = subprocess.run(
        [python, "-c", probe, *SERVER_STACK],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(found.stdout) == [], found.stdout
    run = subprocess.run(
        [python, "-c", SCRIPT, server_url, tenant.submit, str(blobs), json.dumps(QUICK_RECIPE)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    print(f"client-only venv built in {built:.1f} s; flow ran in {time.monotonic() - started - built:.1f} s")
    assert out["typed"] and out["status"] == "succeeded", out
    assert out["n_train"] == 150 and out["forget_size"] == 15
    assert out["again"] == out["job"]  # the same Idempotency-Key answered the first job
    assert out["listed"] == [out["job"]]
    assert out["updates"][-1] == ["succeeded", 1.0] and len(out["updates"]) >= 2
    assert out["model"] != "None" and out["metrics"], out
    assert "lethe-client[numpy]" in out["numpy_message"]


def test_cli_verbs_upload_submit_list_compare_and_campaign(
    server_url: str, worker_group: Any, tenant: Any, blobs: Path, tmp_path: Path
) -> None:
    from lethe_client import Client

    from app.cli import cli

    runner = CliRunner()
    common = ["--url", server_url, "--api-key", tenant.admin]

    def lethe(*args: str) -> str:
        result = runner.invoke(cli, [*args, *common], env={"COLUMNS": "200"})
        assert result.exit_code == 0, (args, result.output, result.exception)
        return result.output

    output = lethe("upload", "dataset", str(blobs), "--name", "blobs")
    assert "n_train" in output and "150" in output
    client = Client(server_url, tenant.admin)
    dataset = next(client.iter_datasets())
    train = lethe(
        "submit", "--kind", "train", "--dataset", str(dataset.id), "--architecture", "mlp",
        "--arch-config", '{"hidden": [16]}', "--params", json.dumps({"recipe": QUICK_RECIPE}), "--seed", "1",
    )  # fmt: skip
    assert "succeeded" in train and "output model" in train
    job = next(client.iter_jobs(kind="train"))
    assert job.status == "succeeded" and job.output_model_id is not None
    replay = lethe(
        "submit", "--kind", "train", "--dataset", str(dataset.id), "--architecture", "mlp",
        "--arch-config", '{"hidden": [16]}', "--params", json.dumps({"recipe": QUICK_RECIPE}), "--seed", "1",
        "--no-follow",
    )  # fmt: skip
    assert str(job.id) in replay  # the key derived from the body: a rerun is the same job

    weights = client.send(client_get(f"/v1/models/{job.output_model_id}/weights")).content
    (tmp_path / "mlp.safetensors").write_bytes(weights)
    uploaded = lethe(
        "upload", "model", str(tmp_path / "mlp.safetensors"), "--architecture", "mlp",
        "--config", json.dumps(job.arch_config or {"hidden": [16]}), "--dataset", str(dataset.id),
    )  # fmt: skip
    assert "num_params" in uploaded

    forget = client.create_forget_set(dataset.id, {"kind": "class", "class": 2})
    evaluated = lethe(
        "submit", "--kind", "evaluate", "--model", str(job.output_model_id), "--forget-set", str(forget.id)
    )
    assert "succeeded" in evaluated

    listed = lethe("jobs", "list", "--limit", "5")
    assert "2 job(s)" in listed and "evaluate" in listed and "train" in listed
    compared = lethe("compare", str(forget.id))
    assert "evaluate" in compared and "UA" in compared

    bad = runner.invoke(cli, ["compare", "not-a-uuid", *common])
    assert bad.exit_code == 1 and "422" in bad.output

    created = lethe(
        "campaign", "create", "--name", "cli-campaign", "--model", str(job.output_model_id),
        "--method", "ft", "--forget-set", str(forget.id), "--seed", "0",
    )  # fmt: skip
    campaign = next(client.iter_campaigns())
    assert str(campaign.id) in created
    try:
        shown = lethe("campaign", "show", str(campaign.id))
        assert "cli-campaign" in shown and "mean ± std over seeds" in shown
    finally:
        client.cancel_campaign(campaign.id)  # its cells would keep the shared workers busy
        client.close()


def client_get(path: str) -> Any:
    from lethe_client._transport import get

    return get(path)
