"""Schema migrations (Alembic) and the embedded profile's first-start bootstrap."""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.security import Scope
from app.models import ApiKey
from app.services.keys import create_key, get_or_create_tenant

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCAL_TENANT = "local"
log = logging.getLogger(__name__)


def alembic_config(database_url: str) -> Config:
    config = Config(str(REPO_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(REPO_ROOT / "migrations"))
    config.attributes["database_url"] = database_url
    return config


def upgrade(settings: Settings, revision: str = "head") -> None:
    """Upgrade the schema; for SQLite under a file lock so concurrent starters do not race."""
    config = alembic_config(settings.db_url)
    if not settings.is_sqlite:
        command.upgrade(config, revision)
        return
    lock_path = settings.home.resolve() / "migrate.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            command.upgrade(config, revision)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def schema_is_current(engine: Engine, settings: Settings) -> bool:
    script = ScriptDirectory.from_config(alembic_config(settings.db_url))
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_heads()
    return set(current) == set(script.get_heads())


def bootstrap_admin_key(session: Session, settings: Settings) -> Path | None:
    """On the embedded profile's first start, create tenant 'local' with an admin key written to a file."""
    if session.scalar(select(ApiKey.id).limit(1)) is not None:
        return None
    tenant = get_or_create_tenant(session, LOCAL_TENANT)
    _, new = create_key(
        session, tenant=tenant, name="local admin", scopes=[Scope.admin], pepper=settings.key_pepper
    )
    session.commit()
    path = settings.bootstrap_key_file
    assert path is not None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(new.token + "\n")
    log.warning("created the local admin API key; it is stored in %s", path)
    return path
