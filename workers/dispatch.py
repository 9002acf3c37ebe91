"""Dropping job messages that have nothing to run, in the worker's parent, before a child is spent on them.

Every ``lethe.run_job`` message costs a one-task child (``worker_max_tasks_per_child=1``): ~0.7 s of fork,
start and replacement even when the child then finds nothing to claim. After one tenant created ~1,060
campaign jobs and cancelled them, the queue held ~1,060 such messages, and another tenant's job waited
14.5 minutes behind them. Here the parent asks the database first, with one indexed probe (is any job
queued, or running under an expired lease?), and acknowledges and drops the message when nothing waits.

Messages are wake-up calls rather than assignments (the child claims whichever job's turn it is, see
``app.services.jobs.lifecycle.claim_next``), so the probe is "is anything waiting", not "is job X
waiting": while stale messages remain ahead of it in the queue, another tenant's new job is started by the
first of them.

Revoking at cancel time was not enough on its own: revokes are kept in worker memory only (lost on restart,
and the embedded broker has no broadcast to deliver them), and a message removed from Redis by content would
race with its delivery. The probe costs a fraction of a millisecond per message whatever the broker.
"""

from __future__ import annotations

import logging
import os
import threading
from functools import lru_cache

from celery.worker.request import Request
from celery.worker.state import task_ready
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from app.core.config import get_settings
from app.core.db import make_engine, make_session_factory, read_only
from app.services.jobs import lifecycle as job_service

log = logging.getLogger(__name__)


@lru_cache
def _parent_sessions() -> sessionmaker[Session]:
    url = get_settings().db_url
    if url.startswith("sqlite"):
        # No connection outlives a probe (opening one costs ~0.2 ms): a forked child then never holds, nor
        # closes, a copy of an SQLite connection of its parent.
        engine = make_engine(url, poolclass=NullPool)
    else:
        engine = make_engine(url, pool_size=1, max_overflow=1)
        # Children forked after this start with an empty pool of their own (SQLAlchemy's recipe for
        # os.fork; psycopg never closes a connection from another process), and run their jobs on
        # workers.runtime's engine anyway.
        os.register_at_fork(after_in_child=lambda: engine.dispose(close=False))
    # Read-only: on SQLite the probe begins DEFERRED and never waits for a job's writes.
    return make_session_factory(read_only(engine))


# Held while the parent probes. Without an event loop (the embedded broker) billiard forks replacement
# children from its supervisor thread while the consumer thread probes; a child forked while the probe is
# inside SQLite inherits SQLite's mutexes locked and hangs at its first query (observed: a job child stuck for
# minutes). Forks wait for the probe (a fraction of a millisecond) instead.
_probing = threading.Lock()
os.register_at_fork(
    before=_probing.acquire, after_in_parent=_probing.release, after_in_child=_probing.release
)


def nothing_to_run() -> bool:
    """True when no job waits for a worker. A database error answers False: the child then tries as before
    (and the job's lease protocol decides), so a probe failure never loses a message."""
    try:
        with _probing:
            return not job_service.claimable_exists(_parent_sessions())
    except SQLAlchemyError as exc:
        log.warning("could not check for waiting jobs (%s); passing the message to a child", exc)
        return False


class RunJobRequest(Request):
    """The request class of ``lethe.run_job``. Celery calls ``revoked()`` in the parent right before it
    hands the request to the pool (``execute_using_pool``); answering True there skips the pool, and the
    worker releases the request's slot (TaskRevokedError path) as for a revoked task."""

    def revoked(self) -> bool:
        if super().revoked():
            return True
        if not nothing_to_run():
            return False
        log.info("dropping %s[%s] %s: no job is waiting", self.name, self.id, self.argsrepr)
        task_ready(self)
        self.acknowledge()
        self._already_revoked = True
        return True
