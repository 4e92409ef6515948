"""How we authenticate to a FHIR server: none, a bearer token, or SMART Backend Services.

Every provider has the same two coroutines, so the client never branches on the mode:
``headers()`` gives the headers for the next request and ``refresh(sent)`` is asked once
after a 401 (True means "new credentials, try that request again").

Tokens and client assertions are secrets: no provider puts one in a log record, an
exception message or its ``repr``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import json
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from service.fhir.errors import FhirConfigError, UpstreamAuthError, UpstreamError
from service.inputs import is_bearer_token
from service.logs import register_secret

log = logging.getLogger("service.fhir")
_left_running: set[asyncio.Task[Any]] = set()  # token requests whose caller was cancelled


def _forget(task: asyncio.Task[Any]) -> None:
    _left_running.discard(task)
    if not task.cancelled():
        task.exception()  # consumed: the caller is gone


ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME = 240  # seconds; SMART allows at most 300, leave room for clock skew
TOKEN_MARGIN = 30.0  # renew this many seconds before expires_in runs out
DEFAULT_EXPIRES_IN = 300  # SMART's recommended lifetime when the server omits expires_in
MAX_AUTH_RESPONSE_BYTES = 1024 * 1024  # discovery documents and token responses are small
_V2_SUFFIX = re.compile(
    r"^(?P<head>(?:system|user|patient)/[^.?]+)\.(?P<perm>[cruds]+)(?P<q>\?.*)?$"
)

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class FhirAuth(Protocol):
    async def headers(self) -> dict[str, str]: ...

    async def refresh(self, sent: dict[str, str]) -> bool: ...


class NoAuth:
    """An open server (the demo store, a local HAPI)."""

    async def headers(self) -> dict[str, str]:
        return {}

    async def refresh(self, sent: dict[str, str]) -> bool:
        return False

    def __repr__(self) -> str:
        return "NoAuth()"


class BearerAuth:
    """A token someone else obtained: configured (static) or passed per request (CDS Hooks).

    A per-request token is never cached beyond the client it was given to, and a 401 cannot
    be fixed by us, so ``refresh`` declines.
    """

    __slots__ = ("_token",)

    def __init__(self, token: str) -> None:
        if not token:
            raise FhirConfigError("an empty bearer token was configured")
        self._token = token

    async def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"}

    async def refresh(self, sent: dict[str, str]) -> bool:
        return False

    def __repr__(self) -> str:
        return "BearerAuth(<redacted>)"


# -- SMART Backend Services ----------------------------------------------------------------


def load_private_key(path: Path) -> PrivateKey:
    """Read a PEM private key; a misconfiguration is reported without the key's content."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise FhirConfigError(
            f"cannot read the SMART private key file ({type(exc).__name__})"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise FhirConfigError("the SMART private key must be an EC (P-384) or RSA key")
    return key


def jwk_thumbprint(key: PrivateKey) -> str:
    """RFC 7638 thumbprint of the public key: a sensible ``kid`` when none is configured."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
        members = {k: jwk[k] for k in ("crv", "kty", "x", "y")}
    else:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        members = {k: jwk[k] for k in ("e", "kty", "n")}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


def to_v1_scopes(scopes: str) -> str:
    """SMART v2 ``system/X.rs`` -> v1 ``system/X.read`` (``.cud`` -> write, mixed -> ``*``)."""
    out: list[str] = []
    for scope in scopes.split():
        m = _V2_SUFFIX.match(scope)
        if not m:
            out.append(scope)
            continue
        perm = set(m["perm"])  # a v2 query restriction (``?category=...``) has no v1 form
        suffix = "read" if perm <= {"r", "s"} else "write" if perm <= {"c", "u", "d"} else "*"
        out.append(f"{m['head']}.{suffix}")
    return " ".join(dict.fromkeys(out))


def supports_v2(config: dict[str, Any]) -> bool:
    """The server says it understands v2 scopes (capability or an advertised v2 scope)."""
    capabilities = config.get("capabilities")
    if isinstance(capabilities, list) and "permission-v2" in capabilities:
        return True
    scopes = config.get("scopes_supported")
    scopes = scopes if isinstance(scopes, list) else []
    return any(isinstance(s, str) and _V2_SUFFIX.match(s) for s in scopes)


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1): traffic that stays on this host."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _clear_text_allowed(fhir_base: str, endpoint: httpx.URL) -> bool:
    """Plain http for the token endpoint only in a local setup: it and the base on loopback."""
    try:
        base = httpx.URL(fhir_base)
    except (httpx.InvalidURL, ValueError):
        return False
    return base.scheme == "http" and is_loopback(base.host) and is_loopback(endpoint.host)


async def _read_json(resp: httpx.Response, step: str) -> Any:
    """A small JSON body, read with a size cap; None when it is not JSON."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.aiter_bytes():
        size += len(chunk)
        if size > MAX_AUTH_RESPONSE_BYTES:
            raise UpstreamError(f"{step} failed: response too large")
        chunks.append(chunk)
    try:
        return orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError:
        return None


