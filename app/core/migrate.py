"""Schema migrations (Alembic) and the embedded profile's first-start bootstrap."""

from __future__ import annotations

import contextlib
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

from app.core.config import Profile, Settings
from app.core.db import make_engine, make_session_factory
from app.core.security import Scope
from app.models import ApiKey
from app.services.ops.keys import create_key, get_or_create_tenant
from app.storage.backends import local_dirs
from app.storage.local import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, ensure_private_dir

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCAL_TENANT = "local"
log = logging.getLogger(__name__)


def alembic_config(database_url: str) -> Config:
    config = Config(str(REPO_ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(REPO_ROOT / "migrations"))
    config.attributes["database_url"] = database_url
    return config


# Files the embedded profile keeps in its home that hold tenants' data, keys or their logs.
SQLITE_SUFFIXES = ("", "-wal", "-shm", "-journal")
LOG_DIR = "logs"


def _private_file(path: Path) -> None:
    """Create ``path`` empty with mode 0600 if it is missing, else take it to 0600."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE))
    os.chmod(path, PRIVATE_FILE_MODE)  # O_CREAT's mode passes through the umask; an old file keeps its own


def _sqlite_path(url: str) -> Path | None:
    if not url.startswith("sqlite") and "+sqlite" not in url.split("://", 1)[0]:
        return None
    path = url.split("///", 1)[-1]
    return None if not path or path == ":memory:" else Path(path)


def secure_home(settings: Settings) -> None:
    """Make the embedded profile's files private to the service's user before anything writes them.

    The home and its logs and artifact directories become 0700; the SQLite files (app DB, broker) are
    created 0600 before SQLite opens them, and SQLite gives its -wal and -shm files the database's mode; what
    an older version left readable (databases, logs, keys) is taken to 0600."""
    home = settings.home.resolve()
    ensure_private_dir(home)
    os.chmod(home, PRIVATE_DIR_MODE)
    for directory in (home / LOG_DIR, *local_dirs(settings)):
        ensure_private_dir(directory)
        if directory.is_relative_to(home):
            os.chmod(directory, PRIVATE_DIR_MODE)
    for url in (settings.db_url, settings.broker):
        path = _sqlite_path(url)
        if path is None:
            continue
        ensure_private_dir(path.parent)
        _private_file(path)
        for suffix in SQLITE_SUFFIXES[1:]:
            companion = path.with_name(path.name + suffix)
            if companion.exists():
                os.chmod(companion, PRIVATE_FILE_MODE)
    for existing in (*(home / LOG_DIR).glob("*.log"), *home.glob("*.key")):
        if existing.is_file() and not existing.is_symlink():
            os.chmod(existing, PRIVATE_FILE_MODE)


def upgrade(settings: Settings, revision: str = "head") -> None:
    """Upgrade the schema; for SQLite under a file lock so concurrent starters do not race (and with the
    home's files made private first, see secure_home)."""
    config = alembic_config(settings.db_url)
    if not settings.is_sqlite:
        command.upgrade(config, revision)
        return
    secure_home(settings)
    lock_path = settings.home.resolve() / "migrate.lock"
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


def prepare(settings: Settings) -> Path | None:
    """Before a service's processes start (`lethe up`, the demo): upgrade the schema and, on the embedded
    profile's first start, create the local admin key (its file's path is returned, else None)."""
    upgrade(settings)
    if settings.profile is not Profile.embedded:
        return None
    engine = make_engine(settings.db_url)
    try:
        with make_session_factory(engine)() as session:
            return bootstrap_admin_key(session, settings)
    finally:
        engine.dispose()
