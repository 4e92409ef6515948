"""Authenticate CDS clients by the signed JWT on every call (CDS Hooks 2.0 §Trusting CDS Clients).

Why each check exists:
- only asymmetric algorithms from an allowlist, and the key's type must fit the algorithm, so a
  token "signed" with ``none`` or with HS256 using our copy of the client's public key as the
  HMAC secret can never verify;
- ``iss`` must be a configured issuer, and keys come only from that issuer's inline JWKS or its
  configured ``jwks_url``; a ``jku`` header is honoured only when it equals that URL and is
  otherwise rejected without being fetched (no SSRF);
- ``aud`` must be the exact URL called, so a token for another endpoint cannot be replayed here;
- ``jti`` is remembered until the token expires, so a captured token works at most once.

Failures raise :class:`CdsAuthError` with a short fixed reason, logged at warning level on the
``service.cds.auth`` logger; the token itself is never logged or echoed.

Replay cache: ``(iss, jti)`` pairs live in the service's state store (``service.state``), whose
atomic set-if-absent makes a token work once across every worker (SQLite) and replica (Redis)
that share it. Without a store, an in-memory one of at most ``replay_cache_size`` entries is
used. A full in-memory store REJECTS new tokens rather than forgetting old entries (forgetting
would re-open the replay window); a store that cannot answer rejects them too (fail closed).
Token lifetime is capped (``max_lifetime_seconds``, 1 h by default, per the CDS Hooks best
practice), which bounds how long an entry lives.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric.ec import (
    EllipticCurvePrivateKey,
    EllipticCurvePublicKey,
)
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from fastapi import HTTPException, Request

from service import demo_ehr
from service.errors import ServiceError
from service.ops import metrics
from service.settings import Settings, TrustedIssuer
from service.state import StateStore, StoreError, StoreFull
from service.state.memory import MemoryStore

logger = logging.getLogger("service.cds.auth")

# The asymmetric JWS algorithms we can verify: alg -> (JWK kty, JWK crv or None).
_ASYMMETRIC: dict[str, tuple[str, str | None]] = {
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
}
_MIN_RSA_BITS = 2048
_MAX_TOKEN_CHARS = 16 * 1024
_MAX_JTI_CHARS = 256
_MAX_JWKS_BYTES = 256 * 1024
_REQUIRED_CLAIMS = ["iss", "aud", "exp", "iat", "jti"]


class CdsAuthError(ServiceError):
    """The caller is not an authenticated CDS client. ``reason`` is safe to log (no token)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class _KeySet:
    keys: dict[str, dict[str, Any]]  # kid -> JWK
    fetched_at: float


class _ReplayCache:
    """Seen ``(iss, jti)`` pairs until their token expires, in the shared state store."""

    def __init__(self, store: StateStore, clock: Callable[[], float]) -> None:
        self._store = store
        self._clock = clock

    async def add(self, key: tuple[str, str], expires_at: float) -> None:
        iss, jti = key
        name = "jti:" + hashlib.sha256(f"{iss}\0{jti}".encode()).hexdigest()
        ttl = max(expires_at - self._clock(), 1.0)
        try:
            fresh = await self._store.set_if_absent(name, "1", ttl)
        except StoreFull:
            raise CdsAuthError("replay cache full") from None
        except StoreError:
            metrics.store_error(self._store.backend, "replay")
            raise CdsAuthError("replay store unavailable") from None
        if not fresh:
            raise CdsAuthError("replayed jti")


def _allowed_algorithms(configured: list[str]) -> frozenset[str]:
    """Reject a configuration that would let ``none`` or a symmetric algorithm through."""
    bad = [alg for alg in configured if alg not in _ASYMMETRIC]
    if bad:
        raise ValueError(f"cds_jwt_algorithms may only name asymmetric algorithms, not {bad}")
    if not configured:
        raise ValueError("cds_jwt_algorithms is empty")
    return frozenset(configured)


def _index_jwks(jwks: Any) -> dict[str, dict[str, Any]]:
    """kid -> JWK. Keys without a kid, or whose kid is not unique, cannot be selected."""
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise ValueError("a JWKS must be an object with a 'keys' array")
    by_kid: dict[str, dict[str, Any]] = {}
    duplicates: set[str] = set()
    for jwk in jwks["keys"]:
        if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str):
            continue
        if jwk["kid"] in by_kid:
            duplicates.add(jwk["kid"])
        by_kid[jwk["kid"]] = jwk
    for kid in duplicates:
        del by_kid[kid]
    return by_kid


