"""Fetch everything one evaluation needs for one patient, all queries at once.

``client_for`` hands out a ``FhirClient`` per evaluation over one pooled ``httpx.AsyncClient``
per FHIR base (kept for the service's lifetime, per event loop). Credentials are chosen per
client: a caller's token (CDS Hooks) lives only in that client; SMART tokens are shared per
base because they belong to the service, not to a user.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import httpx

from service.clinical.model import Issue
from service.fhir.auth import BearerAuth, FhirAuth, NoAuth, SmartBackendAuth, load_private_key
from service.fhir.client import ClientConfig, FhirClient, SearchResult
from service.fhir.demo_store import DEMO_BASE_URL, demo_transport
from service.fhir.errors import FhirConfigError, FhirError, PatientNotFound
from service.fhir.queries import Query, check_id, plan_queries
from service.protocol import Protocol
from service.settings import Settings


@dataclass
class FetchResult:
    patient: dict[str, Any]
    resources: list[dict[str, Any]]  # every non-Patient resource, deduplicated by type/id
    issues: list[Issue] = field(default_factory=list)  # warnings: truncation, server warnings
    truncated: frozenset[str] = frozenset()  # union of Query.feeds of searches cut by a cap
    timings: dict[str, float] = field(default_factory=dict)  # per-query wall time, ms


# Which failure wins when several queries fail at once: the most specific one.
_PRIORITY = (PatientNotFound,)


async def fetch_patient(
    client: FhirClient,
    protocol: Protocol,
    patient_id: str,
    as_of: date,
    *,
    only: set[str] | None = None,
) -> FetchResult:
    """Run the protocol's queries for one patient in parallel; any failure fails the fetch.

    ``only`` restricts to some query keys (CDS Hooks: the prefetch keys that were missing);
    without ``"patient"`` in it, ``FetchResult.patient`` is ``{}``.
    """
    check_id(patient_id)
    queries = plan_queries(protocol, patient_id, as_of)
    if only is not None:
        unknown = set(only) - {q.key for q in queries}
        if unknown:
            raise ValueError(f"unknown query keys: {sorted(unknown)}")
        queries = [q for q in queries if q.key in only]

    timings: dict[str, float] = {}

    async def run(q: Query) -> dict | SearchResult:
        started = time.perf_counter()
        try:
            if q.read:
                return await client.read(q.resource_type, q.read_id, key=q.key)
            return await client.search(q)
        finally:
            timings[q.key] = round((time.perf_counter() - started) * 1000, 1)

    try:
        async with asyncio.TaskGroup() as tg:
            tasks = {q.key: tg.create_task(run(q)) for q in queries}
    except* FhirError as group:
        raise _pick(group.exceptions) from None

    patient: dict[str, Any] = {}
    resources: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    issues: list[Issue] = []
    truncated: set[str] = set()
    for q in queries:
        outcome = tasks[q.key].result()
        if isinstance(outcome, dict):
            patient = outcome
            continue
        issues.extend(outcome.issues)
        if outcome.truncated:
            truncated |= q.feeds
        for resource in outcome.entries:
            rid = resource.get("id")
            ident = (resource.get("resourceType", ""), rid) if rid else None
            if ident is not None:
                if ident in seen:
                    continue
                seen.add(ident)
            resources.append(resource)
    return FetchResult(patient, resources, issues, frozenset(truncated), timings)


def _pick(errors: tuple[BaseException, ...]) -> BaseException:
    flat: list[BaseException] = []
    for e in errors:
        flat.extend(e.exceptions if isinstance(e, BaseExceptionGroup) else [e])
    for kind in _PRIORITY:
        for e in flat:
            if isinstance(e, kind):
                return e
    return flat[0]


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


def _http_for(base: str, settings: Settings) -> httpx.AsyncClient:
    cache = _loop_cache()
    key = ("http", base)
    http = cache.get(key)
    if http is None or http.is_closed:
        if base == DEMO_BASE_URL:
            http = httpx.AsyncClient(transport=demo_transport())
        else:
            http = httpx.AsyncClient(
                timeout=httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout),
                limits=httpx.Limits(max_connections=50, max_keepalive_connections=20),
                follow_redirects=False,  # a redirect could carry our token elsewhere
            )
        cache[key] = http
    return http


def _settings_auth(settings: Settings, base: str, http: httpx.AsyncClient) -> FhirAuth:
    if settings.fhir_auth == "static":
        if settings.fhir_token is None:
            raise FhirConfigError("fhir_auth=static needs ELIGIBILITY_FHIR_TOKEN")
        return BearerAuth(settings.fhir_token.get_secret_value())
    if settings.fhir_auth == "smart":
        if not settings.smart_client_id or not settings.smart_private_key_path:
            raise FhirConfigError("fhir_auth=smart needs a client id and a private key path")
        cache = _loop_cache()
        key = ("smart", base, settings.smart_client_id, settings.smart_alg, settings.smart_scopes)
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
    settings: Settings, *, bearer_token: str | None = None, base_url: str | None = None
) -> FhirClient:
    """A client for one evaluation (use ``async with``); call from inside the event loop.

    ``base_url`` (CDS Hooks ``fhirServer``) overrides the configured base; the configured
    credentials are only ever sent to the configured base, never to another server.
    ``bearer_token`` (CDS Hooks ``fhirAuthorization.access_token``) is used for this client
    only. With no base at all, the built-in demo store answers.
    """
    base = (base_url or settings.fhir_base_url or DEMO_BASE_URL).rstrip("/")
    http = _http_for(base, settings)
    configured = (settings.fhir_base_url or "").rstrip("/")
    auth: FhirAuth
    if bearer_token:
        auth = BearerAuth(bearer_token)
    elif base == configured:
        auth = _settings_auth(settings, base, http)
    else:
        auth = NoAuth()
    return FhirClient(http, base, auth=auth, config=ClientConfig.from_settings(settings))


async def aclose_clients() -> None:
    """Close this loop's pooled connections (application shutdown)."""
    cache = _pools.pop(asyncio.get_running_loop(), {})
    for value in cache.values():
        if isinstance(value, httpx.AsyncClient):
            await value.aclose()
