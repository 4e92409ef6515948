"""Performance status: ECOG, with Karnofsky only as a fallback.

The most recent ECOG in the window decides. ECOG arrives as a number, as a coded grade
(LOINC answer or SNOMED finding) in the value, or as such a grade in the interpretation;
when these disagree, or the number is outside the scale, the result is not usable, and an
unusable newest ECOG makes the criterion undetermined: an older ECOG does not decide in its
place (a deliberate change from "the most recent *usable* ECOG"). Karnofsky is read only
when there is no ECOG result at all in the window, and only where every published
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
from service.clinical.observations import (
    Dated,
    Judged,
    Unusable,
    candidate_observations,
    context_valueset,
    newest_verdict,
    origin,
)
from service.clinical.rules import Context, rule
from service.clinical.rules.params import PerformanceStatusParams
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
) -> tuple[int, str] | Unusable:
    """(grade, where it was read), or ``Unusable`` with a warning when it cannot be read."""

    def unusable(code: str, why: str) -> Unusable:
        issues.append(Issue(Severity.WARNING, code, f"ECOG {why}; result ignored", ref))
        return Unusable(f"ECOG {why}")

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


def read_karnofsky(
    obs: Resource, low: int, high: int, ref: str, issues: list[Issue]
) -> int | Unusable:
    """The Karnofsky score, or ``Unusable`` with a warning when it cannot be read."""
    value = _whole_number(obs.get("valueInteger"))
    if value is None:
        why = "has no whole-number score (valueInteger)"
    elif not low <= value <= high:
        why = f"value {value} is outside {low}–{high}"
    else:
        return value
    issues.append(Issue(Severity.WARNING, "value", f"Karnofsky {why}; result ignored", ref))
    return Unusable(f"Karnofsky {why}")


def _requirement(criterion: CriterionDef, ecog_vs: ValueSet) -> DataRequirement:
    return DataRequirement(
        "Observation",
        ecog_vs.url,
        f"{criterion.title}: an ECOG performance status within "
        f"{criterion.params.get('window_days')} days before the evaluation date",
    )


def _judge_ecog(criterion: CriterionDef, ctx: Context, dated: Dated, issues: list[Issue]) -> Judged:
    """Met or not met from one ECOG result; ``Unusable`` when it cannot be read."""
    p = criterion.params
    grade_sets = [ctx.protocol.valueset(v) for v in p["ecog_grade_valuesets"]]
    low, high = p["ecog_range"]
    ref = ctx.record.ref(dated.resource)
    reading = read_ecog(dated.item, grade_sets, low, high, ref.reference, issues)
    if isinstance(reading, Unusable):
        return reading
    grade, where = reading
    source = "" if where == "value" else f" (from the {where})"
    base = f"ECOG {grade}{source} on {dated.shown}{origin(ctx.record, dated)}"
    if grade <= p["ecog_max"]:
        return met(criterion.code, f"{base} ≤ {p['ecog_max']}", [ref])
    return not_met(criterion.code, f"{base}: above {p['ecog_max']}", [ref])


def _judge_karnofsky(
    criterion: CriterionDef, ctx: Context, dated: Dated, issues: list[Issue]
) -> Judged:
    """Met / not met only where every ECOG–Karnofsky conversion agrees, else undetermined."""
    p = criterion.params
    low, high = p["karnofsky_range"]
    ref = ctx.record.ref(dated.resource)
    score = read_karnofsky(dated.item, low, high, ref.reference, issues)
    if isinstance(score, Unusable):
        return score
    base = (
        f"no ECOG in the last {p.get('window_days')} days; Karnofsky {score} on {dated.shown}"
        f"{origin(ctx.record, dated)}"
    )
    if score >= p["karnofsky_met_min"]:
        return met(
            criterion.code,
            f"{base} ≥ {p['karnofsky_met_min']}, i.e. ECOG ≤ {p['ecog_max']}",
            [ref],
        )
    if score <= p["karnofsky_not_met_max"]:
        return not_met(
            criterion.code,
            f"{base} ≤ {p['karnofsky_not_met_max']}, i.e. ECOG above {p['ecog_max']}",
            [ref],
        )
    ecog_vs = ctx.protocol.valueset(p["ecog_observation_valueset"])
    return undetermined(
        criterion.code,
        f"{base}: published ECOG–Karnofsky conversions disagree whether this is "
        f"within ECOG ≤ {p['ecog_max']}",
        [ref],
        [_requirement(criterion, ecog_vs)],
    )


@rule("performance_status", params=PerformanceStatusParams)
def performance_status(criterion: CriterionDef, ctx: Context) -> CriterionResult:
    """The newest ECOG decides; Karnofsky only when the window holds no ECOG result at all."""
    p = criterion.params
    window = p.get("window_days")
    ecog_vs = ctx.protocol.valueset(p["ecog_observation_valueset"])
    karnofsky_vs = ctx.protocol.valueset(p["karnofsky_observation_valueset"])
    issues: list[Issue] = []
    needs = [_requirement(criterion, ecog_vs)]
    ecog = candidate_observations(
        ctx.record,
        ctx.protocol,
        ecog_vs,
        ctx.as_of,
        window,
        issues,
        context_valueset(ctx.protocol, p, "ecog_observation_valueset"),
    )
    if ecog:
        result = newest_verdict(
            criterion.code,
            ctx.record,
            ecog,
            lambda d: _judge_ecog(criterion, ctx, d, issues),
            what="ECOG",
            needs=needs,
            issues=issues,
            hint="; Karnofsky is read only when there is no ECOG result in the window",
        )
    else:
        karnofsky = candidate_observations(
            ctx.record,
            ctx.protocol,
            karnofsky_vs,
            ctx.as_of,
            window,
            issues,
            context_valueset(ctx.protocol, p, "karnofsky_observation_valueset"),
        )
        result = newest_verdict(
            criterion.code,
            ctx.record,
            karnofsky,
            lambda d: _judge_karnofsky(criterion, ctx, d, issues),
            what="Karnofsky",
            needs=needs,
            issues=issues,
        )
    if result is None:
        result = undetermined(criterion.code, _why_none(ctx, ecog_vs, window), needs=needs)
    result.issues.extend(issues)
    return result


def _why_none(ctx: Context, ecog_vs: ValueSet, window: int | None) -> str:
    older: list[Dated] = candidate_observations(
        ctx.record, ctx.protocol, ecog_vs, ctx.as_of, None, []
    )
    if older:
        return (
            f"no ECOG or Karnofsky in the last {window} days; the most recent ECOG is from "
            f"{older[0].shown}"
        )
    return "no ECOG or Karnofsky result found"
