"""Alembic environment: one revision stream for SQLite and Postgres."""

from __future__ import annotations

from typing import Any

from alembic import context

from app.core.config import get_settings
from app.core.db import make_engine
from app.models import Base
from app.models.base import JSONVariant, UTCDateTime

config = context.config


def _render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    # Render the project's own column types by import so revisions stay dialect-neutral.
    if type_ == "type" and isinstance(obj, UTCDateTime | JSONVariant):
        autogen_context.imports.add("import app.models.base")
        return f"app.models.base.{type(obj).__name__}()"
    return False


def run_migrations() -> None:
    url = config.attributes.get("database_url") or get_settings().db_url
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


def _run(connection: Any) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        render_item=_render_item,
    )
    with context.begin_transaction():
        context.run_migrations()
    if connection.in_transaction():
        connection.commit()


run_migrations()
