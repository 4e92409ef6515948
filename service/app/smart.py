"""SMART App Launch 2.x for the web app: discovery, authorization code + PKCE, token exchange.

The OAuth client is Authlib's (``AsyncOAuth2Client``): it builds the authorization URL with
``state`` and the S256 ``code_challenge``, and exchanges the code with the ``code_verifier``.
This module adds what SMART asks on top: the ``iss`` allowlist, discovery from
``{iss}/.well-known/smart-configuration``, the ``aud`` and ``launch`` parameters, and the
``patient`` / ``fhirUser`` / ``appContext`` of the token response. Tokens never leave the
server and are never logged.
"""

from __future__ import annotations

import ipaddress
import json
import warnings
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt

from service.errors import ServiceError

with warnings.catch_warnings():  # Authlib's notice about its httpx backend, not about us
    import authlib.deprecate  # noqa: F401 - it installs an "always" filter when first imported

    warnings.simplefilter("ignore")
    from authlib.common.security import generate_token
    from authlib.integrations.httpx_client import AsyncOAuth2Client

from service.settings import Settings

BASE_SCOPES = "openid fhirUser patient/*.rs patient/QuestionnaireResponse.c"
ENROL_SCOPE = "patient/ResearchSubject.cu"
DISCOVERY = "/.well-known/smart-configuration"
TIMEOUT = httpx.Timeout(8.0, connect=3.0)
ATTESTING_TYPES = ("Practitioner", "PractitionerRole")


class LaunchError(ServiceError):
    """A launch that cannot go on; the message is safe to show (no token, no secret)."""


@dataclass(frozen=True)
class Endpoints:
    authorize: str
    token: str


@dataclass
class Login:
    """What a finished token exchange gives the app (kept server-side only)."""

    access_token: str
    expires_in: int | None
    patient: str | None
    fhir_user: str | None
    user_display: str | None
    app_context: dict[str, Any] | None
    scope: str


def scopes(settings: Settings, *, standalone: bool) -> str:
    context = "launch/patient" if standalone else "launch"
    extra = f" {ENROL_SCOPE}" if settings.app_enrolment_enabled else ""
    return f"{context} {BASE_SCOPES}{extra}"


def _loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def check_url(url: Any, what: str) -> str:
    """https, or http on loopback only (local testing); no credentials or fragments."""
    if not isinstance(url, str):
        raise LaunchError(f"the {what} is missing")
    parts = urlsplit(url)
    secure = parts.scheme == "https" or (parts.scheme == "http" and _loopback(parts.hostname))
    if not secure or not parts.hostname or parts.username or parts.fragment:
        raise LaunchError(f"the {what} must be an https URL")
    return url


def allowed_issuer(settings: Settings, iss: Any) -> str:
    """The launch's ``iss`` if it is on the allowlist (compared without a trailing slash)."""
    if not isinstance(iss, str) or not iss:
        raise LaunchError("the launch names no FHIR server (iss)")
    wanted = iss.rstrip("/")
    if wanted not in {s.rstrip("/") for s in settings.app_smart_allowed_issuers}:
        raise LaunchError("this FHIR server (iss) is not allowed to launch the app")
    return check_url(wanted, "FHIR server URL (iss)")


def client_id(settings: Settings) -> str:
    if not settings.app_smart_client_id:
        raise LaunchError("the app has no SMART client id configured")
    return settings.app_smart_client_id


def _client(settings: Settings, redirect_uri: str, scope: str | None = None) -> AsyncOAuth2Client:
    secret = settings.app_smart_client_secret
    return AsyncOAuth2Client(
        client_id=client_id(settings),
        client_secret=secret.get_secret_value() if secret else None,
        token_endpoint_auth_method="client_secret_basic" if secret else "none",
        scope=scope,
        redirect_uri=redirect_uri,
        code_challenge_method="S256",
        timeout=TIMEOUT,
        follow_redirects=False,
    )


