"""The app's FHIR access for one request: reads through the pull-mode pipeline, two writes.

Reads go through ``fetch_patient`` and the evaluation pipeline exactly as
``GET /Patient/{id}/$eligibility`` does; only the client differs: the signed-in user's token
on the launch's FHIR server (never the service's own credentials), or, in demo mode, the demo
store with the app's in-memory layer on top. Writes are the two the app needs, both
idempotent: a conditional create (``If-None-Exist``) and a conditional update on an identifier.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson

from service.clinical.evaluation import Evaluation
from service.fhir.client import ClientConfig, FhirClient, client_for
from service.fhir.demo_layer import DemoLayer
from service.fhir.demo_store import DEMO_BASE_URL
from service.fhir.errors import UpstreamAuthError, UpstreamError
from service.fhir.fetch import FetchResult, fetch_patient
from service.pipeline import evaluate_fetched_off_loop
from service.protocol import Protocol
from service.settings import Settings

FHIR_JSON = "application/fhir+json"


@dataclass
class Evaluated:
    """One evaluation as the pipeline produced it, with the data it was made from."""

    evaluation: Evaluation
    bundle: dict[str, Any]
    fetched: FetchResult


class FhirAccess:
    """FHIR reads and writes for one request, as one user."""

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

    def _http(self) -> httpx.AsyncClient:
        if self._demo is not None:
            return httpx.AsyncClient(transport=httpx.MockTransport(self._demo.handle))
        return httpx.AsyncClient(
            timeout=httpx.Timeout(
                self.settings.read_timeout, connect=self.settings.connect_timeout
            ),
            follow_redirects=False,  # a redirect could carry the user's token elsewhere
        )

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": FHIR_JSON, "Content-Type": FHIR_JSON}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    # -- reads: the pull-mode pipeline -------------------------------------------------------
    async def evaluate(self, protocol: Protocol, patient_id: str, day: date) -> Evaluated:
        if self._demo is not None:
            async with self._http() as http:
                client = FhirClient(
                    http, DEMO_BASE_URL, config=ClientConfig.from_settings(self.settings)
                )
                fetched = await self._fetch(client, protocol, patient_id, day)
        else:
            client = client_for(
                self.settings,
                bearer_token=self._token,
                base_url=self.base_url,
                service_credentials=False,
            )
            fetched = await self._fetch(client, protocol, patient_id, day)
        evaluation, bundle = await evaluate_fetched_off_loop(fetched, protocol, day)
        return Evaluated(evaluation, bundle, fetched)

    @staticmethod
    async def _fetch(client: FhirClient, protocol: Protocol, pid: str, day: date) -> FetchResult:
        async with client:
            return await fetch_patient(client, protocol, pid, day)

    # -- writes ------------------------------------------------------------------------------
    async def create_once(self, resource: dict[str, Any], identifier: str) -> dict[str, Any]:
        """``POST [type]`` with ``If-None-Exist: identifier=...``: a repeat returns the first."""
        rtype = resource["resourceType"]
        headers = {**self._headers(), "If-None-Exist": urlencode({"identifier": identifier})}
        headers["Prefer"] = "return=representation"
        async with self._http() as http:
            resp = await self._send(http, "POST", f"{self.base_url}/{rtype}", resource, headers)
        return _written(resp, rtype, "conditional create")

    async def upsert(self, resource: dict[str, Any], identifier: str) -> dict[str, Any]:
        """``PUT [type]?identifier=...``: one resource per identifier, created or updated."""
        rtype = resource["resourceType"]
        url = f"{self.base_url}/{rtype}?{urlencode({'identifier': identifier})}"
        headers = {**self._headers(), "Prefer": "return=representation"}
        async with self._http() as http:
            resp = await self._send(http, "PUT", url, resource, headers)
        return _written(resp, rtype, "conditional update")

    async def find(self, rtype: str, identifier: str) -> list[dict[str, Any]]:
        """``GET [type]?identifier=...``: the resources with this identifier."""
        url = f"{self.base_url}/{rtype}?{urlencode({'identifier': identifier})}"
        async with self._http() as http:
            resp = await self._send(http, "GET", url, None, self._headers())
        body = _json(resp)
        if resp.status_code != 200 or body.get("resourceType") != "Bundle":
            raise UpstreamError(f"the FHIR server answered HTTP {resp.status_code} to a search")
        return [
            e["resource"]
            for e in body.get("entry") or []
            if isinstance(e, dict) and isinstance(e.get("resource"), dict)
        ]

    async def _send(
        self,
        http: httpx.AsyncClient,
        method: str,
        url: str,
        body: dict[str, Any] | None,
        headers: dict[str, str],
    ) -> httpx.Response:
        content = orjson.dumps(body) if body is not None else None
        try:
            return await http.request(method, url, content=content, headers=headers)
        except httpx.HTTPError as exc:
            raise UpstreamError(f"could not reach the FHIR server ({type(exc).__name__})") from None


def _json(resp: httpx.Response) -> dict[str, Any]:
    try:
        body = orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        return {}
    return body if isinstance(body, dict) else {}


def _written(resp: httpx.Response, rtype: str, what: str) -> dict[str, Any]:
    """The stored resource (or at least its id, from Location), or a safe FhirError."""
    if resp.status_code in (401, 403):
        raise UpstreamAuthError(
            f"the FHIR server refused the {what} of a {rtype} (HTTP {resp.status_code}): "
            "the signed-in user may lack write access"
        )
    if resp.status_code not in (200, 201):
        raise UpstreamError(f"the FHIR server answered HTTP {resp.status_code} to the {what}")
    body = _json(resp)
    if body.get("resourceType") == rtype and body.get("id"):
        return body
    location = resp.headers.get("location", "")
    parts = location.split("/_history")[0].rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == rtype:
        return {"resourceType": rtype, "id": parts[-1]}
    raise UpstreamError(f"the FHIR server did not say which {rtype} the {what} stored")
