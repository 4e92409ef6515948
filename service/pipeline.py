"""One evaluation from end to end: input (bytes, Bundle or fetched data) to result Bundle.

Both the HTTP API and the CLI call these, so the two can never disagree.
"""

from __future__ import annotations

import asyncio
import re
from datetime import date
from typing import Any, Protocol

import orjson

from service import entry_cap, lean, logs, strict_json
from service.clinical.dates import today
from service.clinical.engine import evaluate
from service.clinical.evaluation import Evaluation
from service.clinical.model import Issue
from service.evaluation_context import EvaluationContext
from service.gc_pause import gc_paused
from service.inputs import brief, check_bundle, check_patient_selector, json_type
from service.ops.audit import evaluation_done
from service.output import result_bundle, study_reference
from service.protocol import Protocol as TrialProtocol
from service.record import (
    InputError,
    PatientRecord,
    PreparedBundle,
    SharedObservations,
    record_from_bundle,
    record_from_resources,
)
from service.settings import Settings
from service.terminology import runtime as terminology
from service.terminology.evidence import annotate as annotate_mappings
from service.terminology.table import MappingTable


def parse_json(body: bytes | str) -> Any:
    """Decode a request body; an object that names a key twice is refused (ambiguous)."""
    try:
        return strict_json.loads(body)
    except strict_json.DuplicateKeyError as exc:
        raise InputError(f"the input is {exc}") from None
    except orjson.JSONDecodeError as exc:
        raise InputError(f"the input is not valid JSON ({exc.args[0].split(':')[0]})") from None
    except ValueError:
        raise InputError("the input is not valid JSON (nested too deeply)") from None


_PARAMETERS = ("patientData", "asOf", "patient")
_AS_OF = re.compile(r"\d{4}-\d{2}-\d{2}(T[0-9:.]+(Z|[+-]\d{2}:\d{2})?)?")


def unwrap_parameters(resource: Any) -> tuple[Any, date | None, str | None]:
    """A ``Parameters`` body carries the Bundle in ``patientData`` and optional ``asOf``.

    Anything else is returned as is, once its envelope is checked: the result is always a
    readable Bundle envelope, or an ``InputError`` that names the element (never its value).
    """
    if not isinstance(resource, dict) or resource.get("resourceType") != "Parameters":
        return check_bundle(resource), None, None
    params = resource.get("parameter")
    if params is not None and not isinstance(params, list):
        raise InputError(f"Parameters.parameter is {json_type(params)}, not an array")
    found: dict[str, dict[str, Any]] = {}
    for i, param in enumerate(params or ()):
        if not isinstance(param, dict):
            raise InputError(f"Parameters.parameter[{i}] is {json_type(param)}, not an object")
        name = param.get("name")
        if not isinstance(name, str):
            raise InputError(f"Parameters.parameter[{i}].name is {json_type(name)}, not a string")
        if name in _PARAMETERS:
            if name in found:
                raise InputError(f"Parameters has more than one '{name}' parameter: ambiguous")
            found[name] = param
    if "patientData" not in found:
        raise InputError("Parameters has no 'patientData' parameter with a Bundle")
    bundle = check_bundle(found["patientData"].get("resource"), "Parameters 'patientData'")
    as_of = patient = None
    if "asOf" in found:
        as_of = parse_as_of(_one_value(found["asOf"], "asOf", ("valueDate", "valueDateTime")))
    if "patient" in found:
        value = _one_value(found["patient"], "patient", ("valueString", "valueId"))
        logs.register_request_secret(value)
        patient = check_patient_selector(value, "the 'patient' parameter")
    return bundle, as_of, patient


def _one_value(param: dict[str, Any], name: str, elements: tuple[str, ...]) -> Any:
    values = [param[e] for e in elements if e in param]
    if len(values) != 1:
        raise InputError(f"the '{name}' parameter needs exactly one of {', '.join(elements)}")
    return values[0]


def parse_as_of(value: Any) -> date:
    """``asOf``: a date (YYYY-MM-DD), or a dateTime whose date part is taken."""
    if isinstance(value, date):
        return value
    if isinstance(value, str) and _AS_OF.fullmatch(value):
        try:
            return date.fromisoformat(value[:10])
        except ValueError:
            pass
    raise InputError(f"asOf must be a date YYYY-MM-DD, got {brief(value)}")


