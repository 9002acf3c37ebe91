"""Embedded broker: kombu's SQLAlchemy transport on a SQLite file, with fast polling.

``polling_interval`` cannot be passed through ``broker_transport_options`` (the SQLA channel hands
every option to ``create_engine``), so it is a class attribute here, registered under the URL scheme
``lethesqla+sqlite://``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import kombu.transport
from kombu.transport import sqlalchemy as kombu_sqla

SCHEME = "lethesqla"
DEFAULT_POLLING_INTERVAL = 0.1


class Transport(kombu_sqla.Transport):
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
