"""Who gets which ``FhirClient``: pooled connections per FHIR base and the credentials rule.

``client_for`` hands out a ``FhirClient`` per evaluation (or per write, poll, page run) over
one pooled ``httpx.AsyncClient`` per FHIR base, kept for the service's lifetime, per event
loop. Credentials are chosen per client: a caller's token (CDS Hooks, the app's signed-in
user) lives only in that client; the service's own credentials (static token or SMART
Backend Services, shared per base) are only ever sent to the configured base. A pool whose
transport reports a pool timeout is replaced; ``fhir_ready`` probes the pool for
``/healthz``; ``close_clients`` closes this loop's pools at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import TYPE_CHECKING, Any

import httpx

from service.fhir.auth import BearerAuth, FhirAuth, NoAuth, SmartBackendAuth, load_private_key
from service.fhir.client import ClientConfig, FhirClient
from service.fhir.demo_layer import shared_demo_layer
from service.fhir.demo_store import DEMO_BASE_URL
from service.fhir.errors import FhirConfigError
from service.fhir.transport import MAX_IN_FLIGHT, GatedTransport, abandoned_exchanges

if TYPE_CHECKING:
    from service.settings import Settings

log = logging.getLogger("service.fhir")

# More connections than requests in flight (plus every keep-alive one, with room to spare),
# so a request never waits inside httpcore's pool (see service.fhir.transport.MAX_IN_FLIGHT).
MAX_KEEPALIVE = 16
POOL_CONNECTIONS = MAX_IN_FLIGHT + MAX_KEEPALIVE + 16
READY_CACHE_SECONDS = 5.0  # one probe per worker at most this often, however many callers
PROBE_TIMEOUT_SECONDS = 2.0  # below the orchestrator's probe timeout (Kubernetes: 3 s)

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


def _stuck(base: str, http: httpx.AsyncClient, cache: dict[Any, Any]) -> bool:
    """Did ``http``'s own transport (for ``base``) report a pool timeout?"""
    gated = cache.get(("gate", base))
    return gated is not None and gated[0] is http and gated[1].stuck


def http_for(base: str, settings: Settings) -> httpx.AsyncClient:
    """This loop's pooled HTTP client for ``base`` (the demo store's transport for the demo
    base); a closed or stuck pool is replaced. It carries no credentials of its own."""
    cache = _loop_cache()
    key = ("http", base)
    http = cache.get(key)
    if http is not None and _stuck(base, http, cache):
        # Closed at shutdown, not now: requests of other evaluations may still use it.
        cache.setdefault("retired", []).append(http)
        log.warning("FHIR connection pool replaced: it had no free connection")
        http = None
    if http is None or http.is_closed:
        if base == DEMO_BASE_URL:
            http = httpx.AsyncClient(transport=httpx.MockTransport(shared_demo_layer().handle))
        else:
            limits = httpx.Limits(
                max_connections=POOL_CONNECTIONS, max_keepalive_connections=MAX_KEEPALIVE
            )
            gate = GatedTransport(httpx.AsyncHTTPTransport(limits=limits))
            http = httpx.AsyncClient(
                transport=gate,
                # No request ever waits for a pool slot (MAX_IN_FLIGHT): a pool timeout means
                # a stuck pool, which is then replaced.
                timeout=httpx.Timeout(
                    settings.read_timeout,
                    connect=settings.connect_timeout,
                    pool=settings.connect_timeout,
                ),
                follow_redirects=False,  # a redirect could carry our token elsewhere
            )
            cache[("gate", base)] = (http, gate)
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
            http,  # a replaced pool gets its own token client
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
    config: ClientConfig | None = None,
) -> FhirClient:
    """A client for one evaluation (use ``async with``); call from inside the event loop.

    ``base_url`` (CDS Hooks ``fhirServer``, the app's ``iss``) overrides the configured base;
    the configured credentials are only ever sent to the configured base, never to another
    server. ``bearer_token`` (CDS Hooks ``fhirAuthorization.access_token``, the app user's
    token) is used for this client only. ``service_credentials=False`` is for callers acting
    for someone else (CDS Hooks, the app): they get their own token or none, never the
    service's, even on the configured base (no confused deputy). With no base at all, the
    built-in demo store answers. ``config``: other limits than the settings' (Bulk).
    """
    base = (base_url or settings.fhir_base_url or DEMO_BASE_URL).rstrip("/")
    http = http_for(base, settings)
    configured = (settings.fhir_base_url or "").rstrip("/")
    auth: FhirAuth
    if bearer_token:
        auth = BearerAuth(bearer_token)
    elif service_credentials and base == configured:
        auth = service_auth(settings, base, http)
    else:
        auth = NoAuth()
    return FhirClient(http, base, auth=auth, config=config or ClientConfig.from_settings(settings))


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
        client = FhirClient(http_for(base, settings), base)
        ready = await client.reachable(PROBE_TIMEOUT_SECONDS)
        cache[("ready", base)] = (now(), ready)
        if not ready:
            log.warning("readiness: the FHIR server did not answer the capability probe")
        return ready


async def close_clients() -> None:
    """Close this loop's pooled connections (application shutdown, the end of a CLI run),
    then give abandoned exchanges (which closing their connections ends) a moment to
    finish."""
    loop = asyncio.get_running_loop()
    cache = _pools.pop(loop, {})
    for value in [*cache.values(), *cache.get("retired", ())]:
        if isinstance(value, httpx.AsyncClient):
            await value.aclose()
    pending = abandoned_exchanges(loop)
    if pending:
        await asyncio.wait(pending, timeout=1.0)