def evaluate_record(
    record: PatientRecord,
    protocol: TrialProtocol,
    as_of: date | None,
    context: EvaluationContext | None = None,
) -> tuple[Evaluation, dict[str, Any]]:
    with gc_paused():
        evaluation = assess_record(record, protocol, as_of, context)
        return evaluation, result_bundle(evaluation, protocol)


def assess_record(
    record: PatientRecord,
    protocol: TrialProtocol,
    as_of: date | None,
    context: EvaluationContext | None = None,
) -> Evaluation:
    """``evaluate_record`` without the result Bundle (CDS Hooks cards need none)."""
    context = context if context is not None else EvaluationContext.current(protocol)
    with gc_paused():
        evaluation = evaluate(record, protocol, as_of or today())
        if (site := context.site) is not None:  # name site mappings in the notes
            annotate_mappings(evaluation, record, site.site.units if site.site else None)
        evaluation_done(evaluation, study_reference(protocol))  # metrics, the audit event
        return evaluation


def evaluate_body(
    body: bytes | str,
    protocol: TrialProtocol,
    *,
    as_of: date | None = None,
    patient_id: str | None = None,
    max_entries: int = entry_cap.DEFAULT_MAX_ENTRIES,
) -> tuple[Evaluation, dict[str, Any]]:
    """Bytes of a Bundle (or Parameters) in, the evaluation and its result Bundle out.

    Without site terminology a plain Bundle is decoded lean (service.lean: Observations no
    criterion reads stay undecoded); anything else, or anything lean decoding is unsure of,
    takes the generic ``parse_json``. Both give the same result and the same errors, and
    both refuse a body of more than ``max_entries`` entries before decoding it (413)."""
    context = EvaluationContext.current(protocol)
    with gc_paused():
        resource = None
        if context.site is None:
            resource = lean.lean_bundle(body, context.relevance.lean_codes, max_entries)
        if resource is None:
            entry_cap.check(body, max_entries)  # the lean scan counted only when it got far
            resource = parse_json(body)
        done = evaluate_resource(
            resource, protocol, as_of=as_of, patient_id=patient_id, context=context
        )
        # Freed inside the pause: the collection that follows it then walks only the result.
        del resource
        return done


def evaluate_body_json(
    body: bytes | str,
    protocol: TrialProtocol,
    *,
    as_of: date | None = None,
    patient_id: str | None = None,
    max_entries: int = entry_cap.DEFAULT_MAX_ENTRIES,
) -> tuple[Evaluation, bytes]:
    """``evaluate_body`` with the result Bundle already encoded (the HTTP answer): encoded
    and freed inside the collector's pause, so the collector never walks it."""
    with gc_paused():
        evaluation, bundle = evaluate_body(
            body, protocol, as_of=as_of, patient_id=patient_id, max_entries=max_entries
        )
        return evaluation, orjson.dumps(bundle)


def evaluate_body_generic(
    body: bytes | str,
    protocol: TrialProtocol,
    *,
    as_of: date | None = None,
    patient_id: str | None = None,
    max_entries: int = entry_cap.DEFAULT_MAX_ENTRIES,
) -> tuple[Evaluation, dict[str, Any]]:
    """``evaluate_body`` decoding every field (the reference the lean path is tested against)."""
    with gc_paused():
        entry_cap.check(body, max_entries)
        return evaluate_resource(parse_json(body), protocol, as_of=as_of, patient_id=patient_id)


def evaluate_resource(
    resource: Any,
    protocol: TrialProtocol,
    *,
    as_of: date | None = None,
    patient_id: str | None = None,
    context: EvaluationContext | None = None,
) -> tuple[Evaluation, dict[str, Any]]:
    """A decoded Bundle (or Parameters) in, the evaluation and its result Bundle out."""
    bundle, param_as_of, param_patient = unwrap_parameters(resource)
    return evaluate_unwrapped(
        bundle, protocol, as_of or param_as_of, patient_id or param_patient, patient_id, context
    )