def _public_key(jwk: dict[str, Any], alg: str) -> RSAPublicKey | EllipticCurvePublicKey:
    """The verification key for ``alg``; never a symmetric key, never a mismatched family."""
    kty, crv = _ASYMMETRIC[alg]
    if jwk.get("kty") != kty or (crv is not None and jwk.get("crv") != crv):
        raise CdsAuthError("key type does not match alg")
    if jwk.get("alg") not in (None, alg):
        raise CdsAuthError("key alg does not match token alg")
    if jwk.get("use") not in (None, "sig"):
        raise CdsAuthError("key not meant for signatures")
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise CdsAuthError("key not meant for verification")
    try:
        key = jwt.PyJWK(jwk, algorithm=alg).key
    except (jwt.PyJWTError, ValueError, TypeError, KeyError):
        raise CdsAuthError("unusable key") from None
    if isinstance(key, RSAPrivateKey | EllipticCurvePrivateKey):
        key = key.public_key()  # a JWKS should not carry private parts; use only the public half
    if isinstance(key, RSAPublicKey):
        if key.key_size < _MIN_RSA_BITS:
            raise CdsAuthError("RSA key too small")
        return key
    if isinstance(key, EllipticCurvePublicKey):
        return key
    raise CdsAuthError("unusable key")


def _bearer_token(authorization_header: str | None) -> str:
    if not authorization_header:
        raise CdsAuthError("missing Authorization header")
    scheme, _, token = authorization_header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise CdsAuthError("malformed Authorization header")
    if len(token) > _MAX_TOKEN_CHARS or token.count(".") != 2:
        raise CdsAuthError("malformed JWT")
    return token


def _decode_error_reason(exc: jwt.PyJWTError) -> str:
    """A fixed reason per failure class; PyJWT's own messages are not passed on."""
    match exc:
        case jwt.ExpiredSignatureError():
            return "token expired"
        case jwt.ImmatureSignatureError():
            return "token not yet valid"
        case jwt.InvalidAudienceError():
            return "audience mismatch"
        case jwt.InvalidIssuerError():
            return "issuer mismatch"
        case jwt.MissingRequiredClaimError():
            return f"missing claim {exc.claim}"
        case jwt.InvalidIssuedAtError():
            return "invalid iat"
        case jwt.InvalidSignatureError():
            return "bad signature"
        case _:
            return "invalid token"


