"""An async FHIR R4 client: read, paged search, retries, one deadline, checked responses.

It knows nothing about the trial. Every failure becomes a ``FhirError`` with a safe message;
nothing partial is returned as if complete (a search cut by a cap says so in
``SearchResult.truncated``).

``client_for`` hands out a ``FhirClient`` per evaluation over one pooled ``httpx.AsyncClient``
per FHIR base (kept for the service's lifetime, per event loop). Credentials are chosen per
client: a caller's token (CDS Hooks) lives only in that client; SMART tokens are shared per
base because they belong to the service, not to a user.

The shared pool must survive cancelled queries (a sibling's failure, the deadline), which
httpcore does not handle safely under asyncio: at most ``MAX_IN_FLIGHT`` requests enter the
pool (``GatedTransport``), so none ever waits inside it, and each exchange runs in a task of
its own that a cancelled caller abandons instead of cancelling (``_detached``). A pool that
still runs out of connections is replaced (``_retire``); ``fhir_ready`` probes it for
``/healthz``.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
import time
import weakref
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, TypedDict
from urllib.parse import urlencode, urljoin

import httpx
import stamina

from service import strict_json
from service.clinical.model import Issue, Severity
from service.fhir.auth import BearerAuth, FhirAuth, NoAuth, SmartBackendAuth, load_private_key
from service.fhir.demo_layer import shared_demo_layer
from service.fhir.demo_store import DEMO_BASE_URL
from service.fhir.errors import (
    DeadlineExceeded,
    FhirConfigError,
    FhirError,
    PatientNotFound,
    SearchRefused,
    UpstreamAuthError,
    UpstreamError,
    describe_query,
)
from service.fhir.queries import Query, check_id
from service.ops import metrics

if TYPE_CHECKING:
    from service.settings import Settings

log = logging.getLogger("service.fhir")

# httpx logs every request URL at INFO, and our URLs carry patient ids. Keep it quiet unless
# the application deliberately configured it.
if logging.getLogger("httpx").level == logging.NOTSET:
    logging.getLogger("httpx").setLevel(logging.WARNING)


class QueryLog(TypedDict):
    """The log fields that name a FHIR query: its type, parameter names and key, never values
    (parameters carry patient ids)."""

    fhir_resource: str
    fhir_params: list[str]
    fhir_query: str | None


# The query being retried in this task, for the retry log line (contextvars: one per query).
_retrying: contextvars.ContextVar[tuple[str, QueryLog] | None] = contextvars.ContextVar(
    "fhir_retrying", default=None
)


def _log_retry(details: stamina.instrumentation.RetryDetails) -> None:
    """A scheduled retry as one INFO line naming the query (stamina's own hook logs every
    retry at WARNING: 27 lines on the CLI's stderr before its one error line)."""
    cause = details.caused_by
    if isinstance(cause, _Retryable):
        reason = f"HTTP {cause.status}"
    else:
        reason = type(cause.__cause__ or cause).__name__  # the httpx error, not our wrapper
    query = _retrying.get()
    what = details.name if query is None else query[0]
    extra: dict[str, object] = {} if query is None else dict(query[1])
    log.info(
        "FHIR retry %d of the %s in %.2f s (%s)",
        details.retry_num,
        what,
        details.wait_for,
        reason,
        extra={**extra, "retry_num": details.retry_num, "retry_cause": reason},
    )


stamina.instrumentation.set_on_retry_hooks([_log_retry])

RETRY_STATUSES = frozenset({429, 502, 503, 504})
RETRY_500_TIMES = 1  # idempotent requests only (reads, searches)
ACCEPT = "application/fhir+json, application/json;q=0.9"
FORM = "application/x-www-form-urlencoded"
_DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_RESPONSE_BYTES = 50 * 1024 * 1024  # one response body, after decompression
_TYPE_NAME = re.compile(r"[A-Z][A-Za-z]{0,63}")
_ISSUE_CODE = re.compile(r"[a-z][a-z-]{0,39}")


@dataclass(frozen=True)
class ClientConfig:
    """Limits and retry policy; ``from_settings`` for the service, plain values for tests."""

    page_size: int = 200
    max_pages: int = 50
    max_entries: int = 10_000
    max_query_length: int = 1800
    deadline_seconds: float = 10.0
    retry_attempts: int = 4
    wait_initial: float = 0.2
    wait_max: float = 2.0
    wait_jitter: float = 0.3
    max_response_bytes: int = MAX_RESPONSE_BYTES

    @classmethod
    def from_settings(cls, settings: Settings) -> ClientConfig:
        """The service's limits; ``max_response_bytes`` only if Settings has such a field."""
        return cls(
            page_size=settings.page_size,
            max_pages=settings.max_pages,
            max_entries=settings.max_entries,
            max_query_length=settings.max_query_length,
            deadline_seconds=settings.deadline_seconds,
            retry_attempts=settings.retry_attempts,
            max_response_bytes=settings.max_response_bytes,
        )


@dataclass(frozen=True)
class _Reply:
    """A final response whose body was read in full, within the size cap."""

    status_code: int
    headers: httpx.Headers
    url: httpx.URL  # of the request, to resolve relative next-page links
    content: bytes


@dataclass
class SearchResult:
    entries: list[dict[str, Any]]  # resources of the matching entries, server order
    truncated: bool = False  # a cap (pages or entries) cut the search short
    issues: list[Issue] = field(default_factory=list)
    pages: int = 0
    total: int | None = None  # Bundle.total of the first page, when the server sent one
    received: int = 0  # match entries received, including any ignored


class _Retryable(Exception):
    """A response that deserves another attempt (429/502/503/504)."""

    def __init__(self, status: int, retry_after: float | None) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.retry_after = retry_after


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds to wait: delay-seconds or an HTTP-date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port or _DEFAULT_PORTS.get(url.scheme)


def _outcome_codes(body: Any, severities: frozenset[str]) -> list[str]:
    """Issue codes (not diagnostics, which may echo values) of an OperationOutcome.

    Lenient: this only words an error message, so a malformed outcome yields no codes.
    """
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return []
    issues = body.get("issue")
    return [
        _issue_code(i.get("code"))
        for i in (issues if isinstance(issues, list) else [])
        if isinstance(i, dict) and i.get("severity") in severities
    ]


def _issue_code(code: Any) -> str:
    """An IssueType code as sent, or ``unknown``: never echo free text from the server."""
    return code if isinstance(code, str) and _ISSUE_CODE.fullmatch(code) else "unknown"


def _type_name(value: Any) -> str:
    """A resourceType fit for a message: a type name, never an arbitrary server value."""
    if isinstance(value, str) and _TYPE_NAME.fullmatch(value):
        return value
    return "resource of unknown type"


def _shape_error(what: str, element: str) -> UpstreamError:
    """A Bundle we cannot read; names the element's path, never the value found there."""
    return UpstreamError(f"the FHIR server answered the {what} with a malformed Bundle ({element})")


def _optional_list(obj: dict, name: str, what: str, path: str) -> list:
    """``obj[name]`` as a list: absent or null is empty, anything else but a list is an error."""
    value = obj.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _shape_error(what, path)
    return value


def _too_large(what: str, limit: int) -> UpstreamError:
    return UpstreamError(
        f"the FHIR server's answer to the {what} was refused: response too large "
        f"(limit {limit} bytes)"
    )


async def _read_capped(
    resp: httpx.Response, limit: int, what: str, abandon: _Abandon | None = None
) -> bytes:
    """Read a streamed body, giving up as soon as it exceeds ``limit`` (decoded) bytes."""
    declared = resp.headers.get("content-length", "").strip()
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise _too_large(what, limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in resp.aiter_bytes():
            if abandon is not None and abandon.set:
                raise _Abandoned
            size += len(chunk)
            if size > limit:
                raise _too_large(what, limit)
            chunks.append(chunk)
    except httpx.DecodingError:
        raise UpstreamError(
            f"the FHIR server's answer to the {what} could not be decoded "
            f"(content-encoding {_header_token(resp, 'content-encoding')})"
        ) from None
    return b"".join(chunks)


def _header_token(resp: httpx.Response | _Reply, name: str) -> str:
    """The first token of a header (e.g. a media type), short, for an error message."""
    return resp.headers.get(name, "none").split(";")[0].strip()[:60]


_SERIOUS = frozenset({"error", "fatal"})


class FhirClient:
    """One evaluation's view of a FHIR server: shared connection pool, own deadline and auth.

    Use as ``async with client:``; entering starts the deadline (it also starts on the first
    request). Closing does not close a shared pool (``owns_http=False``).
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        *,
        auth: FhirAuth | None = None,
        config: ClientConfig | None = None,
        owns_http: bool = False,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._base = httpx.URL(self.base_url + "/")
        self._http = http
        self._auth: FhirAuth = auth or NoAuth()
        self.config = config or ClientConfig()
        self._owns_http = owns_http
        self._deadline: float | None = None

    def __repr__(self) -> str:
        return f"FhirClient({self.base_url!r}, auth={self._auth!r})"

    async def __aenter__(self) -> FhirClient:
        self.start_deadline()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._owns_http:
            await self._http.aclose()

    # -- deadline ------------------------------------------------------------------------
    def start_deadline(self, seconds: float | None = None) -> None:
        """(Re)start the overall deadline for everything this client fetches."""
        span = self.config.deadline_seconds if seconds is None else seconds
        self._deadline = asyncio.get_running_loop().time() + span

    def remaining(self) -> float:
        if self._deadline is None:
            self.start_deadline()
        assert self._deadline is not None
        return self._deadline - asyncio.get_running_loop().time()

    # -- public API ----------------------------------------------------------------------
    async def read(self, resource_type: str, id: str, *, key: str | None = None) -> dict:
        """``GET [type]/[id]``; a missing Patient is ``PatientNotFound``."""
        check_id(id)
        what = describe_query(key, resource_type, ())
        url = self._base.join(f"{resource_type}/{id}")
        resp = await self._request("GET", url, what=what, resource_type=resource_type, key=key)
        if resp.status_code in (404, 410) and resource_type == "Patient":
            raise PatientNotFound("the FHIR server has no Patient with this id")
        body = self._check(resp, what, expect=resource_type)
        if body.get("id") is None:
            raise UpstreamError(f"the FHIR server answered the {what} with a resource without id")
        if body.get("id") != id:
            raise UpstreamError(f"the FHIR server answered the {what} with a different resource")
        return body

    async def search(self, query: Query | tuple[str, Sequence[tuple[str, str]]]) -> SearchResult:
        """A type-level search, following ``link[next]`` verbatim within the caps."""
        if isinstance(query, Query):
            key, rtype, params = query.key, query.resource_type, list(query.params)
        else:
            key, (rtype, raw) = None, query
            params = list(raw)
        if not any(name == "_count" for name, _ in params):
            params.append(("_count", str(self.config.page_size)))
        names = tuple(dict.fromkeys(n for n, _ in params))
        what = describe_query(key, rtype, names)

        encoded = urlencode(params)
        if len(encoded) > self.config.max_query_length:
            url = self._base.join(f"{rtype}/_search")
            resp = await self._request(
                "POST",
                url,
                what=what,
                resource_type=rtype,
                key=key,
                names=names,
                content=encoded.encode(),
                content_type=FORM,
                idempotent=True,  # POST [type]/_search is a search: safe to repeat
            )
        else:
            url = self._base.join(rtype).copy_with(query=encoded.encode())
            resp = await self._request(
                "GET", url, what=what, resource_type=rtype, key=key, names=names
            )

        result = SearchResult(entries=[])
        cfg = self.config
        while True:
            bundle = self._check(resp, what, expect="Bundle")
            if bundle.get("type") != "searchset":
                raise UpstreamError(
                    f"the FHIR server answered the {what} with a non-searchset Bundle"
                )
            result.pages += 1
            total = bundle.get("total")
            if result.pages == 1 and isinstance(total, int) and not isinstance(total, bool):
                result.total = total
            self._collect(bundle, rtype, what, result)
            if len(result.entries) > cfg.max_entries:
                del result.entries[cfg.max_entries :]
                result.truncated = True
                break
            next_url = self._next_link(bundle, resp.url, what)
            if next_url is None:
                break
            if result.pages >= cfg.max_pages:
                result.truncated = True
                break
            page_names = tuple(dict.fromkeys(k for k, _ in next_url.params.multi_items()))
            resp = await self._request(
                "GET", next_url, what=what, resource_type=rtype, key=key, names=page_names
            )
        if not result.truncated and result.total is not None and result.total > result.received:
            # The server counted more matches than it let us page through: data is missing.
            result.truncated = True
            result.issues.append(
                Issue(
                    Severity.WARNING,
                    "incomplete",
                    f"The {what} reported {result.total} matches but returned "
                    f"{result.received}; the result is incomplete.",
                )
            )
        elif result.truncated:
            result.issues.append(
                Issue(
                    Severity.WARNING,
                    "incomplete",
                    f"The {what} was cut short after {result.pages} page(s) and "
                    f"{len(result.entries)} entries (limits: {cfg.max_pages} pages, "
                    f"{cfg.max_entries} entries); later pages were not read.",
                )
            )
        return result

    async def reachable(self, timeout: float) -> bool:
        """One ``GET metadata`` within ``timeout``, no retries, no credentials: does the server
        answer at all (any status below 500) through this client's connection pool?"""
        extra = QueryLog(fhir_resource="CapabilityStatement", fhir_params=[], fhir_query=None)
        url = self._base.join("metadata")
        try:
            # httpx's own timeouts (pool included: a stuck pool is then replaced) fire first.
            async with asyncio.timeout(timeout + 0.25):
                reply = await self._send(
                    "GET",
                    url,
                    {"Accept": ACCEPT},
                    None,
                    "capability statement read",
                    extra,
                    timeout=timeout,
                    log_level=logging.DEBUG,  # every few seconds: not worth an INFO line
                )
        except (TimeoutError, FhirError, _TransportFailure):
            return False
        return reply.status_code < 500

    # -- internals -----------------------------------------------------------------------
    def _collect(self, bundle: dict, rtype: str, what: str, result: SearchResult) -> None:
        """Add a page's match entries to ``result``; a malformed entry fails the search."""
        for entry in _optional_list(bundle, "entry", what, "Bundle.entry"):
            if not isinstance(entry, dict):
                raise _shape_error(what, "Bundle.entry")
            resource = entry.get("resource")
            if resource is None:
                continue  # nothing to read (a searchset entry should have one)
            if not isinstance(resource, dict):
                raise _shape_error(what, "Bundle.entry.resource")
            mode = self._entry_mode(entry, what)
            if resource.get("resourceType") == "OperationOutcome":
                self._outcome_entry(resource, what, result)
                continue
            if mode == "include" and resource.get("resourceType") == "Medication":
                # asked for (``_include=...:medication``): the product a medicationReference
                # names; kept for the record's reference index, not counted as a match
                result.entries.append(resource)
                continue
            if mode not in (None, "match"):
                continue  # other "include" entries are not ours to use; "outcome" above
            result.received += 1
            if resource.get("resourceType") != rtype:
                other = _type_name(resource.get("resourceType"))
                result.issues.append(
                    Issue(
                        Severity.WARNING,
                        "processing",
                        f"The {what} returned a {other} as a match; it was ignored.",
                    )
                )
                continue
            if not isinstance(resource.get("id", ""), str):
                raise _shape_error(what, "Bundle.entry.resource.id")  # ids are deduplicated
            result.entries.append(resource)

    @staticmethod
    def _entry_mode(entry: dict, what: str) -> str | None:
        """``entry.search.mode``: an object with a string mode, or absent."""
        search = entry.get("search")
        if search is None:
            return None
        if not isinstance(search, dict):
            raise _shape_error(what, "Bundle.entry.search")
        mode = search.get("mode")
        if mode is not None and not isinstance(mode, str):
            raise _shape_error(what, "Bundle.entry.search.mode")
        return mode

    @staticmethod
    def _outcome_entry(outcome: dict, what: str, result: SearchResult) -> None:
        issues = _optional_list(outcome, "issue", what, "Bundle.entry.resource.issue")
        if not all(isinstance(i, dict) for i in issues):
            raise _shape_error(what, "Bundle.entry.resource.issue")
        serious = _outcome_codes(outcome, _SERIOUS)
        if serious:
            raise UpstreamError(
                f"the FHIR server reported an error in the {what} result "
                f"(OperationOutcome: {', '.join(serious)})"
            )
        for issue in issues:
            if issue.get("severity") == "warning":
                diagnostics = issue.get("diagnostics")
                detail = diagnostics if isinstance(diagnostics, str) else None
                detail = (detail or _issue_code(issue.get("code")))[:200]
                result.issues.append(
                    Issue(Severity.WARNING, "informational", f"FHIR server, {what}: {detail}")
                )

    def _next_link(self, bundle: dict, current: httpx.URL, what: str) -> httpx.URL | None:
        """The next page's URL, only on our FHIR base; a malformed link fails the search."""
        for link in _optional_list(bundle, "link", what, "Bundle.link"):
            if not isinstance(link, dict):
                raise _shape_error(what, "Bundle.link")
            if link.get("relation") != "next":
                continue
            raw = link.get("url")
            if not isinstance(raw, str) or not raw:
                raise _shape_error(what, "Bundle.link.url")
            try:
                url = httpx.URL(urljoin(str(current), raw))
            except (ValueError, httpx.InvalidURL):
                raise _shape_error(what, "Bundle.link.url is not a URL") from None
            if _origin(url) != _origin(self._base):
                raise UpstreamError(
                    f"refused to follow the next-page link of the {what}: it points to "
                    "another scheme, host or port than the configured FHIR base"
                )
            return url
        return None

    def _check(self, resp: _Reply, what: str, *, expect: str) -> dict:
        """Turn a final response into the expected resource, or a clear failure."""
        status = resp.status_code
        body: Any = None
        try:
            body = strict_json.loads(resp.content) if resp.content else None
        except strict_json.DuplicateKeyError:
            if status == 200:  # two values for one element: we cannot know which one is meant
                raise UpstreamError(
                    f"the FHIR server answered the {what} with ambiguous JSON "
                    "(an object names a key more than once)"
                ) from None
        except ValueError:  # not JSON (orjson.JSONDecodeError), or nested too deeply
            body = None
        codes = _outcome_codes(body, frozenset({"error", "fatal", "warning", "information"}))
        detail = f" (OperationOutcome: {', '.join(codes)})" if codes else ""
        if status in (401, 403):
            raise UpstreamAuthError(
                f"the FHIR server refused our credentials (HTTP {status}) for the {what}"
            )
        if status in (400, 422, 501):
            raise SearchRefused(f"the FHIR server answered HTTP {status} to the {what}{detail}")
        if status != 200:
            raise UpstreamError(f"the FHIR server answered HTTP {status} to the {what}{detail}")
        if not isinstance(body, dict):
            ctype = _header_token(resp, "content-type")
            raise UpstreamError(
                f"the FHIR server answered the {what} with a body that is not a JSON resource "
                f"(content-type {ctype})"
            )
        rtype = body.get("resourceType")
        if rtype == "OperationOutcome" and expect != "OperationOutcome":
            serious = _outcome_codes(body, _SERIOUS)
            label = "an error" if serious else "an OperationOutcome"
            raise UpstreamError(f"the FHIR server answered the {what} with {label}{detail}")
        if rtype != expect:
            raise UpstreamError(
                f"the FHIR server answered the {what} with a {_type_name(rtype)}, not a {expect}"
            )
        return body

    async def _request(
        self,
        method: str,
        url: httpx.URL,
        *,
        what: str,
        resource_type: str,
        key: str | None,
        names: Sequence[str] = (),
        content: bytes | None = None,
        content_type: str | None = None,
        idempotent: bool = True,
    ) -> _Reply:
        """Send with retries inside the deadline; return the final non-retryable response.

        Retried: connection failures, 429/502/503/504 and, for idempotent requests (reads
        and searches, GET or POST ``_search``), one 500: HAPI answers a transient 500 now
        and then (a database hiccup, a busy search), which one more try usually clears.
        """
        remaining = self.remaining()
        if remaining <= 0:
            raise DeadlineExceeded(f"the deadline ran out before the {what}")
        loop = asyncio.get_running_loop()
        headers = {"Accept": ACCEPT}
        if content_type:
            headers["Content-Type"] = content_type
        log_extra = QueryLog(fhir_resource=resource_type, fhir_params=list(names), fhir_query=key)

        def backoff(exc: BaseException) -> bool | float:
            if isinstance(exc, _Retryable):
                if exc.retry_after is None:
                    return True
                left = (self._deadline or 0) - loop.time()
                return exc.retry_after if exc.retry_after < left else False
            return isinstance(exc, _TransportFailure)

        server_errors = 0

        async def attempt_once() -> _Reply:
            nonlocal server_errors
            sent = await self._auth.headers()
            resp = await self._send(method, url, {**headers, **sent}, content, what, log_extra)
            if resp.status_code == 401 and await self._auth.refresh(sent):
                sent = await self._auth.headers()
                resp = await self._send(method, url, {**headers, **sent}, content, what, log_extra)
            if resp.status_code in RETRY_STATUSES:
                raise _Retryable(
                    resp.status_code, retry_after_seconds(resp.headers.get("retry-after"))
                )
            if resp.status_code == 500 and idempotent and server_errors < RETRY_500_TIMES:
                server_errors += 1
                raise _Retryable(500, retry_after_seconds(resp.headers.get("retry-after")))
            return resp

        cfg = self.config
        timer = asyncio.timeout(remaining)
        query = _retrying.set((what, log_extra))
        try:
            async with timer:
                async for attempt in stamina.retry_context(
                    on=backoff,
                    attempts=cfg.retry_attempts,
                    timeout=remaining,
                    wait_initial=cfg.wait_initial,
                    wait_max=cfg.wait_max,
                    wait_jitter=cfg.wait_jitter,
                ):
                    with attempt:
                        return await attempt_once()
        except TimeoutError:
            if timer.expired():
                raise DeadlineExceeded(
                    f"the {cfg.deadline_seconds:g} s deadline ran out during the {what}"
                ) from None
            raise
        except _Retryable as exc:
            left = (self._deadline or 0) - loop.time()
            if exc.retry_after is not None and exc.retry_after >= left:
                raise DeadlineExceeded(
                    f"the FHIR server asked us to retry the {what} after {exc.retry_after:g} s, "
                    "beyond the deadline"
                ) from None
            raise UpstreamError(
                f"the FHIR server answered HTTP {exc.status} to the {what}, also after retrying"
            ) from None
        except _TransportFailure as exc:
            raise UpstreamError(exc.message) from None
        finally:
            _retrying.reset(query)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send(
        self,
        method: str,
        url: httpx.URL,
        headers: dict[str, str],
        content: bytes | None,
        what: str,
        log_extra: QueryLog,
        *,
        timeout: float | None = None,
        log_level: int = logging.INFO,
    ) -> _Reply:
        """One request; the body is streamed so an oversized one is refused, not buffered."""
        started = time.perf_counter()
        status: int | str = "error"
        abandon = _Abandon()
        request = self._http.build_request(
            method,
            url,
            headers=headers,
            content=content,
            extensions={_TICKET: abandon},
            timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout,
        )
        seen: list[int] = []  # the status line, once it arrived

        async def exchange() -> _Reply:
            resp = await self._http.send(request, stream=True)
            seen.append(resp.status_code)
            try:
                body = await _read_capped(resp, self.config.max_response_bytes, what, abandon)
            finally:
                await resp.aclose()
            return _Reply(resp.status_code, resp.headers, request.url, body)

        try:
            reply = await _detached(exchange(), abandon)
            status = reply.status_code
            return reply
        except UpstreamError:
            status = seen[0] if seen else "error"
            raise
        except httpx.TransportError as exc:
            status = type(exc).__name__
            if isinstance(exc, httpx.PoolTimeout):
                _retire(self._http)  # never a normal wait (see MAX_IN_FLIGHT): a stuck pool
            message = _transport_message(exc, what, seen[0] if seen else None)
            raise _TransportFailure(message) from exc
        except asyncio.CancelledError:
            status = "cancelled"  # the deadline, or a sibling query failed first
            raise
        finally:
            elapsed = round((time.perf_counter() - started) * 1000, 1)
            metrics.observe_fhir(
                log_extra["fhir_resource"], log_extra["fhir_query"], status, elapsed / 1000
            )
            log.log(
                log_level,
                "FHIR %s %s -> %s (%.0f ms)",
                method,
                log_extra["fhir_resource"],
                status,
                elapsed,
                extra={**log_extra, "status": status, "elapsed_ms": elapsed},
            )


class _TransportFailure(Exception):
    """A connection-level failure of one attempt, already worded for the user; retried."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _transport_message(exc: httpx.TransportError, what: str, status: int | None) -> str:
    """Say what broke: no connection, no answer, or an answer cut off partway."""
    name = type(exc).__name__
    if status is not None:  # the status line and headers had arrived: the body broke
        if isinstance(exc, httpx.TimeoutException):
            return (
                f"the FHIR server's answer stalled partway (HTTP {status}, {name}) for the {what}"
            )
        return (
            f"the FHIR server's answer was cut off partway (HTTP {status}, {name}) for the {what}"
        )
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return f"could not reach the FHIR server for the {what} ({name})"
    if isinstance(exc, httpx.PoolTimeout):
        return f"no connection to the FHIR server was free for the {what} ({name})"
    if isinstance(exc, httpx.ReadTimeout):
        return f"the FHIR server did not answer the {what} in time ({name})"
    if isinstance(exc, httpx.WriteError | httpx.WriteTimeout):
        return f"could not send the {what} to the FHIR server ({name})"
    if isinstance(exc, httpx.ReadError | httpx.RemoteProtocolError):
        return f"the FHIR server closed the connection before answering the {what} ({name})"
    return f"could not reach the FHIR server for the {what} ({name})"


class _Abandon:
    """``set`` when the caller stopped waiting: the exchange then stops at its next body chunk.
    ``entered``: the request went past ``GatedTransport``'s slot into httpcore."""

    __slots__ = ("entered", "set")

    def __init__(self) -> None:
        self.set = False
        self.entered = False


_TICKET = "cart_eligibility.exchange"  # request extension carrying the exchange's _Abandon


class _Abandoned(Exception):
    """The caller left; the rest of the body is not read (the connection is then closed)."""


_detached_tasks: set[asyncio.Task[Any]] = set()  # strong references until they finish


async def _detached(coro: Coroutine[Any, Any, _Reply], abandon: _Abandon) -> _Reply:
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


# -- clients --------------------------------------------------------------------------------

_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Any, Any]] = (
    weakref.WeakKeyDictionary()
)


