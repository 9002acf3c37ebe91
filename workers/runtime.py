"""Per-process resources of a worker: settings, DB session factory and artifact store.

Created lazily inside the process that runs the task (a prefork child), never inherited over fork.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from functools import lru_cache

from sqlalchemy.orm import Session, sessionmaker

from app.core.config import Settings, get_settings
from app.core.db import make_engine, make_session_factory
from app.storage import ArtifactStore, create_store


@dataclass
class WorkerRuntime:
    settings: Settings
    sessions: sessionmaker[Session]
    store: ArtifactStore

    @property
    def worker_name(self) -> str:
        return f"{self.settings.worker_host or socket.gethostname()}:{os.getpid()}"


@lru_cache
def get_runtime() -> WorkerRuntime:
    settings = get_settings()
    engine = make_engine(settings.db_url)
    return WorkerRuntime(
        settings=settings, sessions=make_session_factory(engine), store=create_store(settings)
    )
