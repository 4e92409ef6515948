"""The app's FHIR access for one request: reads through the pull-mode pipeline, two writes.

Reads go through ``fetch_patient`` and the evaluation pipeline exactly as
``GET /Patient/{id}/$eligibility`` does; only the client differs: the signed-in user's token
on the launch's FHIR server (never the service's own credentials), or, in demo mode, the demo
store with the app's in-memory layer on top. Writes are the two the app needs, both
idempotent: a conditional create (``If-None-Exist``) and a conditional update on an identifier.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import date
from typing import Any

import httpx

from service.clinical.evaluation import Evaluation
from service.fhir.client import ClientConfig, FhirClient, Written
from service.fhir.demo_layer import DemoLayer
from service.fhir.demo_store import DEMO_BASE_URL
from service.fhir.errors import UpstreamAuthError, UpstreamError
from service.fhir.fetch import FetchResult, fetch_patient
from service.fhir.pool import client_for
from service.pipeline import evaluate_fetched_off_loop
from service.protocol import Protocol
from service.settings import Settings


@dataclass
class Evaluated:
    """One evaluation as the pipeline produced it, with the data it was made from."""

    evaluation: Evaluation
    bundle: dict[str, Any]
    fetched: FetchResult


class FhirAccess:
    """FHIR reads and writes for one request, as one user: the one ``FhirClient`` (retries,
    deadline, size caps, same-origin rule) with the user's token, never the service's."""

    def __init__(
        self,
        settings: Settings,
        *,
        base_url: str,
        token: str | None,
        demo: DemoLayer | None = None,
    ) -> None:
        self.settings = settings
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._demo = demo

    def _client(self) -> FhirClient:
        """A client for one call (use ``async with``): demo layer, or the pooled one for the
        launch's server with the user's token only (``service_credentials=False``)."""
        if self._demo is not None:
            http = httpx.AsyncClient(transport=httpx.MockTransport(self._demo.handle))
            config = ClientConfig.from_settings(self.settings)
            return FhirClient(http, DEMO_BASE_URL, config=config, owns_http=True)
        return client_for(
            self.settings,
            bearer_token=self._token,
            base_url=self.base_url,
            service_credentials=False,
        )

    # -- reads: the pull-mode pipeline -------------------------------------------------------
    async def evaluate(self, protocol: Protocol, patient_id: str, day: date) -> Evaluated:
        async with self._client() as client:
            fetched = await fetch_patient(client, protocol, patient_id, day)
        evaluation, bundle = await evaluate_fetched_off_loop(fetched, protocol, day)
        return Evaluated(evaluation, bundle, fetched)

    # -- writes ------------------------------------------------------------------------------
    async def create_once(self, resource: dict[str, Any], identifier: str) -> dict[str, Any]:
        """``POST [type]`` with ``If-None-Exist: identifier=...``: a repeat returns the first."""
        async with self._client() as client:
            written = await _as_user(
                client.create(resource, if_none_exist=[("identifier", identifier)]),
                resource,
                "conditional create",
            )
        return _stored(written, resource["resourceType"], "conditional create")

    async def upsert(self, resource: dict[str, Any], identifier: str) -> dict[str, Any]:
        """``PUT [type]?identifier=...``: one resource per identifier, created or updated."""
        async with self._client() as client:
            written = await _as_user(
                client.update(resource, conditional=[("identifier", identifier)]),
                resource,
                "conditional update",
            )
        return _stored(written, resource["resourceType"], "conditional update")

    async def find(self, rtype: str, identifier: str) -> list[dict[str, Any]]:
        """``GET [type]?identifier=...``: the resources with this identifier."""
        async with self._client() as client:
            result = await client.search((rtype, [("identifier", identifier)]))
        return result.entries


async def _as_user(write: Awaitable[Written], resource: dict[str, Any], what: str) -> Written:
    """A refused write says that the signed-in user may lack write access."""
    try:
        return await write
    except UpstreamAuthError as exc:
        raise UpstreamAuthError(
            f"the FHIR server refused the {what} of a {resource['resourceType']}: "
            f"the signed-in user may lack write access ({exc.message})"
        ) from None


def _stored(written: Written, rtype: str, what: str) -> dict[str, Any]:
    """The stored resource (or at least its id, from Location), or a safe FhirError."""
    if written.resource is not None and written.resource.get("id"):
        return written.resource
    rid = written.id(rtype)
    if rid:
        return {"resourceType": rtype, "id": rid}
    raise UpstreamError(f"the FHIR server did not say which {rtype} the {what} stored")