def _loop_cache() -> dict[Any, Any]:
    """Pools are tied to the event loop that opened their connections."""
    loop = asyncio.get_running_loop()
    cache = _pools.get(loop)
    if cache is None:
        cache = _pools[loop] = {}
    return cache


# Requests in flight per FHIR base. The pool below holds more connections than this (in-flight
# plus every keep-alive one, with room to spare) so a request never waits inside httpcore's pool:
# httpcore 1.0.9 (the latest) leaks a pool slot for good when a request is cancelled while it
# waits there for a connection (encode/httpcore#1093), and we cancel sibling queries on the first
# failure and every query at the deadline. Our own semaphore queues the surplus instead, and a
# cancelled wait on it is harmless.
MAX_IN_FLIGHT = 32
MAX_KEEPALIVE = 16
POOL_CONNECTIONS = MAX_IN_FLIGHT + MAX_KEEPALIVE + 16


class _ReleasingStream(httpx.AsyncByteStream):
    """A response body that gives its in-flight slot back once, when it is closed."""

    def __init__(self, stream: httpx.AsyncByteStream, release: Any) -> None:
        self._stream = stream
        self._release = release

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
    response body is closed (the connection is busy until then)."""

    def __init__(self, inner: httpx.AsyncBaseTransport, slots: int = MAX_IN_FLIGHT) -> None:
        self._inner = inner
        self._slots = asyncio.Semaphore(slots)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await self._slots.acquire()  # cancellation-safe: nothing of httpcore is touched yet
        ticket = request.extensions.get(_TICKET)
        if isinstance(ticket, _Abandon):
            if ticket.set:  # the caller left while we waited: send nothing
                self._slots.release()
                raise _Abandoned
            ticket.entered = True  # from here on, never cancel this task (see _detached)
        try:
            response = await self._inner.handle_async_request(request)
        except BaseException:
            self._slots.release()
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _ReleasingStream(response.stream, self._slots.release)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def _http_for(base: str, settings: Settings) -> httpx.AsyncClient:
    cache = _loop_cache()
    key = ("http", base)
    http = cache.get(key)
    if http is None or http.is_closed:
        if base == DEMO_BASE_URL:
            http = httpx.AsyncClient(transport=httpx.MockTransport(shared_demo_layer().handle))
        else:
            limits = httpx.Limits(
                max_connections=POOL_CONNECTIONS, max_keepalive_connections=MAX_KEEPALIVE
            )
            http = httpx.AsyncClient(
                transport=GatedTransport(httpx.AsyncHTTPTransport(limits=limits)),
                # No request ever waits for a pool slot (MAX_IN_FLIGHT): a pool timeout means
                # a stuck pool, which is then replaced (_retire).
                timeout=httpx.Timeout(
                    settings.read_timeout,
                    connect=settings.connect_timeout,
                    pool=settings.connect_timeout,
                ),
                follow_redirects=False,  # a redirect could carry our token elsewhere
            )
        cache[key] = http
    return http


def service_auth(settings: Settings, base: str, http: httpx.AsyncClient) -> FhirAuth:
    """The service's own credentials for the configured base (only ever sent there)."""
    if settings.fhir_auth == "static":
        if settings.fhir_token is None:
            raise FhirConfigError("fhir_auth=static needs ELIGIBILITY_FHIR_TOKEN")
        return BearerAuth(settings.fhir_token.get_secret_value())
    if settings.fhir_auth == "smart":
        if not settings.smart_client_id or not settings.smart_private_key_path:
            raise FhirConfigError("fhir_auth=smart needs a client id and a private key path")
        cache = _loop_cache()
        key = (
            "smart",
            http,  # a replaced pool (_retire) gets its own token client
            base,
            settings.smart_client_id,
            settings.smart_alg,
            settings.smart_scopes,
        )
        auth = cache.get(key)
        if auth is None:
            auth = cache[key] = SmartBackendAuth(
                http,
                base,
                client_id=settings.smart_client_id,
                private_key=load_private_key(settings.smart_private_key_path),
                alg=settings.smart_alg,
                kid=settings.smart_key_id,
                scopes=settings.smart_scopes,
            )
        return auth
    return NoAuth()


