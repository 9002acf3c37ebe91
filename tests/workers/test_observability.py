"""Worker logs and job metrics: JSON lines carrying job id, attempt, phase and the submitting request id;
job outcomes and durations counted when a job ends, in the one-task child, and served by the worker's
parent (multiprocess mode)."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from app.core.logs import configure_logging
from app.models import Job, JobStatus
from app.services.jobs import lifecycle as job_service
from app.services.ops import telemetry
from tests.app.api.test_compliance import world  # noqa: F401  (fixture)
from tests.workers.servers import free_port
from workers import jobrunner
from workers.runtime import WorkerRuntime

REPO_ROOT = Path(__file__).resolve().parents[2]


def _count(kind: str, outcome: str) -> tuple[float, float]:
    counter = telemetry.REGISTRY.get_sample_value(
        "lethe_jobs_finished_total", {"kind": kind, "outcome": outcome}
    )
    observed = telemetry.REGISTRY.get_sample_value(
        "lethe_job_duration_seconds_count", {"kind": kind, "outcome": outcome}
    )
    return counter or 0.0, observed or 0.0


def test_a_job_logs_json_lines_with_its_ids_and_is_counted_when_it_ends(
    api: TestClient,
    world: dict,  # noqa: F811
    sessions,
    migrated,
    artifacts_dir,
) -> None:
    from app.storage import create_store

    tenant = world["tenant"]
    sent = f"submit-{uuid.uuid4().hex[:8]}"
    response = api.post(
        "/v1/jobs",
        json={
            "kind": "evaluate",
            "model_id": world["model"]["id"],
            "forget_set_id": world["forget_set"]["id"],
            "reuse_cached": False,
        },
        headers={**tenant.headers("submit"), "X-Request-ID": sent},
    )
    assert response.status_code == 202, response.text
    job_id = uuid.UUID(response.json()["id"])
    runtime = WorkerRuntime(settings=migrated, sessions=sessions, store=create_store(migrated))
    claim = job_service.claim(sessions, job_id, runtime.worker_name, migrated.lease_seconds)
    assert claim is not None
    before = _count("evaluate", "succeeded")

    stream = io.StringIO()
    configure_logging("json", "INFO")
    root = logging.getLogger()
    handler = next(h for h in root.handlers if getattr(h, "_lethe_handler", False))
    handler.setStream(stream)  # type: ignore[attr-defined]
    try:
        jobrunner.run_claim(runtime, claim)
    finally:
        root.removeHandler(handler)

    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status is JobStatus.succeeded, job.error
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    mine = [line for line in lines if line.get("job_id") == str(job_id)]
    assert mine, lines
    assert all(line["attempt"] == 1 and line["request_id"] == sent for line in mine)
    assert all(line["kind"] == "evaluate" for line in mine)
    ended = next(line for line in mine if line["message"].startswith("job ended"))
    assert ended["outcome"] == "succeeded" and ended["duration_s"] > 0
    # The phase follows the engine's progress (the runner starts in "load"; evaluation reports its own).
    assert ended["phase"] != "load"
    after = _count("evaluate", "succeeded")
    assert after[0] - before[0] == 1 and after[1] - before[1] == 1


WORKER_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, urllib.request
    from workers import observability  # imports prometheus_client before the worker knows its settings
    from app.core.config import reset_settings_cache

    reset_settings_cache()
    observability._configure_logging()  # what Celery's setup_logging signal runs
    observability._serve_metrics()  # what worker_init runs in the worker's parent
    # One-task children, as Celery's prefork pool forks them: each observes its job, then exits.
    for outcome, kind in (("succeeded", "evaluate"), ("succeeded", "evaluate"), ("failed", "retrain")):
        pid = os.fork()
        if pid == 0:
            with observability.job_trace("job", kind, 1, None) as trace:
                trace.outcome = outcome
            os._exit(0)
        assert os.waitpid(pid, 0)[1] == 0
    port = int(os.environ["LETHE_WORKER_METRICS_PORT"])
    sys.stdout.write(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode())
    """
)


def test_the_worker_parent_serves_what_its_job_children_observed(tmp_path: Path) -> None:
    port = free_port()
    stale = tmp_path / "metrics"
    stale.mkdir()
    (stale / "counter_1.db").write_bytes(b"left by a previous run")  # must be cleared at start
    env = {
        "PATH": "/usr/bin:/bin",
        "LETHE_HOME": str(tmp_path),
        "LETHE_WORKER_METRICS_PORT": str(port),
        "PROMETHEUS_MULTIPROC_DIR": str(stale),
        "OMP_NUM_THREADS": "1",
    }
    completed = subprocess.run(
        [sys.executable, "-c", WORKER_SCRIPT],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    text = completed.stdout
    assert "# TYPE lethe_jobs_finished_total counter" in text
    assert 'lethe_jobs_finished_total{kind="evaluate",outcome="succeeded"} 2.0' in text
    assert 'lethe_jobs_finished_total{kind="retrain",outcome="failed"} 1.0' in text
    assert 'lethe_job_duration_seconds_bucket{kind="evaluate",le="1.0",outcome="succeeded"} 2.0' in text
    assert 'lethe_job_duration_seconds_count{kind="evaluate",outcome="succeeded"} 2.0' in text
    # Each child's JSON log line carries its job context.
    ended = [json.loads(line) for line in completed.stderr.splitlines() if '"job ended' in line]
    assert sorted(line["outcome"] for line in ended) == ["failed", "succeeded", "succeeded"]
    assert all(line["job_id"] == "job" and line["attempt"] == 1 for line in ended)


def test_the_engine_cache_is_keyed_on_the_code_version(tmp_path: Path, monkeypatch) -> None:
    from types import SimpleNamespace

    from app.storage.local import LocalArtifactStore

    runtime: Any = SimpleNamespace(store=LocalArtifactStore(tmp_path))
    cache = jobrunner.StoreCache(runtime, uuid.uuid4())
    monkeypatch.setenv("LETHE_CODE_VERSION", "build-aaa")
    cache.put("classifier", b"weights of build aaa")
    assert cache.get("classifier") == b"weights of build aaa"
    monkeypatch.setenv("LETHE_CODE_VERSION", "build-bbb")
    assert cache.get("classifier") is None  # another build trains its own
