"""Synthetic patients for the benchmarks: one eligible B-ALL history plus N Observations.

Deterministic for a given (N, anchor date, seed). Most Observations use codes the trial never
reads (chemistry, haematology, HbA1c, vital signs), as in a real chart; the trial's labs are
drawn every few days over two years; LVEF, ECOG and CD19 appear a handful of times. Each
Observation looks like one from a real server (meta, category, display text, UCUM units,
reference ranges; ~700 bytes), so parsing cost per resource is realistic.

Dates are relative to the anchor (default today) because the CDS Hooks and HTTP endpoints
evaluate "as of today"; the patient is eligible on the anchor date whatever N is.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import orjson

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
BASE_URL = "https://bench.example.org/fhir"
SPAN_DAYS = 730  # "spread over two years"

Resource = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Analyte:
    """A numeric Observation kind: code, units, reference range and a plausible value range."""

    code: str
    display: str
    text: str
    category: str  # laboratory | vital-signs
    unit: str  # UCUM code (also shown as the unit text)
    low: float | None  # reference range
    high: float | None
    value_min: float  # drawn uniformly from [value_min, value_max]
    value_max: float
    decimals: int = 1


# fmt: off
# Codes no criterion reads. Vital signs carry no reference range (as on real servers).
OTHER: tuple[Analyte, ...] = (
    Analyte("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "Glucose", "laboratory", "mg/dL", 70, 99, 65, 180, 0),  # noqa: E501
    Analyte("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "Sodium", "laboratory", "mmol/L", 136, 145, 130, 148, 0),  # noqa: E501
    Analyte("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "Potassium", "laboratory", "mmol/L", 3.5, 5.1, 3.1, 5.6),  # noqa: E501
    Analyte("2075-0", "Chloride [Moles/volume] in Serum or Plasma", "Chloride", "laboratory", "mmol/L", 98, 107, 95, 110, 0),  # noqa: E501
    Analyte("2028-9", "Carbon dioxide, total [Moles/volume] in Serum or Plasma", "CO2", "laboratory", "mmol/L", 22, 29, 19, 31, 0),  # noqa: E501
    Analyte("3094-0", "Urea nitrogen [Mass/volume] in Serum or Plasma", "BUN", "laboratory", "mg/dL", 7, 20, 5, 35, 0),  # noqa: E501
    Analyte("17861-6", "Calcium [Mass/volume] in Serum or Plasma", "Calcium", "laboratory", "mg/dL", 8.6, 10.3, 8.0, 10.8),  # noqa: E501
    Analyte("1751-7", "Albumin [Mass/volume] in Serum or Plasma", "Albumin", "laboratory", "g/dL", 3.5, 5.0, 2.8, 5.2),  # noqa: E501
    Analyte("2532-0", "Lactate dehydrogenase [Enzymatic activity/volume] in Serum or Plasma", "LDH", "laboratory", "U/L", 140, 280, 120, 650, 0),  # noqa: E501
    Analyte("6690-2", "Leukocytes [#/volume] in Blood by Automated count", "WBC", "laboratory", "10*9/L", 4.0, 11.0, 0.8, 14.0),  # noqa: E501
    Analyte("731-0", "Lymphocytes [#/volume] in Blood by Automated count", "Lymphocytes", "laboratory", "10*9/L", 1.0, 4.8, 0.2, 5.0),  # noqa: E501
    Analyte("787-2", "MCV [Entitic volume] by Automated count", "MCV", "laboratory", "fL", 80, 100, 78, 104, 0),  # noqa: E501
    Analyte("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "HbA1c", "laboratory", "%", 4.0, 5.6, 4.6, 7.2),  # noqa: E501
    Analyte("8867-4", "Heart rate", "Heart rate", "vital-signs", "/min", None, None, 55, 118, 0),
    Analyte("8480-6", "Systolic blood pressure", "Systolic BP", "vital-signs", "mm[Hg]", None, None, 95, 165, 0),  # noqa: E501
    Analyte("8462-4", "Diastolic blood pressure", "Diastolic BP", "vital-signs", "mm[Hg]", None, None, 55, 98, 0),  # noqa: E501
    Analyte("8310-5", "Body temperature", "Temperature", "vital-signs", "Cel", None, None, 36.1, 38.9),  # noqa: E501
    Analyte("9279-1", "Respiratory rate", "Respiratory rate", "vital-signs", "/min", None, None, 12, 24, 0),  # noqa: E501
    Analyte("2708-6", "Oxygen saturation in Arterial blood", "SpO2", "vital-signs", "%", None, None, 90, 100, 0),  # noqa: E501
    Analyte("29463-7", "Body weight", "Weight", "vital-signs", "kg", None, None, 68, 76),
)

# The trial's labs, every value inside the pass range, so the newest result always passes.
LABS: tuple[Analyte, ...] = (
    Analyte("1975-2", "Bilirubin.total [Mass/volume] in Serum or Plasma", "Total bilirubin", "laboratory", "mg/dL", 0.1, 1.2, 0.2, 1.6),  # noqa: E501
    Analyte("1742-6", "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma", "ALT", "laboratory", "U/L", 7, 41, 12, 70, 0),  # noqa: E501
    Analyte("1920-8", "Aspartate aminotransferase [Enzymatic activity/volume] in Serum or Plasma", "AST", "laboratory", "U/L", 10, 40, 12, 65, 0),  # noqa: E501
    Analyte("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "Creatinine", "laboratory", "mg/dL", 0.7, 1.3, 0.6, 1.4, 2),  # noqa: E501
    Analyte("751-8", "Neutrophils [#/volume] in Blood by Automated count", "ANC", "laboratory", "10*9/L", 1.8, 7.5, 0.7, 4.5),  # noqa: E501
    Analyte("777-3", "Platelets [#/volume] in Blood by Automated count", "Platelets", "laboratory", "10*9/L", 150, 400, 45, 260, 0),  # noqa: E501
    Analyte("718-7", "Hemoglobin [Mass/volume] in Blood", "Hemoglobin", "laboratory", "g/dL", 13.0, 17.0, 8.2, 13.5),  # noqa: E501
)
LVEF = Analyte("18043-0", "Left ventricular Ejection fraction by US", "LVEF", "imaging", "%", 52, 72, 50, 64, 0)  # noqa: E501
# fmt: on
LAB_SHARE = 0.2  # of the generated Observations, the share that are the trial's labs


@dataclass
class Dataset:
    """One patient's data: the collection Bundle, its bytes and where it came from."""

    patient_id: str
    anchor: date  # evaluate as of this date
    n_observations: int
    bundle: Resource
    body: bytes = field(repr=False)

    @property
    def resources(self) -> list[Resource]:
        return [e["resource"] for e in self.bundle["entry"]]

    @property
    def patient(self) -> Resource:
        return self.bundle["entry"][0]["resource"]