def client_for(
    settings: Settings,
    *,
    bearer_token: str | None = None,
    base_url: str | None = None,
    service_credentials: bool = True,
) -> FhirClient:
    """A client for one evaluation (use ``async with``); call from inside the event loop.

    ``base_url`` (CDS Hooks ``fhirServer``) overrides the configured base; the configured
    credentials are only ever sent to the configured base, never to another server.
    ``bearer_token`` (CDS Hooks ``fhirAuthorization.access_token``) is used for this client
    only. ``service_credentials=False`` is for callers acting for someone else (CDS Hooks):
    they get their own token or none, never the service's, even on the configured base
    (no confused deputy). With no base at all, the built-in demo store answers.
    """
    base = (base_url or settings.fhir_base_url or DEMO_BASE_URL).rstrip("/")
    http = _http_for(base, settings)
    configured = (settings.fhir_base_url or "").rstrip("/")
    auth: FhirAuth
    if bearer_token:
        auth = BearerAuth(bearer_token)
    elif service_credentials and base == configured:
        auth = service_auth(settings, base, http)
    else:
        auth = NoAuth()
    return FhirClient(http, base, auth=auth, config=ClientConfig.from_settings(settings))


READY_CACHE_SECONDS = 5.0  # one probe per worker at most this often, however many callers
PROBE_TIMEOUT_SECONDS = 2.0  # below the orchestrator's probe timeout (Kubernetes: 3 s)


