"""The browser dashboard: static files (vanilla ES modules, no build step, no CDN) served beside the API.

``/`` answers ``static/index.html``; ``/dashboard/...`` the assets. Both are plain ASGI endpoints (public, no
API key: the page holds no data), outside the OpenAPI document.
Every request the page makes goes to the same origin's ``/v1`` API with the key the user logs in with
(kept in ``sessionStorage``). The page's Content-Security-Policy allows nothing from other origins.
"""

from __future__ import annotations

import mimetypes
import os
from os import PathLike
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

STATIC_DIR = Path(__file__).parent / "static"
ASSET_PREFIX = "/dashboard"
# Same-origin only: scripts, styles, fetches; images may also be blob: (grids fetched with the API key).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class DashboardFiles(StaticFiles):
    """Static files with the dashboard's security headers and revalidation on every load."""

    def file_response(
        self,
        full_path: PathLike[str] | str,
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(SECURITY_HEADERS)
        return response


class DashboardIndex:
    """``GET /``: the page itself. Other methods get a 405 problem."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            raise StarletteHTTPException(405, headers={"Allow": "GET, HEAD"})
        response = FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=SECURITY_HEADERS)
        await response(scope, receive, send)


def mount_dashboard(app: FastAPI) -> None:
    # ES modules must come with a JavaScript MIME type; some systems' mime.types map .js elsewhere.
    mimetypes.add_type("text/javascript", ".js")
    mimetypes.add_type("text/css", ".css")
    mimetypes.add_type("image/svg+xml", ".svg")

    # Plain ASGI endpoints (like the mount): public static files, no path operations, no OpenAPI entries.
    app.router.routes.append(Route("/", DashboardIndex(), name="dashboard-index", include_in_schema=False))
    app.mount(ASSET_PREFIX, DashboardFiles(directory=STATIC_DIR), name="dashboard")
