"""Operations: Prometheus metrics, opt-in behind a scrape token (the counts span every tenant)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request, Response
from fastapi.concurrency import run_in_threadpool

from app.core.problems import NotFound, Unauthorized
from app.core.security import bearer_matches
from app.services.ops.metrics_export import CONTENT_TYPE, exposition

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition format."}},
)
async def metrics(
    request: Request,
    authorization: Annotated[str | None, Header(description="`Bearer <LETHE_METRICS_TOKEN>`.")] = None,
) -> Response:
    """Jobs by kind and status, queue depth, broker queues, job durations, worker heartbeat ages, deletion
    requests and reports (see app.services.ops.metrics_export).

    Counts over every tenant, so not public: off (404) unless ``LETHE_METRICS_TOKEN`` is set, and then only
    for ``Authorization: Bearer <token>`` (401 otherwise). API keys do not work here: a tenant's key must
    not see other tenants' activity."""
    state = request.app.state
    token = state.settings.metrics_token
    if token is None:
        raise NotFound("metrics are not enabled (set LETHE_METRICS_TOKEN)", code="not-found")
    if not bearer_matches(authorization, token.get_secret_value()):
        raise Unauthorized(
            "send the scrape token as 'Authorization: Bearer <LETHE_METRICS_TOKEN>'",
            code="invalid-metrics-token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    body = await run_in_threadpool(exposition, state.read_sessions, state.settings.broker)
    return Response(body, media_type=CONTENT_TYPE)
