"""Maintenance tasks and Celery limits with real worker processes."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from app.core.config import Settings
from app.services.ops.processes import ServiceGroup
from tests.app.api.test_resources import create_digits
from tests.conftest import settings_env
from tests.workers.test_job_flow import finished, wait_for
from workers.tasks import purge_consumed_messages

pytestmark = [pytest.mark.broker, pytest.mark.slow]
SOFT_LIMIT_S = 3
HARD_LIMIT_S = 30
# ~180k SGD steps: far beyond the soft limit even on an idle machine with the engine preloaded.
OVER_LIMIT_RECIPE = {"epochs": 1000, "batch_size": 8, "lr": 0.01, "momentum": 0.9}


def test_purge_drops_consumed_embedded_broker_messages(
    live_api: TestClient, worker_group, migrated, tenant
) -> None:
    if not migrated.broker.startswith("lethesqla+"):
        # Redis deletes a message when it is acked: nothing to purge, and the task must not touch it.
        assert purge_consumed_messages(migrated.broker, older_than=timedelta(0)) == 0
        return
    body = {
        "kind": "train",
        "dataset_id": create_digits(live_api, tenant)["id"],
        "architecture": "mlp",
        "params": {"recipe": {"epochs": 1}},
    }
    job = live_api.post("/v1/jobs", json=body, headers=tenant.headers("submit")).json()
    wait_for(live_api, tenant, job["id"], finished)
    engine = create_engine(migrated.broker.split("+", 1)[1])
    with engine.connect() as conn:
        consumed = conn.execute(text("SELECT count(*) FROM kombu_message WHERE visible = 0")).scalar_one()
    assert consumed >= 1
    assert purge_consumed_messages(migrated.broker, older_than=timedelta(days=1)) == 0  # too recent
    assert purge_consumed_messages(migrated.broker, older_than=timedelta(seconds=-60)) == consumed
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM kombu_message WHERE visible = 0")).scalar_one() == 0
    engine.dispose()


def test_soft_time_limit_fails_the_job_with_a_reason(migrated: Settings, sessions, tenant, tmp_path) -> None:
    """Time limits need the prefork pool: a worker with a 3 s soft limit on its own broker."""
    from app.main import create_app

    if migrated.broker.startswith("redis"):
        broker = migrated.broker.rsplit("/", 1)[0] + "/13"
        import redis

        redis.Redis.from_url(broker).flushdb()
    else:
        broker = f"lethesqla+sqlite:///{tmp_path / 'limited-broker.sqlite'}"
    limited = migrated.model_copy(
        update={"broker_url": broker, "task_soft_time_limit": SOFT_LIMIT_S, "task_time_limit": HARD_LIMIT_S}
    )
    env = {
        **settings_env(limited),
        "LETHE_TASK_SOFT_TIME_LIMIT": str(SOFT_LIMIT_S),
        "LETHE_TASK_TIME_LIMIT": str(HARD_LIMIT_S),
    }
    group = ServiceGroup(limited, log_dir=tmp_path / "logs", extra_env=env)
    group.start_gpu_worker()
    try:
        with TestClient(create_app(limited)) as api:
            dataset = create_digits(api, tenant)
            body = {
                "kind": "train",
                "dataset_id": dataset["id"],
                "architecture": "mlp",
                "params": {"recipe": OVER_LIMIT_RECIPE},
                "seed": 0,
            }
            job = api.post("/v1/jobs", json=body, headers=tenant.headers("submit")).json()
            started = time.monotonic()
            done = wait_for(api, tenant, job["id"], finished, timeout=120)
            assert done["status"] == "failed" and done["error"]["code"] == "time-limit", done["error"]
            assert done["attempt"] == 1 and done["metrics"] == {}
            assert time.monotonic() - started < HARD_LIMIT_S
    finally:
        group.stop()
    assert uuid.UUID(job["id"])
