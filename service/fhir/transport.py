"""How one HTTP exchange with a FHIR server runs: gated, detached, its body capped.

The shared pool must survive cancelled queries (a sibling's failure, the deadline), which
httpcore does not handle safely under asyncio: at most ``MAX_IN_FLIGHT`` requests enter the
pool (``GatedTransport``), so none ever waits inside it, and each exchange runs in a task of
its own that a cancelled caller abandons instead of cancelling (``detached``). A body is read
(or streamed into a file) only up to a byte limit, so an oversized answer is refused, never
buffered. This module knows HTTP, not FHIR: ``service.fhir.client`` says what the bytes mean.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, BinaryIO

import httpx

from service.fhir.errors import UpstreamError

# Requests in flight per FHIR base. The pool (service.fhir.pool) holds more connections than
# this, so a request never waits inside httpcore's pool: httpcore 1.0.9 (the latest) leaks a
# pool slot for good when a request is cancelled while it waits there for a connection
# (encode/httpcore#1093), and we cancel sibling queries on the first failure and every query
# at the deadline. Our own semaphore queues the surplus instead; a cancelled wait on it is
# harmless.
MAX_IN_FLIGHT = 32
TICKET = "cart_eligibility.exchange"  # request extension carrying the exchange's Abandon


@dataclass(frozen=True)
class Reply:
    """A final response whose body was read in full within the cap (empty when it went to a
    file: ``streamed`` bytes were written there)."""

    status_code: int
    headers: httpx.Headers
    url: httpx.URL  # of the request, to resolve relative links
    content: bytes
    streamed: int = 0


class Abandon:
    """``set`` when the caller stopped waiting: the exchange then stops at its next body chunk.
    ``entered``: the request went past ``GatedTransport``'s slot into httpcore."""

    __slots__ = ("entered", "set")

    def __init__(self) -> None:
        self.set = False
        self.entered = False


class _Abandoned(Exception):
    """The caller left; the rest of the body is not read (the connection is then closed)."""


def too_large(what: str, limit: int) -> UpstreamError:
    return UpstreamError(
        f"the FHIR server's answer to the {what} was refused: response too large "
        f"(limit {limit} bytes)"
    )


def header_token(resp: httpx.Response | Reply, name: str) -> str:
    """The first token of a header (e.g. a media type), short, for an error message."""
    return resp.headers.get(name, "none").split(";")[0].strip()[:60]


