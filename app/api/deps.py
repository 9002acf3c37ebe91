"""Request dependencies: settings, DB session, artifact store, the authenticated principal.

Dependencies that do no I/O are ``async def``: FastAPI runs a plain ``def`` dependency in the thread pool,
a hop that costs more than the dependency itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.datastructures import State

from app.core.config import Settings
from app.core.problems import Forbidden, Unauthorized
from app.core.security import KeyCache, Principal, Scope, request_token
from app.models import ApiKey
from app.models.base import utcnow
from app.services.jobs.lifecycle import Publisher
from app.services.ops.keys import authenticate
from app.storage import ArtifactStore


async def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def get_session(request: Request) -> Iterator[Session]:
    """A session per request; reads get a read-only one, which never holds SQLite's write lock."""
    state = request.app.state
    factory = state.read_sessions if request.method in READ_METHODS else state.sessions
    session: Session = factory()
    try:
        yield session
    finally:
        session.close()


async def get_store(request: Request) -> ArtifactStore:
    store: ArtifactStore = request.app.state.store
    return store


async def get_publisher(request: Request) -> Publisher:
    publisher: Publisher = request.app.state.publisher
    return publisher


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
SessionDep = Annotated[Session, Depends(get_session)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
PublisherDep = Annotated[Publisher, Depends(get_publisher)]


def missing_key() -> Unauthorized:
    return Unauthorized(
        "missing API key: send 'Authorization: Bearer lk_...' or 'X-API-Key'",
        code="missing-api-key",
        headers={"WWW-Authenticate": "Bearer"},
    )


def invalid_key() -> Unauthorized:
    return Unauthorized(
        "invalid, expired or revoked API key", code="invalid-api-key", headers={"WWW-Authenticate": "Bearer"}
    )


# Where app.main.AuthGate leaves the principal it verified before the body was read (request.state).
PRINCIPAL_STATE = "principal"


def _lookup_key(state: State, token: str) -> tuple[Principal | None, float | None]:
    """The key's principal and the seconds until it expires (None: never), on a short session of its own."""
    with state.read_sessions() as session:
        principal = authenticate(session, token, state.settings.key_pepper)
        if principal is None:
            return None, None
        expires_at = session.scalar(select(ApiKey.expires_at).where(ApiKey.key_id == principal.key_id))
    return principal, None if expires_at is None else (expires_at - utcnow()).total_seconds()


async def resolve_token(state: State, token: str) -> Principal | None:
    """The principal of an API key, or None when it is unknown, expired or revoked.

    ``state`` is the app's state. A key verified in the last KEY_CACHE_TTL_SECONDS is trusted without the
    database (see KeyCache for what that means for revocation); otherwise the lookup runs in a thread on a
    session of its own, so authentication never holds the route's connection. Shared by the dependencies
    below and by app.main.AuthGate, which checks keys before a request body is read."""
    cache: KeyCache | None = getattr(state, "key_cache", None)
    principal = cache.get(token) if cache is not None else None
    if principal is None:
        principal, expires_in = await run_in_threadpool(_lookup_key, state, token)
        if principal is not None and cache is not None:
            cache.put(token, principal, expires_in)
    return principal


async def get_principal(
    request: Request,
    authorization: Annotated[str | None, Header(description="`Bearer lk_...` API key.")] = None,
    x_api_key: Annotated[str | None, Header(description="Alternative to Authorization.")] = None,
) -> Principal:
    verified: Principal | None = getattr(request.state, PRINCIPAL_STATE, None)
    if verified is not None:
        return verified  # AuthGate verified this request's own key before reading its body
    token = request_token(authorization, x_api_key)
    if not token:
        raise missing_key()
    principal = await resolve_token(request.app.state, token)
    if principal is None:
        raise invalid_key()
    setattr(request.state, PRINCIPAL_STATE, principal)
    return principal


def require(scope: Scope) -> Callable[..., Awaitable[Principal]]:
    # One dependency with the header parameters itself rather than one on top of get_principal: each level
    # of sub-dependencies costs FastAPI a solve_dependencies pass on every request.
    async def _check(
        request: Request,
        authorization: Annotated[str | None, Header(description="`Bearer lk_...` API key.")] = None,
        x_api_key: Annotated[str | None, Header(description="Alternative to Authorization.")] = None,
    ) -> Principal:
        principal = await get_principal(request, authorization, x_api_key)
        if scope not in principal.scopes:
            raise Forbidden(f"this API key lacks the '{scope.value}' scope", code="insufficient-scope")
        return principal

    return _check


Reader = Annotated[Principal, Depends(require(Scope.read))]
Submitter = Annotated[Principal, Depends(require(Scope.submit))]
Admin = Annotated[Principal, Depends(require(Scope.admin))]


def request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)
