"""The unit of work every executor runs: evaluate a batch of patients from raw NDJSON lines.

A plain, picklable function so the same code runs inline, in a local process pool and on
Dask workers; that is what makes their results identical. A patient that cannot be evaluated
becomes an error row: one failure never sinks the batch.
"""

from __future__ import annotations

import gc
import re
from datetime import date
from functools import cache
from pathlib import Path
from typing import Any

import orjson

from service.gc_pause import gc_paused
from service.pipeline import evaluate_record
from service.protocol import Protocol, load_protocol
from service.record import InputError, SharedObservations, record_from_resources
from service.screening.ndjson import PatientData
from service.screening.rows import Layout, error_row, evaluation_row

_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_FORMULA = ("=", "+", "@", "\t", "\r", "-")

# (patient id, worklist row, result Bundle as JSON bytes or None when it failed)
Outcome = tuple[str, list[str], bytes | None]
# What a batch is screened against: one protocol file, or several (one row per study)
Studies = str | tuple[str, ...]


@cache
def protocol_at(path: str) -> Protocol:
    """One protocol per process (workers load it on their first batch)."""
    return load_protocol(Path(path))


@cache
def layout_at(paths: tuple[str, ...]) -> Layout:
    """The protocols of a several-study screening and their worklist columns, per process."""
    return Layout([protocol_at(p) for p in paths])


def warm_up(protocol_path: Studies) -> bool:
    """Load the protocol(s) and the UCUM registry (~0.5 s) before the first batch arrives."""
    from service import units

    if isinstance(protocol_path, tuple):
        layout_at(protocol_path)
    else:
        protocol_at(protocol_path)
    units.warm_up()
    # Long-lived objects (inherited from the parent, protocol, UCUM registry) leave the
    # collector's generations: full collections stop walking them (and, after fork, stop
    # copying their pages).
    gc.collect()
    gc.freeze()
    return True


def evaluate_batch(protocol_path: Studies, as_of: str, batch: list[PatientData]) -> list[Outcome]:
    """One Outcome per patient (one protocol), or per patient and study (several: each
    patient decoded once, then each study's record and evaluation, in protocol order)."""
    day = date.fromisoformat(as_of)
    with gc_paused():  # decoded resources have no cycles: as in evaluate_body
        if isinstance(protocol_path, tuple):
            layout = layout_at(protocol_path)
            return [o for item in batch for o in evaluate_studies(item, layout, day)]
        protocol = protocol_at(protocol_path)
        return [evaluate_one(item, protocol, day) for item in batch]


def decode_patient(item: PatientData) -> tuple[dict[str, Any], list[Any], list[Any]]:
    """The patient's lines decoded (once per patient, whatever the number of studies)."""
    patient = _one_patient([orjson.loads(b) for b in item.patients])
    resources = [orjson.loads(b) for b in item.resources]
    linked = [orjson.loads(b) for b in item.linked]
    return patient, resources, linked


def evaluate_studies(item: PatientData, layout: Layout, day: date) -> list[Outcome]:
    """One Outcome per study, from one decoding of the patient's lines (and one grouping of
    its Observations). A failure to decode is every study's error row; a failure in one
    study's record is that study's alone."""
    pid = item.patient_id
    if not _FHIR_ID.fullmatch(pid):
        return [evaluate_one(item, p, day, layout) for p in layout.protocols]
    try:
        patient, resources, linked = decode_patient(item)
    except InputError as exc:
        return [(pid, layout.error(pid, str(exc), p), None) for p in layout.protocols]
    except Exception as exc:  # noqa: BLE001 - one line per patient, no data in the message
        message = f"internal error ({type(exc).__name__})"
        return [(pid, layout.error(pid, message, p), None) for p in layout.protocols]
    shared = _shared(resources, layout.protocols)
    outcomes: list[Outcome] = []
    for protocol in layout.protocols:
        try:
            record = record_from_resources(
                patient, resources, protocol, linked_patients=linked, shared=shared
            )
            evaluation, bundle = evaluate_record(record, protocol, day)
        except InputError as exc:
            outcomes.append((pid, layout.error(pid, str(exc), protocol), None))
        except Exception as exc:  # noqa: BLE001 - one line per patient, no data in it
            message = f"internal error ({type(exc).__name__})"
            outcomes.append((pid, layout.error(pid, message, protocol), None))
        else:
            outcomes.append((pid, layout.row(evaluation, protocol), orjson.dumps(bundle)))
    return outcomes


def _shared(resources: list[Any], protocols: list[Protocol]) -> SharedObservations | None:
    """The patient's Observations grouped once for every study (None: each study's record
    builder meets whatever went wrong and reports it as it does alone)."""
    codes = frozenset().union(*(p.relevance.protocol_codes for p in protocols))
    try:
        return SharedObservations.of_resources(resources, codes)
    except Exception:  # noqa: BLE001 - re-met, and reported, by each study's record
        return None


def evaluate_one(
    item: PatientData, protocol: Protocol, day: date, layout: Layout | None = None
) -> Outcome:
    if not _FHIR_ID.fullmatch(item.patient_id):
        # Never written as is: a spreadsheet could read "=..." in the worklist as a formula.
        shown = "'" + item.patient_id[:64] if item.patient_id[:1] in _FORMULA else item.patient_id
        message = "the Patient id is not a valid FHIR id; its resources cannot be linked to it"
        row = error_row(shown[:64], message, protocol)
        return item.patient_id, layout.place(row, protocol) if layout else row, None
    try:
        patient, resources, linked = decode_patient(item)
        record = record_from_resources(patient, resources, protocol, linked_patients=linked)
        evaluation, bundle = evaluate_record(record, protocol, day)
    except InputError as exc:
        return item.patient_id, error_row(item.patient_id, str(exc), protocol), None
    except Exception as exc:  # noqa: BLE001 - one line per patient, no data in the message
        message = f"internal error ({type(exc).__name__})"
        return item.patient_id, error_row(item.patient_id, message, protocol), None
    return item.patient_id, evaluation_row(evaluation, protocol), orjson.dumps(bundle)


def _one_patient(versions: list[dict[str, Any]]) -> dict[str, Any]:
    """The Patient, when the export holds it more than once: the latest by meta.lastUpdated."""
    distinct = list({orjson.dumps(v, option=orjson.OPT_SORT_KEYS): v for v in versions}.values())
    if len(distinct) == 1:
        return distinct[0]
    found = [(v.get("meta") or {}).get("lastUpdated") for v in distinct]
    stamps = [s for s in found if isinstance(s, str)]
    if len(stamps) == len(found) and len(set(stamps)) == len(stamps):
        return distinct[max(range(len(distinct)), key=lambda i: stamps[i])]
    raise InputError(
        f"the export holds {len(distinct)} different versions of this Patient and no way "
        "to tell which is current"
    )
