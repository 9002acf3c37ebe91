"""Prometheus metrics (text exposition, ``GET /metrics``), computed from the database at scrape time.

The jobs table is the source of truth, so every API replica exports the same numbers and nothing is lost
when a process restarts. Series:

* ``lethe_jobs{kind,status}``: jobs by kind and status (gauge);
* ``lethe_queue_depth``: queued jobs, ``lethe_jobs_unpublished``: queued jobs never handed to the broker;
* ``lethe_broker_messages{queue}``: messages waiting in the broker (Redis lists, embedded SQLite queues);
* ``lethe_worker_heartbeat_age_seconds{worker}``: seconds since each busy worker's last heartbeat (a
  worker only heartbeats while it runs a job), ``lethe_running_jobs_lease_expired``: running jobs whose
  lease ran out (a dead worker, until the reaper requeues them);
* ``lethe_deletion_requests{status}``, ``lethe_compliance_reports``;
* ``lethe_broker_up``: 1 when the broker accepts a connection.

Events are counted where they happen, not here: HTTP requests by the API process and job outcomes and
durations by the workers (app.services.ops.telemetry); ``GET /metrics`` appends the API's own.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.models import ComplianceReport, DeletionRequest, Job, JobStatus
from app.models.base import utcnow
from app.services.ops.telemetry import live_registry
from workers.engine.job_kinds import JOB_KINDS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BROKER_TIMEOUT_S = 2.0
EMBEDDED_PREFIX = "lethesqla+sqlite:///"
QUEUES = ("gpu", "default")


def _embedded_path(url: str) -> Path:
    return Path(url[len(EMBEDDED_PREFIX) :])


def broker_problem(url: str) -> str | None:
    """None when the broker accepts a connection, else what went wrong (short, no credentials)."""
    try:
        if url.startswith(EMBEDDED_PREFIX):
            path = _embedded_path(url)
            if not path.exists():
                # Created by the first publish or worker; nothing to connect to yet is not an outage.
                return None if path.parent.is_dir() else f"the directory of {path.name} does not exist"
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BROKER_TIMEOUT_S) as conn:
                conn.execute("SELECT 1").fetchone()
            return None
        if url.startswith(("redis://", "rediss://")):
            import redis

            client = redis.Redis.from_url(
                url, socket_timeout=BROKER_TIMEOUT_S, socket_connect_timeout=BROKER_TIMEOUT_S
            )
            try:
                client.ping()
            finally:
                client.close()
            return None
        from kombu import Connection

        with Connection(url, connect_timeout=BROKER_TIMEOUT_S) as connection:
            connection.ensure_connection(max_retries=1)
        return None
    except Exception as exc:  # any failure to reach the broker means "not ready"
        return type(exc).__name__


def broker_depths(url: str) -> dict[str, int]:
    """Messages waiting per queue; empty when the broker cannot tell (or is unreachable)."""
    try:
        if url.startswith(EMBEDDED_PREFIX):
            path = _embedded_path(url)
            if not path.exists():
                return {}
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BROKER_TIMEOUT_S) as conn:
                rows = conn.execute(
                    "SELECT q.name, COUNT(m.id) FROM kombu_queue q LEFT JOIN kombu_message m"
                    " ON m.queue_id = q.id AND m.visible = 1 GROUP BY q.name"
                ).fetchall()
            return {str(name): int(count) for name, count in rows if name in QUEUES}
        if url.startswith(("redis://", "rediss://")):
            import redis

            client = redis.Redis.from_url(
                url, socket_timeout=BROKER_TIMEOUT_S, socket_connect_timeout=BROKER_TIMEOUT_S
            )
            try:
                return {queue: int(client.llen(queue)) for queue in QUEUES}  # type: ignore[arg-type]
            finally:
                client.close()
    except Exception:
        return {}
    return {}


class _DatabaseCollector(Collector):
    def __init__(self, factory: sessionmaker[Session], broker_url: str) -> None:
        self.factory = factory
        self.broker_url = broker_url

    def describe(self) -> Iterator[Metric]:
        return iter(())  # nothing to pre-register: collect() runs only at scrape time

    def collect(self) -> Iterator[Metric]:
        with self.factory() as session:
            yield from self._jobs(session)
            yield from self._workers(session)
            yield from self._compliance(session)
        yield from self._broker()

    def _jobs(self, session: Session) -> Iterator[Metric]:
        counts = {
            (kind, status): int(n)
            for kind, status, n in session.execute(
                select(Job.kind, Job.status, func.count()).group_by(Job.kind, Job.status)
            )
        }
        jobs = GaugeMetricFamily("lethe_jobs", "Jobs by kind and status.", labels=["kind", "status"])
        for kind in JOB_KINDS.names():
            for status in JobStatus:
                jobs.add_metric([kind, status.value], counts.get((kind, status), 0))
        yield jobs
        queued = sum(n for (_, status), n in counts.items() if status is JobStatus.queued)
        yield GaugeMetricFamily("lethe_queue_depth", "Queued jobs (waiting for a worker).", value=queued)
        unpublished = session.scalar(
            select(func.count()).where(Job.status == JobStatus.queued, Job.enqueued_at.is_(None))
        )
        yield GaugeMetricFamily(
            "lethe_jobs_unpublished",
            "Queued jobs not handed to the broker yet (the reaper publishes them).",
            value=int(unpublished or 0),
        )

    def _workers(self, session: Session) -> Iterator[Metric]:
        now = utcnow()
        ages: dict[str, float] = {}
        expired = 0
        for worker, heartbeat, lease in session.execute(
            select(Job.worker, Job.heartbeat_at, Job.lease_expires_at).where(Job.status == JobStatus.running)
        ):
            if lease is not None and lease < now:
                expired += 1
            if worker and heartbeat is not None:
                age = max(0.0, (now - heartbeat).total_seconds())
                ages[worker] = min(age, ages.get(worker, age))
        family = GaugeMetricFamily(
            "lethe_worker_heartbeat_age_seconds",
            "Seconds since the last heartbeat of each worker running a job.",
            labels=["worker"],
        )
        for worker in sorted(ages):
            family.add_metric([worker], ages[worker])
        yield family
        yield GaugeMetricFamily(
            "lethe_running_jobs_lease_expired",
            "Running jobs whose lease expired (a dead worker; the reaper requeues them).",
            value=expired,
        )

    def _compliance(self, session: Session) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "lethe_deletion_requests", "Deletion requests by status.", labels=["status"]
        )
        for status, n in session.execute(
            select(DeletionRequest.status, func.count()).group_by(DeletionRequest.status)
        ):
            family.add_metric([status.value], int(n))
        yield family
        reports = session.scalar(select(func.count()).select_from(ComplianceReport))
        yield GaugeMetricFamily(
            "lethe_compliance_reports", "Compliance reports issued.", value=int(reports or 0)
        )

    def _broker(self) -> Iterator[Metric]:
        up = broker_problem(self.broker_url) is None
        yield GaugeMetricFamily("lethe_broker_up", "1 when the broker accepts a connection.", value=int(up))
        family = GaugeMetricFamily(
            "lethe_broker_messages", "Messages waiting in the broker, per queue.", labels=["queue"]
        )
        for queue, depth in sorted(broker_depths(self.broker_url).items()):
            family.add_metric([queue], depth)
        yield family


def exposition(factory: sessionmaker[Session], broker_url: str) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_DatabaseCollector(factory, broker_url))
    # Two registries, one text: their metric names differ, so the families simply follow each other.
    return generate_latest(registry) + generate_latest(live_registry())