async def discover(iss: str) -> Endpoints:
    """The authorization and token endpoints from ``{iss}/.well-known/smart-configuration``."""
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT, follow_redirects=False) as http:
            resp = await http.get(iss + DISCOVERY, headers={"Accept": "application/json"})
    except httpx.HTTPError as exc:
        raise LaunchError(f"the FHIR server's SMART configuration ({type(exc).__name__})") from None
    if resp.status_code != 200:
        raise LaunchError(f"the SMART configuration answered HTTP {resp.status_code}")
    try:
        config = resp.json()
    except ValueError:
        raise LaunchError("the SMART configuration is not JSON") from None
    if not isinstance(config, dict):
        raise LaunchError("the SMART configuration is not a JSON object")
    methods = config.get("code_challenge_methods_supported")
    if not isinstance(methods, list) or "S256" not in methods:
        raise LaunchError("the EHR's authorization server does not support PKCE S256")
    return Endpoints(
        authorize=check_url(config.get("authorization_endpoint"), "authorization endpoint"),
        token=check_url(config.get("token_endpoint"), "token endpoint"),
    )


def authorization_url(
    settings: Settings,
    endpoints: Endpoints,
    *,
    iss: str,
    redirect_uri: str,
    launch: str | None,
) -> tuple[str, str, str]:
    """(URL to send the browser to, state, code_verifier)."""
    scope = scopes(settings, standalone=launch is None)
    client = _client(settings, redirect_uri, scope)
    verifier = generate_token(64)
    extra: dict[str, str] = {"aud": iss}
    if launch is not None:
        extra["launch"] = launch
    url, state = client.create_authorization_url(
        endpoints.authorize, state=generate_token(32), code_verifier=verifier, **extra
    )
    return url, state, verifier


async def exchange_code(
    settings: Settings, *, token_endpoint: str, redirect_uri: str, code: str, verifier: str
) -> Login:
    """Trade the code (with the PKCE verifier) for the token and the launch context."""
    async with _client(settings, redirect_uri) as client:
        try:
            token = await client.fetch_token(
                token_endpoint,
                grant_type="authorization_code",
                code=code,
                code_verifier=verifier,
                redirect_uri=redirect_uri,
            )
        except httpx.HTTPError as exc:
            name = type(exc).__name__
            raise LaunchError(f"the token endpoint could not be reached ({name})") from None
        except Exception as exc:  # noqa: BLE001 - Authlib's OAuth errors: say which, not more
            error = getattr(exc, "error", None) or type(exc).__name__
            raise LaunchError(f"the token request was refused ({error})") from None
    access = token.get("access_token")
    if not isinstance(access, str) or not access:
        raise LaunchError("the token response has no access token")
    claims = _id_token_claims(token.get("id_token"))
    fhir_user = token.get("fhirUser") or claims.get("fhirUser")
    expires = token.get("expires_in")
    return Login(
        access_token=access,
        expires_in=int(expires)
        if isinstance(expires, int | float | str) and str(expires).isdigit()
        else None,
        patient=token.get("patient") if isinstance(token.get("patient"), str) else None,
        fhir_user=fhir_user if isinstance(fhir_user, str) else None,
        user_display=claims.get("name") if isinstance(claims.get("name"), str) else None,
        app_context=_app_context(token.get("appContext")),
        scope=str(token.get("scope") or ""),
    )


def _id_token_claims(id_token: Any) -> dict[str, Any]:
    """Claims of the id_token, read only for ``fhirUser`` and a display name.

    It came straight from the token endpoint over the back channel (OpenID Connect Core
    3.1.3.7 lets TLS stand in for the signature check then); nothing is authorised on it.
    """
    if not isinstance(id_token, str):
        return {}
    try:
        claims = jwt.decode(id_token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return {}
    return claims if isinstance(claims, dict) else {}


def _app_context(value: Any) -> dict[str, Any] | None:
    """CDS Hooks ``appContext`` is a string; ours is JSON naming the study."""
    if isinstance(value, dict):
        return value
    if not isinstance(value, str):
        return None
    try:
        parsed = json.loads(value)
    except ValueError:
        return {"text": value[:200]}
    return parsed if isinstance(parsed, dict) else None


def author_reference(fhir_user: str | None, iss: str) -> str | None:
    """``fhirUser`` as a reference on ``iss`` if it is a Practitioner(Role), else None."""
    if not fhir_user:
        return None
    ref = fhir_user
    prefix = iss.rstrip("/") + "/"
    if ref.startswith(prefix):
        ref = ref[len(prefix) :]
    parts = ref.split("/")
    if len(parts) == 2 and parts[0] in ATTESTING_TYPES and parts[1]:
        return ref
    if len(parts) > 2 and parts[-2] in ATTESTING_TYPES:  # an absolute URL on another server
        return fhir_user
    return None
