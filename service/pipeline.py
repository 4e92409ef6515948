"""One evaluation from end to end: input (bytes, Bundle or fetched data) to result Bundle.

Both the HTTP API and the CLI call these, so the two can never disagree.
"""

from __future__ import annotations

import asyncio
from datetime import date
from typing import Any, Protocol

import orjson

from service.clinical.dates import today
from service.clinical.engine import evaluate
from service.clinical.evaluation import Evaluation
from service.clinical.model import Issue
from service.gc_pause import gc_paused
from service.ops.audit import evaluation_done
from service.output import result_bundle
from service.protocol import Protocol as TrialProtocol
from service.record import InputError, PatientRecord, record_from_bundle, record_from_resources
from service.settings import Settings
from service.terminology import runtime as terminology
from service.terminology.evidence import annotate as annotate_mappings
from service.terminology.table import MappingTable


def parse_json(body: bytes | str) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InputError(f"the input is not valid JSON ({exc.args[0].split(':')[0]})") from None


def unwrap_parameters(resource: Any) -> tuple[Any, date | None, str | None]:
    """A ``Parameters`` body carries the Bundle in ``patientData`` and optional ``asOf``."""
    if not (isinstance(resource, dict) and resource.get("resourceType") == "Parameters"):
        return resource, None, None
    bundle = as_of = patient = None
    for param in resource.get("parameter") or ():
        if not isinstance(param, dict):
            continue
        name = param.get("name")
        if name == "patientData":
            bundle = param.get("resource")
        elif name == "asOf":
            as_of = parse_as_of(param.get("valueDate") or param.get("valueDateTime"))
        elif name == "patient":
            patient = param.get("valueString") or param.get("valueId")
    if bundle is None:
        raise InputError("Parameters has no 'patientData' parameter with a Bundle")
    return bundle, as_of, patient


def parse_as_of(value: Any) -> date:
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value)[:10])
    except ValueError:
        raise InputError(f"asOf must be a date YYYY-MM-DD, got {value!r}") from None


def evaluate_record(
    record: PatientRecord, protocol: TrialProtocol, as_of: date | None
) -> tuple[Evaluation, dict[str, Any]]:
    with gc_paused():
        evaluation = evaluate(record, protocol, as_of or today())
        if (site := terminology.active()) is not None:  # name site mappings in the notes
            annotate_mappings(evaluation, record, site.site.units if site.site else None)
        evaluation_done(evaluation)  # metrics, and the request's audit event
        return evaluation, result_bundle(evaluation, protocol)


def evaluate_body(
    body: bytes | str,
    protocol: TrialProtocol,
    *,
    as_of: date | None = None,
    patient_id: str | None = None,
) -> tuple[Evaluation, dict[str, Any]]:
    """Bytes of a Bundle (or Parameters) in, the evaluation and its result Bundle out."""
    with gc_paused():
        return evaluate_resource(parse_json(body), protocol, as_of=as_of, patient_id=patient_id)


def evaluate_resource(
    resource: Any,
    protocol: TrialProtocol,
    *,
    as_of: date | None = None,
    patient_id: str | None = None,
) -> tuple[Evaluation, dict[str, Any]]:
    """A decoded Bundle (or Parameters) in, the evaluation and its result Bundle out."""
    bundle, param_as_of, param_patient = unwrap_parameters(resource)
    mappings = None
    if terminology.active() is not None:  # site terminology, before evaluation
        mappings = terminology.table_for_sync(terminology.bundle_resources(bundle), protocol)
    record = record_from_bundle(bundle, protocol, patient_id or param_patient, mappings)
    return evaluate_record(record, protocol, as_of or param_as_of)


class FetchedData(Protocol):
    """One patient's data as read from a server (pull mode) or a CDS Hooks prefetch."""

    patient: dict[str, Any]
    resources: list[dict[str, Any]]
    issues: list[Issue]
    truncated: frozenset[str]
    # and, optionally, server_base (the FHIR server the data came from) and linked_patients
    # (the Patients of the records Patient.link names, as read)


_TO_BUILD = MappingTable()  # sentinel: build the site mapping table here (synchronously)


def evaluate_fetched(
    data: FetchedData,
    protocol: TrialProtocol,
    as_of: date | None,
    mappings: MappingTable | None = _TO_BUILD,
) -> tuple[Evaluation, dict[str, Any]]:
    if mappings is _TO_BUILD:
        active = terminology.active() is not None
        mappings = terminology.table_for_sync(data.resources, protocol) if active else None
    record = record_from_resources(
        data.patient,
        data.resources,
        protocol,
        issues=data.issues,
        truncated=data.truncated,
        server_base=getattr(data, "server_base", None),
        linked_patients=getattr(data, "linked_patients", ()),
        mappings=mappings,
    )
    return evaluate_record(record, protocol, as_of)


async def evaluate_from_server(
    settings: Settings, protocol: TrialProtocol, patient_id: str, as_of: date | None
) -> tuple[Evaluation, dict[str, Any]]:
    """Pull mode: fetch the patient from the configured FHIR server (or the demo store)."""
    from service.fhir.client import client_for
    from service.fhir.fetch import fetch_patient

    day = as_of or today()
    async with client_for(settings) as client:
        fetched = await fetch_patient(client, protocol, patient_id, day)
    mappings = await terminology.table_for(fetched.resources, protocol)  # None: no site terms
    return await evaluate_fetched_off_loop(fetched, protocol, day, mappings)


# More resources than this (about 60 ms of work) are evaluated in a worker thread, so one
# large patient does not stall every other request on the event loop.
INLINE_RESOURCES = 5000


async def evaluate_fetched_off_loop(
    data: FetchedData,
    protocol: TrialProtocol,
    as_of: date | None,
    mappings: MappingTable | None = _TO_BUILD,
) -> tuple[Evaluation, dict[str, Any]]:
    if mappings is _TO_BUILD:
        mappings = await terminology.table_for(data.resources, protocol)
    if len(data.resources) <= INLINE_RESOURCES:
        return evaluate_fetched(data, protocol, as_of, mappings)
    return await asyncio.to_thread(evaluate_fetched, data, protocol, as_of, mappings)
