"""Issue 17 item 8: private files in the embedded home, the production pepper, the shared name rules."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel, Field, ValidationError

from app.core.config import DEFAULT_KEY_PEPPER, Profile, Settings
from app.schemas.common import BIDI_CONTROL_CHARACTERS, NAME_PATTERN


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """The usual 022: what made the files world-readable. Restored afterwards."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def test_embedded_home_files_are_private(tmp_path: Path, permissive_umask: None) -> None:
    from app.core import migrate
    from app.core.db import make_engine
    from app.storage import LocalArtifactStore

    home = tmp_path / "home"
    # What an older version left behind: a readable home, log and key.
    (home / "logs").mkdir(parents=True)
    os.chmod(home, 0o755)
    (home / "logs" / "api.log").write_text("old log\n")
    (home / "admin.key").write_text("lk_x_y\n")
    os.chmod(home / "admin.key", 0o644)
    settings = Settings(home=home)
    migrate.upgrade(settings)

    assert mode(home) == 0o700
    assert mode(home / "logs") == 0o700 and mode(home / "logs" / "api.log") == 0o600
    assert mode(home / "admin.key") == 0o600
    assert mode(settings.artifacts) == 0o700
    database = home / "app.sqlite"
    assert mode(database) == 0o600
    engine = make_engine(settings.db_url)
    with engine.begin() as conn:  # a write: SQLite creates the -wal and -shm files
        conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS probe (x INTEGER)")
        conn.exec_driver_sql("INSERT INTO probe VALUES (1)")
        for suffix in ("-wal", "-shm"):
            companion = database.with_name(database.name + suffix)
            assert companion.exists() and mode(companion) == 0o600, suffix
    engine.dispose()
    broker = home / "broker.sqlite"
    assert mode(broker) == 0o600
    with sqlite3.connect(broker) as conn:  # the pre-created empty file is a valid database
        conn.execute("PRAGMA journal_mode=WAL")

    store = LocalArtifactStore(settings.artifacts)
    store.put("tenant/models/ab/abc.safetensors", b"weights")
    written = settings.artifacts / "tenant/models/ab/abc.safetensors"
    assert mode(written) == 0o600
    for directory in (written.parent, written.parent.parent, written.parent.parent.parent):
        assert mode(directory) == 0o700, directory
    staged = store.staging_path("tenant/datasets")
    assert mode(staged) == 0o600 and mode(staged.parent) == 0o700
    staged.write_bytes(b"npz")
    store.put_file("tenant/datasets/cd/cde.npz", staged)
    assert not staged.exists() and mode(settings.artifacts / "tenant/datasets/cd/cde.npz") == 0o600


def test_production_refuses_the_default_pepper() -> None:
    servers = {"database_url": "postgresql+psycopg://u@h/db", "broker_url": "redis://h:6379/0"}
    with pytest.raises(ValidationError, match="LETHE_KEY_PEPPER"):
        Settings(profile=Profile.production, **servers)
    with pytest.raises(ValidationError, match="default key_pepper"):
        Settings(profile=Profile.production, key_pepper=DEFAULT_KEY_PEPPER, **servers)
    settings = Settings(profile=Profile.production, key_pepper="a-long-random-secret", **servers)
    assert settings.key_pepper == "a-long-random-secret"
    assert Settings(profile=Profile.embedded).key_pepper == DEFAULT_KEY_PEPPER  # fine on one machine


class Named(BaseModel):
    name: str = Field(pattern=NAME_PATTERN)


def test_name_rules_refuse_every_bidi_control_character() -> None:
    # Unicode's Bidi_Control property (PropList.txt): ALM, LRM, RLM, LRE, RLE, PDF, LRO, RLO, LRI, RLI,
    # FSI, PDI.
    expected = {0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)}
    assert {ord(ch) for ch in BIDI_CONTROL_CHARACTERS} == expected
    for code in expected:
        with pytest.raises(ValidationError):
            Named(name=f"report{chr(code)}gpj.exe")
    for control in ("\x00", "\x1b", "\x85"):
        with pytest.raises(ValidationError):
            Named(name=f"a{control}b")
    # Right-to-left text itself is a fine name: only the invisible reordering controls are refused.
    for fine in ("שלום", "مرحبا", "Données — 数据集 🚀", "zero\u200bwidth space"):
        assert Named(name=fine).name == fine
