"""Caller authentication for the $eligibility endpoints: static bearer API keys."""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request

from service.errors import ConfigurationError
from service.settings import Settings


class UnsafeConfiguration(ConfigurationError):
    """Settings that would expose patient data; raised at start, never at request time."""


def check_exposure(settings: Settings) -> None:
    """Refuse to serve pull mode with the service's own FHIR credentials to anonymous callers."""
    uses_own_credentials = settings.fhir_base_url is not None and settings.fhir_auth != "none"
    if uses_own_credentials and not settings.api_keys and not settings.allow_anonymous_pull:
        raise UnsafeConfiguration(
            "pull mode uses this service's FHIR credentials: set ELIGIBILITY_API_KEYS, or "
            "ELIGIBILITY_ALLOW_ANONYMOUS_PULL=true if the network already restricts callers"
        )


async def require_api_key(request: Request) -> None:
    """401 (no detail) unless the caller presents one of the configured keys."""
    keys = request.app.state.settings.api_keys
    if not keys:
        return
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    candidate = presented.strip().encode()
    valid = scheme.lower() == "bearer" and any(
        hmac.compare_digest(candidate, key.get_secret_value().encode()) for key in keys
    )
    if not valid:
        raise HTTPException(401, headers={"WWW-Authenticate": "Bearer"})
