"""The FastAPI application factory. Never imports torch (tested)."""

from __future__ import annotations

import gc
import logging
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from anyio import to_thread
from fastapi import APIRouter, FastAPI, Request
from starlette.datastructures import Headers
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
from app.core.security import KeyCache
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


class RequestContext:
    """Request id and the Content-Length check, as plain ASGI.

    Starlette's BaseHTTPMiddleware (``@app.middleware("http")``) costs a task group, memory streams and a
    streaming wrapper around every response, on every request; this only wraps ``send``.
    """

    def __init__(self, app: ASGIApp, body_limit: int) -> None:
        self.app = app
        self.body_limit = body_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        # A client's X-Request-ID is kept only when it fits the audit column and is plain ASCII.
        client_id = headers.get("x-request-id") or ""
        request_id = client_id if REQUEST_ID.fullmatch(client_id) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id  # request.state.request_id
        raw_id = request_id.encode("latin-1")

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", raw_id)]
            await send(message)

        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.body_limit):
            response = problem_response(
                Request(scope),
                413,
                "payload-too-large",
                f"the request body exceeds the limit of {self.body_limit} bytes",
            )
            await response(scope, receive, send_with_id)
            return
        await self.app(scope, receive, send_with_id)


def _default_publisher(settings: Settings) -> Publisher:
    from workers.celery_app import CeleryPublisher, make_celery

    return CeleryPublisher(make_celery(settings))


def create_app(settings: Settings | None = None, publisher: Publisher | None = None) -> FastAPI:
    settings = settings or get_settings()
    # One pool connection per limiter thread, as many again in overflow (a request may hold two at once,
    # e.g. its session plus publish_all's): a thread never waits on a connection that only a thread blocked
    # behind it could give back.
    size = settings.api_concurrency
    engine = make_engine(
        settings.db_url, **({} if settings.is_sqlite else {"pool_size": size, "max_overflow": size})
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from app.core import migrate

        # The limiter bounds the threads running sync routes, sync dependencies and run_in_threadpool calls;
        # it is sized with the DB pool (see above). It belongs to this event loop, hence set here.
        to_thread.current_default_thread_limiter().total_tokens = settings.api_concurrency
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
    # Hot single-statement reads (GET /v1/jobs/{id}): on Postgres in autocommit, which saves the BEGIN and
    # ROLLBACK round trips of a transaction that only reads; SQLite keeps its DEFERRED read transactions.
    app.state.read_engine = (
        read_only(engine) if settings.is_sqlite else engine.execution_options(isolation_level="AUTOCOMMIT")
    )
    app.state.store = LocalArtifactStore(settings.artifacts)
    app.state.publisher = publisher or _default_publisher(settings)
    app.state.key_cache = KeyCache()  # per process: revocation reaches every process within its TTL
    install_problem_handlers(app)

    # Bodies sent without Content-Length (chunked) are counted as they are read. Added first, so it sits
    # inside RequestContext: its 413 then reaches the route's exception handlers unwrapped.
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes + BODY_OVERHEAD_BYTES)

    app.add_middleware(RequestContext, body_limit=settings.max_upload_bytes + BODY_OVERHEAD_BYTES)

    v1 = APIRouter(prefix="/v1", responses=PROBLEM_RESPONSES)
    # FastAPI matches a request against the routes one by one, in this order (about 50 before the jobs
    # router otherwise): jobs first, since GET /v1/jobs/{id} is what pollers call. No route of the others
    # matches a /v1/jobs path, so the order changes nothing else (but the OpenAPI document's order).
    for router in (
        jobs.router,
        discovery.router,
        datasets.router,
        models.router,
        forget_sets.router,
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
        served = create_app()
        # A served process keeps this app (routes, schemas, SQLAlchemy metadata, ...) for its whole life:
        # freeze it out of the cyclic GC, whose full collections otherwise walk all of it while every request
        # waits (GET /v1/jobs/{id} under 64 pollers: p99 250 -> 130 ms, 304s 1,730 -> 2,130 req/s). Not in
        # create_app(): tests build many apps in one process, and a frozen one is never collected.
        gc.collect()
        gc.freeze()
        return served
    raise AttributeError(name)
