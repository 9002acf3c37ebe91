from __future__ import annotations

from fastapi import APIRouter, Request
from sqlalchemy import text

from app.core.problems import DomainError

router = APIRouter(tags=["health"])


@router.get("/healthz")
def liveness() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readiness(request: Request) -> dict[str, str]:
    """Ready when the database answers."""
    try:
        with request.app.state.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        raise DomainError("the database is unavailable", code="database-unavailable", status=503) from exc
    return {"status": "ready"}
