"""Small factories for FHIR R4 test resources, so each test states only what it is about."""

from __future__ import annotations

import itertools
from datetime import date, timedelta
from typing import Any

from service.clinical.engine import evaluate
from service.clinical.evaluation import Evaluation
from service.clinical.model import CriterionResult
from service.protocol import default_protocol
from service.record import record_from_bundle

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICDO3 = "http://terminology.hl7.org/CodeSystem/icd-o-3"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
AS_OF = date(2026, 11, 20)
PATIENT_ID = "p1"


def ago(days: int) -> str:
    """The day ``days`` before AS_OF, as FHIR writes a date."""
    return (AS_OF - timedelta(days=days)).isoformat()


_ids = itertools.count(1)


def _id(prefix: str) -> str:
    return f"{prefix}-{next(_ids)}"


def concept(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    coding: dict[str, Any] = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding]}


def patient(birth_date: str | None = "1990-01-01", pid: str = PATIENT_ID, **extra) -> dict:
    res: dict[str, Any] = {"resourceType": "Patient", "id": pid, **extra}
    if birth_date is not None:
        res["birthDate"] = birth_date
    return res


def quantity(value: float, unit: str | None, *, code: str | None = None, system=UCUM, **extra):
    q: dict[str, Any] = {"value": value, **extra}
    if unit is not None:
        q["unit"] = unit
        q["code"] = code if code is not None else unit
        if system:
            q["system"] = system
    return q


def observation(
    code: str,
    *,
    system: str = LOINC,
    value: dict | None = None,
    day: str | date = AS_OF,
    status: str = "final",
    subject: str = f"Patient/{PATIENT_ID}",
    **extra,
) -> dict:
    res: dict[str, Any] = {
        "resourceType": "Observation",
        "id": _id("obs"),
        "status": status,
        "code": concept(system, code),
        "subject": {"reference": subject},
        "effectiveDateTime": str(day),
        **extra,
    }
    if value is not None:
        res["valueQuantity"] = value
    return res


def lab(code: str, value: float, unit: str | None, day: str | date = AS_OF, **extra) -> dict:
    return observation(code, value=quantity(value, unit), day=day, **extra)


def condition(system: str, code: str, *, onset: str | None = None, **extra) -> dict:
    res: dict[str, Any] = {
        "resourceType": "Condition",
        "id": _id("cond"),
        "code": concept(system, code),
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        **extra,
    }
    if onset:
        res["onsetDateTime"] = onset
    return res


def procedure(system: str, code: str, *, performed: str, status: str = "completed", **extra):
    return {
        "resourceType": "Procedure",
        "id": _id("proc"),
        "status": status,
        "code": concept(system, code),
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
        "performedDateTime": performed,
        **extra,
    }


def bundle(*resources: dict, type_: str = "collection") -> dict:
    return {
        "resourceType": "Bundle",
        "type": type_,
        "entry": [{"fullUrl": f"urn:uuid:{_id('u')}", "resource": r} for r in resources],
    }


def run(*resources: dict, as_of: date = AS_OF, with_patient: bool = True) -> Evaluation:
    """Evaluate a Bundle of ``resources`` (plus a default adult Patient unless one is given)."""
    res = list(resources)
    if with_patient and not any(r["resourceType"] == "Patient" for r in res):
        res.insert(0, patient())
    protocol = default_protocol()
    return evaluate(record_from_bundle(bundle(*res), protocol), protocol, as_of)


def result(evaluation: Evaluation, code: str) -> CriterionResult:
    """A criterion's result, top-level or member."""
    stack = list(evaluation.results)
    while stack:
        r = stack.pop()
        if r.code == code:
            return r
        stack.extend(r.members)
    raise KeyError(code)


# -- attestations and consent (appended for the attestation/consent rules) -----------------


def qr_item(link_id: str, *answers: Any, items: list[dict] | None = None) -> dict:
    """A QuestionnaireResponse item; a bool answer becomes valueBoolean, a str valueString,
    an int valueInteger, a dict is used as the answer as given."""
    kinds = {bool: "valueBoolean", str: "valueString", int: "valueInteger"}
    item: dict[str, Any] = {"linkId": link_id}
    if answers:
        item["answer"] = [a if isinstance(a, dict) else {kinds[type(a)]: a} for a in answers]
    if items:
        item["item"] = items
    return item


def questionnaire_response(
    answers: dict[str, Any] | None = None,
    *,
    items: list[dict] | None = None,
    authored: str | date = AS_OF,
    status: str = "completed",
    questionnaire: str | None = None,
    author: str | None = "Practitioner/dr-x",
    subject: str = f"Patient/{PATIENT_ID}",
    **extra,
) -> dict:
    """An attestation response; ``answers`` maps linkId -> answer (see qr_item). The
    questionnaire defaults to the protocol's attestation Questionnaire."""
    res: dict[str, Any] = {
        "resourceType": "QuestionnaireResponse",
        "id": _id("qr"),
        "questionnaire": questionnaire or default_protocol().questionnaire_url,
        "status": status,
        "subject": {"reference": subject},
        "authored": str(authored),
        "item": [qr_item(k, v) for k, v in (answers or {}).items()] + list(items or []),
        **extra,
    }
    if author is not None:
        res["author"] = {"reference": author}
    return res


def consent(
    scope: str = "research",
    *,
    status: str = "active",
    date_time: str | date | None = None,
    period: tuple[str | None, str | None] | None = None,
    patient_ref: str = f"Patient/{PATIENT_ID}",
    **extra,
) -> dict:
    """An R4 Consent with a consentscope code; ``period`` is (start, end) of provision.period."""
    res: dict[str, Any] = {
        "resourceType": "Consent",
        "id": _id("consent"),
        "status": status,
        "scope": concept("http://terminology.hl7.org/CodeSystem/consentscope", scope),
        "category": [concept(LOINC, "59284-0")],
        "patient": {"reference": patient_ref},
        **extra,
    }
    if date_time is not None:
        res["dateTime"] = str(date_time)
    if period is not None:
        start, end = period
        res["provision"] = {
            "type": "permit",
            "period": {k: v for k, v in (("start", start), ("end", end)) if v},
        }
    return res


def coded_observation(
    code: str,
    value_system: str | None,
    value_code: str | None,
    *,
    day: str | date = AS_OF,
    interpretation: tuple[str, str] | None = None,
    **extra,
) -> dict:
    """An Observation (LOINC ``code`` unless ``system=`` is given) whose value is a coded
    concept; ``value_system=None`` leaves the value out; ``interpretation`` is (system, code)."""
    res = observation(code, day=day, **extra)
    if value_system is not None and value_code is not None:
        res["valueCodeableConcept"] = concept(value_system, value_code)
    if interpretation is not None:
        res["interpretation"] = [concept(*interpretation)]
    return res
