"""Render an Evaluation as the FHIR R4 result Bundle (the output contract).

ResearchSubject first, then one Observation per criterion and member, a GuidanceResponse,
a Provenance and, when there is something to say, an OperationOutcome. Plain dicts: the
hot path never builds a model; tests validate the shape with fhir.resources R4B.
"""

from __future__ import annotations

import html
import os
import threading
from typing import Any

from service import __version__
from service.clinical.evaluation import Evaluation
from service.clinical.model import CriterionResult, Issue, Outcome
from service.criterion_kind import EXCLUSION_TEXT, has_exclusions, is_exclusion, kind_category
from service.protocol import Protocol

DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
PROVENANCE_ROLE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
DERIVED_FROM_TYPES = {"Observation", "QuestionnaireResponse", "DocumentReference"}
SERVICE_NAME = "cart-eligibility"


class _UrnPool(threading.local):
    """Random (version 4) UUIDs as urn:uuid, 64 per read of the OS random source: a result
    Bundle names a few dozen resources, and a system call per id was a measurable share of
    an evaluation. Same source and format as ``uuid.uuid4()``; one pool per thread, emptied
    in a forked child (a screening worker must never repeat its parent's ids)."""

    ids: list[str]

    def __init__(self) -> None:
        self.ids = []

    def take(self) -> str:
        if not self.ids:
            pool = os.urandom(16 * 64).hex()
            for k in range(0, len(pool), 32):
                h = pool[k : k + 32]
                variant = "89ab"[int(h[16], 16) & 3]
                self.ids.append(
                    f"urn:uuid:{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant}{h[17:20]}-{h[20:]}"
                )
        return self.ids.pop()


_URNS = _UrnPool()
os.register_at_fork(after_in_child=lambda: _URNS.ids.clear())


def _urn() -> str:
    return _URNS.take()


def study_reference(protocol: Protocol) -> dict[str, Any]:
    title = protocol.research_study.get("title", protocol.id)
    return {
        "reference": protocol.canonical,
        "display": f"{title} (protocol version {protocol.version})",
    }


def _narrative(text: str) -> dict[str, str]:
    return {
        "status": "generated",
        "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><p>{html.escape(text)}</p></div>',
    }


def result_bundle(evaluation: Evaluation, protocol: Protocol) -> dict[str, Any]:
    study = study_reference(protocol)
    subject = {"reference": evaluation.patient_reference}
    as_of = evaluation.as_of.isoformat()
    recorded = evaluation.evaluated_at.isoformat(timespec="seconds")
    entries: list[dict[str, Any]] = []

    # One Observation per criterion and member; members first so panels can point at them.
    criterion_urns: list[str] = []

    def add_observation(result: CriterionResult) -> str:
        member_urns = [add_observation(m) for m in result.members]
        urn = _urn()
        entries.append(
            {
                "fullUrl": urn,
                "resource": _criterion_observation(
                    result, protocol, study, subject, as_of, member_urns
                ),
            }
        )
        criterion_urns.append(urn)
        return urn

    for result in evaluation.results:
        add_observation(result)

    status = evaluation.status
    counts = {o: evaluation.count(o) for o in Outcome}
    summary = (
        f"{status.value}: {counts[Outcome.MET]} of {len(evaluation.results)} criteria met, "
        f"{counts[Outcome.NOT_MET]} not met, {counts[Outcome.UNDETERMINED]} undetermined "
        f"as of {as_of}"
    )
    research_subject = {
        "resourceType": "ResearchSubject",
        "text": _narrative(f"Screening result for {protocol.id}: {summary}."),
        "status": status.value,
        "study": study,
        "individual": subject,
    }

    outcome_urn = _urn() if evaluation.issues else None
    needs, needs_text = _data_requirements(evaluation)
    guidance: dict[str, Any] = {
        "resourceType": "GuidanceResponse",
        "moduleUri": protocol.versioned_canonical,
        "status": "data-required" if counts[Outcome.UNDETERMINED] else "success",
        "subject": subject,
        "occurrenceDateTime": recorded,
        "note": [
            {"text": summary},
            *_kind_notes(evaluation, protocol),
            *({"text": f"Needed: {t}"} for t in needs_text),
        ],
    }
    if outcome_urn:
        guidance["evaluationMessage"] = [{"reference": outcome_urn}]
    if needs:
        guidance["dataRequirement"] = needs

    provenance: dict[str, Any] = {
        "resourceType": "Provenance",
        "target": [{"reference": urn} for urn in criterion_urns],
        "recorded": recorded,
        "agent": [
            {
                "type": {"coding": [{"system": PROVENANCE_ROLE, "code": "assembler"}]},
                "who": {"display": f"{SERVICE_NAME} {__version__}"},
            }
        ],
        "entity": [
            {"role": "source", "what": {"reference": src.reference, "type": src.resource_type}}
            for src in evaluation.sources
        ],
    }
    for cm in evaluation.conceptmaps:  # site terminology that mapped local codes
        what = {
            "type": "ConceptMap",
            "identifier": {"system": "urn:ietf:rfc:3986", "value": cm.url},
            "display": f"ConceptMap {cm.label}",
        }
        provenance["entity"].append({"role": "derivation", "what": what})

    bundle_entries = [{"fullUrl": _urn(), "resource": research_subject}, *entries]
    bundle_entries.append({"fullUrl": _urn(), "resource": guidance})
    bundle_entries.append({"fullUrl": _urn(), "resource": provenance})
    if outcome_urn:
        bundle_entries.append(
            {"fullUrl": outcome_urn, "resource": operation_outcome(evaluation.issues)}
        )
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": recorded,
        "entry": bundle_entries,
    }


