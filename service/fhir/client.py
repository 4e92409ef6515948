"""An async FHIR R4 client: the FHIR semantics every caller of a FHIR server shares.

Read, paged search (capped, or page by page), conditional create, update, delete, and the
Bulk Data kick-off, status poll and file download; all with the same retries (only where
repeating is safe), one deadline, a size cap on every body, the credential and same-origin
rules, and OperationOutcome-aware errors. It knows nothing about the trial. Every failure
becomes a ``FhirError`` with a safe message; nothing partial is returned as if complete (a
search cut by a cap says so in ``SearchResult.truncated``).

Layers, the httpx way: this module says what a FHIR exchange means; ``service.fhir.transport``
runs one exchange safely on a shared pool (gated, detached, capped); ``service.fhir.pool``
decides which pool and which credentials a client gets (``client_for``).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, BinaryIO, TypedDict
from urllib.parse import urlencode, urljoin

import httpx
import orjson
import stamina

from service import strict_json
from service.clinical.model import Issue, Severity
from service.fhir.auth import FhirAuth, NoAuth
from service.fhir.errors import (
    AccessForbidden,
    DeadlineExceeded,
    FhirError,
    PatientNotFound,
    SearchRefused,
    UpstreamAuthError,
    UpstreamError,
    describe_query,
)
from service.fhir.queries import Query, check_id
from service.fhir.transport import Reply, exchange, header_token, new_request
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
RETRY_500_TIMES = 1  # idempotent requests only (reads, searches, PUT, DELETE)
ACCEPT = "application/fhir+json, application/json;q=0.9"
FORM = "application/x-www-form-urlencoded"
FHIR_JSON = "application/fhir+json"
NDJSON = "application/fhir+ndjson"
_DEFAULT_PORTS = {"http": 80, "https": 443}
EXPORT_TRANSIENT = frozenset({429, 500, 502, 503, 504})  # a status poll waits these out
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
    read_timeout: float | None = None  # per request, instead of the pool's (Bulk: slow)

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
class Written:
    """What a create or update left on the server."""

    status: int  # 201 created; 200 updated (or a conditional create that found one)
    resource: dict[str, Any] | None  # the stored resource, when the server sent it back
    location: str | None  # Location: [base]/[type]/[id]/_history/[vid]

    @property
    def created(self) -> bool:
        return self.status == 201

    def id(self, resource_type: str) -> str | None:
        """The stored resource's id: from the body, else from ``Location``."""
        if self.resource is not None and isinstance(self.resource.get("id"), str):
            return self.resource["id"]
        parts = (self.location or "").split("/_history")[0].rstrip("/").split("/")
        return parts[-1] if len(parts) >= 2 and parts[-2] == resource_type else None


@dataclass(frozen=True)
class ExportStatus:
    """One poll of a Bulk export: the manifest once done, else how long to wait."""

    manifest: dict[str, Any] | None
    retry_after: float | None = None  # the server's Retry-After, in seconds
    progress: str | None = None  # X-Progress, shortened (free text: never logged)
    status: int = 202  # 202 in progress; a transient 429/5xx is waited out like a 202


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


_SERIOUS = frozenset({"error", "fatal"})


