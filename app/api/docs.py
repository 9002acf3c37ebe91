"""``/docs`` (Swagger UI) and ``/redoc`` served from files shipped in the installed packages, and the API-key
security schemes of the OpenAPI document.

The assets come from the ``fastapi-standalone-docs`` wheel (Swagger UI and ReDoc dist files with their
licences, no code of its own used here): FastAPI's default pages load them from a CDN and its favicon from
fastapi.tiangolo.com, which an air-gapped deployment cannot reach. The pages here name no other host.

Keys are checked by app.api.deps from the raw ``Authorization`` / ``X-API-Key`` headers (one dependency
level per request, see its ``require``). The document declares them as security schemes instead of
header parameters, so Swagger UI's "Authorize" button fills them in for every operation.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS_URL = "/docs/assets"
FAVICON = "favicon.png"
API_KEY_SCHEMES: dict[str, dict[str, Any]] = {
    "bearerApiKey": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "lk_...",
        "description": "An API key (`lethe create-key`) as `Authorization: Bearer lk_...`.",
    },
    "headerApiKey": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "The same API key in `X-API-Key`.",
    },
}
METRICS_SCHEME: dict[str, dict[str, Any]] = {
    "metricsToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "`LETHE_METRICS_TOKEN`, for GET /metrics only (API keys do not work there).",
    }
}
KEY_HEADERS = frozenset({"authorization", "x-api-key"})


def assets_dir() -> Path:
    """The directory holding ``swagger/``, ``redoc/`` and ``fastapi/`` (the favicon) of the assets wheel."""
    return Path(str(files("fastapi_standalone_docs") / "static"))


def install_docs(app: FastAPI) -> None:
    """``/docs``, ``/redoc`` and their assets under ``/docs/assets``; the app is created with
    ``docs_url=None, redoc_url=None`` so that FastAPI's CDN pages are not registered."""
    app.mount(ASSETS_URL, StaticFiles(directory=assets_dir()), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"
    title = app.title

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{title} - Swagger UI",
            swagger_js_url=f"{ASSETS_URL}/swagger/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/fastapi/{FAVICON}",
            swagger_ui_parameters={"persistAuthorization": True},
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{title} - ReDoc",
            redoc_js_url=f"{ASSETS_URL}/redoc/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS_URL}/fastapi/{FAVICON}",
            with_google_fonts=False,
        )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = with_security_schemes(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    summary=app.summary,
                    description=app.description,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def with_security_schemes(document: dict[str, Any]) -> dict[str, Any]:
    """Operations that read an API key (both key headers among their parameters) require one of
    ``API_KEY_SCHEMES``; /metrics (``Authorization`` only) requires the scrape token. The key headers leave
    the parameter lists: Swagger UI sends what "Authorize" holds."""
    components = document.setdefault("components", {})
    components.setdefault("securitySchemes", {}).update({**API_KEY_SCHEMES, **METRICS_SCHEME})
    for item in document.get("paths", {}).values():
        for operation in item.values():
            if not isinstance(operation, dict) or "parameters" not in operation:
                continue
            headers = {
                p["name"].lower()
                for p in operation["parameters"]
                if p.get("in") == "header" and p["name"].lower() in KEY_HEADERS
            }
            if not headers:
                continue
            operation["parameters"] = [
                p
                for p in operation["parameters"]
                if not (p.get("in") == "header" and p["name"].lower() in KEY_HEADERS)
            ]
            if not operation["parameters"]:
                del operation["parameters"]
            if headers == KEY_HEADERS:
                operation["security"] = [{name: []} for name in API_KEY_SCHEMES]
            else:
                operation["security"] = [{name: []} for name in METRICS_SCHEME]
    return document
