"""The FastAPI application factory. Never imports torch (tested)."""

from __future__ import annotations

import gc
import logging
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from anyio import to_thread
from fastapi import APIRouter, FastAPI, Request
from sqlalchemy.exc import OperationalError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.deps import PRINCIPAL_STATE, invalid_key, missing_key, resolve_token
from app.api.docs import install_docs
from app.api.observability import RequestContext
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
    uploads,
)
from app.core.config import Profile, Settings, get_settings
from app.core.db import make_engine, make_session_factory, read_only
from app.core.logs import configure_logging
from app.core.problems import (
    PROBLEM_RESPONSES,
    DomainError,
    install_problem_handlers,
    problem_response,
)
from app.core.security import KeyCache, request_token
from app.dashboard import mount_dashboard
from app.services.jobs.lifecycle import Publisher
from app.storage import create_store, ensure_private_dir

log = logging.getLogger(__name__)
BODY_OVERHEAD_BYTES = 1024 * 1024  # multipart framing and form fields beside the upload itself


MULTIPART_MEDIA_TYPE = "multipart/form-data"
API_PREFIX = "/v1"
# The raw parts of a chunked upload (PUT /v1/uploads/{id}) take the upload limit too, and only there: any
# other route keeps the JSON limit whatever the client calls its body.
PART_MEDIA_TYPE = "application/octet-stream"
PART_PATH_PREFIX = "/v1/uploads/"


def _media_type(headers: Headers) -> str:
    return headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _is_multipart(headers: Headers) -> bool:
    return _media_type(headers) == MULTIPART_MEDIA_TYPE


def _is_upload(scope: Scope, headers: Headers) -> bool:
    part = (
        scope.get("method") == "PUT"
        and str(scope.get("path", "")).startswith(PART_PATH_PREFIX)
        and _media_type(headers) == PART_MEDIA_TYPE
    )
    return part or _is_multipart(headers)


def _has_body(headers: Headers) -> bool:
    length = headers.get("content-length")
    return "transfer-encoding" in headers or (length is not None and length.strip() != "0")


class BodyLimit:
    """Refuses a request body beyond its limit: multipart uploads ``upload_limit``, every other body (JSON)
    ``json_limit``.

    A declared Content-Length over the limit is answered 413 before anything is read; a body sent without
    one (chunked) is counted as it is read, and the route reading it gets a 413 HTTPException the moment it
    crosses the limit, rendered as problem+json ``payload-too-large``. A JSON route thus never buffers more
    than ``json_limit`` bytes, whatever the upload limit is.
    """

    def __init__(self, app: ASGIApp, upload_limit: int, json_limit: int) -> None:
        self.app = app
        self.upload_limit = upload_limit
        self.json_limit = json_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        limit = self.upload_limit if _is_upload(scope, headers) else self.json_limit
        detail = f"the request body exceeds the limit of {limit} bytes" + (
            "" if limit == self.upload_limit else " for bodies that are not multipart uploads"
        )
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await problem_response(Request(scope), 413, "payload-too-large", detail)(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise StarletteHTTPException(413, detail=detail)
            return message

        await self.app(scope, limited_receive, send)


class AuthGate:
    """Verifies the API key of every request that carries a body before anything reads the body.

    FastAPI reads (and parses) a route's body before it resolves the route's dependencies, so without this an
    unauthenticated client could make the API buffer and parse bodies up to the size limits. A request with a
    body (Content-Length > 0 or chunked) and no valid key gets the same 401 problem as from the dependencies,
    and its body is never received. The key is checked by app.api.deps.resolve_token (the process's key
    cache, else the database); the principal is left in ``request.state`` for the route's dependencies, which
    still check the scope. Requests without a body are left to the dependencies.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if not _has_body(headers):
            await self.app(scope, receive, send)
            return
        token = request_token(headers.get("authorization"), headers.get("x-api-key"))
        error: DomainError | None = missing_key() if not token else None
        if token:
            try:
                principal = await resolve_token(scope["app"].state, token)
            except OperationalError:
                # Outside the app's exception handlers: answer as they would for a database outage.
                log.warning("database unavailable while checking an API key")
                response = problem_response(
                    Request(scope),
                    503,
                    "database-unavailable",
                    "The database is temporarily unavailable; retry shortly.",
                    headers={"Retry-After": "5"},
                )
                await response(scope, receive, send)
                return
            if principal is None:
                error = invalid_key()
            else:
                scope.setdefault("state", {})[PRINCIPAL_STATE] = principal
        if error is not None:
            response = problem_response(
                Request(scope),
                error.status,
                error.code,
                error.detail,
                title=error.title,
                headers=error.headers,
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


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
        # Served from local files by install_docs(): FastAPI's own pages load their assets from a CDN.
        docs_url=None,
        redoc_url=None,
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
    app.state.store = create_store(settings)
    app.state.publisher = publisher or _default_publisher(settings)
    app.state.key_cache = KeyCache()  # per process: revocation reaches every process within its TTL
    install_problem_handlers(app)

    # Requests pass RequestContext (request id, access log, HTTP metrics), then AuthGate (the key, before any
    # body is read), then BodyLimit (the size, before and while the body is read); add_middleware puts the
    # last added outermost.
    # BodyLimit sits innermost so that the 413 it raises mid-read reaches the route's exception handlers.
    app.add_middleware(
        BodyLimit,
        upload_limit=settings.max_upload_bytes + BODY_OVERHEAD_BYTES,
        json_limit=settings.max_json_body_bytes,
    )
    app.add_middleware(AuthGate)
    app.add_middleware(RequestContext, access_log_enabled=settings.access_log, route_prefixes=(API_PREFIX,))

    v1 = APIRouter(prefix=API_PREFIX, responses=PROBLEM_RESPONSES)
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
        uploads.router,
    ):
        v1.include_router(router)
    app.include_router(v1)
    app.include_router(health.router, responses=PROBLEM_RESPONSES)
    app.include_router(ops.router, responses=PROBLEM_RESPONSES)
    install_docs(app)  # /docs, /redoc and their assets, before the dashboard's catch-all mount at `/`
    mount_dashboard(app)  # `/` and `/dashboard/...`, outside the OpenAPI document
    return app


def __getattr__(name: str) -> FastAPI:
    # `uvicorn app.main:app` builds the app lazily, so importing this module has no side effects.
    if name == "app":
        # Starlette spools multipart parts beyond 1 MiB to tempfile's directory: a served process keeps them
        # under its own home (0700), not in a shared (or RAM-backed) /tmp. Not in create_app(): tests build
        # apps inside pytest, whose own temporary directories must stay where they are.
        settings = get_settings()
        tempfile.tempdir = str(ensure_private_dir(settings.home.resolve() / "tmp"))
        # A served process logs JSON lines (app.core.logs); tests keep pytest's own log capture.
        configure_logging(settings.log_format, settings.log_level)
        served = create_app(settings)
        # A served process keeps this app (routes, schemas, SQLAlchemy metadata, ...) for its whole life:
        # freeze it out of the cyclic GC, whose full collections otherwise walk all of it while every request
        # waits (GET /v1/jobs/{id} under 64 pollers: p99 250 -> 130 ms, 304s 1,730 -> 2,130 req/s). Not in
        # create_app(): tests build many apps in one process, and a frozen one is never collected.
        gc.collect()
        gc.freeze()
        return served
    raise AttributeError(name)
