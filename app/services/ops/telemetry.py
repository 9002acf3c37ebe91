"""Live Prometheus metrics: counters and histograms observed where the work happens.

Beside the gauges that ``metrics_export`` recomputes from the database at scrape time, these count events
as they occur:

* ``lethe_http_requests_total{method,route,status}`` and ``lethe_http_request_duration_seconds{method,route}``
  (histogram), observed by the API's request middleware (app.api.observability). ``route`` is the route's
  path template (``/v1/jobs/{job_id}``), ``unmatched`` for a path no route matched, so a scan of random paths
  cannot grow the label set.
* ``lethe_jobs_finished_total{kind,outcome}`` and ``lethe_job_duration_seconds{kind,outcome}`` (histogram):
  one observation per job attempt, when it ends, in the worker child that ran it. Outcomes: ``succeeded``,
  ``failed``, ``cancelled``, ``time_limit``, ``lease_lost`` (another attempt owns the job now),
  ``interrupted`` (left to the reaper after a database outage), ``aborted`` (stopped mid-job). The child
  exits right after its one task, so workers run prometheus_client's multiprocess mode: children write
  their values to files in a directory of the worker's own, and the worker's long-lived parent serves the
  merged view on ``LETHE_WORKER_METRICS_PORT`` (workers/observability.py). Each job adds two small files
  (counter and histogram, named by pid, reused when a pid is); the directory is emptied when the worker
  starts.

Several API processes on one host (``uvicorn --workers N``) share one view the same way: set
``PROMETHEUS_MULTIPROC_DIR`` to an empty directory before they start (the images do: a tmpfs, empty at
every container start) and ``/metrics`` merges every process's files.
"""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, values
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Jobs run from a second (an evaluate on digits) to a day (a CIFAR retrain on a slow card).
JOB_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0)
UNMATCHED_ROUTE = "unmatched"

if os.environ.get(MULTIPROC_ENV):
    # prometheus_client writes its files there on first use and fails if the directory is missing.
    os.makedirs(os.environ[MULTIPROC_ENV], exist_ok=True)

REGISTRY = CollectorRegistry()

HTTP_REQUESTS = Counter(
    "lethe_http_requests",
    "HTTP requests answered, by method, route template and status code.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_DURATION = Histogram(
    "lethe_http_request_duration_seconds",
    "Time from a request's arrival to the end of its response body (an event stream: its whole life).",
    ["method", "route"],
    buckets=HTTP_BUCKETS,
    registry=REGISTRY,
)
JOBS_FINISHED = Counter(
    "lethe_jobs_finished",
    "Job attempts that ended, by kind and outcome.",
    ["kind", "outcome"],
    registry=REGISTRY,
)
JOB_DURATION = Histogram(
    "lethe_job_duration_seconds",
    "Wall time of a job attempt in its worker, from claim to end, by kind and outcome.",
    ["kind", "outcome"],
    buckets=JOB_BUCKETS,
    registry=REGISTRY,
)


HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Label children per (method, route, status): ``labels()`` takes a lock and builds tuples on every call, a
# third of this middleware's cost. Bounded: routes are the app's templates, methods the set above.
_http_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    # Any token is a valid HTTP method: one label value for the unknown ones keeps the series bounded.
    method = method if method in HTTP_METHODS else "other"
    key = (method, route, status)
    children = _http_children.get(key)
    if children is None:
        children = _http_children.setdefault(
            key, (HTTP_REQUESTS.labels(method, route, str(status)), HTTP_DURATION.labels(method, route))
        )
    children[0].inc()
    children[1].observe(seconds)


def observe_job(kind: str, outcome: str, seconds: float) -> None:
    JOBS_FINISHED.labels(kind, outcome).inc()
    JOB_DURATION.labels(kind, outcome).observe(max(0.0, seconds))


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def enable_multiprocess(path: Path) -> None:
    """Switch this process, and the processes it forks from now on, to multiprocess mode on ``path``.

    prometheus_client picks its value class when it is imported, from ``PROMETHEUS_MULTIPROC_DIR``; a worker
    imports it long before it knows its settings, so the class is swapped here (a labelled metric creates
    its values on first ``labels()``, which for the job metrics only ever happens in a forked child)."""
    path.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(path)
    values.ValueClass = values.MultiProcessValue()


def live_registry() -> CollectorRegistry:
    """What to expose: this process's registry, or every process's files in multiprocess mode (a fresh
    collector each call: it reads the directory at every scrape)."""
    path = multiprocess_dir()
    if path is None:
        return REGISTRY
    merged = CollectorRegistry()
    MultiProcessCollector(merged, path=path)
    return merged