@dataclass
class _Token:
    value: str
    expires_at: float  # on the provider's clock


class _InvalidScope(Exception):
    pass


class SmartBackendAuth:
    """SMART Backend Services: client_credentials with a signed ``private_key_jwt`` assertion.

    The token endpoint is discovered from ``{base}/.well-known/smart-configuration``. The token
    is cached (shared by all evaluations against this base) until shortly before it expires;
    concurrent requests wait for one token request instead of each making their own.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        fhir_base: str,
        *,
        client_id: str,
        private_key: PrivateKey,
        alg: str = "ES384",
        kid: str | None = None,
        scopes: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if alg == "ES384":
            ok = isinstance(private_key, ec.EllipticCurvePrivateKey) and isinstance(
                private_key.curve, ec.SECP384R1
            )
        elif alg == "RS384":
            ok = isinstance(private_key, rsa.RSAPrivateKey)
        else:
            raise FhirConfigError("SMART assertions must be signed with RS384 or ES384")
        if not ok:
            raise FhirConfigError(f"the SMART private key does not fit {alg}")
        self._http = http
        self._base = fhir_base.rstrip("/")
        self._client_id = client_id
        self._key = private_key
        self._alg = alg
        self._kid = kid or jwk_thumbprint(private_key)
        self._scopes = scopes
        self._clock = clock
        self._config: dict[str, Any] | None = None
        self._token: _Token | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"SmartBackendAuth(client_id={self._client_id!r}, alg={self._alg})"

    async def headers(self) -> dict[str, str]:
        token = self._token
        if token is None or self._clock() >= token.expires_at:
            token = await self._renew(stale=token)
        return {"Authorization": f"Bearer {token.value}"}

    async def refresh(self, sent: dict[str, str]) -> bool:
        """After a 401: drop the token that was refused (unless someone already replaced it)."""
        token = self._token
        if token is not None and sent.get("Authorization") == f"Bearer {token.value}":
            await self._renew(stale=token)
        return True

    async def _renew(self, stale: _Token | None) -> _Token:
        async with self._lock:
            current = self._token
            if current is not None and current is not stale and self._clock() < current.expires_at:
                return current  # another request renewed it while we waited
            self._token = None
            config = await self._discover()
            endpoint = config["token_endpoint"]
            scopes = self._scopes if supports_v2(config) else to_v1_scopes(self._scopes)
            try:
                token = await self._request_token(endpoint, scopes)
            except _InvalidScope:
                v1 = to_v1_scopes(scopes)
                if v1 == scopes:
                    raise UpstreamAuthError(
                        "the SMART token endpoint refused our scopes (invalid_scope)"
                    ) from None
                log.info("SMART token endpoint refused v2 scopes; retrying with v1 scopes")
                try:
                    token = await self._request_token(endpoint, v1)
                except _InvalidScope:
                    raise UpstreamAuthError(
                        "the SMART token endpoint refused our scopes (invalid_scope)"
                    ) from None
            self._token = token
            return token

    async def _exchange(
        self, method: str, url: str, step: str, form: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        """One request to discovery or the token endpoint: status and JSON body (or None).

        It runs in a task of its own that a cancelled caller leaves to finish rather than
        cancels: a cancellation inside httpcore can leak a connection of the shared pool
        (see ``service.fhir.transport.detached``); httpx's timeouts bound the request.
        """

        async def once() -> tuple[int, Any]:
            async with self._http.stream(
                method, url, data=form, headers={"Accept": "application/json"}
            ) as resp:
                return resp.status_code, await _read_json(resp, step)

        task = asyncio.ensure_future(once())
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            _left_running.add(task)
            task.add_done_callback(_forget)
            raise
        except httpx.HTTPError as exc:
            raise UpstreamError(f"{step} failed ({type(exc).__name__})") from None

    async def _discover(self) -> dict[str, Any]:
        if self._config is not None:
            return self._config
        status, config = await self._exchange(
            "GET", f"{self._base}/.well-known/smart-configuration", "SMART discovery"
        )
        if status != 200:
            raise UpstreamError(f"SMART discovery failed: HTTP {status}")
        if config is None:
            raise UpstreamError("SMART discovery returned a non-JSON body")
        self._check_token_endpoint(config)
        self._config = config
        return config

    def _check_token_endpoint(self, config: Any) -> None:
        """An https endpoint, or http only when everything is local: no tokens in clear text."""
        endpoint = config.get("token_endpoint") if isinstance(config, dict) else None
        try:
            url = httpx.URL(endpoint) if isinstance(endpoint, str) else None
        except (httpx.InvalidURL, ValueError):
            url = None
        if url is None or url.scheme not in ("https", "http") or not url.host:
            raise UpstreamError("SMART discovery has no usable token_endpoint")
        if url.scheme == "http" and not _clear_text_allowed(self._base, url):
            raise UpstreamError(
                "SMART discovery advertises a token endpoint without TLS (http); refused, "
                "tokens must not travel in clear text"
            )

    def _assertion(self, audience: str) -> str:
        now = int(self._clock())
        claims = {
            "iss": self._client_id,
            "sub": self._client_id,
            "aud": audience,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME,
            "jti": secrets.token_urlsafe(32),
        }
        return jwt.encode(
            claims, self._key, algorithm=self._alg, headers={"kid": self._kid, "typ": "JWT"}
        )

    async def _request_token(self, endpoint: str, scopes: str) -> _Token:
        form = {
            "grant_type": "client_credentials",
            "scope": scopes,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": self._assertion(endpoint),
        }
        started = time.perf_counter()
        status, body = await self._exchange("POST", endpoint, "SMART token request", form)
        log.info(
            "SMART token request -> %s",
            status,
            extra={
                "fhir_resource": "token",
                "fhir_params": sorted(form),
                "status": status,
                "elapsed_ms": round((time.perf_counter() - started) * 1000, 1),
            },
        )
        body = body if isinstance(body, dict) else {}
        if status != 200:
            error = body.get("error")
            error = (
                error if isinstance(error, str) and re.fullmatch(r"[a-z_]{1,40}", error) else None
            )
            if error == "invalid_scope":
                raise _InvalidScope()
            if status >= 500:
                raise UpstreamError(f"SMART token endpoint failed: HTTP {status}")
            raise UpstreamAuthError(
                "the SMART token endpoint refused our credentials: "
                f"HTTP {status}{f' ({error})' if error else ''}"
            )
        value = body.get("access_token")
        if not isinstance(value, str) or not value:
            raise UpstreamAuthError("the SMART token response has no access_token")
        register_secret(value)  # opaque tokens match no pattern: the log redactor must know it
        if not is_bearer_token(value):  # it would fail in the HTTP library, again and again
            raise UpstreamAuthError("the SMART token response has a token that is not sendable")
        if str(body.get("token_type", "")).lower() != "bearer":
            raise UpstreamAuthError("the SMART token response is not a bearer token")
        expires_in = body.get("expires_in")
        if not isinstance(expires_in, int | float) or expires_in <= 0:
            expires_in = DEFAULT_EXPIRES_IN
        margin = min(TOKEN_MARGIN, expires_in / 5)
        return _Token(value, self._clock() + float(expires_in) - margin)