async def read_capped(
    resp: httpx.Response,
    limit: int,
    what: str,
    abandon: Abandon | None = None,
    sink: BinaryIO | None = None,
) -> bytes:
    """Read a streamed body, giving up as soon as it exceeds ``limit`` (decoded) bytes.

    With a ``sink`` the chunks are written there (a Bulk file) and nothing is kept in memory.
    """
    declared = resp.headers.get("content-length", "").strip()
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise too_large(what, limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in resp.aiter_bytes():
            if abandon is not None and abandon.set:
                raise _Abandoned
            size += len(chunk)
            if size > limit:
                raise too_large(what, limit)
            if sink is None:
                chunks.append(chunk)
            else:
                sink.write(chunk)
    except httpx.DecodingError:
        raise UpstreamError(
            f"the FHIR server's answer to the {what} could not be decoded "
            f"(content-encoding {header_token(resp, 'content-encoding')})"
        ) from None
    return b"".join(chunks)


def new_request(
    http: httpx.AsyncClient,
    method: str,
    url: httpx.URL,
    *,
    headers: dict[str, str],
    content: bytes | None,
    timeout: float | httpx.Timeout | None,
) -> httpx.Request:
    """A request carrying a fresh ``Abandon`` ticket for ``GatedTransport`` and ``exchange``."""
    return http.build_request(
        method,
        url,
        headers=headers,
        content=content,
        extensions={TICKET: Abandon()},
        timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout,
    )


async def exchange(
    http: httpx.AsyncClient,
    request: httpx.Request,
    *,
    limit: int,
    what: str,
    seen: list[int],
    sink: BinaryIO | None = None,
) -> Reply:
    """Send ``request`` and read its body within ``limit``, detached from the caller's
    cancellation. ``seen`` gets the status once the status line arrived (for the error
    message of a body cut off partway). A 200 answer goes to ``sink`` when one is given
    (emptied first: a retried download starts over)."""
    ticket = request.extensions.get(TICKET)
    abandon = ticket if isinstance(ticket, Abandon) else Abandon()

    async def run() -> Reply:
        resp = await http.send(request, stream=True)
        seen.append(resp.status_code)
        try:
            if sink is not None and resp.status_code == 200:
                sink.seek(0)
                sink.truncate()
                await read_capped(resp, limit, what, abandon, sink)
                return Reply(resp.status_code, resp.headers, request.url, b"", sink.tell())
            body = await read_capped(resp, limit, what, abandon)
        finally:
            await resp.aclose()
        return Reply(resp.status_code, resp.headers, request.url, body)

    return await detached(run(), abandon)


_detached_tasks: set[asyncio.Task[Any]] = set()  # strong references until they finish


async def detached(coro: Coroutine[Any, Any, Reply], abandon: Abandon) -> Reply:
    """Run one HTTP exchange in its own task, which is never cancelled.

    httpcore (1.0.9, the latest) is not safe against asyncio cancellation: it cleans up a
    request under anyio's ``CancelScope(shield=True)``, which does not hold against a native
    ``Task.cancel()`` (TaskGroup, ``asyncio.timeout``). A cancellation that lands in the
    cleanup (closing a response, releasing a connection, a request waiting in the pool,
    encode/httpcore#1093) leaves the pool with a request and a connection no one releases;
    once the pool is full every later request waits for ever, although the server is fine.
    So a cancelled caller stops waiting at once (its deadline and error reporting are
    unchanged) and the exchange ends by itself: at its next body chunk, or by httpx's own
    connect/read/pool timeouts, which httpcore handles cleanly.
    """
    task = asyncio.ensure_future(coro)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        abandon.set = True
        if not abandon.entered:
            task.cancel()  # still waiting for a slot (or not started): safe, nothing sent
        if not task.done():
            _detached_tasks.add(task)
            task.add_done_callback(_retrieve)
        raise


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Forget a finished abandoned exchange and consume its outcome (no asyncio noise)."""
    _detached_tasks.discard(task)
    if not task.cancelled():
        task.exception()


def abandoned_exchanges(loop: asyncio.AbstractEventLoop) -> list[asyncio.Task[Any]]:
    """Exchanges of ``loop`` whose callers left and which have not finished yet."""
    return [t for t in _detached_tasks if t.get_loop() is loop]


class ReleasingStream(httpx.AsyncByteStream):
    """A response body that gives its in-flight slot back once, when it is closed."""

    def __init__(self, stream: httpx.AsyncByteStream, release: Callable[[], None]) -> None:
        self._stream = stream
        self._release: Callable[[], None] | None = release

    async def __aiter__(self) -> Any:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()


class GatedTransport(httpx.AsyncBaseTransport):
    """At most ``slots`` requests inside the wrapped transport; a slot is held until the
    response body is closed (the connection is busy until then). ``stuck`` turns true on a
    pool timeout, which never is a normal wait here: the pool (service.fhir.pool) then hands
    out a new one."""

    def __init__(self, inner: httpx.AsyncBaseTransport, slots: int = MAX_IN_FLIGHT) -> None:
        self._inner = inner
        self._slots = asyncio.Semaphore(slots)
        self.stuck = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await self._slots.acquire()  # cancellation-safe: nothing of httpcore is touched yet
        ticket = request.extensions.get(TICKET)
        if isinstance(ticket, Abandon):
            if ticket.set:  # the caller left while we waited: send nothing
                self._slots.release()
                raise _Abandoned
            ticket.entered = True  # from here on, never cancel this task (see detached)
        try:
            response = await self._inner.handle_async_request(request)
        except httpx.PoolTimeout:
            self._slots.release()
            self.stuck = True
            raise
        except BaseException:
            self._slots.release()
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = ReleasingStream(response.stream, self._slots.release)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()