def _criterion_observation(
    result: CriterionResult,
    protocol: Protocol,
    study: dict[str, Any],
    subject: dict[str, Any],
    as_of: str,
    member_urns: list[str],
) -> dict[str, Any]:
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {
            "coding": [
                {
                    "system": protocol.criteria_system,
                    "code": result.code,
                    "display": protocol.criterion_display(result.code),
                }
            ]
        },
        "subject": subject,
        "focus": [study],
        "effectiveDateTime": as_of,
    }
    if has_exclusions(protocol):
        # Inclusions and exclusions told apart (an inclusion-only protocol renders as before).
        obs["category"] = [kind_category(protocol, result.code)]
    if result.outcome is Outcome.UNDETERMINED:
        obs["dataAbsentReason"] = {
            "coding": [{"system": DATA_ABSENT, "code": "unknown", "display": "Unknown"}],
            "text": "undetermined",
        }
    else:
        display = "Criterion met" if result.outcome is Outcome.MET else "Criterion not met"
        obs["valueCodeableConcept"] = {
            "coding": [
                {"system": protocol.result_system, "code": result.outcome.value, "display": display}
            ]
        }
        if is_exclusion(protocol, result.code):
            obs["valueCodeableConcept"]["text"] = EXCLUSION_TEXT[result.outcome].lower()
    obs["note"] = [{"text": result.reason}]
    derived = [
        {"reference": e.reference}
        for e in dict.fromkeys(result.evidence)
        if e.resource_type in DERIVED_FROM_TYPES
    ]
    if derived:
        obs["derivedFrom"] = derived
    if member_urns:
        obs["hasMember"] = [{"reference": urn} for urn in member_urns]
    return obs


def _kind_notes(evaluation: Evaluation, protocol: Protocol) -> list[dict[str, str]]:
    """For a protocol with exclusions: inclusions and exclusions counted apart, and every
    exclusion that applies named (none for an inclusion-only protocol: output unchanged)."""
    if not has_exclusions(protocol):
        return []
    inclusions = [r for r in evaluation.results if not is_exclusion(protocol, r.code)]
    exclusions = [r for r in evaluation.results if is_exclusion(protocol, r.code)]

    def count(results: list[CriterionResult], outcome: Outcome) -> int:
        return sum(1 for r in results if r.outcome is outcome)

    applying = [r.code for r in exclusions if r.outcome is Outcome.NOT_MET]
    text = (
        f"inclusion criteria: {count(inclusions, Outcome.MET)} of {len(inclusions)} met, "
        f"{count(inclusions, Outcome.NOT_MET)} not met, "
        f"{count(inclusions, Outcome.UNDETERMINED)} undetermined; exclusion criteria: "
        f"{len(applying)} of {len(exclusions)} apply, "
        f"{count(exclusions, Outcome.MET)} ruled out, "
        f"{count(exclusions, Outcome.UNDETERMINED)} undetermined"
    )
    notes = [{"text": text}]
    if applying:
        notes.append({"text": "Exclusions that apply: " + ", ".join(applying)})
    return notes


def _data_requirements(evaluation: Evaluation) -> tuple[list[dict[str, Any]], list[str]]:
    """What data would resolve the undetermined criteria, as DataRequirements and in words."""
    requirements: dict[tuple[str, str | None, str], dict[str, Any]] = {}
    notes: dict[str, None] = {}
    stack = list(evaluation.results)
    while stack:
        result = stack.pop(0)
        stack.extend(result.members)
        if result.outcome is not Outcome.UNDETERMINED:
            continue
        for need in result.needs:
            key = (need.resource_type, need.valueset, need.path)
            if key not in requirements:
                requirement: dict[str, Any] = {"type": need.resource_type}
                if need.valueset:
                    requirement["codeFilter"] = [{"path": need.path, "valueSet": need.valueset}]
                requirements[key] = requirement
            if need.description:
                notes[need.description] = None
    return list(requirements.values()), list(notes)


def operation_outcome(issues: list[Issue]) -> dict[str, Any]:
    """Warnings and errors as an OperationOutcome; expressions name resources, never PHI."""
    out = []
    for issue in issues:
        where = f"{issue.expression}: " if issue.expression else ""
        out.append(
            {
                "severity": issue.severity.value,
                "code": issue.code,
                "diagnostics": f"{where}{issue.message}",
            }
        )
    return {"resourceType": "OperationOutcome", "issue": out}
