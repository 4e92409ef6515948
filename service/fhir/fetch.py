"""Fetch everything one evaluation needs for one patient, all queries at once.

Every query of the plan runs concurrently under the client's single deadline; the first
failure cancels the rest and is raised. A result is returned only when every query finished.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from service.clinical.model import Issue
from service.fhir.client import FhirClient, SearchResult
from service.fhir.errors import FhirError, PatientNotFound
from service.fhir.queries import Query, check_id, plan_queries
from service.protocol import Protocol

__all__ = ["FetchResult", "fetch_patient"]


@dataclass
class FetchResult:
    patient: dict[str, Any]
    resources: list[dict[str, Any]]  # every non-Patient resource, deduplicated by type/id
    issues: list[Issue] = field(default_factory=list)  # warnings: truncation, server warnings
    truncated: frozenset[str] = frozenset()  # union of Query.feeds of searches cut by a cap
    timings: dict[str, float] = field(default_factory=dict)  # per-query wall time, ms


# Which failure wins when several queries fail at once: the most specific one.
_PRIORITY = (PatientNotFound,)


async def fetch_patient(
    client: FhirClient,
    protocol: Protocol,
    patient_id: str,
    as_of: date,
    *,
    only: set[str] | None = None,
) -> FetchResult:
    """Run the protocol's queries for one patient in parallel; any failure fails the fetch.

    ``only`` restricts to some query keys (CDS Hooks: the prefetch keys that were missing);
    without ``"patient"`` in it, ``FetchResult.patient`` is ``{}``.
    """
    check_id(patient_id)
    queries = plan_queries(protocol, patient_id, as_of)
    if only is not None:
        unknown = set(only) - {q.key for q in queries}
        if unknown:
            raise ValueError(f"unknown query keys: {sorted(unknown)}")
        queries = [q for q in queries if q.key in only]

    timings: dict[str, float] = {}

    async def run(q: Query) -> dict | SearchResult:
        started = time.perf_counter()
        try:
            if q.read:
                return await client.read(q.resource_type, q.read_id, key=q.key)
            return await client.search(q)
        finally:
            timings[q.key] = round((time.perf_counter() - started) * 1000, 1)

    try:
        async with asyncio.TaskGroup() as tg:
            tasks = {q.key: tg.create_task(run(q)) for q in queries}
    except* FhirError as group:
        raise _pick(group.exceptions) from None

    patient: dict[str, Any] = {}
    resources: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    issues: list[Issue] = []
    truncated: set[str] = set()
    for q in queries:
        outcome = tasks[q.key].result()
        if isinstance(outcome, dict):
            patient = outcome
            continue
        issues.extend(outcome.issues)
        if outcome.truncated:
            truncated |= q.feeds
        for resource in outcome.entries:
            rid = resource.get("id")
            ident = (resource.get("resourceType", ""), rid) if rid else None
            if ident is not None:
                if ident in seen:
                    continue
                seen.add(ident)
            resources.append(resource)
    return FetchResult(patient, resources, issues, frozenset(truncated), timings)


def _pick(errors: tuple[BaseException, ...]) -> BaseException:
    flat: list[BaseException] = []
    for e in errors:
        flat.extend(e.exceptions if isinstance(e, BaseExceptionGroup) else [e])
    for kind in _PRIORITY:
        for e in flat:
            if isinstance(e, kind):
                return e
    return flat[0]
