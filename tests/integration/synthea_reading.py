"""Plain-Python reading of a Synthea Bulk NDJSON export, independent of the service's code.

The DAPA-CKD Synthea test hand-checks the screening against these: each function reads the raw
resources with nothing but the standard library (no service module), so a bug in the engine's
date, unit, equation or medication logic cannot hide behind the same bug here.
"""

from __future__ import annotations

import gzip
import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

Resource = dict[str, Any]
LOINC = "http://loinc.org"
USABLE_STATUSES = {"final", "amended", "corrected"}
MG_PER_MMOL_CREATININE = 113.12 / 10  # 1 mg/mmol = 8.84 mg/g (creatinine 113.12 g/mol)
UMOL_PER_MG_DL_CREATININE = 10_000 / 113.12  # 1 mg/dL creatinine = 88.4 umol/L


def read_export(folder: Path) -> dict[str, dict[str, list[Resource]]]:
    """Patient id -> resource type -> resources (the Patient under "Patient")."""
    found: dict[str, dict[str, list[Resource]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(folder.iterdir()):
        if path.name.endswith(".ndjson.gz"):
            data = gzip.decompress(path.read_bytes())
        elif path.name.endswith(".ndjson"):
            data = path.read_bytes()
        else:
            continue
        for line in data.splitlines():
            if not line.strip():
                continue
            resource = orjson.loads(line)
            if resource["resourceType"] == "Patient":
                found[resource["id"]]["Patient"].append(resource)
                continue
            ref = (resource.get("subject") or resource.get("patient") or {}).get("reference", "")
            if ref.startswith("Patient/"):
                found[ref.removeprefix("Patient/")][resource["resourceType"]].append(resource)
    return found


def codes_of(concept: Resource | None) -> set[tuple[str, str]]:
    return {(c.get("system", ""), c.get("code", "")) for c in (concept or {}).get("coding", [])}


@dataclass(frozen=True)
class Result:
    """One Observation value: its instant, calendar day (as written), value and unit."""

    resource: Resource
    moment: datetime
    day: date
    value: float
    unit: str


def results(observations: list[Resource], codes: set[tuple[str, str]]) -> list[Result]:
    """Usable results of ``codes`` (final/amended/corrected, a number), newest first."""
    out = []
    for obs in observations:
        if not codes_of(obs.get("code")) & codes or obs.get("status") not in USABLE_STATUSES:
            continue
        q = obs.get("valueQuantity") or {}
        when = obs.get("effectiveDateTime")
        assert "value" in q and when and not q.get("comparator"), f"extend the hand reading: {obs}"
        moment = datetime.fromisoformat(when)
        unit = q.get("code") or q.get("unit", "")
        out.append(Result(obs, moment, date.fromisoformat(when[:10]), float(q["value"]), unit))
    return sorted(out, key=lambda r: r.moment, reverse=True)


def newest_in_window(found: list[Result], as_of: date, window_days: int | None) -> list[Result]:
    """The newest result(s) dated in [as_of - window_days, as_of] (all at its instant)."""
    start = as_of - timedelta(days=window_days) if window_days is not None else date.min
    inside = [r for r in found if start <= r.day <= as_of]
    return [r for r in inside if r.moment == inside[0].moment] if inside else []


def whole_years(born: date, on: date) -> int:
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))


def egfr_ckd_epi_2021(creatinine_mg_dl: float, age: int, female: bool) -> float:
    """Inker et al., NEJM 2021: 142 x min(Scr/k,1)^a x max(Scr/k,1)^-1.200 x 0.9938^age
    (x 1.012 female); k 0.7 / 0.9, a -0.241 / -0.302 (female / male)."""
    k, a = (0.7, -0.241) if female else (0.9, -0.302)
    ratio = creatinine_mg_dl / k
    value = 142 * min(ratio, 1) ** a * max(ratio, 1) ** -1.2 * 0.9938**age
    return value * 1.012 if female else value


def creatinine_mg_dl(r: Result) -> float:
    if r.unit == "mg/dL":
        return r.value
    if r.unit in ("umol/L", "µmol/L"):
        return r.value / UMOL_PER_MG_DL_CREATININE
    raise AssertionError(f"creatinine in {r.unit!r}: extend the hand reading")


def uacr_mg_g(r: Result) -> float:
    if r.unit == "mg/g":
        return r.value
    if r.unit == "mg/mmol":
        return r.value * MG_PER_MMOL_CREATININE
    raise AssertionError(f"UACR in {r.unit!r}: extend the hand reading")


def tri(values: list[bool]) -> str:
    """met / not-met when every newest value agrees, undetermined when they disagree."""
    if not values:
        return "undetermined"
    if all(values):
        return "met"
    if not any(values):
        return "not-met"
    return "undetermined"


def combine(computed: str | None, reported: str | None) -> str:
    """The computed and the reported eGFR must agree; one alone decides; neither: open."""
    if computed is None and reported is None:
        return "undetermined"
    if computed is None or reported is None:
        return computed or reported  # type: ignore[return-value]
    return computed if computed == reported else "undetermined"


@dataclass(frozen=True)
class Exposure:
    """A MedicationRequest of a drug in the ValueSet: status, intent and authored day."""

    status: str
    intent: str
    authored: date | None


def exposures(requests: list[Resource], codes: set[tuple[str, str]]) -> list[Exposure]:
    out = []
    for req in requests:
        if not codes_of(req.get("medicationCodeableConcept")) & codes:
            continue
        authored = req.get("authoredOn")
        out.append(
            Exposure(
                req.get("status", ""),
                req.get("intent", ""),
                date.fromisoformat(authored[:10]) if authored else None,
            )
        )
    return out


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
