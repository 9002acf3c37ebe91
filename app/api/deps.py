"""Request dependencies: settings, DB session, artifact store, the authenticated principal."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from app.core.config import Settings
from app.core.problems import Forbidden, Unauthorized
from app.core.security import Principal, Scope
from app.services.jobs import Publisher
from app.services.keys import authenticate
from app.storage import ArtifactStore


def get_settings_dep(request: Request) -> Settings:
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


def get_store(request: Request) -> ArtifactStore:
    store: ArtifactStore = request.app.state.store
    return store


def get_publisher(request: Request) -> Publisher:
    publisher: Publisher = request.app.state.publisher
    return publisher


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
SessionDep = Annotated[Session, Depends(get_session)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
PublisherDep = Annotated[Publisher, Depends(get_publisher)]

_BEARER = "bearer "


def get_principal(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    authorization: Annotated[str | None, Header(description="`Bearer lk_...` API key.")] = None,
    x_api_key: Annotated[str | None, Header(description="Alternative to Authorization.")] = None,
) -> Principal:
    token = x_api_key
    if token is None and authorization is not None and authorization.lower().startswith(_BEARER):
        token = authorization[len(_BEARER) :].strip()
    if not token:
        raise Unauthorized(
            "missing API key: send 'Authorization: Bearer lk_...' or 'X-API-Key'",
            code="missing-api-key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    principal = authenticate(session, token, settings.key_pepper)
    session.rollback()  # end the read transaction before the route starts its own work
    if principal is None:
        raise Unauthorized(
            "invalid, expired or revoked API key",
            code="invalid-api-key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    request.state.principal = principal
    return principal


def require(scope: Scope) -> Callable[..., Principal]:
    def _check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if scope not in principal.scopes:
            raise Forbidden(f"this API key lacks the '{scope.value}' scope", code="insufficient-scope")
        return principal

    return _check


Reader = Annotated[Principal, Depends(require(Scope.read))]
Submitter = Annotated[Principal, Depends(require(Scope.submit))]
Admin = Annotated[Principal, Depends(require(Scope.admin))]


def request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)
