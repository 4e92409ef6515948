"""Fetch everything one evaluation needs for one patient, all queries at once.

Every query of the plan runs concurrently under the client's single deadline; the first
failure cancels the rest and is raised. A result is returned only when every query finished.

A Patient that links to other records of the same person (``Patient.link`` ``replaces``,
``seealso``, ``refer``) has the same searches run for each linked id as soon as the Patient
is read, in parallel with the rest: a merged record's results are this patient's, and a
``seealso`` record's results must be seen to hold their criteria open (service.record
decides). Only valid ids on this server are followed, at most ``MAX_LINKED_RECORDS``.

Copies of one resource (same type and id, e.g. on two pages) are kept unless identical, so
service.record orders differing versions exactly as it does for a Bundle.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any
from typing import Protocol as Interface

from service.clinical.model import Issue, Severity
from service.evaluation_context import current_relevance
from service.fhir.client import SearchResult
from service.fhir.errors import (
    AccessForbidden,
    FhirError,
    InvalidPatientId,
    PatientNotFound,
    SearchRefused,
)
from service.fhir.queries import Query, check_id, plan_queries
from service.protocol import Protocol
from service.references import normalise_base, reference_key, referenced_type
from service.relevance import Relevance

# Patient.link types whose records are searched too; "replaced-by" is not followed.
FOLLOWED_LINKS = ("replaces", "seealso", "refer")
MAX_LINKED_RECORDS = 4

__all__ = ["FetchResult", "PatientSource", "fetch_patient"]


class PatientSource(Interface):
    """What a fetch needs of its client: a FhirClient, or one shared by several protocols'
    fetches (service.portfolio_eval.SharedQueries)."""

    @property
    def base_url(self) -> str: ...

    async def read(self, resource_type: str, id: str, *, key: str | None = None) -> dict: ...

    async def search(
        self, query: Query | tuple[str, Sequence[tuple[str, str]]]
    ) -> SearchResult: ...


@dataclass
class FetchResult:
    patient: dict[str, Any]
    resources: list[dict[str, Any]]  # every non-Patient resource; identical copies once
    issues: list[Issue] = field(default_factory=list)  # warnings: truncation, server warnings
    truncated: frozenset[str] = frozenset()  # union of Query.feeds of searches cut by a cap
    timings: dict[str, float] = field(default_factory=dict)  # per-query wall time, ms
    server_base: str | None = None  # the server the data came from
    linked_patients: list[dict[str, Any]] = field(default_factory=list)  # as read, if found


# Which failure wins when several queries fail at once: the most specific one.
_PRIORITY = (PatientNotFound,)


def left_out(query: Query, refused: FhirError) -> SearchResult:
    """An optional search the server would not answer: no resources, and a warning."""
    why = "not permitted to us" if isinstance(refused, AccessForbidden) else "refused"
    message = (
        f"the FHIR server's {query.resource_type} search was {why}; results that could take "
        "their method from such a resource are read without it"
    )
    return SearchResult(entries=[], issues=[Issue(Severity.WARNING, "forbidden", message)])


async def fetch_patient(
    client: PatientSource,
    protocol: Protocol,
    patient_id: str,
    as_of: date,
    *,
    only: set[str] | None = None,
    links_of: dict[str, Any] | None = None,
    relevance: Relevance | None = None,
) -> FetchResult:
    """Run the protocol's queries for one patient in parallel; any failure fails the fetch.

    ``only`` restricts to some query keys (CDS Hooks: the prefetch keys that were missing);
    without ``"patient"`` in it, ``FetchResult.patient`` is ``{}``, and ``links_of`` (the
    Patient the caller already has) names the linked records to search. A linked record's
    searches are always all run: no prefetch holds another record's data. ``relevance``: the
    evaluation's selection (service.relevance; default: the protocol's under the site
    terminology configured now).
    """
    check_id(patient_id)
    relevance = relevance if relevance is not None else current_relevance(protocol)
    queries = plan_queries(protocol, patient_id, as_of, relevance)
    if only is not None:
        unknown = set(only) - {q.key for q in queries}
        if unknown:
            raise ValueError(f"unknown query keys: {sorted(unknown)}")
        queries = [q for q in queries if q.key in only]

    timings: dict[str, float] = {}
    searches = [q for q in queries if not q.read]
    linked: list[tuple[Query, asyncio.Task]] = []
    issues: list[Issue] = []
    truncated: set[str] = set()

    async def run(q: Query) -> dict | SearchResult:
        started = time.perf_counter()
        try:
            if q.read:
                found = await client.read(q.resource_type, q.read_id, key=q.key)
                follow(found)
                return found
            try:
                try:
                    return await client.search(q)
                except SearchRefused:
                    if q.fallback is None:
                        raise
                    fallback = dataclasses.replace(q, params=q.fallback, fallback=None)
                    return await client.search(fallback)
            except (AccessForbidden, SearchRefused) as exc:
                if not q.optional:
                    raise
                return left_out(q, exc)
        finally:
            timings[q.key] = round((time.perf_counter() - started) * 1000, 1)

    def follow(patient: dict[str, Any]) -> None:
        """Start the searches of every linked record as soon as the Patient is known."""
        ids = linked_ids(patient, client.base_url)
        if len(ids) > MAX_LINKED_RECORDS:
            truncated.update(relevance.all_feeds())
            issues.append(
                Issue(
                    Severity.WARNING,
                    "too-costly",
                    f"the Patient links to {len(ids)} other records; only "
                    f"{MAX_LINKED_RECORDS} were searched",
                )
            )
        for n, lid in enumerate(ids[:MAX_LINKED_RECORDS], 1):
            for q in plan_queries(protocol, lid, as_of, relevance):
                lq = dataclasses.replace(q, key=f"{q.key} (linked record {n})")
                task = read_linked(lq) if q.read else run(lq)
                linked.append((lq, tg.create_task(task)))

    async def read_linked(q: Query) -> dict | None:
        """A linked record's Patient (its own links are checked); gone is not an error."""
        started = time.perf_counter()
        try:
            return await client.read(q.resource_type, q.read_id, key=q.key)
        except PatientNotFound:
            return None
        finally:
            timings[q.key] = round((time.perf_counter() - started) * 1000, 1)

    try:
        async with asyncio.TaskGroup() as tg:
            tasks = {q.key: tg.create_task(run(q)) for q in queries}
            if links_of is not None and not any(q.read for q in queries):
                follow(links_of)
    except BaseExceptionGroup as group:
        # Not ``except*``: before Python 3.11.4 (gh-103590) a ``raise ... from None`` inside it
        # comes out wrapped in a new ExceptionGroup, and callers would see no FhirError.
        fhir_errors, others = group.split(FhirError)
        if fhir_errors is None or others is not None:
            raise
        raise most_specific_error(fhir_errors.exceptions) from None

    patient: dict[str, Any] = {}
    resources: list[dict[str, Any]] = []
    copies: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for q in queries:
        found = tasks[q.key].result()
        if q.read and isinstance(found, dict):  # a read's task gives the resource itself
            patient = found
    outcomes = [(q, tasks[q.key].result()) for q in searches]
    outcomes += [(q, task.result()) for q, task in linked]
    linked_patients: list[dict[str, Any]] = []
    for q, outcome in outcomes:
        if not isinstance(outcome, SearchResult):
            if isinstance(outcome, dict):
                linked_patients.append(outcome)
            continue
        issues.extend(outcome.issues)
        if outcome.truncated:
            truncated |= q.feeds
        for resource in outcome.entries:
            rid = resource.get("id")
            if isinstance(rid, str) and rid:
                seen = copies.setdefault((resource.get("resourceType", ""), rid), [])
                if any(c == resource for c in seen):
                    continue  # the same copy twice (two pages, two searches): harmless
                seen.append(resource)
            resources.append(resource)
    return FetchResult(
        patient, resources, issues, frozenset(truncated), timings, client.base_url, linked_patients
    )