def _instant(day: date, rnd: random.Random) -> str:
    moment = datetime.combine(day, time(rnd.randint(6, 20), rnd.choice((0, 15, 30, 45))), UTC)
    return moment.isoformat()


def _concept(system: str, code: str, display: str, text: str | None = None) -> Resource:
    out: Resource = {"coding": [{"system": system, "code": code, "display": display}]}
    if text:
        out["text"] = text
    return out


def _category(code: str) -> list[Resource]:
    display = {"vital-signs": "Vital Signs"}.get(code, code.capitalize())
    return [_concept(OBS_CATEGORY, code, display)]


def _qty(value: float, unit: str) -> Resource:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


class _Builder:
    """Hands out ids and timestamps; all resources of one patient go through it."""

    def __init__(self, pid: str, anchor: date, rnd: random.Random) -> None:
        self.pid = pid
        self.anchor = anchor
        self.rnd = rnd
        self.n = 0
        self.subject = {"reference": f"Patient/{pid}"}

    def day(self, days_before: int) -> date:
        return self.anchor - timedelta(days=days_before)

    def meta(self, when: str) -> Resource:
        return {
            "versionId": "1",
            "lastUpdated": when[:19] + ".000+00:00",
            "source": f"#lis-{self.rnd.randint(1, 9)}",
        }

    def observation(
        self, days_before: int, code: Resource, category: str, **value: Any
    ) -> Resource:
        self.n += 1
        when = _instant(self.day(days_before), self.rnd)
        return {
            "resourceType": "Observation",
            "id": f"{self.pid}-obs-{self.n:05d}",
            "meta": self.meta(when),
            "status": "final",
            "category": _category(category),
            "code": code,
            "subject": self.subject,
            "effectiveDateTime": when,
            **value,
        }

    def numeric(self, analyte: Analyte, days_before: int) -> Resource:
        rnd = self.rnd
        value = round(rnd.uniform(analyte.value_min, analyte.value_max), analyte.decimals)
        if analyte.decimals == 0:
            value = int(value)
        extra: Resource = {"valueQuantity": _qty(value, analyte.unit)}
        if analyte.low is not None and analyte.high is not None:
            extra["referenceRange"] = [
                {
                    "low": _qty(analyte.low, analyte.unit),
                    "high": _qty(analyte.high, analyte.unit),
                }
            ]
        code = _concept(LOINC, analyte.code, analyte.display, analyte.text)
        return self.observation(days_before, code, analyte.category, **extra)


