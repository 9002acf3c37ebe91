"""Embedded broker: kombu's SQLAlchemy transport on a SQLite file, with fast polling.

``polling_interval`` cannot be passed through ``broker_transport_options`` (the SQLA channel hands
every option to ``create_engine``), so it is a class attribute here, registered under the URL scheme
``lethesqla+sqlite://``.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import kombu.transport
from kombu.transport import sqlalchemy as kombu_sqla

SCHEME = "lethesqla"
DEFAULT_POLLING_INTERVAL = 0.1

# SQLite is not fork-safe while another thread is inside it: a child forked at that moment inherits
# SQLite's process-wide mutexes in the locked state and hangs at its first sqlite3.connect (observed:
# prefork children blocked forever opening the app DB). Celery's pool forks from a supervisor thread while
# the main thread polls this broker, so every broker call holds this lock and os.fork waits for it.
_SQLITE_FORK_LOCK = threading.RLock()
os.register_at_fork(
    before=_SQLITE_FORK_LOCK.acquire,
    after_in_parent=_SQLITE_FORK_LOCK.release,
    after_in_child=_SQLITE_FORK_LOCK.release,
)
_F = TypeVar("_F", bound=Callable[..., Any])


def _fork_safe(method: _F) -> _F:
    @wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _SQLITE_FORK_LOCK:
            return method(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


class Channel(kombu_sqla.Channel):
    """kombu's SQLAlchemy channel with every database call serialised against fork()."""

    _new_queue = _fork_safe(kombu_sqla.Channel._new_queue)
    _put = _fork_safe(kombu_sqla.Channel._put)
    _get = _fork_safe(kombu_sqla.Channel._get)
    _purge = _fork_safe(kombu_sqla.Channel._purge)
    _size = _fork_safe(kombu_sqla.Channel._size)
    close = _fork_safe(kombu_sqla.Channel.close)


class Transport(kombu_sqla.Transport):
    Channel = Channel
    polling_interval = DEFAULT_POLLING_INTERVAL


def register() -> None:
    kombu.transport.TRANSPORT_ALIASES[SCHEME] = "workers.embedded:Transport"


def prepare_broker_file(url: str) -> None:
    """Create the broker's SQLite file in WAL mode (it starts in rollback-journal mode otherwise)."""
    if not url.startswith(f"{SCHEME}+sqlite:///"):
        return
    path = Path(url.split("///", 1)[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")


register()
