"""A multi-machine rehearsal: two "machines" with their own LETHE_HOME and no shared artifact directory, one
Postgres, one Redis and one S3 endpoint (moto's server over HTTP); a campaign whose cells land on both
machines' GPU workers finishes, and every artifact is readable from the API process.

Machine A runs a GPU worker and the maintenance worker (the reaper advances campaigns), machine B a GPU
worker; the API runs in this process with a third home. Each "machine" names itself (LETHE_WORKER_HOST) so
job rows say where a cell ran. The service gets its own Postgres database and its own redis-server: a
session's other workers (tests/conftest.py worker_group, local artifacts) must not claim these jobs.
Postgres + Redis pass only (make test-postgres): the production topology this rehearses.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url

from app.core.config import Settings
from app.core.db import make_engine, make_session_factory
from app.models import Job
from app.services.data.artifacts import KEY_COLUMNS, keys_in
from app.storage.base import digest_of
from tests.conftest import TEST_BROKER_URL, TEST_DATABASE_URL, make_tenant, settings_env
from tests.s3_server import MotoS3Server
from tests.workers.servers import PrivateRedis, ServerUnavailable
from tests.workers.test_job_flow import FAST_RECIPE, run

pytestmark = [
    pytest.mark.broker,
    pytest.mark.slow,
    pytest.mark.skipif(
        not (TEST_DATABASE_URL and TEST_BROKER_URL), reason="the rehearsal runs on Postgres + Redis"
    ),
]

CAMPAIGN_TIMEOUT_S = 420.0
MACHINES = ("machine-a", "machine-b")


def _own_database(url: str) -> str:
    parsed = make_url(url)
    name = f"{parsed.database or 'lethe_test'}_mm_{os.getpid()}"
    admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return parsed.set(database=name).render_as_string(hide_password=False)


def _drop_database(url: str) -> None:
    parsed = make_url(url)
    admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)'))
    admin.dispose()


def _files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, s3_server: MotoS3Server) -> Iterator[dict[str, Any]]:
    from app.core import migrate
    from app.main import create_app
    from app.services.ops.processes import ServiceGroup

    assert TEST_DATABASE_URL is not None
    try:
        redis = PrivateRedis()
    except ServerUnavailable as exc:
        pytest.skip(str(exc))
    redis.start()
    database_url = _own_database(TEST_DATABASE_URL)
    bucket = s3_server.new_bucket()
    s3_env = s3_server.env(bucket)
    s3_fields = {name.removeprefix("LETHE_").lower(): value for name, value in s3_env.items()}
    homes = {name: tmp_path_factory.mktemp(name) for name in ("api", *MACHINES)}

    def machine_settings(home: Path, **extra: Any) -> Settings:
        return Settings(
            home=home,
            database_url=database_url,
            broker_url=redis.url(),
            lease_seconds=6.0,
            heartbeat_seconds=0.3,
            reaper_interval_seconds=1.0,
            **s3_fields,
            **extra,
        )

    api_settings = machine_settings(homes["api"])
    migrate.upgrade(api_settings)
    groups = []
    try:
        for name in MACHINES:
            settings = machine_settings(homes[name], worker_host=name)
            env = {
                **settings_env(settings),
                **s3_env,
                "LETHE_WORKER_HOST": name,
                "LETHE_ARTIFACT_ROOT": str(homes[name] / "artifacts"),  # must stay empty
            }
            group = ServiceGroup(settings, log_dir=homes[name] / "logs", extra_env=env)
            groups.append(group)
            group.start_gpu_worker(name)
            if name == "machine-a":
                group.start_maintenance_worker()
        engine = make_engine(database_url)
        sessions = make_session_factory(engine)
        with TestClient(create_app(api_settings)) as api:
            yield {
                "api": api,
                "sessions": sessions,
                "settings": api_settings,
                "homes": homes,
                "bucket": bucket,
            }
        engine.dispose()
    finally:
        for group in groups:
            group.stop()
        redis.destroy()
        _drop_database(database_url)


def test_a_campaign_across_two_machines_leaves_every_artifact_readable_from_the_api(
    cluster: dict[str, Any], s3_server: MotoS3Server
) -> None:
    api: TestClient = cluster["api"]
    sessions = cluster["sessions"]
    tenant = make_tenant(sessions, cluster["settings"])
    created = api.post("/v1/datasets", json={"builtin": "digits"}, headers=tenant.headers("submit"))
    assert created.status_code == 201, created.text
    dataset = created.json()
    train = run(
        api,
        tenant,
        {
            "kind": "train",
            "dataset_id": dataset["id"],
            "architecture": "mlp",
            "arch_config": {"hidden": [32]},
            "params": {"recipe": {**FAST_RECIPE, "epochs": 3}},
            "seed": 3,
        },
    )
    body = {
        "name": "two machines",
        "model_id": train["output_model_id"],
        "methods": [
            {"method": "ft", "params": {"epochs": 1, "batch_size": 64}},
            {"method": "rl", "params": {"epochs": 1, "batch_size": 64}},
        ],
        "forget_sets": [{"spec": {"kind": "random", "fraction": 0.1, "seed": 0}, "name": "random 10%"}],
        "seeds": [0, 1],
    }
    submitted = api.post("/v1/campaigns", json=body, headers=tenant.headers("submit"))
    assert submitted.status_code == 202, submitted.text
    deadline = time.monotonic() + CAMPAIGN_TIMEOUT_S
    campaign: dict = {}
    while time.monotonic() < deadline:
        campaign = api.get(f"/v1/campaigns/{submitted.json()['id']}", headers=tenant.headers("read")).json()
        if campaign["status"] != "running":
            break
        time.sleep(0.5)
    assert campaign["status"] == "finished", campaign

    with sessions() as session:
        jobs = list(session.scalars(select(Job).where(Job.tenant_id == tenant.id)))
        keys = {key for column in KEY_COLUMNS for key in session.scalars(select(column)) if key}
    assert jobs and all(job.status.value == "succeeded" for job in jobs), [(j.kind, j.status) for j in jobs]
    hosts = {str(job.worker).split(":", 1)[0] for job in jobs}
    assert hosts == set(MACHINES), hosts  # the cells ran on both machines
    keys |= {key for job in jobs for key in keys_in(job.result)}
    tenant_keys = {key for key in keys if key.startswith(f"{tenant.id}/")}
    assert any("/models/" in key for key in tenant_keys) and any("/datasets/" in key for key in tenant_keys)

    # Every artifact a row names is in the bucket and readable by the API process's store, bytes intact.
    store = api.app.state.store
    stored = {info.key for info in store.scan(f"{tenant.id}/")}
    assert tenant_keys <= stored
    for key in sorted(tenant_keys):
        data = store.get(key)
        assert len(data) == store.stat(key).size > 0
        # Content-addressed files name the SHA-256 of their bytes (a dataset's, of its arrays; checkpoints
        # are named by job).
        if key.split("/")[1] != "datasets" and digest_of(key) is not None:
            assert hashlib.sha256(data).hexdigest() == digest_of(key), key
    # ... and through the API: every model's weights download (streamed) with the digest of its bytes.
    models = api.get("/v1/models", headers=tenant.headers("read")).json()["data"]
    assert len(models) >= 1 + 2 * 3  # the original, 2 retrains, 2 methods x 2 seeds
    for model in models:
        weights = api.get(f"/v1/models/{model['id']}/weights", headers=tenant.headers("read"))
        assert weights.status_code == 200
        assert weights.headers["digest"] == f"sha-256={hashlib.sha256(weights.content).hexdigest()}"
    table = api.get(f"/v1/campaigns/{campaign['id']}/table", headers=tenant.headers("read"))
    assert table.status_code == 200 and len(table.json()["rows"]) == 4  # original, retrain, ft, rl

    # No machine wrote an artifact to its own disk: the local artifact roots and staging areas are empty.
    for home in cluster["homes"].values():
        assert _files_under(home / "artifacts") == [] and _files_under(home / "staging") == []
    listed = s3_server.client().list_objects_v2(Bucket=cluster["bucket"], Prefix=f"{tenant.id}/")
    assert {obj["Key"] for obj in listed["Contents"]} == stored
