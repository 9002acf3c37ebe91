from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.core.config import Profile, Settings


def test_embedded_defaults_live_under_home(tmp_path) -> None:
    settings = Settings(home=tmp_path)
    assert settings.profile is Profile.embedded
    assert settings.db_url == f"sqlite:///{tmp_path.resolve() / 'app.sqlite'}"
    assert settings.broker == f"lethesqla+sqlite:///{tmp_path.resolve() / 'broker.sqlite'}"
    assert settings.artifacts == tmp_path.resolve() / "artifacts"
    assert settings.device == "auto"


def test_env_prefix(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("LETHE_HOME", str(tmp_path))
    monkeypatch.setenv("LETHE_MAX_ATTEMPTS", "7")
    assert Settings().max_attempts == 7


@pytest.mark.parametrize(
    ("database_url", "broker_url"),
    [
        (None, "redis://x"),
        ("sqlite:///x", "redis://x"),
        ("postgresql+psycopg://x/y", None),
        ("postgresql+psycopg://x/y", "sqla+sqlite:///b"),
    ],
)
def test_production_requires_postgres_and_redis(database_url, broker_url) -> None:
    with pytest.raises(ValidationError):
        Settings(profile=Profile.production, database_url=database_url, broker_url=broker_url)


def test_production_accepts_postgres_and_redis() -> None:
    settings = Settings(
        profile=Profile.production,
        database_url="postgresql+psycopg://u@h/db",
        broker_url="redis://h:6379/0",
        key_pepper="a-long-random-operator-secret",
    )
    assert not settings.is_sqlite


def test_celery_settings_for_long_gpu_jobs(tmp_path) -> None:
    from workers.celery_app import GPU_QUEUE, RUN_JOB_TASK, make_celery

    redis_app = make_celery(Settings(home=tmp_path, broker_url="redis://127.0.0.1:6379/14"))
    conf = redis_app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.task_ignore_result
    assert conf.worker_prefetch_multiplier == 1 and conf.worker_max_tasks_per_child == 1
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert (
        conf.task_soft_time_limit < conf.task_time_limit < conf.broker_transport_options["visibility_timeout"]
    )
    assert conf.task_routes[RUN_JOB_TASK]["queue"] == GPU_QUEUE
    embedded_app = make_celery(Settings(home=tmp_path))
    assert embedded_app.conf.broker_url.startswith("lethesqla+sqlite")
    assert (tmp_path / "broker.sqlite").exists()