def evaluate_unwrapped(
    bundle: Any,
    protocol: TrialProtocol,
    as_of: date | None,
    patient: str | None,
    patient_id: str | None = None,
    context: EvaluationContext | None = None,
    fits: set[int] | None = None,
    prepared: PreparedBundle | None = None,
    shared: SharedObservations | None = None,
) -> tuple[Evaluation, dict[str, Any]]:
    """``evaluate_resource`` after ``unwrap_parameters`` (several studies unwrap once):
    ``patient`` is the Patient to evaluate, ``patient_id`` the caller's own selector,
    ``fits`` the resources known to fit their shape (service.record.bundle_fits),
    ``prepared`` the Bundle's entries walked once (service.record.prepare_bundle),
    ``shared`` their Observations grouped once (service.record.SharedObservations)."""
    context = context if context is not None else EvaluationContext.current(protocol)
    if patient_id is not None:
        logs.register_request_secret(patient_id)
        check_patient_selector(patient_id)
    mappings = None
    if context.site is not None:  # site terminology, before evaluation
        resources = terminology.bundle_resources(bundle)
        mappings = terminology.table_for_sync(resources, protocol, context.site)
    record = record_from_bundle(
        bundle, protocol, patient, mappings, context.relevance, fits, prepared, shared
    )
    return evaluate_record(record, protocol, as_of, context)


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
    context: EvaluationContext | None = None,
) -> tuple[Evaluation, dict[str, Any]]:
    context = context if context is not None else EvaluationContext.current(protocol)
    record = record_from_fetched(data, protocol, mappings, context)
    return evaluate_record(record, protocol, as_of, context)


def record_from_fetched(
    data: FetchedData,
    protocol: TrialProtocol,
    mappings: MappingTable | None,
    context: EvaluationContext,
    fits: set[int] | None = None,
    facts: dict[Any, Any] | None = None,
) -> PatientRecord:
    """The record of fetched data; ``fits`` and ``facts`` as in ``record_from_resources``."""
    if mappings is _TO_BUILD:
        site = context.site
        mappings = terminology.table_for_sync(data.resources, protocol, site) if site else None
    return record_from_resources(
        data.patient,
        data.resources,
        protocol,
        issues=data.issues,
        truncated=data.truncated,
        server_base=getattr(data, "server_base", None),
        linked_patients=getattr(data, "linked_patients", ()),
        mappings=mappings,
        relevance=context.relevance,
        fits=fits,
        facts=facts,
    )


async def assess_fetched_off_loop(
    data: FetchedData,
    protocol: TrialProtocol,
    as_of: date,
    context: EvaluationContext,
    fits: set[int] | None = None,
    facts: dict[Any, Any] | None = None,
) -> Evaluation:
    """The evaluation of fetched data without its result Bundle (CDS Hooks cards), off the
    event loop when large; ``fits`` and ``facts`` as in ``record_from_resources``."""
    mappings = await terminology.table_for(data.resources, protocol, context.site)

    def run() -> Evaluation:
        record = record_from_fetched(data, protocol, mappings, context, fits, facts)
        return assess_record(record, protocol, as_of, context)

    if len(data.resources) <= INLINE_RESOURCES:
        return run()
    return await asyncio.to_thread(run)


async def evaluate_from_server(
    settings: Settings, protocol: TrialProtocol, patient_id: str, as_of: date | None
) -> tuple[Evaluation, dict[str, Any]]:
    """Pull mode: fetch the patient from the configured FHIR server (or the demo store)."""
    from service.fhir.fetch import fetch_patient
    from service.fhir.pool import client_for

    day = as_of or today()
    context = EvaluationContext.current(protocol)
    async with client_for(settings) as client:
        fetched = await fetch_patient(
            client, protocol, patient_id, day, relevance=context.relevance
        )
    # None: no site terminology
    mappings = await terminology.table_for(fetched.resources, protocol, context.site)
    return await evaluate_fetched_off_loop(fetched, protocol, day, mappings, context)


# More resources than this (about 60 ms of work) are evaluated in a worker thread, so one
# large patient does not stall every other request on the event loop.
INLINE_RESOURCES = 5000


async def evaluate_fetched_off_loop(
    data: FetchedData,
    protocol: TrialProtocol,
    as_of: date | None,
    mappings: MappingTable | None = _TO_BUILD,
    context: EvaluationContext | None = None,
) -> tuple[Evaluation, dict[str, Any]]:
    context = context if context is not None else EvaluationContext.current(protocol)
    if mappings is _TO_BUILD:
        mappings = await terminology.table_for(data.resources, protocol, context.site)
    if len(data.resources) <= INLINE_RESOURCES:
        return evaluate_fetched(data, protocol, as_of, mappings, context)
    return await asyncio.to_thread(evaluate_fetched, data, protocol, as_of, mappings, context)
