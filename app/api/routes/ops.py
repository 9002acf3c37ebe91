"""Operations: Prometheus metrics (unauthenticated like /healthz: counts only, no tenant data)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from app.services.metrics_export import CONTENT_TYPE, exposition

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition format."}},
)
async def metrics(request: Request) -> Response:
    """Jobs by kind and status, queue depth, broker queues, job durations, worker heartbeat ages, deletion
    requests and reports (see app.services.metrics_export)."""
    state = request.app.state
    body = await run_in_threadpool(exposition, state.read_sessions, state.settings.broker)
    return Response(body, media_type=CONTENT_TYPE)
