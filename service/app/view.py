"""What the review page shows, built from the pipeline's result (never re-evaluated here).

The Evaluation gives each criterion's result, reason and evidence; the result Bundle's
GuidanceResponse says what data is still needed; the fetched resources only give the evidence
readable names and list the attestations on record. Words, not FHIR, for the reader.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from service.app.fhir_access import Evaluated
from service.cds.cards import OUTCOME_TEXT
from service.clinical.evaluation import SubjectStatus
from service.clinical.model import CriterionResult, Outcome, SourceRef
from service.criterion_kind import EXCLUSION_TEXT, has_exclusions, kind_of
from service.protocol import Protocol

STATUS_TEXT = {
    SubjectStatus.ELIGIBLE: "Eligible",
    SubjectStatus.INELIGIBLE: "Not eligible",
    SubjectStatus.POTENTIAL_CANDIDATE: "Potential candidate",
}
STATUS_HINT = {
    SubjectStatus.ELIGIBLE: "Every inclusion criterion is met.",
    SubjectStatus.INELIGIBLE: "At least one inclusion criterion is not met.",
    SubjectStatus.POTENTIAL_CANDIDATE: (
        "Nothing has failed, but some criteria are still open: see what is still needed."
    ),
}
_TYPE_WORDS = {
    "Observation": "Result",
    "Condition": "Diagnosis",
    "Procedure": "Procedure",
    "Consent": "Consent",
    "QuestionnaireResponse": "Investigator attestation",
    "Patient": "Patient record",
}
_DATE_KEYS = (
    "effectiveDateTime",
    "effectiveInstant",
    "issued",
    "performedDateTime",
    "onsetDateTime",
    "recordedDate",
    "dateTime",
    "authored",
)


@dataclass
class Evidence:
    reference: str
    label: str  # "Result: Platelets, 2026-11-17"


@dataclass
class Row:
    code: str
    title: str
    result: str  # met | not-met | undetermined (the stable hook)
    result_text: str
    reason: str
    evidence: list[Evidence]
    member: bool = False
    kind: str = "inclusion"  # inclusion | exclusion (shown only for exclusions)


@dataclass
class AttestationAnswer:
    item: str
    text: str
    answer: str  # "Yes" / "No" / "—"
    comment: str | None = None


@dataclass
class AttestationRecord:
    reference: str
    authored: str
    author: str
    status: str
    used: bool
    answers: list[AttestationAnswer] = field(default_factory=list)


@dataclass
class ReviewView:
    patient_id: str
    patient_name: str
    birth_date: str | None
    status: str
    status_text: str
    status_hint: str
    as_of: str
    evaluated_at: str
    counts: dict[str, int]
    rows: list[Row]
    needed: list[str]
    open_criteria: list[Row]  # top-level criteria still undetermined
    failed_criteria: list[Row]  # top-level criteria not met
    attestation_open: bool  # a criterion the investigator answers is not (yet) met
    attestations: list[AttestationRecord]
    notes: list[str]


def review_view(evaluated: Evaluated, protocol: Protocol) -> ReviewView:
    evaluation, bundle, fetched = evaluated.evaluation, evaluated.bundle, evaluated.fetched
    by_ref = _index(fetched.patient, fetched.resources)
    rows: list[Row] = []
    for result in evaluation.results:
        rows.append(_row(result, protocol, by_ref, member=False))
        rows.extend(_member_rows(result, protocol, by_ref))
    status = evaluation.status
    used = {s.reference for s in evaluation.sources}
    top = [r for r in rows if not r.member]
    attested = {c.code for c in protocol.criteria.values() if "attestation_item" in c.params}
    return ReviewView(
        patient_id=evaluation.patient_id,
        patient_name=patient_name(fetched.patient),
        birth_date=fetched.patient.get("birthDate")
        if isinstance(fetched.patient.get("birthDate"), str)
        else None,
        status=status.value,
        status_text=STATUS_TEXT[status],
        status_hint=_EXCLUSION_HINT
        if status is SubjectStatus.INELIGIBLE and has_exclusions(protocol)
        else STATUS_HINT[status],
        as_of=evaluation.as_of.isoformat(),
        evaluated_at=evaluation.evaluated_at.isoformat(timespec="seconds"),
        counts={o.value: evaluation.count(o) for o in Outcome},
        rows=rows,
        needed=_needed(bundle),
        open_criteria=[r for r in top if r.result == Outcome.UNDETERMINED.value],
        failed_criteria=[r for r in top if r.result == Outcome.NOT_MET.value],
        attestation_open=any(r.result != Outcome.MET.value and r.code in attested for r in top),
        attestations=attestation_records(fetched.resources, protocol, used),
        notes=[i.message for i in evaluation.issues if i.message],
    )


_EXCLUSION_HINT = "At least one inclusion criterion is not met, or an exclusion applies."


def _member_rows(result: CriterionResult, protocol: Protocol, by_ref: dict[str, dict]):
    """Members, and their members (a conditional of an any_of), depth first."""
    for m in result.members:
        yield _row(m, protocol, by_ref, member=True)
        yield from _member_rows(m, protocol, by_ref)


def _row(
    result: CriterionResult, protocol: Protocol, by_ref: dict[str, dict], *, member: bool
) -> Row:
    try:
        title = protocol.criterion_display(result.code)
    except KeyError:
        title = result.code
    evidence = [
        Evidence(ref.reference, evidence_label(ref, by_ref.get(ref.reference)))
        for ref in dict.fromkeys(result.evidence)
    ]
    kind = kind_of(protocol, result.code)
    exclusion = kind == "exclusion"
    return Row(
        code=result.code,
        title=title,
        result=result.outcome.value,
        result_text=(EXCLUSION_TEXT if exclusion else OUTCOME_TEXT)[result.outcome],
        reason=result.reason,
        evidence=evidence,
        member=member,
        kind=kind,
    )


def _index(patient: dict[str, Any], resources: list[dict[str, Any]]) -> dict[str, dict]:
    found: dict[str, dict] = {}
    for r in [patient, *resources]:
        if isinstance(r, dict) and r.get("resourceType") and r.get("id"):
            found[f"{r['resourceType']}/{r['id']}"] = r
    return found


def _concept_text(concept: Any) -> str | None:
    if not isinstance(concept, dict):
        return None
    if isinstance(concept.get("text"), str) and concept["text"].strip():
        return concept["text"].strip()
    for coding in concept.get("coding") or ():
        if isinstance(coding, dict) and isinstance(coding.get("display"), str):
            return coding["display"]
    for coding in concept.get("coding") or ():
        if isinstance(coding, dict) and coding.get("code"):
            return str(coding["code"])
    return None


def _date_of(resource: dict[str, Any]) -> str | None:
    for key in _DATE_KEYS:
        value = resource.get(key)
        if isinstance(value, str):
            return value[:10]
    for key in ("effectivePeriod", "performedPeriod"):
        period = resource.get(key)
        if isinstance(period, dict):
            value = period.get("end") or period.get("start")
            if isinstance(value, str):
                return value[:10]
    return None


def evidence_label(ref: SourceRef, resource: dict[str, Any] | None) -> str:
    """'Result: Platelets [#/volume] in Blood, 2026-11-17' — a name a person can read."""
    kind = _TYPE_WORDS.get(ref.resource_type, ref.resource_type)
    if resource is None:
        return kind
    if ref.resource_type == "Patient":
        return f"{kind}: {patient_name(resource)}"
    name = _concept_text(resource.get("code"))
    if name is None and ref.resource_type == "Consent":
        name = _concept_text(resource.get("scope"))
    day = _date_of(resource)
    parts = [p for p in (name, day) if p]
    return f"{kind}: {', '.join(parts)}" if parts else kind


_YES_NO: dict[Any, str] = {True: "Yes", False: "No"}  # any JSON value may be looked up


def patient_name(patient: dict[str, Any]) -> str:
    for name in patient.get("name") or ():
        if not isinstance(name, dict):
            continue
        if isinstance(name.get("text"), str) and name["text"].strip():
            return name["text"].strip()
        given = [g for g in name.get("given") or () if isinstance(g, str)]
        family = name.get("family")
        full = " ".join([*given, family if isinstance(family, str) else ""]).strip()
        if full:
            return full
    return "(name not recorded)"


def _needed(bundle: dict[str, Any]) -> list[str]:
    """The GuidanceResponse's 'Needed: ...' notes, in words."""
    for entry in bundle.get("entry") or ():
        resource = entry.get("resource") or {}
        if resource.get("resourceType") != "GuidanceResponse":
            continue
        return [
            note["text"].removeprefix("Needed: ")
            for note in resource.get("note") or ()
            if isinstance(note.get("text"), str) and note["text"].startswith("Needed: ")
        ]
    return []