async def fhir_ready(settings: Settings) -> bool:
    """Readiness of pull mode: the configured FHIR base (or the demo store) answers
    ``GET metadata`` through the same pool evaluations use, so a stuck pool shows as well
    as a server that is down. Cached ``READY_CACHE_SECONDS``; concurrent callers share one
    probe."""
    base = (settings.fhir_base_url or DEMO_BASE_URL).rstrip("/")
    cache = _loop_cache()
    now = asyncio.get_running_loop().time
    known = cache.get(("ready", base))
    if known is not None and now() - known[0] < READY_CACHE_SECONDS:
        return known[1]
    lock = cache.setdefault(("ready-lock", base), asyncio.Lock())
    async with lock:
        known = cache.get(("ready", base))
        if known is not None and now() - known[0] < READY_CACHE_SECONDS:
            return known[1]
        client = FhirClient(_http_for(base, settings), base)
        ready = await client.reachable(PROBE_TIMEOUT_SECONDS)
        cache[("ready", base)] = (now(), ready)
        if not ready:
            log.warning("readiness: the FHIR server did not answer the capability probe")
        return ready


def _retire(http: httpx.AsyncClient) -> None:
    """Stop handing out a pool that cannot give connections; the next client gets a new one.

    It is closed at shutdown, not now: requests of other evaluations may still use it.
    """
    cache = _loop_cache()
    for key, value in list(cache.items()):
        if value is http:
            del cache[key]
            cache.setdefault("retired", []).append(http)
            log.warning("FHIR connection pool replaced: it had no free connection")


async def close_clients() -> None:
    """Close this loop's pooled connections (application shutdown), then give abandoned
    exchanges (which closing their connections ends) a moment to finish."""
    loop = asyncio.get_running_loop()
    cache = _pools.pop(loop, {})
    for value in [*cache.values(), *cache.get("retired", ())]:
        if isinstance(value, httpx.AsyncClient):
            await value.aclose()
    pending = [t for t in _detached_tasks if t.get_loop() is loop]
    if pending:
        await asyncio.wait(pending, timeout=1.0)
