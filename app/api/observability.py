"""The request id, the access log and the HTTP metrics of every request, as one plain ASGI middleware.

Starlette's BaseHTTPMiddleware (``@app.middleware("http")``) costs a task group, memory streams and a
streaming wrapper around every response, on every request; this only wraps ``send``.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.deps import PRINCIPAL_STATE
from app.core.logs import FIELDS_ATTR, log_context
from app.services.ops.telemetry import UNMATCHED_ROUTE, observe_request

access_log = logging.getLogger("lethe.access")
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def route_label(scope: Scope, prefixes: tuple[str, ...] = ()) -> str:
    """The matched route's full path template (``/v1/jobs/{job_id}``); a mount's prefix (the dashboard's
    files, the docs assets); else ``unmatched``.

    FastAPI (0.165) leaves in ``scope["route"]`` the route as its router declared it, without the prefix of
    ``include_router``: the prefix is the one of ``prefixes`` under which the rest of the path matches it."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        regex = getattr(route, "path_regex", None)
        request_path = scope.get("path", "")
        for prefix in prefixes:
            if (
                request_path.startswith(prefix)
                and regex is not None
                and regex.match(request_path[len(prefix) :])
            ):
                return prefix + path
        return path
    root = scope.get("root_path") or ""
    app_root = scope.get("app_root_path") or ""
    if root and root != app_root:
        return root[len(app_root) :] + "/*"
    return UNMATCHED_ROUTE


class RequestContext:
    """Keeps a client's ``X-Request-ID`` (when it fits the audit column and is plain ASCII) or makes one,
    answers it in ``X-Request-ID``, binds it to every log record of the request (app.core.logs), and once the
    response has been sent writes one access line and observes the HTTP counter and latency histogram."""

    def __init__(
        self, app: ASGIApp, access_log_enabled: bool = True, route_prefixes: tuple[str, ...] = ()
    ) -> None:
        self.app = app
        self.access_log_enabled = access_log_enabled
        self.route_prefixes = route_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = Headers(scope=scope)
        client_id = headers.get("x-request-id") or ""
        request_id = client_id if REQUEST_ID.fullmatch(client_id) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id  # request.state.request_id
        raw_id = request_id.encode("latin-1")
        status = 500  # what the server answers if the app raises before starting a response

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", raw_id)]
            await send(message)

        with log_context(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                self._record(scope, state, status, time.perf_counter() - started)

    def _record(self, scope: Scope, state: dict[str, Any], status: int, seconds: float) -> None:
        route = route_label(scope, self.route_prefixes)
        method = scope["method"]
        observe_request(method, route, status, seconds)
        if not self.access_log_enabled:
            return
        principal = state.get(PRINCIPAL_STATE)
        fields = {
            "method": method,
            "route": route,
            "path": scope.get("path"),
            "status": status,
            "latency_ms": round(seconds * 1000.0, 2),
            "tenant": str(principal.tenant_id) if principal is not None else None,
            "key_id": principal.key_id if principal is not None else None,
        }
        access_log.info("%s %s %d", method, route, status, extra={FIELDS_ATTR: fields})
