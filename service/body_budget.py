"""A process-wide budget of request-body bytes being read and decoded at once.

Decoding a body costs many times its size (Python objects, the plan, the record): four
20 MB bodies at once raised the service's peak memory by 8.6 GB (issue 19, 6). Each request
with a body holds its size from the budget (``max_decoding_bytes``) until its answer is sent;
one that does not fit waits up to ``body_budget_wait_seconds`` and is then refused with 503
and ``Retry-After``, so many large requests queue or are refused instead of exhausting
memory. The size is the declared Content-Length, taken before a byte is read; a body sent
without one (chunked) holds its bytes as they arrive. The hold is released in a ``finally``:
errors, cancellation and client disconnects cannot leak budget.
"""

from __future__ import annotations

import asyncio
import threading
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import ServiceError
from service.fhir_response import outcome
from service.ops import metrics

RETRY_AFTER_SECONDS = 1


class BudgetExhausted(ServiceError):
    """No room in the budget within the wait (answered 503 by the middleware)."""


class ByteBudget:
    """A weighted semaphore over bytes, usable from any event loop (the lock is a thread lock;
    waiters are woken through their own loop). A request larger than the whole budget may
    run when it is alone, so no size that passes ``max_body_bytes`` can starve."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._used = 0
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    @property
    def used(self) -> int:
        with self._lock:
            return self._used

    def try_acquire(self, size: int) -> bool:
        """Take ``size`` bytes if they fit now (no wait); the caller must ``release`` them."""
        with self._lock:
            return self._try_take(size)

    def _try_take(self, size: int) -> bool:
        if self._used == 0 or self._used + size <= self.capacity:
            self._used += size
            return True
        return False

    async def acquire(self, size: int, wait: float) -> None:
        """Take ``size`` bytes, waiting at most ``wait`` seconds; else ``BudgetExhausted``."""
        if size <= 0:
            return
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + wait
        while True:
            with self._lock:
                if self._try_take(size):
                    return
                waiter = (loop, loop.create_future())
                self._waiters.append(waiter)
            try:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BudgetExhausted
                try:
                    await asyncio.wait_for(waiter[1], remaining)
                except TimeoutError:
                    raise BudgetExhausted from None
            finally:
                with self._lock:
                    if waiter in self._waiters:
                        self._waiters.remove(waiter)

    def release(self, size: int) -> None:
        """Give ``size`` bytes back and wake every waiter (each retries its own size)."""
        if size <= 0:
            return
        with self._lock:
            self._used = max(0, self._used - size)
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            if not loop.is_closed():
                loop.call_soon_threadsafe(_wake, future)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class BodyBudgetMiddleware:
    """Holds each request body's bytes from ``budget`` while the request runs (pure ASGI)."""

    def __init__(self, app: ASGIApp, budget: ByteBudget, max_body: int, wait: float) -> None:
        self.app = app
        self.budget = budget
        self.max_body = max_body  # a larger declared length is refused by read_body (413)
        self.wait = wait

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        held = 0
        try:
            if declared:
                size = min(declared, self.max_body)
                await self.budget.acquire(size, self.wait)
                held = size

            async def counted_receive() -> Message:
                """A chunked body (no Content-Length) holds its bytes as they arrive."""
                nonlocal held
                message = await receive()
                if declared is None and message["type"] == "http.request":
                    more = len(message.get("body", b""))
                    if more and held < self.max_body:
                        more = min(more, self.max_body - held)
                        await self.budget.acquire(more, self.wait)
                        held += more
                return message

            await self.app(scope, counted_receive if declared is None else receive, send)
        except BudgetExhausted:
            metrics.BODIES_REFUSED.labels(reason="decode_budget").inc()
            response = outcome(
                503,
                "transient",
                "the service is decoding as many request bytes as it allows at once: retry",
            )
            response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
            await response(scope, receive, send)
        finally:
            self.budget.release(held)


def _content_length(scope: Scope) -> int | None:
    """The declared body length; None when there is none (a chunked body, or no body)."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None
