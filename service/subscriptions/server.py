"""Writes and paged reads against the configured FHIR server (the read-only ``FhirClient``
serves evaluations; Subscriptions, Tasks and the catch-up need more)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx

from service.errors import UpstreamError
from service.fhir.auth import FhirAuth, NoAuth
from service.settings import Settings

FHIR_JSON = "application/fhir+json"


class ServerError(UpstreamError):
    """The FHIR server refused or did not answer (message: no secrets, no patient data)."""


class FhirServer:
    """One FHIR base with the service's credentials (only ever sent to that base)."""

    def __init__(self, base: str, http: httpx.AsyncClient, auth: FhirAuth | None = None) -> None:
        self.base = base.rstrip("/")
        self.http = http
        self.auth = auth or NoAuth()

    @classmethod
    def from_settings(cls, settings: Settings, base: str | None = None) -> FhirServer:
        from service.fhir.client import service_auth

        base = (base or settings.fhir_base_url or "").rstrip("/")
        if not base:
            raise ServerError("no FHIR base URL (set ELIGIBILITY_FHIR_BASE_URL or --fhir-base)")
        http = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout),
            follow_redirects=False,
        )
        configured = (settings.fhir_base_url or "").rstrip("/")
        auth = service_auth(settings, base, http) if base == configured else NoAuth()
        return cls(base, http, auth)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def request(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        """JSON of the answer (None when empty); ServerError on a transport error or >= 300."""
        url = path if path.startswith(("http://", "https://")) else f"{self.base}/{path}"
        headers = {"Accept": FHIR_JSON, **(await self.auth.headers())}
        if body is not None:
            headers["Content-Type"] = FHIR_JSON
        try:
            resp = await self.http.request(
                method, url, json=body, params=params or None, headers=headers
            )
        except httpx.HTTPError as exc:
            raise ServerError(f"{method} {path.split('?')[0]}: {type(exc).__name__}") from exc
        if resp.status_code >= 300:
            raise ServerError(f"{method} {path.split('?')[0]}: HTTP {resp.status_code}")
        return resp.json() if resp.content else None

    async def pages(self, rtype: str, params: dict[str, Any]) -> AsyncIterator[list[dict]]:
        """A search's resources page by page (``next`` links), so no search is held whole."""
        bundle = await self.request("GET", rtype, **params)
        while True:
            yield [
                e["resource"]
                for e in (bundle or {}).get("entry") or ()
                if isinstance(e, dict)
                and isinstance(e.get("resource"), dict)
                and (e.get("search") or {}).get("mode", "match") == "match"
            ]
            nxt = next(
                (
                    link.get("url")
                    for link in (bundle or {}).get("link") or ()
                    if link.get("relation") == "next"
                ),
                None,
            )
            if not nxt:
                return
            if not nxt.startswith(self.base):
                raise ServerError("a next link points away from the FHIR base")
            bundle = await self.request("GET", nxt)