class CdsClientAuthenticator:
    """Verifies CDS client JWTs against the trusted issuers in :class:`Settings`.

    ``http`` is used only to fetch configured ``jwks_url``s (redirects are not followed); when
    omitted, a client is created on first use and closed by :meth:`aclose`.
    """

    def __init__(
        self,
        settings: Settings,
        http: httpx.AsyncClient | None = None,
        *,
        clock: Callable[[], float] = time.time,
        refetch_interval_seconds: float = 60.0,
        max_lifetime_seconds: int = 3600,
        replay_cache_size: int = 10_000,
        store: StateStore | None = None,
    ) -> None:
        self.settings = settings
        self.enabled = settings.cds_auth_enabled
        self._algorithms = _allowed_algorithms(settings.cds_jwt_algorithms)
        self._issuers: dict[str, TrustedIssuer] = {}
        self._inline: dict[str, dict[str, dict[str, Any]]] = {}
        for issuer in settings.cds_issuers:
            if issuer.jwks is None and issuer.jwks_url is None:
                raise ValueError(f"trusted issuer {issuer.iss!r} has neither jwks nor jwks_url")
            self._issuers[issuer.iss] = issuer
            self._inline[issuer.iss] = _index_jwks(issuer.jwks) if issuer.jwks else {}
        # Demo mode only: the public demo EHR key, so `eligibility cds-demo` can call us.
        self.demo_client_trusted = demo_ehr.demo_trust_applies(settings)
        if self.demo_client_trusted:
            demo = TrustedIssuer(iss=demo_ehr.demo_issuer(), jwks=demo_ehr.demo_public_jwks())
            self._issuers[demo.iss] = demo
            self._inline[demo.iss] = _index_jwks(demo.jwks)
        self._leeway = settings.cds_jwt_leeway_seconds
        self._cache_seconds = settings.cds_jwks_cache_seconds
        self._refetch_interval = refetch_interval_seconds
        self._max_lifetime = max_lifetime_seconds
        self._clock = clock
        self._http = http
        self._owns_http = http is None
        self._remote: dict[str, _KeySet] = {}  # by jwks_url
        self._failed_at: dict[str, float] = {}  # by jwks_url: last failed fetch
        self._locks: dict[str, asyncio.Lock] = {}
        self._replay = _ReplayCache(store or MemoryStore(replay_cache_size, clock), clock)

    async def aclose(self) -> None:
        if self._owns_http and self._http is not None:
            await self._http.aclose()
            self._http = None

    async def verify(self, authorization_header: str | None, audience_url: str) -> dict:
        """The verified claims of the caller's JWT, or :class:`CdsAuthError`."""
        try:
            return await self._verify(authorization_header, audience_url)
        except CdsAuthError as exc:
            logger.warning("CDS client authentication failed: %s", exc.reason)
            raise

    async def _verify(self, authorization_header: str | None, audience_url: str) -> dict:
        token = _bearer_token(authorization_header)
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise CdsAuthError("malformed JWT") from None

        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise CdsAuthError("algorithm not allowed")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.upper() != "JWT"):
            raise CdsAuthError("unexpected typ")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise CdsAuthError("missing kid")

        iss = unverified.get("iss")
        issuer = self._issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise CdsAuthError("untrusted issuer")
        jku = header.get("jku")
        if jku is not None and (issuer.jwks_url is None or jku != issuer.jwks_url):
            raise CdsAuthError("jku not allowed for issuer")

        key = _public_key(await self._find_jwk(issuer, kid), alg)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=audience_url,
                issuer=issuer.iss,
                leeway=self._leeway,
                options={"require": _REQUIRED_CLAIMS},
            )
        except jwt.PyJWTError as exc:
            raise CdsAuthError(_decode_error_reason(exc)) from None

        jti = claims["jti"]
        if not isinstance(jti, str) or not jti or len(jti) > _MAX_JTI_CHARS:
            raise CdsAuthError("invalid jti")
        exp, iat = float(claims["exp"]), float(claims["iat"])
        if exp - iat > self._max_lifetime:
            raise CdsAuthError("token lifetime too long")
        await self._replay.add((issuer.iss, jti), exp + self._leeway)
        return claims

    # -- keys ---------------------------------------------------------------
    async def _find_jwk(self, issuer: TrustedIssuer, kid: str) -> dict[str, Any]:
        inline = self._inline.get(issuer.iss, {})
        if kid in inline:
            return inline[kid]
        if issuer.jwks_url is None:
            raise CdsAuthError("unknown kid")
        keyset = await self._remote_keys(issuer.jwks_url, refresh=False)
        if kid in keyset.keys:
            return keyset.keys[kid]
        # The client may have rotated its keys: refetch, but at most once per interval.
        keyset = await self._remote_keys(issuer.jwks_url, refresh=True)
        if kid in keyset.keys:
            return keyset.keys[kid]
        raise CdsAuthError("unknown kid")

    async def _remote_keys(self, url: str, *, refresh: bool) -> _KeySet:
        lock = self._locks.setdefault(url, asyncio.Lock())
        async with lock:
            now = self._clock()
            cached = self._remote.get(url)
            if cached is not None:
                age = now - cached.fetched_at
                fresh = age < self._cache_seconds
                if fresh and (not refresh or age < self._refetch_interval):
                    return cached
            failed_at = self._failed_at.get(url)
            if failed_at is not None and now - failed_at < self._refetch_interval:
                raise CdsAuthError("JWKS unavailable")
            try:
                keys = await self._fetch(url)
            except CdsAuthError:
                self._failed_at[url] = now
                raise
            self._failed_at.pop(url, None)
            keyset = _KeySet(keys, now)
            self._remote[url] = keyset
            return keyset

    async def _fetch(self, url: str) -> dict[str, dict[str, Any]]:
        if self._http is None:
            self._http = httpx.AsyncClient(
                timeout=httpx.Timeout(
                    self.settings.read_timeout, connect=self.settings.connect_timeout
                ),
                follow_redirects=False,
            )
        try:
            response = await self._http.get(
                url, headers={"Accept": "application/json"}, follow_redirects=False
            )
        except httpx.HTTPError:
            raise CdsAuthError("JWKS unavailable") from None
        if response.status_code != 200 or len(response.content) > _MAX_JWKS_BYTES:
            raise CdsAuthError("JWKS unavailable")
        try:
            return _index_jwks(response.json())
        except ValueError:
            raise CdsAuthError("JWKS invalid") from None


def audience_for(request: Request, settings: Settings) -> str:
    """The URL the client called: ``public_base_url`` + path when set, else the request URL."""
    if settings.public_base_url:
        return settings.public_base_url.rstrip("/") + request.url.path
    return str(request.url.replace(query="", fragment=""))


def require_cds_client(
    authenticator: CdsClientAuthenticator,
    audience: Callable[[Request], str] | None = None,
) -> Callable[[Request], Awaitable[dict | None]]:
    """A FastAPI dependency: the verified claims, or 401 with no detail about why.

    When ``cds_auth_enabled`` is False every request passes and the dependency yields None
    (the application warns about this at startup). ``audience`` maps the request to the URL
    the JWT must name in ``aud``; by default :func:`audience_for`.
    """

    def default_audience(request: Request) -> str:
        return audience_for(request, authenticator.settings)

    audience_of = audience or default_audience

    async def dependency(request: Request) -> dict | None:
        if not authenticator.enabled:
            return None
        try:
            return await authenticator.verify(
                request.headers.get("authorization"), audience_of(request)
            )
        except CdsAuthError:
            raise HTTPException(status_code=401, headers={"WWW-Authenticate": "Bearer"}) from None

    return dependency
