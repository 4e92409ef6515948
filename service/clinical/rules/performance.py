"""Performance status: ECOG, with Karnofsky only as a fallback.

The most recent usable ECOG in the window decides. ECOG arrives as a number, as a coded
grade (LOINC answer or SNOMED finding) in the value, or as such a grade in the
interpretation; when these disagree, or the number is outside the scale, the result is not
usable. Karnofsky is read only when no usable ECOG exists, and only where every published
conversion agrees on the ECOG side of the cut-off.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from service.clinical.model import (
    CriterionResult,
    DataRequirement,
    Issue,
    Severity,
    met,
    not_met,
    undetermined,
)
from service.clinical.observations import Dated, candidate_observations
from service.clinical.rules import Context, rule
from service.protocol import Code, CriterionDef, ValueSet
from service.record import Resource, codings


def _whole_number(value: Any) -> int | None:
    """valueInteger as an int; a JSON 2.0 counts, a boolean or 1.5 does not."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _grades(codes: Iterable[Code], grade_sets: list[ValueSet]) -> set[int]:
    """ECOG grades (list index) whose ValueSet holds any of ``codes``."""
    found = list(codes)
    return {grade for grade, vs in enumerate(grade_sets) if vs.matches(found)}


def read_ecog(
    obs: Resource, grade_sets: list[ValueSet], low: int, high: int, ref: str, issues: list[Issue]
) -> tuple[int, str] | None:
    """(grade, where it was read) or None with a warning when the result is not usable."""

    def unusable(code: str, why: str) -> None:
        issues.append(Issue(Severity.WARNING, code, f"ECOG {why}; result ignored", ref))

    readings: dict[str, int] = {}
    if "valueInteger" in obs:
        value = _whole_number(obs["valueInteger"])
        if value is None:
            return unusable("value", "value is not a whole number")
        if not low <= value <= high:
            return unusable("value", f"value {value} is outside {low}–{high}")
        readings["value"] = value
    if "valueCodeableConcept" in obs:
        coded = _grades(codings(obs["valueCodeableConcept"]), grade_sets)
        if len(coded) != 1:
            return unusable("value", "coded value is not one known grade")
        readings["coded value"] = coded.pop()
    interpreted: set[int] = set()
    for concept in obs.get("interpretation") or ():
        interpreted |= _grades(codings(concept), grade_sets)
    if len(interpreted) > 1:
        return unusable("value", "interpretation names more than one grade")
    if interpreted:
        readings["interpretation"] = interpreted.pop()
    if not readings:
        return unusable("incomplete", "result has no grade (number, coded grade or interpretation)")
    if len(set(readings.values())) > 1:
        said = ", ".join(f"{where} {grade}" for where, grade in readings.items())
        return unusable("value", f"sources disagree ({said})")
    where = next(iter(readings))
    return readings[where], where


def read_karnofsky(obs: Resource, low: int, high: int, ref: str, issues: list[Issue]) -> int | None:
    value = _whole_number(obs.get("valueInteger"))
    if value is None:
        why = "has no whole-number score (valueInteger)"
    elif not low <= value <= high:
        why = f"value {value} is outside {low}–{high}"
    else:
        return value
    issues.append(Issue(Severity.WARNING, "value", f"Karnofsky {why}; result ignored", ref))
    return None


@rule("performance_status")
def performance_status(criterion: CriterionDef, ctx: Context) -> CriterionResult:
    p = criterion.params
    window = p.get("window_days")
    ecog_vs = ctx.protocol.valueset(p["ecog_observation_valueset"])
    karnofsky_vs = ctx.protocol.valueset(p["karnofsky_observation_valueset"])
    grade_sets = [ctx.protocol.valueset(v) for v in p["ecog_grade_valuesets"]]
    ecog_low, ecog_high = p["ecog_range"]
    issues: list[Issue] = []
    requirement = DataRequirement(
        "Observation",
        ecog_vs.url,
        f"{criterion.title}: an ECOG performance status within {window} days before the "
        "evaluation date",
    )

    unusable = 0
    for dated in candidate_observations(
        ctx.record, ctx.protocol, ecog_vs, ctx.as_of, window, issues
    ):
        ref = ctx.record.ref(dated.resource)
        reading = read_ecog(dated.resource, grade_sets, ecog_low, ecog_high, ref.reference, issues)
        if reading is None:
            unusable += 1
            continue
        grade, where = reading
        source = "" if where == "value" else f" (from the {where})"
        base = f"ECOG {grade}{source} on {dated.day}"
        if grade <= p["ecog_max"]:
            result = met(criterion.code, f"{base} ≤ {p['ecog_max']}", [ref])
        else:
            result = not_met(criterion.code, f"{base}: above {p['ecog_max']}", [ref])
        result.issues.extend(issues)
        return result

    no_ecog = (
        f"no usable ECOG in the last {window} days ({unusable} could not be used)"
        if unusable
        else f"no ECOG in the last {window} days"
    )
    k_low, k_high = p["karnofsky_range"]
    for dated in candidate_observations(
        ctx.record, ctx.protocol, karnofsky_vs, ctx.as_of, window, issues
    ):
        ref = ctx.record.ref(dated.resource)
        score = read_karnofsky(dated.resource, k_low, k_high, ref.reference, issues)
        if score is None:
            unusable += 1
            continue
        base = f"{no_ecog}; Karnofsky {score} on {dated.day}"
        if score >= p["karnofsky_met_min"]:
            result = met(
                criterion.code,
                f"{base} ≥ {p['karnofsky_met_min']}, i.e. ECOG ≤ {p['ecog_max']}",
                [ref],
            )
        elif score <= p["karnofsky_not_met_max"]:
            result = not_met(
                criterion.code,
                f"{base} ≤ {p['karnofsky_not_met_max']}, i.e. ECOG above {p['ecog_max']}",
                [ref],
            )
        else:
            result = undetermined(
                criterion.code,
                f"{base}: published ECOG–Karnofsky conversions disagree whether this is "
                f"within ECOG ≤ {p['ecog_max']}",
                [ref],
                [requirement],
            )
        result.issues.extend(issues)
        return result

    result = undetermined(
        criterion.code, _why_none(ctx, ecog_vs, window, unusable), needs=[requirement]
    )
    result.issues.extend(issues)
    return result


def _why_none(ctx: Context, ecog_vs: ValueSet, window: int | None, unusable: int) -> str:
    if unusable:
        return (
            f"{unusable} ECOG/Karnofsky result(s) in the last {window} days could not be used "
            "(see warnings)"
        )
    older: list[Dated] = candidate_observations(
        ctx.record, ctx.protocol, ecog_vs, ctx.as_of, None, []
    )
    if older:
        return (
            f"no ECOG or Karnofsky in the last {window} days; the most recent ECOG is from "
            f"{older[0].day}"
        )
    return "no ECOG or Karnofsky result found"