def _story(b: _Builder) -> list[Resource]:
    """Patient, diagnosis, two relapses (second after an allogeneic HSCT), treatments, consent,
    attestation, and the Observations that make every criterion met on the anchor date."""
    pid, subject = b.pid, b.subject
    cond_ref = {"reference": f"Condition/{pid}-ball"}
    ts = lambda days: _instant(b.day(days), b.rnd)  # noqa: E731

    def procedure(suffix: str, code: str, display: str, start: int, end: int | None) -> Resource:
        res: Resource = {
            "resourceType": "Procedure",
            "id": f"{pid}-{suffix}",
            "status": "completed",
            "code": _concept(SNOMED, code, display),
            "subject": subject,
            "reasonReference": [cond_ref],
        }
        if end is None:
            res["performedDateTime"] = ts(start)
        else:
            res["performedPeriod"] = {"start": ts(start), "end": ts(end)}
        return res

    def status(days: int, code: str, display: str) -> Resource:
        obs = b.observation(
            days,
            _concept(LOINC, "97509-4", "Cancer Disease Progression"),
            "exam",
            valueCodeableConcept=_concept(SNOMED, code, display),
        )
        obs["focus"] = [cond_ref]
        return obs

    def cd19(days: int) -> Resource:
        return b.observation(
            days,
            _concept(LOINC, "8117-4", "CD19 cells/100 cells in Blood", "CD19"),
            "laboratory",
            valueCodeableConcept=_concept(SNOMED, "10828004", "Positive (qualifier value)"),
            method={"text": "Flow cytometry"},
        )

    birth = b.day(34 * 365 + 100)
    return [
        {
            "resourceType": "Patient",
            "id": pid,
            "meta": b.meta(ts(1100)),
            "identifier": [{"system": "https://bench.example.org/mrn", "value": f"MRN-{pid}"}],
            "active": True,
            "name": [{"use": "official", "family": "Benchmark", "given": ["Synthetic"]}],
            "gender": "male",
            "birthDate": birth.isoformat(),
        },
        {
            "resourceType": "Practitioner",
            "id": f"{pid}-investigator",
            "name": [{"family": "Investigator", "given": ["Study"]}],
        },
        {
            "resourceType": "Condition",
            "id": f"{pid}-ball",
            "extension": [
                {
                    "url": "http://hl7.org/fhir/us/mcode/StructureDefinition/mcode-histology-morphology-behavior",  # noqa: E501
                    "valueCodeableConcept": _concept(
                        "http://terminology.hl7.org/CodeSystem/icd-o-3",
                        "9811/3",
                        "B lymphoblastic leukemia/lymphoma, NOS",
                    ),
                }
            ],
            "clinicalStatus": _concept(
                "http://terminology.hl7.org/CodeSystem/condition-clinical", "relapse", "Relapse"
            ),
            "verificationStatus": _concept(
                "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                "confirmed",
                "Confirmed",  # noqa: E501
            ),
            "code": _concept(SNOMED, "277571004", "B-cell acute lymphoblastic leukemia (disorder)"),
            "subject": subject,
            "onsetDateTime": ts(1114),
            "recordedDate": ts(1114),
        },
        cd19(1114),
        procedure("chemo-1", "367336001", "Chemotherapy (procedure)", 1110, 1068),
        status(1066, "103338009", "In full remission (qualifier value)"),
        procedure("chemo-2", "367336001", "Chemotherapy (procedure)", 1047, 876),
        status(647, "263855007", "Relapse phase (qualifier value)"),
        procedure("immuno", "76334006", "Immunotherapy (procedure)", 641, 585),
        status(583, "103338009", "In full remission (qualifier value)"),
        procedure(
            "allo-hsct", "425843001", "Allogeneic peripheral blood stem cell transplant", 528, None
        ),  # noqa: E501
        status(53, "263855007", "Relapse phase (qualifier value)"),
        cd19(53),
        procedure("chemo-3", "367336001", "Chemotherapy (procedure)", 50, 25),
        {
            "resourceType": "Consent",
            "id": f"{pid}-consent",
            "status": "active",
            "scope": _concept(
                "http://terminology.hl7.org/CodeSystem/consentscope", "research", "Research"
            ),  # noqa: E501
            "category": [_concept(LOINC, "59284-0", "Patient Consent")],
            "patient": subject,
            "dateTime": ts(5),
            "policy": [
                {"uri": "https://fhir.cart-eligibility.example.org/ResearchStudy/cd19-cart-rr-ball"}
            ],  # noqa: E501
            "provision": {"type": "permit", "period": {"start": ts(5), "end": ts(-725)}},
        },
        {
            "resourceType": "QuestionnaireResponse",
            "id": f"{pid}-attestation",
            "questionnaire": "https://fhir.cart-eligibility.example.org/Questionnaire/cd19-cart-rr-ball-attestation",  # noqa: E501
            "status": "completed",
            "subject": subject,
            "authored": ts(5),
            "author": {"reference": f"Practitioner/{pid}-investigator"},
            "item": [
                {"linkId": item, "answer": [{"valueBoolean": True}]}
                for item in ("I5", "I9", "I11", "I12")
            ],
        },
        # the newest results, all inside their windows
        *(b.numeric(lab, 3) for lab in LABS),
        b.numeric(LVEF, 20),
        _ecog(b, 6),
    ]


