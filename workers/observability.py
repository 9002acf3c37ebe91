"""Worker logs and metrics: JSON log lines with the job's id, attempt, phase and submitting request id, and
the job counters and duration histograms served by the worker's parent.

Celery keeps its hands off the root logger (``worker_hijack_root_logger=False``); ``setup_logging`` tells it
that Lethe configures logging itself, in the worker's parent and (inherited over fork) in its job children.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from celery.signals import setup_logging, worker_init

from app.core.config import get_settings
from app.core.logs import FIELDS_ATTR, bind, configure_logging, log_context
from app.services.ops import telemetry

log = logging.getLogger(__name__)


@setup_logging.connect
def _configure_logging(**_: Any) -> None:
    settings = get_settings()
    configure_logging(settings.log_format, settings.log_level)


@worker_init.connect
def _serve_metrics(**_: Any) -> None:
    """With ``LETHE_WORKER_METRICS_PORT`` set: multiprocess mode on a directory emptied now (this worker's
    counters start at zero, as any process's do) and an HTTP server in this parent process answering
    every path with the merged job metrics of its children."""
    settings = get_settings()
    if settings.worker_metrics_port is None:
        return
    from prometheus_client import start_http_server

    configured = telemetry.multiprocess_dir()
    path = Path(configured) if configured else settings.home.resolve() / "metrics" / f"worker-{os.getpid()}"
    if path.exists():
        shutil.rmtree(path)
    telemetry.enable_multiprocess(path)
    try:
        # MultiProcessCollector reads the directory at each scrape; the registry holding it is built once.
        start_http_server(settings.worker_metrics_port, registry=telemetry.live_registry())
    except OSError as exc:
        # e.g. `lethe up` starts two workers with one environment: the second still runs its jobs (and its
        # container healthcheck, which probes this port, reports it).
        log.error("worker metrics not served: port %d: %s", settings.worker_metrics_port, exc)
        return
    log.info("worker metrics on :%d (%s)", settings.worker_metrics_port, path)


class JobTrace:
    """One job attempt in its worker child: its log context and, when it ends, its metric observation."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.outcome = "aborted"  # until the runner says how it ended (it never does if interrupted)
        self.started = time.monotonic()

    def phase(self, name: str) -> None:
        bind(phase=name)

    def finish(self) -> None:
        seconds = time.monotonic() - self.started
        telemetry.observe_job(self.kind, self.outcome, seconds)
        fields = {"outcome": self.outcome, "duration_s": round(seconds, 3)}
        log.info("job ended: %s after %.2f s", self.outcome, seconds, extra={FIELDS_ATTR: fields})


@contextmanager
def job_trace(job_id: Any, kind: str, attempt: int, request_id: str | None) -> Iterator[JobTrace]:
    """Every record logged inside carries the job's id, kind, attempt, submitting request id and phase;
    at the end (whatever ends it) the attempt is counted under ``trace.outcome``."""
    trace = JobTrace(kind)
    with log_context(job_id=str(job_id), kind=kind, attempt=attempt, request_id=request_id, phase="load"):
        try:
            yield trace
        finally:
            trace.finish()
