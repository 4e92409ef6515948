"""FHIR Bulk Data ``$export`` (Group- or Patient-level), then the files for local screening.

Asks only for what the protocol reads: ``_type`` is the Patient plus the resource types the
record builder uses, and ``_typeFilter`` narrows Observations to the protocol's codes, by
``combo-code`` as pull mode searches (service.relevance; a
server that refuses ``_typeFilter`` is asked again without it: a superset is safe, the local
evaluation filters anyway). Kick-off with ``Prefer: respond-async``, poll the status URL
honouring ``Retry-After``, download every file with the same credentials (only from the
FHIR server's own origin; never sent elsewhere), streamed to disk.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from service.evaluation_context import relevance_for
from service.fhir.client import retry_after_seconds, service_auth
from service.fhir.errors import UpstreamAuthError, UpstreamError
from service.fhir.queries import check_id
from service.protocol import Protocol
from service.relevance import RelevanceUnion
from service.settings import Settings

FHIR_JSON = "application/fhir+json"
NDJSON = "application/fhir+ndjson"
EXPORT_TIMEOUT_SECONDS = 6 * 3600.0
POLL_MIN, POLL_MAX = 1.0, 30.0  # our own back-off when the server gives no Retry-After
MAX_RETRY_AFTER = 120.0  # a longer Retry-After is shortened to this
TRANSIENT = frozenset({429, 500, 502, 503, 504})


def export_params(
    protocol: Protocol | list[Protocol], with_filter: bool = True
) -> list[tuple[str, str]]:
    """The kick-off's parameters, from the same selection as every other path
    (service.relevance: ``combo-code``, so a panel with the analyte in a component is
    exported; several studies: the union of their selections, each filter once)."""
    if isinstance(protocol, list):
        relevance: Any = RelevanceUnion(relevance_for(p, None) for p in protocol)
    else:
        relevance = relevance_for(protocol, None)  # screening reads no site terminology
    params = [("_outputFormat", NDJSON), ("_type", ",".join(relevance.export_types()))]
    if with_filter:
        params += [("_typeFilter", f) for f in relevance.type_filters()]
    return params


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port


def _outcome_codes(resp: httpx.Response) -> str:
    try:
        body = orjson.loads(resp.content)
        codes = [i.get("code", "?") for i in body.get("issue", []) if isinstance(i, dict)]
    except (orjson.JSONDecodeError, AttributeError):
        return ""
    return f" (OperationOutcome: {', '.join(str(c)[:40] for c in codes)})" if codes else ""


class Session:
    def __init__(self, settings: Settings, http: httpx.AsyncClient) -> None:
        base = (settings.fhir_base_url or "").rstrip("/")
        if not base:
            raise UpstreamError("a FHIR base URL is needed")
        self.base = httpx.URL(base + "/")
        self.http = http
        self.auth = service_auth(settings, base, http)

    async def send(
        self,
        method: str,
        url: httpx.URL,
        accept: str,
        content: bytes | None = None,
        what: str = "Bulk export",
        **headers: str,
    ) -> httpx.Response:
        """One request with our credentials, only ever to the configured server's origin."""
        if _origin(url) != _origin(self.base):
            raise UpstreamError(f"the {what} pointed to another server; not followed")
        if content is not None:
            headers = {"Content-Type": FHIR_JSON, **headers}

        async def once() -> tuple[dict[str, str], httpx.Response]:
            sent = await self.auth.headers()
            all_headers = {"Accept": accept, **headers, **sent}
            return sent, await self.http.request(method, url, headers=all_headers, content=content)

        sent, resp = await once()
        if resp.status_code == 401 and await self.auth.refresh(sent):
            sent, resp = await once()
        if resp.status_code in (401, 403):
            raise UpstreamAuthError(
                f"the FHIR server refused our credentials (HTTP {resp.status_code}) for the {what}"
            )
        return resp

    async def kick_off(
        self, protocol: Protocol | list[Protocol], group: str | None
    ) -> tuple[httpx.URL, bool]:
        path = f"Group/{check_id(group)}/$export" if group else "Patient/$export"
        for with_filter in (True, False):
            params = tuple(export_params(protocol, with_filter))  # a tuple: httpx's param types
            url = self.base.join(path).copy_merge_params(params)
            resp = await self.send("GET", url, FHIR_JSON, Prefer="respond-async")
            if resp.status_code == 202:
                location = resp.headers.get("content-location")
                if not location:
                    raise UpstreamError("the Bulk export kick-off gave no Content-Location")
                return self.base.join(location), with_filter
            if with_filter and resp.status_code in (400, 422):
                continue  # perhaps _typeFilter is not supported: ask for the superset
            raise UpstreamError(
                f"the FHIR server answered HTTP {resp.status_code} to the Bulk export "
                f"kick-off{_outcome_codes(resp)}"
            )
        raise AssertionError("unreachable")  # pragma: no cover

    async def wait(self, status_url: httpx.URL) -> dict[str, Any]:
        started = time.monotonic()
        delay = POLL_MIN
        while True:
            resp = await self.send("GET", status_url, FHIR_JSON)
            if resp.status_code == 200:
                try:
                    manifest = orjson.loads(resp.content)
                except orjson.JSONDecodeError:
                    raise UpstreamError("the Bulk export manifest is not JSON") from None
                if not isinstance(manifest, dict) or not isinstance(manifest.get("output"), list):
                    raise UpstreamError("the Bulk export manifest has no output list")
                if manifest.get("error"):
                    # Data the server could not export may be exactly the result that
                    # decides a criterion: no screening from a partial export.
                    raise UpstreamError(
                        f"the Bulk export reported {len(manifest['error'])} error file(s); "
                        "the export is incomplete"
                    )
                return manifest
            if resp.status_code != 202 and resp.status_code not in TRANSIENT:
                raise UpstreamError(
                    f"the Bulk export failed: HTTP {resp.status_code}{_outcome_codes(resp)}"
                )
            wait = retry_after_seconds(resp.headers.get("retry-after"))
            if wait is None:
                wait, delay = delay, min(delay * 2, POLL_MAX)
            if time.monotonic() - started + wait > EXPORT_TIMEOUT_SECONDS:
                raise UpstreamError("the Bulk export did not finish in time")
            await asyncio.sleep(min(wait, MAX_RETRY_AFTER))

    async def download(self, manifest: dict[str, Any], dest: Path) -> int:
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        files = 0
        for n, item in enumerate(manifest["output"]):
            url = item.get("url") if isinstance(item, dict) else None
            if not isinstance(url, str):
                raise UpstreamError("the Bulk export manifest has an output without url")
            rtype = str(item.get("type") or "export")
            name = rtype if rtype.isalnum() else "export"
            target = self.base.join(url)
            if _origin(target) != _origin(self.base):
                raise UpstreamError(
                    "a Bulk export file is on another server; our credentials are not sent there"
                )
            sent = await self.auth.headers()
            headers = {"Accept": NDJSON, **sent}
            async with self.http.stream("GET", target, headers=headers) as resp:
                if resp.status_code != 200:
                    raise UpstreamError(
                        f"the FHIR server answered HTTP {resp.status_code} to a Bulk file download"
                    )
                with (dest / f"{name}.{n:04d}.ndjson").open("wb") as f:
                    async for chunk in resp.aiter_bytes():
                        f.write(chunk)
            files += 1
        return files


async def bulk_export(
    settings: Settings, protocol: Protocol | list[Protocol], dest: Path, *, group: str | None = None
) -> dict[str, Any]:
    """Run the export into ``dest`` (emptied first); returns what the report should say."""
    timeout = httpx.Timeout(max(settings.read_timeout, 60.0), connect=settings.connect_timeout)
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as http:
        exporter = Session(settings, http)
        try:
            status_url, filtered = await exporter.kick_off(protocol, group)
            manifest = await exporter.wait(status_url)
            files = await exporter.download(manifest, dest)
        except httpx.TransportError as exc:
            raise UpstreamError(
                f"could not reach the FHIR server for the Bulk export ({type(exc).__name__})"
            ) from None
    return {
        "level": f"Group/{group}" if group else "Patient",
        "typeFilter": filtered,
        "files": files,
        "transactionTime": manifest.get("transactionTime"),
        "errors": len(manifest.get("error") or []),
    }
