"""Use what the CDS client prefetched; fetch only the keys that are missing or unusable."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

from service.cds.models import PatientViewRequest
from service.clinical.model import Issue, Severity
from service.evaluation_context import EvaluationContext
from service.fhir.fetch import follows_links
from service.protocol import Protocol
from service.relevance import Relevance
from service.settings import Settings


@dataclass
class Resolved:
    patient: dict[str, Any] = field(default_factory=dict)
    resources: list[dict[str, Any]] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    truncated: frozenset[str] = frozenset()
    missing: set[str] = field(default_factory=set)  # keys neither prefetched nor fetchable
    server_base: str | None = None  # the EHR's FHIR server: absolute references to it are ours
    linked_patients: list[dict[str, Any]] = field(default_factory=list)  # Patient.link records


def _usable_search(value: Any) -> list[dict[str, Any]] | None:
    """Resources of a prefetched searchset, or None if the key cannot be trusted as complete.

    The request model already checked the envelope (``entry`` is an array); what is left
    odd here (a ``link`` that is not an array, an entry without a typed resource) is read
    conservatively: an unreadable ``link`` may hide a next page, a typeless entry is skipped.
    """
    if not isinstance(value, dict) or value.get("resourceType") != "Bundle":
        return None  # null, an OperationOutcome, or anything else: fetch it ourselves
    links = value.get("link")
    if links is not None and not isinstance(links, list):
        return None  # cannot tell whether the client paginated: fetch it ourselves
    if any(isinstance(link, dict) and link.get("relation") == "next" for link in links or ()):
        return None  # the client paginated: the rest is on the server
    entries = value.get("entry")
    resources = []
    for entry in entries if isinstance(entries, list) else ():
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            continue
        if resource["resourceType"] == "OperationOutcome":
            issues = resource.get("issue")
            severities = {
                i.get("severity")
                for i in (issues if isinstance(issues, list) else ())
                if isinstance(i, dict) and isinstance(i.get("severity"), str)
            }
            if severities & {"error", "fatal"} or not isinstance(issues, list | None):
                return None
            continue
        resources.append(resource)
    return resources


async def resolve_prefetch(
    call: PatientViewRequest, protocol: Protocol, settings: Settings, day: date
) -> Resolved:
    # the same selection as the evaluation and every other path (service.relevance)
    relevance = EvaluationContext.current(protocol).relevance
    resolved, need = from_prefetch(call, relevance)
    if call.fhirServer is None or not (need or follows_links(resolved.patient)):
        return resolved  # complete, or what is missing is in ``Resolved.missing``

    # The EHR named this server: only its own token may be sent there, never ours.
    async with ehr_client(call, settings) as client:
        await fetch_missing(client, call, relevance, need, resolved, day)
    return resolved


def ehr_client(call: PatientViewRequest, settings: Settings) -> Any:
    """A client for the EHR's ``fhirServer`` with the EHR's token only (never ours)."""
    from service.fhir.pool import client_for

    token = (
        call.fhirAuthorization.access_token.get_secret_value() if call.fhirAuthorization else None
    )
    return client_for(
        settings, bearer_token=token, base_url=call.fhirServer, service_credentials=False
    )


def from_prefetch(
    call: PatientViewRequest,
    relevance: Relevance,
    queries: dict[str, tuple[str, str]] | None = None,
) -> tuple[Resolved, set[str]]:
    """What the prefetch holds for ``relevance``'s queries, and the query keys still to fetch.
    ``queries``: query key -> (the prefetch key it was advertised under, resource type), for
    several studies sharing one set of templates (service.cds.portfolio); default each
    query under its own key. Without ``fhirServer``, what cannot be fetched is set in
    ``Resolved.missing`` (and linked records hold every feed open)."""
    from service.fhir.queries import plan_queries

    patient_id = call.context.patientId
    if queries is None:
        plan = plan_queries(relevance.protocol, patient_id, None, relevance)
        queries = {q.key: (q.key, q.resource_type) for q in plan}
    prefetch = call.prefetch or {}
    resolved = Resolved(server_base=call.fhirServer)
    need: set[str] = set()
    for key, (advertised, resource_type) in queries.items():
        value = prefetch.get(advertised)
        if resource_type == "Patient":
            if (
                isinstance(value, dict)
                and value.get("resourceType") == "Patient"
                and value.get("id") == patient_id
            ):
                resolved.patient = value
            else:
                need.add(key)
            continue
        resources = _usable_search(value)
        if resources is None:
            need.add(key)
        else:
            resolved.resources.extend(resources)

    # A prefetch holds one record's data; records the Patient links to must be searched.
    linked = follows_links(resolved.patient)
    if (need or linked) and call.fhirServer is None:
        resolved.missing = need
        if linked and not need:
            resolved.truncated = frozenset(relevance.all_feeds())
            resolved.issues.append(
                Issue(
                    Severity.WARNING,
                    "incomplete",
                    "the Patient links to other records of this person (Patient.link); "
                    "without fhirServer their data cannot be read",
                )
            )
    return resolved, need


async def fetch_missing(
    client: Any,
    call: PatientViewRequest,
    relevance: Relevance,
    need: set[str],
    resolved: Resolved,
    day: date,
) -> None:
    """Fetch the keys the prefetch lacked (and linked records' data) into ``resolved``."""
    from service.fhir.fetch import fetch_patient
    from service.fhir.queries import plan_queries

    # Fetched with the evaluation date, a lab search filters by date, and a result with no
    # time is then found only by the plan's search for undated results: ask it too, so the
    # fetched keys read what their prefetch template (no date filter) would have.
    plan = {
        q.key: q for q in plan_queries(relevance.protocol, call.context.patientId, day, relevance)
    }
    if "undated" in plan and any("date" in dict(plan[k].params) for k in need if k in plan):
        need = need | {"undated"}
    fetched = await fetch_patient(
        client,
        relevance.protocol,
        call.context.patientId,
        day,
        only=need,
        links_of=resolved.patient or None,
        relevance=relevance,
    )
    if fetched.patient:
        resolved.patient = fetched.patient
    resolved.resources.extend(fetched.resources)
    resolved.linked_patients = fetched.linked_patients
    resolved.issues.extend(fetched.issues)
    resolved.truncated = fetched.truncated