def follows_links(patient: Any) -> bool:
    """Whether a Patient links to records whose data must be searched (``FOLLOWED_LINKS``)."""
    links = patient.get("link") if isinstance(patient, dict) else None
    for link in links if isinstance(links, list) else ():
        if isinstance(link, dict) and link.get("type") in FOLLOWED_LINKS:
            other = link.get("other")
            ref = other.get("reference") if isinstance(other, dict) else None
            if not isinstance(ref, str) or referenced_type(ref) in (None, "Patient"):
                return True  # a RelatedPerson holds no data of this patient's
    return False


def linked_ids(patient: dict[str, Any], base_url: str) -> list[str]:
    """Ids of the records this Patient links to (``FOLLOWED_LINKS``) on this server, each
    once; links to other servers, urn: or identifier-only links are not fetched (the record
    holds their criteria open)."""
    base = normalise_base(base_url)
    links = patient.get("link") if isinstance(patient, dict) else None
    found: list[str] = []
    for link in links if isinstance(links, list) else ():
        if not isinstance(link, dict) or link.get("type") not in FOLLOWED_LINKS:
            continue
        other = link.get("other")
        ref = other.get("reference") if isinstance(other, dict) else None
        if not isinstance(ref, str) or base is None:
            continue
        key = reference_key(ref, base)
        prefix = f"{base}/Patient/"
        if key is None or not key.startswith(prefix):
            continue
        try:
            lid = check_id(key[len(prefix) :])
        except InvalidPatientId:
            continue
        if lid != patient.get("id") and lid not in found:
            found.append(lid)
    return found


def most_specific_error(errors: tuple[BaseException, ...]) -> BaseException:
    flat: list[BaseException] = []
    for e in errors:
        flat.extend(e.exceptions if isinstance(e, BaseExceptionGroup) else [e])
    for kind in _PRIORITY:
        for e in flat:
            if isinstance(e, kind):
                return e
    return flat[0]
