"""The Subscriptions' view of the configured FHIR server: the one ``FhirClient`` (retries
where safe, deadline, size caps, same-origin rule), one client per call so each call gets
the full deadline, its failures as ``ServerError`` (what the worker and the command catch)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from service.errors import UpstreamError
from service.fhir.auth import FhirAuth
from service.fhir.client import ClientConfig, FhirClient
from service.fhir.errors import FhirError
from service.settings import Settings


class ServerError(UpstreamError):
    """The FHIR server refused or did not answer (message: no secrets, no patient data)."""


class FhirServer:
    """One FHIR base with the service's credentials (only ever sent to that base)."""

    def __init__(
        self,
        base: str,
        http: httpx.AsyncClient | None = None,
        auth: FhirAuth | None = None,
        *,
        clients: Callable[[], FhirClient] | None = None,
    ) -> None:
        """``http`` (and ``auth``): a client of the caller's own (tests); ``clients``: where
        each call's ``FhirClient`` comes from (``from_settings``: the shared pool)."""
        self.base = base.rstrip("/")
        self._http = http
        if clients is None:
            if http is None:
                raise ValueError("FhirServer needs an http client or a client factory")
            clients = lambda: FhirClient(http, self.base, auth=auth)  # noqa: E731
        self._clients = clients

    @classmethod
    def from_settings(cls, settings: Settings, base: str | None = None) -> FhirServer:
        from service.fhir.pool import client_for

        base = (base or settings.fhir_base_url or "").rstrip("/")
        if not base:
            raise ServerError("no FHIR base URL (set ELIGIBILITY_FHIR_BASE_URL or --fhir-base)")
        config = ClientConfig.from_settings(settings)
        return cls(base, clients=lambda: client_for(settings, base_url=base, config=config))

    async def aclose(self) -> None:
        """Close an http client of the caller's own; the shared pool closes at shutdown."""
        if self._http is not None:
            await self._http.aclose()

    async def create(self, resource: dict[str, Any]) -> dict[str, Any]:
        """``POST [type]`` (sent once: not idempotent); the stored resource, or its id."""
        rtype = resource["resourceType"]
        try:
            async with self._clients() as client:
                written = await client.create(resource)
        except FhirError as exc:
            raise ServerError(exc.message) from None
        return written.resource or {"resourceType": rtype, "id": written.id(rtype) or "?"}

    async def update(self, resource: dict[str, Any]) -> None:
        """``PUT [type]/[id]``."""
        try:
            async with self._clients() as client:
                await client.update(resource)
        except FhirError as exc:
            raise ServerError(exc.message) from None

    async def delete(self, resource_type: str, id: str) -> None:
        try:
            async with self._clients() as client:
                await client.delete(resource_type, id)
        except FhirError as exc:
            raise ServerError(exc.message) from None

    async def history(self, rtype: str, rid: str) -> list[dict[str, Any]]:
        """The newest versions' entries of one resource (a deleted one's included)."""
        try:
            async with self._clients() as client:
                return await client.history(rtype, rid)
        except FhirError as exc:
            raise ServerError(exc.message) from None

    async def pages(self, rtype: str, params: dict[str, Any]) -> AsyncIterator[list[dict]]:
        """A search's resources page by page (``next`` links), so no search is held whole."""
        query = (rtype, [(k, str(v)) for k, v in params.items()])
        try:
            async with self._clients() as client:
                async for page in client.pages(query):
                    yield page
        except FhirError as exc:
            raise ServerError(exc.message) from None
