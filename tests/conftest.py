"""Shared fixtures. The suite runs on SQLite + the embedded broker by default, and on Postgres + Redis
when LETHE_TEST_DATABASE_URL / LETHE_TEST_BROKER_URL are set (the Makefile runs both)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Profile, Settings
from app.core.db import make_engine, make_session_factory
from app.core.security import Scope
from app.services.ops.keys import create_key, get_or_create_tenant

TEST_DATABASE_URL = os.environ.get("LETHE_TEST_DATABASE_URL")
TEST_BROKER_URL = os.environ.get("LETHE_TEST_BROKER_URL")
# Short leases so that a killed worker's job is reaped within seconds.
TEST_LEASE_SECONDS = 6.0
TEST_HEARTBEAT_SECONDS = 0.3
TEST_REAPER_INTERVAL_SECONDS = 1.0


def _fresh_postgres(url: str) -> str:
    parsed = make_url(url)
    name = f"{parsed.database or 'lethe_test'}_{os.getpid()}"
    admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return parsed.set(database=name).render_as_string(hide_password=False)


def _fresh_redis(url: str) -> None:
    import redis

    redis.Redis.from_url(url).flushdb()


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    home = tmp_path_factory.mktemp("lethe-home")
    database_url = _fresh_postgres(TEST_DATABASE_URL) if TEST_DATABASE_URL else None
    if TEST_BROKER_URL:
        _fresh_redis(TEST_BROKER_URL)
    data_root = home / "data-root"  # tests write tiny datasets in torchvision's formats here
    data_root.mkdir()
    return Settings(
        profile=Profile.embedded,
        home=home,
        data_root=data_root,
        database_url=database_url,
        broker_url=TEST_BROKER_URL,
        lease_seconds=TEST_LEASE_SECONDS,
        heartbeat_seconds=TEST_HEARTBEAT_SECONDS,
        reaper_interval_seconds=TEST_REAPER_INTERVAL_SECONDS,
        max_upload_bytes=8 * 1024 * 1024,
        max_dataset_uncompressed_bytes=64 * 1024 * 1024,
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment that makes a subprocess (worker, CLI) see the same service."""
    return {
        "LETHE_PROFILE": settings.profile.value,
        "LETHE_HOME": str(settings.home),
        "LETHE_DATABASE_URL": settings.db_url,
        "LETHE_BROKER_URL": settings.broker,
        "LETHE_LEASE_SECONDS": str(settings.lease_seconds),
        "LETHE_HEARTBEAT_SECONDS": str(settings.heartbeat_seconds),
        "LETHE_REAPER_INTERVAL_SECONDS": str(settings.reaper_interval_seconds),
        "LETHE_MAX_ATTEMPTS": str(settings.max_attempts),
        **({"LETHE_DATA_ROOT": str(settings.data_root)} if settings.data_root else {}),
    }


@pytest.fixture(scope="session")
def migrated(settings: Settings) -> Settings:
    from app.core import migrate

    migrate.upgrade(settings)
    return settings


@pytest.fixture(scope="session")
def sessions(migrated: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(migrated.db_url)
    yield make_session_factory(engine)
    engine.dispose()


@dataclass
class Tenant:
    id: uuid.UUID
    name: str
    admin: str
    submit: str
    read: str

    def headers(self, scope: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {getattr(self, scope)}"}


def make_tenant(sessions: sessionmaker[Session], settings: Settings) -> Tenant:
    name = f"tenant-{uuid.uuid4().hex[:10]}"
    with sessions() as session:
        tenant = get_or_create_tenant(session, name)
        tokens = {}
        for scope in (Scope.admin, Scope.submit, Scope.read):
            _, new = create_key(
                session, tenant=tenant, name=scope.value, scopes=[scope], pepper=settings.key_pepper
            )
            tokens[scope.value] = new.token
        session.commit()
        return Tenant(id=tenant.id, name=name, **tokens)


@pytest.fixture
def tenant(sessions: sessionmaker[Session], migrated: Settings) -> Tenant:
    return make_tenant(sessions, migrated)


@pytest.fixture
def other_tenant(sessions: sessionmaker[Session], migrated: Settings) -> Tenant:
    return make_tenant(sessions, migrated)


class RecordingPublisher:
    """Stands in for the broker in API tests that must not run jobs."""

    def __init__(self) -> None:
        self.published: list[uuid.UUID] = []

    def __call__(self, job_id: uuid.UUID) -> None:
        self.published.append(job_id)


@pytest.fixture(scope="session")
def recording_publisher() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture(scope="session")
def api(migrated: Settings, recording_publisher: RecordingPublisher) -> Iterator[TestClient]:
    """The API with a recording publisher: jobs are queued but nothing runs them."""
    from app.main import create_app

    with TestClient(create_app(migrated, publisher=recording_publisher)) as client:
        yield client


@pytest.fixture(scope="session")
def live_api(migrated: Settings) -> Iterator[TestClient]:
    """The API publishing to the real broker (embedded SQLite or Redis)."""
    from app.main import create_app

    with TestClient(create_app(migrated)) as client:
        yield client


@pytest.fixture(scope="session")
def artifacts_dir(migrated: Settings) -> Path:
    return migrated.artifacts


@pytest.fixture(scope="session")
def worker_group(migrated: Settings, sessions: sessionmaker[Session]) -> Iterator[object]:
    """Real Celery workers in subprocesses (prefork): one on the gpu queue, one on default with the reaper.

    Jobs that earlier tests left queued (submitted through the recording publisher, never meant to run) or
    claimed without finishing are cancelled first: the fair pick would otherwise run them, every one, ahead
    of the jobs of the tests that start these workers."""
    from sqlalchemy import update

    from app.models import Job, JobStatus
    from app.models.base import utcnow
    from app.services.ops.processes import ServiceGroup

    with sessions() as session:
        session.execute(
            update(Job)
            .where(Job.status.in_([JobStatus.queued, JobStatus.running]))
            .values(
                status=JobStatus.cancelled,
                cancel_requested=True,
                finished_at=utcnow(),
                version=Job.version + 1,
            )
        )
        session.commit()
    group = ServiceGroup(migrated, log_dir=migrated.home / "logs", extra_env=settings_env(migrated))
    group.start(api=False)
    yield group
    group.stop()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[object]:
    """A local S3-compatible HTTP endpoint (moto's server in a subprocess, tests/s3_server.py)."""
    from tests.s3_server import MotoS3Server

    server = MotoS3Server().start()
    yield server
    server.stop()
