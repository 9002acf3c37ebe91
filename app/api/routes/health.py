from __future__ import annotations

from fastapi import APIRouter, Request
from sqlalchemy import text

from app.core.problems import DomainError
from app.services.ops.metrics_export import broker_problem

router = APIRouter(tags=["health"])


@router.get("/healthz")
def liveness() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readiness(request: Request) -> dict[str, object]:
    """Ready when the database answers and the broker accepts a connection (503 problem+json otherwise:
    ``database-unavailable`` or ``broker-unavailable``)."""
    try:
        with request.app.state.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        raise DomainError("the database is unavailable", code="database-unavailable", status=503) from exc
    problem = broker_problem(request.app.state.settings.broker)
    if problem is not None:
        raise DomainError(
            f"the broker is unavailable: {problem}",
            code="broker-unavailable",
            status=503,
            headers={"Retry-After": "5"},
        )
    return {"status": "ready", "checks": {"database": "ok", "broker": "ok"}}
