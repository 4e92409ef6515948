"""An async FHIR R4 client: read, paged search, retries, one deadline, checked responses.

It knows nothing about the trial. Every failure becomes a ``FhirError`` with a safe message;
nothing partial is returned as if complete (a search cut by a cap says so in
``SearchResult.truncated``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urljoin

import httpx
import orjson
import stamina

from service.clinical.model import Issue, Severity
from service.fhir.auth import FhirAuth, NoAuth
from service.fhir.errors import (
    DeadlineExceeded,
    PatientNotFound,
    UpstreamAuthError,
    UpstreamError,
    describe_query,
)
from service.fhir.queries import Query, check_id

if TYPE_CHECKING:
    from service.settings import Settings

log = logging.getLogger("service.fhir")

# httpx logs every request URL at INFO, and our URLs carry patient ids. Keep it quiet unless
# the application deliberately configured it.
if logging.getLogger("httpx").level == logging.NOTSET:
    logging.getLogger("httpx").setLevel(logging.WARNING)

RETRY_STATUSES = frozenset({429, 502, 503, 504})
ACCEPT = "application/fhir+json, application/json;q=0.9"
FORM = "application/x-www-form-urlencoded"
_DEFAULT_PORTS = {"http": 80, "https": 443}


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

    @classmethod
    def from_settings(cls, settings: Settings) -> ClientConfig:
        return cls(
            page_size=settings.page_size,
            max_pages=settings.max_pages,
            max_entries=settings.max_entries,
            max_query_length=settings.max_query_length,
            deadline_seconds=settings.deadline_seconds,
            retry_attempts=settings.retry_attempts,
        )


@dataclass
class SearchResult:
    entries: list[dict[str, Any]]  # resources of the matching entries, server order
    truncated: bool = False  # a cap (pages or entries) cut the search short
    issues: list[Issue] = field(default_factory=list)
    pages: int = 0


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
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port or _DEFAULT_PORTS.get(url.scheme)


def _outcome_codes(body: Any, severities: frozenset[str]) -> list[str]:
    """Issue codes (not diagnostics, which may echo values) of an OperationOutcome."""
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return []
    return [
        str(i.get("code", "unknown"))
        for i in body.get("issue") or []
        if isinstance(i, dict) and i.get("severity") in severities
    ]


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
        if body.get("id") not in (None, id):
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
                "POST", url, what=what, resource_type=rtype, key=key, names=names,
                content=encoded.encode(), content_type=FORM,
            )  # fmt: skip
        else:
            url = self._base.join(rtype).copy_with(query=encoded.encode())
            resp = await self._request("GET", url, what=what, resource_type=rtype, key=key,
                                       names=names)  # fmt: skip

        result = SearchResult(entries=[])
        cfg = self.config
        while True:
            bundle = self._check(resp, what, expect="Bundle")
            if bundle.get("type") != "searchset":
                raise UpstreamError(
                    f"the FHIR server answered the {what} with a non-searchset Bundle"
                )
            result.pages += 1
            self._collect(bundle, rtype, what, result)
            if len(result.entries) > cfg.max_entries:
                del result.entries[cfg.max_entries :]
                result.truncated = True
                break
            next_url = self._next_link(bundle, resp.request.url, what)
            if next_url is None:
                break
            if result.pages >= cfg.max_pages:
                result.truncated = True
                break
            page_names = tuple(dict.fromkeys(k for k, _ in next_url.params.multi_items()))
            resp = await self._request("GET", next_url, what=what, resource_type=rtype, key=key,
                                       names=page_names)  # fmt: skip
        if result.truncated:
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

    # -- internals -----------------------------------------------------------------------
    def _collect(self, bundle: dict, rtype: str, what: str, result: SearchResult) -> None:
        for entry in bundle.get("entry") or []:
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if not isinstance(resource, dict):
                continue
            mode = (entry.get("search") or {}).get("mode")
            if resource.get("resourceType") == "OperationOutcome":
                self._outcome_entry(resource, what, result)
                continue
            if mode not in (None, "match"):
                continue  # "include" entries are not ours to use; "outcome" handled above
            if resource.get("resourceType") != rtype:
                result.issues.append(
                    Issue(
                        Severity.WARNING,
                        "processing",
                        f"The {what} returned a {resource.get('resourceType')} as a match; "
                        "it was ignored.",
                    )
                )
                continue
            result.entries.append(resource)

    @staticmethod
    def _outcome_entry(outcome: dict, what: str, result: SearchResult) -> None:
        serious = _outcome_codes(outcome, _SERIOUS)
        if serious:
            raise UpstreamError(
                f"the FHIR server reported an error in the {what} result "
                f"(OperationOutcome: {', '.join(serious)})"
            )
        for issue in outcome.get("issue") or []:
            if isinstance(issue, dict) and issue.get("severity") == "warning":
                detail = str(issue.get("diagnostics") or issue.get("code") or "warning")[:200]
                result.issues.append(
                    Issue(Severity.WARNING, "informational", f"FHIR server, {what}: {detail}")
                )

    def _next_link(self, bundle: dict, current: httpx.URL, what: str) -> httpx.URL | None:
        for link in bundle.get("link") or []:
            if isinstance(link, dict) and link.get("relation") == "next" and link.get("url"):
                url = httpx.URL(urljoin(str(current), str(link["url"])))
                if _origin(url) != _origin(self._base):
                    raise UpstreamError(
                        f"refused to follow the next-page link of the {what}: it points to "
                        "another scheme, host or port than the configured FHIR base"
                    )
                return url
        return None

    def _check(self, resp: httpx.Response, what: str, *, expect: str) -> dict:
        """Turn a final response into the expected resource, or a clear failure."""
        status = resp.status_code
        body: Any = None
        try:
            body = orjson.loads(resp.content) if resp.content else None
        except orjson.JSONDecodeError:
            body = None
        codes = _outcome_codes(body, frozenset({"error", "fatal", "warning", "information"}))
        detail = f" (OperationOutcome: {', '.join(codes)})" if codes else ""
        if status in (401, 403):
            raise UpstreamAuthError(
                f"the FHIR server refused our credentials (HTTP {status}) for the {what}"
            )
        if status != 200:
            raise UpstreamError(f"the FHIR server answered HTTP {status} to the {what}{detail}")
        if not isinstance(body, dict):
            ctype = resp.headers.get("content-type", "none").split(";")[0].strip()[:60]
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
                f"the FHIR server answered the {what} with a {str(rtype)[:40]}, not a {expect}"
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
    ) -> httpx.Response:
        """Send with retries inside the deadline; return the final non-retryable response."""
        remaining = self.remaining()
        if remaining <= 0:
            raise DeadlineExceeded(f"the deadline ran out before the {what}")
        loop = asyncio.get_running_loop()
        headers = {"Accept": ACCEPT}
        if content_type:
            headers["Content-Type"] = content_type
        log_extra = {"fhir_resource": resource_type, "fhir_params": list(names), "fhir_query": key}

        def backoff(exc: Exception) -> bool | float:
            if isinstance(exc, _Retryable):
                if exc.retry_after is None:
                    return True
                left = (self._deadline or 0) - loop.time()
                return exc.retry_after if exc.retry_after < left else False
            return isinstance(exc, httpx.TransportError)

        async def attempt_once() -> httpx.Response:
            sent = await self._auth.headers()
            resp = await self._send(method, url, {**headers, **sent}, content, log_extra)
            if resp.status_code == 401 and await self._auth.refresh(sent):
                sent = await self._auth.headers()
                resp = await self._send(method, url, {**headers, **sent}, content, log_extra)
            if resp.status_code in RETRY_STATUSES:
                raise _Retryable(
                    resp.status_code, retry_after_seconds(resp.headers.get("retry-after"))
                )
            return resp

        cfg = self.config
        timer = asyncio.timeout(remaining)
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
        except httpx.TransportError as exc:
            raise UpstreamError(
                f"could not reach the FHIR server for the {what} ({type(exc).__name__})"
            ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send(
        self,
        method: str,
        url: httpx.URL,
        headers: dict[str, str],
        content: bytes | None,
        log_extra: dict[str, Any],
    ) -> httpx.Response:
        started = time.perf_counter()
        status: int | str = "error"
        try:
            resp = await self._http.request(method, url, headers=headers, content=content)
            status = resp.status_code
            return resp
        except httpx.TransportError as exc:
            status = type(exc).__name__
            raise
        finally:
            elapsed = round((time.perf_counter() - started) * 1000, 1)
            log.info(
                "FHIR %s %s -> %s (%.0f ms)",
                method,
                log_extra["fhir_resource"],
                status,
                elapsed,
                extra={**log_extra, "status": status, "elapsed_ms": elapsed},
            )
