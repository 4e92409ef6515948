"""Write the screening back to the FHIR server: a Group of candidates, ResearchSubjects.

``--write-group``: one Group (``actual``) of the eligible and potential candidates, with a
stable id per protocol, replaced on every run (several studies: one Group per study).
``--write-results``: one ResearchSubject per evaluated patient and study by conditional update
on an identifier (study + patient), so running twice updates the same resources and creates
nothing new.
"""

from __future__ import annotations

import asyncio
import csv
from datetime import UTC, datetime
from typing import Any

from service.fhir.errors import UpstreamError
from service.fhir.pool import client_for, close_clients
from service.fhir.queries import check_id
from service.protocol import Protocol
from service.screening.outdir import WORKLIST, OutputFolder
from service.screening.rows import ERROR_STATUS
from service.settings import Settings

CANDIDATE_STATUSES = ("eligible", "potential-candidate")
WRITE_CONCURRENCY = 4


def subject_identifier_system(protocol: Protocol) -> str:
    return f"{protocol.canonical}/screening-subject"


def group_id(protocol: Protocol) -> str:
    return check_id(f"{protocol.id}-candidates"[:64])


def _study(protocol: Protocol) -> dict[str, Any]:
    """The study by its canonical URL as an identifier: no external reference to resolve."""
    title = protocol.research_study.get("title", protocol.id)
    return {
        "identifier": {"system": "urn:ietf:rfc:3986", "value": protocol.canonical},
        "display": f"{title} (protocol version {protocol.version})",
    }


def research_subject(protocol: Protocol, pid: str, status: str) -> dict[str, Any]:
    return {
        "resourceType": "ResearchSubject",
        "identifier": [{"system": subject_identifier_system(protocol), "value": pid}],
        "status": status,
        "study": _study(protocol),
        "individual": {"reference": f"Patient/{pid}"},
    }


def candidate_group(protocol: Protocol, pids: list[str], as_of: str) -> dict[str, Any]:
    return {
        "resourceType": "Group",
        "id": group_id(protocol),
        "identifier": [{"system": f"{protocol.canonical}/screening-group", "value": protocol.id}],
        "active": True,
        "type": "person",
        "actual": True,
        "name": f"Screening candidates for {protocol.id} as of {as_of}",
        "quantity": len(pids),
        "member": [{"entity": {"reference": f"Patient/{pid}"}} for pid in pids],
    }


def _rows(out: OutputFolder, protocol: Protocol) -> list[tuple[str, str]]:
    """This study's evaluated rows (a several-study worklist names the study per row)."""
    with (out.path / WORKLIST).open(newline="", encoding="utf-8") as f:
        return [
            (r["patient"], r["status"])
            for r in csv.DictReader(f)
            if r["status"] != ERROR_STATUS
            and not r["error"]
            and r.get("study", protocol.id) == protocol.id
        ]


async def write_back(
    settings: Settings, protocol: Protocol, out: OutputFolder, *, group: bool, results: bool
) -> dict[str, Any]:
    """Write through the one ``FhirClient`` with the service's credentials: conditional
    updates (idempotent, so retried like reads), one client and deadline per write."""
    if not (settings.fhir_base_url or "").rstrip("/"):
        raise UpstreamError("a FHIR base URL is needed")
    rows = _rows(out, protocol)
    written: dict[str, Any] = {}
    try:
        if results:
            system = subject_identifier_system(protocol)
            counts = {"created": 0, "updated": 0}

            async def put(pid: str, status: str) -> None:
                async with client_for(settings) as client:
                    stored = await client.update(
                        research_subject(protocol, pid, status),
                        conditional=[("identifier", f"{system}|{pid}")],
                    )
                counts["created" if stored.created else "updated"] += 1

            pending = iter(rows)

            async def writer() -> None:
                for pid, status in pending:  # shared iterator: each row written once
                    await put(pid, status)

            async with asyncio.TaskGroup() as tg:
                for _ in range(WRITE_CONCURRENCY):
                    tg.create_task(writer())
            written["researchSubjects"] = counts
        if group:
            pids = [pid for pid, status in rows if status in CANDIDATE_STATUSES]
            as_of = out.as_of.isoformat() if out.as_of else datetime.now(UTC).date().isoformat()
            resource = candidate_group(protocol, pids, as_of)
            async with client_for(settings) as client:
                await client.update(resource)
            written["group"] = {"id": resource["id"], "members": len(pids)}
    finally:
        await close_clients()  # this run's own event loop: its pooled connections
    return written