def _ecog(b: _Builder, days_before: int) -> Resource:
    grade = b.rnd.choice((0, 1))
    answer = ("LA9622-7", "Fully active") if grade == 0 else ("LA9623-5", "Restricted")
    return b.observation(
        days_before,
        _concept(LOINC, "89247-1", "ECOG Performance Status score", "ECOG"),
        "survey",
        valueInteger=grade,
        interpretation=[_concept(LOINC, *answer)],
    )


def _background(b: _Builder, count: int) -> Iterator[Resource]:
    """``count`` more Observations: a few rare trial inputs, the trial's labs, everything else."""
    rnd = b.rnd
    rare = 0
    if count >= 500:  # a long chart also has older echo, ECOG and flow cytometry results
        for days in (90, 200, 380, 560, 700):
            yield b.numeric(LVEF, days)
        for days in range(36, SPAN_DAYS, 30):
            yield _ecog(b, days)
        rare = 5 + len(range(36, SPAN_DAYS, 30))
    rest = count - rare
    labs = round(rest * LAB_SHARE)
    for _ in range(labs):
        yield b.numeric(rnd.choice(LABS), rnd.randint(4, SPAN_DAYS))
    for _ in range(rest - labs):
        yield b.numeric(rnd.choice(OTHER), rnd.randint(0, SPAN_DAYS))


def make_patient(
    n_observations: int, *, anchor: date | None = None, seed: int = 1, patient_id: str | None = None
) -> Dataset:
    """An eligible patient with exactly ``n_observations`` Observations (at least 20)."""
    anchor = anchor or date.today()
    pid = patient_id or f"bench-{n_observations}"
    b = _Builder(pid, anchor, random.Random(f"{seed}-{n_observations}"))
    story = _story(b)
    core = sum(r["resourceType"] == "Observation" for r in story)
    if n_observations < core:
        raise ValueError(f"n_observations must be at least {core}")
    observations = [r for r in story if r["resourceType"] == "Observation"]
    observations.extend(_background(b, n_observations - core))
    observations.sort(key=lambda r: r["effectiveDateTime"])  # export order: oldest first
    others = [r for r in story if r["resourceType"] != "Observation"]
    entries = [
        {"fullUrl": f"{BASE_URL}/{r['resourceType']}/{r['id']}", "resource": r}
        for r in (*others, *observations)
    ]
    bundle = {
        "resourceType": "Bundle",
        "id": f"{pid}-export",
        "type": "collection",
        "timestamp": datetime.combine(anchor, time(0, 0), UTC).isoformat(),
        "entry": entries,
    }
    return Dataset(pid, anchor, n_observations, bundle, orjson.dumps(bundle))
