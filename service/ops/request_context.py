"""Every request's id, log scope and one access-log line.

A pure ASGI middleware: Starlette's ``@app.middleware("http")`` (BaseHTTPMiddleware) runs
each request through extra tasks and memory streams, about half a millisecond a request,
which a CDS Hooks call with a 10 ms budget feels.
"""

from __future__ import annotations

import logging
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import inputs, logs
from service.fhir_response import outcome

log = logging.getLogger("service.api")


class RequestContextMiddleware:
    """A request id (the caller's ``X-Request-Id`` when it is safe to echo, else a new one)
    on the response and in every log line of the request; the caller's credentials and the
    patient id registered as secrets of the request's log scope; an unexpected error answered
    500 without a stack trace; then one log line: method, route template (never the path, which
    carries ids), status and time."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        rid = inputs.request_id(request.headers.get("x-request-id")) or uuid.uuid4().hex
        token = logs.request_id.set(rid)
        started = time.perf_counter()
        status: int | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["X-Request-Id"] = rid
            await send(message)

        try:
            with logs.request_scope():
                register_request_secrets(request)
                try:
                    await self.app(scope, receive, send_with_id)
                except Exception as exc:  # noqa: BLE001 - the last line of defence
                    log.error("unhandled error", extra={"error_type": type(exc).__name__})
                    if status is not None:
                        raise  # the answer has begun: nothing else can be said
                    await outcome(500, "exception", "internal error")(scope, receive, send_with_id)
        finally:
            logs.request_id.reset(token)
        log.info(
            "request",
            extra={
                "request_id": rid,
                "method": request.method,
                "route": getattr(scope.get("route"), "path", "unmatched"),  # no ids in logs
                "status": status,
                "elapsed_ms": round((time.perf_counter() - started) * 1000, 1),
            },
        )


def register_request_secrets(request: Request) -> None:
    """What a caller sends that must never be logged: its credentials, the patient's id."""
    for name in ("authorization", "x-api-key"):
        value = request.headers.get(name)
        if value:
            logs.register_request_secret(value)
            logs.register_request_secret(value.partition(" ")[2].strip())
    logs.register_request_secret(request.query_params.get("patient"))
