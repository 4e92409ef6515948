"""Load patients' Bundles into a FHIR server as transactions (demo data, integration tests).

A ``collection`` Bundle becomes a ``transaction`` of ``PUT Type/id`` entries, so loading twice
updates instead of duplicating.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

import httpx

from service.errors import UpstreamError

FHIR_JSON = "application/fhir+json"


class LoadError(UpstreamError, RuntimeError):
    pass


def to_transaction(bundle: dict[str, Any]) -> dict[str, Any]:
    """A transaction that PUTs every resource at its own id (POST for id-less ones)."""
    if bundle.get("type") in ("transaction", "batch"):
        return bundle
    entries: list[dict[str, Any]] = []
    seen: set[str] = set()
    for entry in bundle.get("entry", []):
        resource = entry.get("resource")
        if not isinstance(resource, dict) or "resourceType" not in resource:
            continue
        rtype, rid = resource["resourceType"], resource.get("id")
        if rid:
            url = f"{rtype}/{rid}"
            if url in seen:  # a transaction may not touch one resource twice
                continue
            seen.add(url)
            request = {"method": "PUT", "url": url}
        else:
            request = {"method": "POST", "url": rtype}
        new: dict[str, Any] = {"resource": resource, "request": request}
        if entry.get("fullUrl"):
            new["fullUrl"] = entry["fullUrl"]
        entries.append(new)
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def wait_for_server(client: httpx.Client, seconds: float) -> None:
    """Poll ``metadata`` until it answers 200, or raise after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if client.get("metadata").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() >= deadline:
            raise LoadError(f"the FHIR server did not answer within {seconds:.0f} s")
        time.sleep(2)


def load_bundles(
    base: str,
    bundles: Iterable[tuple[str, dict[str, Any]]],
    *,
    token: str | None = None,
    wait_seconds: float = 0,
    timeout: float = 120,
) -> list[str]:
    """POST each (name, Bundle) as a transaction; one summary line per Bundle."""
    headers = {"Accept": FHIR_JSON, "Content-Type": FHIR_JSON}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    lines = []
    with httpx.Client(base_url=base.rstrip("/") + "/", headers=headers, timeout=timeout) as client:
        if wait_seconds:
            wait_for_server(client, wait_seconds)
        for name, bundle in bundles:
            tx = to_transaction(bundle)
            try:
                response = client.post("", json=tx)
            except httpx.HTTPError as exc:
                reason = type(exc).__name__
                raise LoadError(f"{name}: cannot reach the FHIR server ({reason})") from None

            if response.status_code != 200:
                raise LoadError(f"{name}: HTTP {response.status_code} from the FHIR server")
            statuses = Counter(
                (e.get("response", {}).get("status") or "?").split(" ")[0]
                for e in response.json().get("entry", [])
            )
            summary = ", ".join(f"{n} x {code}" for code, n in sorted(statuses.items()))
            lines.append(f"{name}: {len(tx['entry'])} entries ({summary})")
    return lines