class FhirClient:
    """One caller's view of a FHIR server (an evaluation, a write, a poll, a page run):
    shared connection pool, own deadline and credentials.

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
        key, rtype, params = self._query_parts(query)
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
                headers={"Content-Type": FORM},  # POST [type]/_search: safe to repeat
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

    async def pages(
        self, query: Query | tuple[str, Sequence[tuple[str, str]]]
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """A type-level search yielded page by page (match resources), for callers that
        process a large result as it comes (the Subscriptions catch-up). Each page gets the
        full deadline: the time the caller spends between pages is not the server's. No
        page or entry cap: nothing is held whole; next links stay on the base's origin."""
        key, rtype, params = self._query_parts(query)
        what = describe_query(key, rtype, tuple(dict.fromkeys(n for n, _ in params)))
        url: httpx.URL | None = self._base.join(rtype).copy_with(query=urlencode(params).encode())
        while url is not None:
            self.start_deadline()
            page_names = tuple(dict.fromkeys(k for k, _ in url.params.multi_items()))
            resp = await self._request(
                "GET", url, what=what, resource_type=rtype, key=key, names=page_names
            )
            bundle = self._check(resp, what, expect="Bundle")
            if bundle.get("type") != "searchset":
                raise UpstreamError(
                    f"the FHIR server answered the {what} with a non-searchset Bundle"
                )
            page = SearchResult(entries=[])
            self._collect(bundle, rtype, what, page)
            url = self._next_link(bundle, resp.url, what)
            yield page.entries

    async def history(self, resource_type: str, id: str, count: int = 10) -> list[dict[str, Any]]:
        """``GET [type]/[id]/_history``: the newest ``count`` versions' entries, newest first
        (a deletion is an entry with ``request.method`` DELETE and no resource)."""
        what = f"{resource_type} history"
        url = self._base.join(f"{resource_type}/{check_id(id)}/_history").copy_with(
            query=urlencode([("_count", str(count))]).encode()
        )
        resp = await self._request("GET", url, what=what, resource_type=resource_type)
        bundle = self._check(resp, what, expect="Bundle")
        if bundle.get("type") != "history":
            raise UpstreamError(f"the FHIR server answered the {what} with a non-history Bundle")
        entries = bundle.get("entry") or []
        if not isinstance(entries, list):
            raise UpstreamError(f"the FHIR server answered the {what} with a malformed Bundle")
        return [e for e in entries if isinstance(e, dict)]

    async def create(
        self, resource: dict[str, Any], *, if_none_exist: Sequence[tuple[str, str]] | None = None
    ) -> Written:
        """``POST [type]``; with ``if_none_exist`` a conditional create (a repeat finds the
        first: safe to retry). A plain create is sent once: it may have been carried out."""
        rtype = _resource_type(resource)
        what = f"{rtype} {'conditional ' if if_none_exist else ''}create"
        headers = {"Content-Type": FHIR_JSON, "Prefer": "return=representation"}
        if if_none_exist:
            headers["If-None-Exist"] = urlencode(list(if_none_exist))
        resp = await self._request(
            "POST",
            self._base.join(rtype),
            what=what,
            resource_type=rtype,
            content=orjson.dumps(resource),
            headers=headers,
            repeatable=bool(if_none_exist),
        )
        return self._written(resp, what, rtype)

    async def update(
        self, resource: dict[str, Any], *, conditional: Sequence[tuple[str, str]] | None = None
    ) -> Written:
        """``PUT [type]/[id]``, or with ``conditional`` ``PUT [type]?params`` (one resource
        per match: created or updated). Idempotent, so retried like a read."""
        rtype = _resource_type(resource)
        if conditional:
            what = f"{rtype} conditional update"
            url = self._base.join(rtype).copy_with(query=urlencode(list(conditional)).encode())
        else:
            what = f"{rtype} update"
            url = self._base.join(f"{rtype}/{check_id(str(resource.get('id', '')))}")
        resp = await self._request(
            "PUT",
            url,
            what=what,
            resource_type=rtype,
            content=orjson.dumps(resource),
            headers={"Content-Type": FHIR_JSON, "Prefer": "return=representation"},
        )
        return self._written(resp, what, rtype)

    async def delete(self, resource_type: str, id: str) -> None:
        """``DELETE [type]/[id]``; idempotent (a resource already gone is fine)."""
        what = f"{resource_type} delete"
        url = self._base.join(f"{resource_type}/{check_id(id)}")
        resp = await self._request("DELETE", url, what=what, resource_type=resource_type)
        if resp.status_code not in (200, 202, 204, 404, 410):
            raise _failure(resp.status_code, what, _parsed(resp, what)[1])

    def resolve(self, url: str) -> httpx.URL:
        """A URL a server gave us (a Bulk file, a status URL), resolved against the base;
        requests to it still go out only if it is on the base's origin."""
        try:
            return self._base.join(url)
        except (ValueError, httpx.InvalidURL):
            raise UpstreamError("the FHIR server gave a URL that is not a URL") from None

    # -- Bulk Data -----------------------------------------------------------------------
    async def export(self, path: str, params: Sequence[tuple[str, str]]) -> httpx.URL:
        """Bulk kick-off (``GET [path]`` with ``Prefer: respond-async``): the status URL
        (``Content-Location``). A refused request (400/422) is ``SearchRefused``."""
        what = "Bulk export kick-off"
        url = self._base.join(path).copy_merge_params(tuple(params))
        resp = await self._request(
            "GET",
            url,
            what=what,
            resource_type="$export",
            names=tuple(dict.fromkeys(n for n, _ in params)),
            headers={"Accept": FHIR_JSON, "Prefer": "respond-async"},
        )
        if resp.status_code != 202:
            raise _failure(resp.status_code, what, _parsed(resp, what)[1])
        location = resp.headers.get("content-location")
        if not location:
            raise UpstreamError("the Bulk export kick-off gave no Content-Location")
        return self._base.join(location)

    async def export_status(self, url: httpx.URL) -> ExportStatus:
        """One status poll: 200 is the manifest, 202 (or a transient 429/5xx, waited out by
        the poll loop, honouring ``Retry-After``) is not done yet; else a ``FhirError``."""
        what = "Bulk export status request"
        resp = await self._request(
            "GET",
            url,
            what=what,
            resource_type="$export",
            headers={"Accept": FHIR_JSON},
            retry_statuses=frozenset(),  # the poll loop is the retry loop
        )
        if resp.status_code in (202, *EXPORT_TRANSIENT):
            progress = resp.headers.get("x-progress")
            return ExportStatus(
                None,
                retry_after_seconds(resp.headers.get("retry-after")),
                progress[:100] if progress else None,
                resp.status_code,
            )
        body, detail = _parsed(resp, what)
        if resp.status_code != 200:
            raise _failure(resp.status_code, what, detail)
        if not isinstance(body, dict):
            raise UpstreamError("the Bulk export manifest is not JSON")
        return ExportStatus(body, status=200)

    async def download(
        self, url: httpx.URL, sink: BinaryIO, *, max_bytes: int, resource_type: str = "NDJSON"
    ) -> int:
        """Stream one same-origin file (a Bulk output) into ``sink``, refusing it past
        ``max_bytes``; returns the bytes written. Retried like a read (from the start)."""
        what = "Bulk file download"
        resp = await self._request(
            "GET",
            url,
            what=what,
            resource_type=resource_type,
            headers={"Accept": NDJSON},
            limit=max_bytes,
            sink=sink,
        )
        if resp.status_code != 200:
            raise _failure(resp.status_code, what, _parsed(resp, what)[1])
        return resp.streamed

    # -- internals -----------------------------------------------------------------------
    def _query_parts(
        self, query: Query | tuple[str, Sequence[tuple[str, str]]]
    ) -> tuple[str | None, str, list[tuple[str, str]]]:
        """(key, type, parameters with our ``_count`` unless the query has one)."""
        if isinstance(query, Query):
            key, rtype, params = query.key, query.resource_type, list(query.params)
        else:
            key, (rtype, raw) = None, query
            params = list(raw)
        if not any(name == "_count" for name, _ in params):
            params.append(("_count", str(self.config.page_size)))
        return key, rtype, params

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
            self._on_base(url, f"next-page link of the {what}")
            return url
        return None

    def _check(self, resp: Reply, what: str, *, expect: str) -> dict:
        """Turn a final response into the expected resource, or a clear failure."""
        body, detail = _parsed(resp, what)
        if resp.status_code != 200:
            raise _failure(resp.status_code, what, detail)
        if not isinstance(body, dict):
            ctype = header_token(resp, "content-type")
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

    def _written(self, resp: Reply, what: str, resource_type: str) -> Written:
        """A create's or update's answer: 200/201, its body only if it is that resource."""
        body, detail = _parsed(resp, what)
        if resp.status_code not in (200, 201):
            raise _failure(resp.status_code, what, detail)
        stored = (
            body if isinstance(body, dict) and body.get("resourceType") == resource_type else None
        )
        return Written(resp.status_code, stored, resp.headers.get("location"))

    def _on_base(self, url: httpx.URL, what: str) -> None:
        """Our credentials go only to the client's own base origin (scheme, host, port)."""
        if _origin(url) != _origin(self._base):
            raise UpstreamError(
                f"refused the {what}: its URL points away from the FHIR base (another scheme, "
                "host or port); our credentials are not sent there"
            )

    async def _request(
        self,
        method: str,
        url: httpx.URL,
        *,
        what: str,
        resource_type: str,
        key: str | None = None,
        names: Sequence[str] = (),
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        repeatable: bool = True,
        retry_statuses: frozenset[int] = RETRY_STATUSES,
        limit: int | None = None,
        sink: BinaryIO | None = None,
    ) -> Reply:
        """Send with retries inside the deadline; return the final non-retryable response.

        Retried, for ``repeatable`` requests only (reads, searches, PUT, DELETE, a create
        with ``If-None-Exist``; never a plain POST, which the server may have carried out):
        connection failures, ``retry_statuses`` (honouring ``Retry-After``) and one 500:
        HAPI answers a transient 500 now and then (a database hiccup, a busy search), which
        one more try usually clears. Only URLs on the base's origin are sent to.
        """
        self._on_base(url, what)
        remaining = self.remaining()
        if remaining <= 0:
            raise DeadlineExceeded(f"the deadline ran out before the {what}")
        loop = asyncio.get_running_loop()
        headers = {"Accept": ACCEPT, **(headers or {})}
        log_extra = QueryLog(fhir_resource=resource_type, fhir_params=list(names), fhir_query=key)
        limit = self.config.max_response_bytes if limit is None else limit

        def backoff(exc: BaseException) -> bool | float:
            if isinstance(exc, _Retryable):
                if exc.retry_after is None:
                    return True
                left = (self._deadline or 0) - loop.time()
                return exc.retry_after if exc.retry_after < left else False
            return isinstance(exc, _TransportFailure)

        server_errors = 0

        async def attempt_once() -> Reply:
            nonlocal server_errors
            sent = await self._auth.headers()
            resp = await self._send(
                method, url, {**headers, **sent}, content, what, log_extra, limit=limit, sink=sink
            )
            if resp.status_code == 401 and await self._auth.refresh(sent):
                sent = await self._auth.headers()
                resp = await self._send(
                    method,
                    url,
                    {**headers, **sent},
                    content,
                    what,
                    log_extra,
                    limit=limit,
                    sink=sink,
                )
            if not repeatable:
                return resp  # the caller words the status: it may have been carried out
            if resp.status_code in retry_statuses:
                raise _Retryable(
                    resp.status_code, retry_after_seconds(resp.headers.get("retry-after"))
                )
            if resp.status_code == 500 and retry_statuses and server_errors < RETRY_500_TIMES:
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
                    attempts=cfg.retry_attempts if repeatable else 1,
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
        timeout: float | httpx.Timeout | None = None,
        log_level: int = logging.INFO,
        limit: int | None = None,
        sink: BinaryIO | None = None,
    ) -> Reply:
        """One request; the body is streamed so an oversized one is refused, not buffered."""
        started = time.perf_counter()
        status: int | str = "error"
        if timeout is None and self.config.read_timeout is not None:
            pooled = self._http.timeout
            timeout = httpx.Timeout(
                self.config.read_timeout, connect=pooled.connect, pool=pooled.pool
            )
        request = new_request(
            self._http, method, url, headers=headers, content=content, timeout=timeout
        )
        seen: list[int] = []  # the status line, once it arrived
        cap = self.config.max_response_bytes if limit is None else limit
        try:
            reply = await exchange(self._http, request, limit=cap, what=what, seen=seen, sink=sink)
            status = reply.status_code
            return reply
        except UpstreamError:
            status = seen[0] if seen else "error"
            raise
        except httpx.TransportError as exc:
            status = type(exc).__name__
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


