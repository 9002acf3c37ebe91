"""Structured logs: one JSON object per line, carrying the request id / job id of the work in progress.

The API binds ``request_id`` (and, once the key is known, ``tenant``) for the length of a request; a worker
binds ``job_id``, ``attempt``, ``request_id`` (the request that submitted the job) and ``phase`` for the
length of a job. Every record logged meanwhile, by any module, carries them, so one ``request_id`` finds
the access line of ``POST /v1/jobs`` and every line the workers wrote about that job.

Context lives in a ContextVar: the event loop's tasks and anyio's worker threads (which copy the caller's
context) each see their own request's fields.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

_CONTEXT: ContextVar[dict[str, Any]] = ContextVar("lethe_log_context", default={})  # noqa: B039 (never mutated)
FIELDS_ATTR = "lethe_fields"  # `extra={FIELDS_ATTR: {...}}` adds fields to one record
_HANDLER_MARK = "_lethe_handler"
LOG_FORMATS = ("json", "text")


def current_context() -> dict[str, Any]:
    return dict(_CONTEXT.get())


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Bind ``fields`` to every record logged inside the block (None values are left out)."""
    token = _CONTEXT.set({**_CONTEXT.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def bind(**fields: Any) -> None:
    """Add fields to the current context until the enclosing ``log_context`` block ends (e.g. a job's
    phase, which changes inside the block)."""
    _CONTEXT.set({**_CONTEXT.get(), **{k: v for k, v in fields.items() if v is not None}})


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message", ...context, ...record fields, "exc"?}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        entry.update(_CONTEXT.get())
        entry.update(getattr(record, FIELDS_ATTR, None) or {})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """For a terminal: the classic line, then the context as ``key=value``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        fields = {**_CONTEXT.get(), **(getattr(record, FIELDS_ATTR, None) or {})}
        line = super().format(record)
        return line + "".join(f" {k}={v}" for k, v in fields.items()) if fields else line


def configure_logging(fmt: str = "json", level: str = "INFO") -> None:
    """One handler on the root logger (stderr), replacing the one an earlier call installed; idempotent.

    Loggers that propagate (the app's, Celery's task loggers) go through it; uvicorn's own error logger
    keeps its handler, and its access log is turned off where Lethe writes its own (app.api.observability).
    """
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {LOG_FORMATS}, not {fmt!r}")
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_MARK, False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    setattr(handler, _HANDLER_MARK, True)
    root.addHandler(handler)
    root.setLevel(level.upper())
