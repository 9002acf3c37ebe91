"""A prefork pool that replaces a finished one-task child at once.

Lethe's workers run one task per child (``worker_max_tasks_per_child=1``: every job gets a fresh process, so
no CUDA context, allocator state or leaked memory outlives it). With Celery's stock prefork pool on Redis, a
job submitted as another one ended waited 0.4-5 s for its process (bench/load_api.py, submit-to-running back
to back: p50 0.42-3.5 s, p90 5.05 s, against 0.09 s on an idle worker; 0.09 s with this pool). Four things
made up the gap, and each is removed here:

1. The exiting child waits until the parent has counted its result, polling every 0.1 s
   (``_ensure_messages_consumed``): polled every 5 ms here, with the same 30 s bound.
2. It then reports DEATH and sleeps a second before ``os._exit`` (the parent may SIGTERM it meanwhile):
   exits at once here. The report is a complete message in the result pipe, which the parent reads (and
   flushes for a dead child) whether or not the child still exists.
3. The parent learns of the exit from the child's sentinel pipe and reaps it with ``waitpid(WNOHANG)``.
   The pipe closes while the kernel tears the process down, a moment before it becomes reapable; if the
   pool looks in that moment it finds nothing, stops watching, and the replacement waits for the pool's
   5 s ``maintain_pool`` timer. Here it looks again every 5 ms until the child is reapable.
4. Celery runs ``gc.collect()`` before every fork; with torch preloaded in the parent that took ~0.25 s.
   The parent's preloaded objects are frozen (``gc.freeze``) when the pool starts, so the collection only
   walks what was allocated since (and children's collections skip them, which also spares copy-on-write).

The embedded beat of ``-B`` dies with the worker's main process (``PR_SET_PDEATHSIG``), as Celery already
makes pool children do: otherwise a killed worker (or a killed ``lethe up``) left it scheduling the reaper.

Selected for every Lethe worker by ``worker_pool`` in :mod:`workers.celery_app` (Celery prefers it to the
command line's default ``-P prefork``). Points 1-3 apply with the event loop (Redis broker); the blocking pool
used without one (embedded broker) replaces children from its own supervisor thread every 0.8 s.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import time
from typing import Any

from billiard.common import TERM_SIGNAL
from billiard.pool import (
    DEATH,
    EX_FAILURE,
    EX_OK,
    GUARANTEE_MESSAGE_CONSUMPTION_RETRY_INTERVAL,
    GUARANTEE_MESSAGE_CONSUMPTION_RETRY_LIMIT,
)
from celery.concurrency.asynpool import AsynPool
from celery.concurrency.asynpool import Worker as AsynWorker
from celery.concurrency.prefork import TaskPool as PreforkTaskPool
from celery.signals import beat_embedded_init

from app.services.ops.processes import die_with_parent
from workers import cuda_guard

log = logging.getLogger(__name__)

POLL_SECONDS = 0.005
# billiard's bound on the wait for the parent to consume the child's last result (30 s), kept as is.
CONSUMED_WAIT_SECONDS = (
    GUARANTEE_MESSAGE_CONSUMPTION_RETRY_LIMIT * GUARANTEE_MESSAGE_CONSUMPTION_RETRY_INTERVAL
)
# How long to keep looking whether an exited child can be reaped; past that the pool's own timer replaces it.
REAP_WAIT_SECONDS = 10.0


class PromptExitWorker(AsynWorker):
    """The pool child: billiard 4.3's exit path without its 0.1 s polling step and its 1 s sleep."""

    def _ensure_messages_consumed(self, completed: int) -> bool:
        if not self.on_ready_counter:
            return False
        deadline = time.monotonic() + CONSUMED_WAIT_SECONDS
        while True:
            if self.on_ready_counter.value >= completed:
                return True
            if time.monotonic() >= deadline:
                log.warning("could not ensure all messages were consumed prior to exiting")
                return False
            time.sleep(POLL_SECONDS)

    def _do_exit(self, pid: int, exitcode: int | None, exc: BaseException | None = None) -> None:
        if exitcode is None:
            exitcode = EX_FAILURE if exc else EX_OK
        if self.on_exit is not None:
            self.on_exit(pid, exitcode)
        try:
            # As billiard does: TERM_SIGNAL arriving mid-write would leave the result pipe locked.
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, {TERM_SIGNAL})
            try:
                self.outq.put((DEATH, (pid, exitcode)))
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        finally:
            os._exit(exitcode)


class ReplacingAsynPool(AsynPool):
    Worker = PromptExitWorker

    def _event_process_exit(self, hub: Any, proc: Any) -> None:
        # The child's sentinel became readable. The base class maintains the pool once, which does nothing
        # if the child is not reapable yet; keep looking until it is.
        self._untrack_child_process(proc, hub)
        self._replace_when_reaped(hub, proc, time.monotonic() + REAP_WAIT_SECONDS)

    def _replace_when_reaped(self, hub: Any, proc: Any, deadline: float) -> None:
        if _exitcode(proc) is None and time.monotonic() < deadline:
            hub.call_later(POLL_SECONDS, self._replace_when_reaped, hub, proc, deadline)
            return
        self.maintain_pool()


def _exitcode(proc: Any) -> int | None:
    try:
        code: int | None = proc.exitcode  # waitpid(WNOHANG), cached once reaped
    except ValueError:  # the process object was closed: reaped and cleaned up already
        return 0
    return code


# The worker's main process, recorded before its first fork (TaskPool.on_start).
_worker_pid: int | None = None


@beat_embedded_init.connect
def _die_with_worker(**_: object) -> None:
    """In the embedded beat (forked by the worker's main thread): SIGKILL when the worker's main exits."""
    die_with_parent(signal.SIGKILL, _worker_pid or os.getppid())


class TaskPool(PreforkTaskPool):
    """Celery's prefork pool with :class:`ReplacingAsynPool` and a frozen heap (``workers.pool:TaskPool``)."""

    Pool = ReplacingAsynPool

    def on_start(self) -> None:
        global _worker_pid
        _worker_pid = os.getpid()
        # A parent that initialised CUDA would hand every job a child that cannot use it: the worker stops
        # here instead ("Unrecoverable error", exit code 1).
        cuda_guard.assert_untouched("before the first fork")
        # In the parent, after the worker_init preload (torch, the engine) and before the first fork.
        gc.collect()
        gc.freeze()
        super().on_start()
