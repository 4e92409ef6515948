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
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from service.evaluation_context import relevance_for
from service.fhir.client import NDJSON, ClientConfig, FhirClient
from service.fhir.errors import SearchRefused, UpstreamError
from service.fhir.pool import client_for, close_clients
from service.fhir.queries import check_id
from service.protocol import Protocol
from service.relevance import RelevanceUnion
from service.settings import Settings

EXPORT_TIMEOUT_SECONDS = 6 * 3600.0
POLL_MIN, POLL_MAX = 1.0, 30.0  # our own back-off when the server gives no Retry-After
MAX_RETRY_AFTER = 120.0  # a longer Retry-After is shortened to this
REQUEST_SECONDS = 120.0  # deadline of a kick-off or one poll (retries included)
FILE_SECONDS = 3600.0  # deadline of one file download (retries included)
MIN_READ_TIMEOUT = 60.0  # a kick-off or a file stream may pause longer than a search
MAX_FILE_BYTES = 8 * 1024**3  # one NDJSON file; a larger one fails the export


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


class Session:
    """One export against the configured server, with the service's credentials, through
    the one ``FhirClient`` (a fresh client, so a fresh deadline, per request)."""

    def __init__(self, settings: Settings) -> None:
        if not (settings.fhir_base_url or "").rstrip("/"):
            raise UpstreamError("a FHIR base URL is needed")
        self.settings = settings
        limits = ClientConfig.from_settings(settings)
        self.config = replace(
            limits,
            read_timeout=max(settings.read_timeout, MIN_READ_TIMEOUT),
            deadline_seconds=max(limits.deadline_seconds, REQUEST_SECONDS),
        )

    def client(self, deadline: float | None = None) -> FhirClient:
        config = (
            self.config if deadline is None else replace(self.config, deadline_seconds=deadline)
        )
        return client_for(self.settings, config=config)

    async def kick_off(
        self, protocol: Protocol | list[Protocol], group: str | None
    ) -> tuple[httpx.URL, bool]:
        path = f"Group/{check_id(group)}/$export" if group else "Patient/$export"
        for with_filter in (True, False):
            try:
                async with self.client() as client:
                    return await client.export(
                        path, export_params(protocol, with_filter)
                    ), with_filter
            except SearchRefused:
                if not with_filter:
                    raise
                # perhaps _typeFilter is not supported: ask for the superset
        raise AssertionError("unreachable")  # pragma: no cover

    async def wait(self, status_url: httpx.URL) -> dict[str, Any]:
        started = time.monotonic()
        delay = POLL_MIN
        while True:
            async with self.client() as client:
                status = await client.export_status(status_url)
            manifest = status.manifest
            if manifest is not None:
                if not isinstance(manifest.get("output"), list):
                    raise UpstreamError("the Bulk export manifest has no output list")
                if manifest.get("error"):
                    # Data the server could not export may be exactly the result that
                    # decides a criterion: no screening from a partial export.
                    raise UpstreamError(
                        f"the Bulk export reported {len(manifest['error'])} error file(s); "
                        "the export is incomplete"
                    )
                return manifest
            wait = status.retry_after
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
            async with self.client(FILE_SECONDS) as client:
                # the client sends our credentials only to its own origin
                target = client.resolve(url)
                with (dest / f"{name}.{n:04d}.ndjson").open("wb") as f:
                    await client.download(
                        target, f, max_bytes=MAX_FILE_BYTES, resource_type=name[:64]
                    )
            files += 1
        return files


async def bulk_export(
    settings: Settings, protocol: Protocol | list[Protocol], dest: Path, *, group: str | None = None
) -> dict[str, Any]:
    """Run the export into ``dest`` (emptied first); returns what the report should say."""
    exporter = Session(settings)
    try:
        status_url, filtered = await exporter.kick_off(protocol, group)
        manifest = await exporter.wait(status_url)
        files = await exporter.download(manifest, dest)
    finally:
        await close_clients()  # this run's own event loop: its pooled connections
    return {
        "level": f"Group/{group}" if group else "Patient",
        "typeFilter": filtered,
        "files": files,
        "transactionTime": manifest.get("transactionTime"),
        "errors": len(manifest.get("error") or []),
    }