# -- attestations on record --------------------------------------------------------------------
NOTE_EXTENSION = "http://hl7.org/fhir/StructureDefinition/note"


def attestation_records(
    resources: list[dict[str, Any]], protocol: Protocol, used: set[str]
) -> list[AttestationRecord]:
    """The responses to the protocol's Questionnaire that were read, newest first."""
    url = protocol.questionnaire_url
    texts = {i.get("linkId"): i.get("text", "") for i in _questionnaire_items(protocol)}
    records: list[AttestationRecord] = []
    for qr in resources:
        if qr.get("resourceType") != "QuestionnaireResponse":
            continue
        if str(qr.get("questionnaire", "")).split("|")[0] != url:
            continue
        author = qr.get("author")
        if not isinstance(author, dict):
            author = {}
        reference = f"QuestionnaireResponse/{qr.get('id')}"
        record = AttestationRecord(
            reference=reference,
            authored=str(qr.get("authored", "(no date)")),
            author=str(author.get("display") or author.get("reference") or "(no author)"),
            status=str(qr.get("status", "")),
            used=reference in used,
        )
        for item in _all_items(qr.get("item")):
            answers = item.get("answer") if isinstance(item.get("answer"), list) else []
            values = [a.get("valueBoolean") for a in answers if isinstance(a, dict)]
            if not values:
                continue
            shown = _YES_NO.get(values[0], "(not yes/no)")
            record.answers.append(
                AttestationAnswer(
                    item=str(item.get("linkId")),
                    text=texts.get(item.get("linkId"), ""),
                    answer=shown,
                    comment=_comment(item),
                )
            )
        records.append(record)
    records.sort(key=lambda r: r.authored, reverse=True)
    return records


def _comment(item: dict[str, Any]) -> str | None:
    for ext in item.get("extension") or ():
        if isinstance(ext, dict) and ext.get("url") == NOTE_EXTENSION:
            text = (ext.get("valueAnnotation") or {}).get("text")
            if isinstance(text, str):
                return text
    return None


def _all_items(items: Any):
    for item in items if isinstance(items, list) else ():
        if isinstance(item, dict):
            yield item
            yield from _all_items(item.get("item"))


def _questionnaire_items(protocol: Protocol):
    yield from _all_items(protocol.questionnaire.get("item"))
