"""The FastAPI application factory. Never imports torch (tested)."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.routes import (
    admin,
    campaigns,
    compliance,
    datasets,
    discovery,
    forget_sets,
    generative,
    health,
    jobs,
    models,
    ops,
    plots,
    shadow_models,
)
from app.core.config import Profile, Settings, get_settings
from app.core.db import make_engine, make_session_factory, read_only
from app.core.problems import PROBLEM_RESPONSES, install_problem_handlers, problem_response
from app.dashboard import mount_dashboard
from app.services.jobs import Publisher
from app.storage import LocalArtifactStore

log = logging.getLogger(__name__)
BODY_OVERHEAD_BYTES = 1024 * 1024  # multipart framing and form fields beside the upload itself
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class BodyLimit:
    """Refuses a request body beyond ``limit`` bytes while it is read, whatever its Content-Length says.

    The route reading the body gets a 413 HTTPException, rendered as problem+json ``payload-too-large``.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise StarletteHTTPException(
                        413, detail=f"the request body exceeds the limit of {self.limit} bytes"
                    )
            return message

        await self.app(scope, limited_receive, send)


def _default_publisher(settings: Settings) -> Publisher:
    from workers.celery_app import CeleryPublisher, make_celery

    return CeleryPublisher(make_celery(settings))


def create_app(settings: Settings | None = None, publisher: Publisher | None = None) -> FastAPI:
    settings = settings or get_settings()
    engine = make_engine(settings.db_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from app.core import migrate

        if settings.profile is Profile.embedded:
            migrate.upgrade(settings)
            with app.state.sessions() as session:
                path = migrate.bootstrap_admin_key(session, settings)
            if path is not None:
                log.warning("Lethe embedded profile: admin API key written to %s", path)
        elif not migrate.schema_is_current(engine, settings):
            raise RuntimeError("the database schema is not at head: run `lethe migrate` first")
        yield
        engine.dispose()

    app = FastAPI(
        title="Lethe",
        version="0.1.0",
        summary="Machine-unlearning evaluation service",
        description="Upload checkpoints and forget sets, run unlearning methods and the retrain oracle as "
        "durable jobs, "
        "and compare their metrics. Every error is RFC 9457 problem+json.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessions = make_session_factory(engine)
    app.state.read_sessions = make_session_factory(read_only(engine))
    app.state.store = LocalArtifactStore(settings.artifacts)
    app.state.publisher = publisher or _default_publisher(settings)
    install_problem_handlers(app)

    # Bodies sent without Content-Length (chunked) are counted as they are read. Added first, so it sits
    # inside request_context: its 413 then reaches the route's exception handlers unwrapped.
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes + BODY_OVERHEAD_BYTES)

    @app.middleware("http")
    async def request_context(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        # A client's X-Request-ID is kept only when it fits the audit column and is plain ASCII.
        client_id = request.headers.get("x-request-id") or ""
        request.state.request_id = client_id if REQUEST_ID.fullmatch(client_id) else uuid.uuid4().hex
        length = request.headers.get("content-length")
        limit = settings.max_upload_bytes + BODY_OVERHEAD_BYTES
        if length is not None and (not length.isdigit() or int(length) > limit):
            return problem_response(
                request, 413, "payload-too-large", f"the request body exceeds the limit of {limit} bytes"
            )
        response = await call_next(request)
        response.headers["X-Request-ID"] = request.state.request_id
        return response

    v1 = APIRouter(prefix="/v1", responses=PROBLEM_RESPONSES)
    for router in (
        discovery.router,
        datasets.router,
        models.router,
        forget_sets.router,
        jobs.router,
        campaigns.router,
        shadow_models.router,
        admin.router,
        compliance.router,
        plots.router,
        generative.router,
    ):
        v1.include_router(router)
    app.include_router(v1)
    app.include_router(health.router, responses=PROBLEM_RESPONSES)
    app.include_router(ops.router, responses=PROBLEM_RESPONSES)
    mount_dashboard(app)  # `/` and `/dashboard/...`, outside the OpenAPI document
    return app


def __getattr__(name: str) -> FastAPI:
    # `uvicorn app.main:app` builds the app lazily, so importing this module has no side effects.
    if name == "app":
        return create_app()
    raise AttributeError(name)
