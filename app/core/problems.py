"""RFC 9457 problem details: every error the API returns is ``application/problem+json``."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.storage.base import StorageError
from workers.engine.errors import ShapeTableUnavailable

PROBLEM_BASE = "https://lethe.dev/problems/"
PROBLEM_MEDIA_TYPE = "application/problem+json"
log = logging.getLogger(__name__)


class Problem(BaseModel):
    """RFC 9457 problem object (with Lethe's extensions ``code`` and ``errors``)."""

    type: str = Field(description="URI identifying the problem type.")
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    code: str = Field(description="Stable machine-readable slug, the last segment of `type`.")
    errors: list[dict[str, Any]] | None = None
    request_id: str | None = None


# Documented on every route (app.main): any of them can answer a 4xx problem (auth, scope, validation,
# body size, not found, conflict, ...) or a 503 while the database is unreachable.
PROBLEM_SCHEMA_REF = {"$ref": "#/components/schemas/Problem"}
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {
        "description": "Client error: RFC 9457 problem details; `code` says which.",
        "content": {PROBLEM_MEDIA_TYPE: {"schema": PROBLEM_SCHEMA_REF}},
    },
    503: {
        "description": "The database is unavailable; retry after `Retry-After` seconds.",
        "content": {PROBLEM_MEDIA_TYPE: {"schema": PROBLEM_SCHEMA_REF}},
    },
}


class DomainError(Exception):
    """An error with an HTTP status and a stable code; raised anywhere, rendered as problem+json."""

    status: int = 400
    code: str = "bad-request"
    title: str = "Bad request"

    def __init__(
        self,
        detail: str,
        *,
        code: str | None = None,
        status: int | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
            self.title = HTTPStatus(status).phrase
        self.errors = errors
        self.headers = headers or {}


class NotFound(DomainError):
    status, code, title = 404, "not-found", "Not found"


class Forbidden(DomainError):
    status, code, title = 403, "forbidden", "Forbidden"


class Unauthorized(DomainError):
    status, code, title = 401, "unauthorized", "Unauthorized"


class Conflict(DomainError):
    status, code, title = 409, "conflict", "Conflict"


class Unprocessable(DomainError):
    status, code, title = 422, "unprocessable", "Unprocessable content"


class PayloadTooLarge(DomainError):
    status, code, title = 413, "payload-too-large", "Payload too large"


def problem_response(
    request: Request,
    status: int,
    code: str,
    detail: str | None,
    *,
    title: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    request_id = getattr(request.state, "request_id", None)
    problem = Problem(
        type=PROBLEM_BASE + code,
        title=title or HTTPStatus(status).phrase,
        status=status,
        detail=detail,
        instance=request.url.path,
        code=code,
        errors=errors,
        request_id=request_id,
    )
    return JSONResponse(
        problem.model_dump(exclude_none=True),
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers,
    )


def validation_errors(errors: Any, prefix: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Pydantic error items as JSON-able ``{loc, msg, type}`` (input values left out: they may be huge)."""
    return [
        {
            "loc": [*prefix, *err.get("loc", ())],
            "msg": str(err.get("msg", "")),
            "type": str(err.get("type", "")),
        }
        for err in errors
    ]


def summarize_errors(errors: list[dict[str, Any]], limit: int = 5) -> str:
    """``loc: msg; loc: msg`` for the first few validation error items."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:limit])


def _is_validation_item(item: dict[str, Any]) -> bool:
    return isinstance(item.get("loc"), list | tuple) and "msg" in item


def _is_json_media_type(content_type: str | None) -> bool:
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


def install_problem_openapi(app: FastAPI) -> None:
    """Add the Problem schema that ``PROBLEM_RESPONSES`` refers to to the app's OpenAPI components."""
    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        document = default_openapi()
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        schemas.setdefault("Problem", Problem.model_json_schema(ref_template="#/components/schemas/{model}"))
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def install_problem_handlers(app: FastAPI) -> None:
    install_problem_openapi(app)

    @app.exception_handler(DomainError)
    async def _domain(request: Request, exc: DomainError) -> JSONResponse:
        detail = exc.detail
        if exc.errors and all(_is_validation_item(e) for e in exc.errors):
            # "invalid params for method 'ft'" alone does not say what to fix.
            detail = f"{detail}: {summarize_errors(exc.errors)}"
        return problem_response(
            request,
            exc.status,
            exc.code,
            detail,
            title=exc.title,
            errors=exc.errors,
            headers=dict(exc.headers) if exc.headers else None,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = validation_errors(exc.errors())
        content_type = request.headers.get("content-type")
        if any(tuple(e["loc"]) == ("body",) for e in errors) and not _is_json_media_type(content_type):
            # A JSON route got a body it did not parse: say that, not "Input should be a valid dictionary".
            return problem_response(
                request,
                415,
                "unsupported-media-type",
                "this endpoint takes a JSON body sent with 'Content-Type: application/json'; the request had "
                + (f"'{content_type}'" if content_type else "no Content-Type"),
                errors=errors,
            )
        return problem_response(
            request,
            422,
            "validation-error",
            f"The request is invalid: {summarize_errors(errors)}",
            errors=errors,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "-")
        detail = str(exc.detail)
        if exc.status_code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
            code = "payload-too-large"  # from app.main.BodyLimit; the Content-Length check uses it too
        return problem_response(
            request,
            exc.status_code,
            code,
            detail,
            headers=dict(exc.headers) if exc.headers else None,
        )

    @app.exception_handler(OperationalError)
    async def _db_unavailable(request: Request, exc: OperationalError) -> JSONResponse:
        log.warning("database unavailable: %s", exc)
        return problem_response(
            request,
            503,
            "database-unavailable",
            "The database is temporarily unavailable; retry shortly.",
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(DBAPIError)
    async def _db_error(request: Request, exc: DBAPIError) -> JSONResponse:
        if exc.connection_invalidated:
            return problem_response(
                request,
                503,
                "database-unavailable",
                "The database connection was lost; retry shortly.",
                headers={"Retry-After": "5"},
            )
        log.exception("database error")
        return problem_response(request, 500, "internal-error", "An unexpected database error occurred.")

    @app.exception_handler(StorageError)
    async def _store_unavailable(request: Request, exc: StorageError) -> JSONResponse:
        # The store's own message may name buckets, endpoints or paths: logged, not sent.
        log.warning("artifact store error: %s", exc)
        return problem_response(
            request,
            503,
            "artifact-store-unavailable",
            "The artifact store could not complete the operation; nothing was written. Retry shortly.",
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(ShapeTableUnavailable)
    async def _shape_table(request: Request, exc: ShapeTableUnavailable) -> JSONResponse:
        log.error("shape table unavailable: %s", exc)
        return problem_response(
            request,
            503,
            "shape-table-unavailable",
            "The shape table of this torchvision / timm architecture cannot be computed on this host now.",
            headers={"Retry-After": "30"},
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return problem_response(request, 500, "internal-error", "An unexpected error occurred.")