def _parsed(resp: Reply, what: str) -> tuple[Any, str]:
    """The body as JSON (None if it is not) and the `` (OperationOutcome: codes)`` detail."""
    body: Any = None
    try:
        body = strict_json.loads(resp.content) if resp.content else None
    except strict_json.DuplicateKeyError:
        if resp.status_code in (200, 201):  # two values for one element: which one is meant?
            raise UpstreamError(
                f"the FHIR server answered the {what} with ambiguous JSON "
                "(an object names a key more than once)"
            ) from None
    except ValueError:  # not JSON (orjson.JSONDecodeError), or nested too deeply
        body = None
    codes = _outcome_codes(body, frozenset({"error", "fatal", "warning", "information"}))
    return body, f" (OperationOutcome: {', '.join(codes)})" if codes else ""


def _resource_type(resource: dict[str, Any]) -> str:
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str) or not _TYPE_NAME.fullmatch(rtype):
        raise ValueError("a resource to write needs a resourceType")
    return rtype


def _failure(status: int, what: str, detail: str) -> FhirError:
    """The error for a final status that is not the one asked for."""
    if status == 403:
        return AccessForbidden(
            f"the FHIR server refused our credentials (HTTP {status}) for the {what}"
        )
    if status == 401:
        return UpstreamAuthError(
            f"the FHIR server refused our credentials (HTTP {status}) for the {what}"
        )
    if status in (400, 422, 501):
        return SearchRefused(f"the FHIR server answered HTTP {status} to the {what}{detail}")
    return UpstreamError(f"the FHIR server answered HTTP {status} to the {what}{detail}")


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
