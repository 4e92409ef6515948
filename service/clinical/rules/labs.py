"""Numeric results against a threshold: organ function, blood counts, LVEF.

The most recent result in the window decides; an older result never overrides a newer one.
A result whose unit is unknown, whose converted value is implausible or that has no numeric
value is not usable (with a warning). Deliberate change from "the most recent *usable*
result decides": an unusable newest result now makes the criterion undetermined, because
the value that cannot be read may be the one that fails (see ``observations.newest_verdict``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from service import units
from service.clinical import reference_ranges
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
    satisfies,
)
from service.clinical.rules import Context, rule
from service.clinical.rules.params import LabThresholdParams, LabUlnMultipleParams
from service.protocol import CriterionDef

_SYMBOL = {"<=": "≤", "<": "<", ">=": "≥", ">": ">"}


@dataclass(frozen=True, slots=True)
class Reading:
    """A result converted to the protocol's unit, with the words to explain it."""

    value: float
    comparator: str | None
    shown: str  # as reported, e.g. "2.5 mg/dL"
    converted: str  # in the protocol's unit, e.g. "42.8 µmol/L"; "" when no conversion


def format_number(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def _as_reported(quantity: dict[str, Any]) -> str:
    unit = quantity.get("unit") or quantity.get("code") or ""
    return f"{quantity.get('comparator', '')}{quantity.get('value')} {unit}".strip()


def _needs_molar_mass(unit: str | None, target: str) -> bool:
    """Whether reaching ``target`` from ``unit`` goes through a molar mass (mass ↔ substance)."""
    try:
        units.convert(1.0, unit, target)
    except units.UnitError:
        return True
    return False


def _is_target(unit: str | None, target: str) -> bool:
    """Whether ``unit`` (already alias-resolved) is the protocol's unit, blanks aside.

    Only a value that really was converted is rounded to the threshold's precision.
    """
    return unit is not None and unit.strip() == units.unit_of({"unit": target})


def read_quantity(
    dated: Dated, spec: dict[str, Any], target: str, ctx: Context, issues: list[Issue]
) -> Reading | Unusable:
    """Convert one result to ``target``; ``Unusable`` (with a warning) when it cannot be."""
    ref = ctx.record.ref(dated.resource).reference
    quantity = dated.item.get("valueQuantity")
    if (
        not isinstance(quantity, dict)
        or isinstance(quantity.get("value"), bool)
        or not isinstance(quantity.get("value"), int | float)
    ):
        issues.append(Issue(Severity.WARNING, "incomplete", "result has no numeric value", ref))
        return Unusable("result has no numeric value")
    value = float(quantity["value"])
    unit = units.unit_of(quantity)
    try:
        units.check_agreement(quantity)
        fraction_max = spec.get("unitless_fraction_max")  # LVEF 0.55 with no unit is 55 %
        if spec.get("fraction_as_percent") and (
            unit == "1" or (unit is None and fraction_max is not None and value <= fraction_max)
        ):
            converted = value * 100
        else:
            converted = units.convert(value, unit, target, spec.get("molar_mass_g_per_mol"))
            if "compare_decimals" in spec and _needs_molar_mass(unit, target):
                # A molar mass carries more digits than the protocol's threshold does
                # (2.0 mg/dL creatinine is 176.803 µmol/L); exact conversions are not rounded.
                converted = round(converted, int(spec["compare_decimals"]))
    except units.UnitError as exc:
        why = f"unit not usable ({exc})"
        issues.append(Issue(Severity.WARNING, "not-supported", f"{why}; result ignored", ref))
        return Unusable(f"{_as_reported(quantity)}: {why}")
    plausible = spec.get("plausible")
    if plausible:
        low = units.convert(plausible["low"], plausible["unit"], target)
        high = units.convert(plausible["high"], plausible["unit"], target)
        if not low <= converted <= high:
            why = (
                f"implausible value {_as_reported(quantity)} ({format_number(converted)} "
                f"{units.describe(target)}; plausible {plausible['low']}–{plausible['high']} "
                f"{units.describe(plausible['unit'])}): probably a unit error"
            )
            issues.append(Issue(Severity.WARNING, "value", f"{why}; result ignored", ref))
            return Unusable(why)
    converted_text = (
        "" if _is_target(unit, target) else f"{format_number(converted)} {units.describe(target)}"
    )
    return Reading(converted, quantity.get("comparator"), _as_reported(quantity), converted_text)


def lab_requirement(criterion: CriterionDef, ctx: Context) -> DataRequirement:
    vs = ctx.protocol.valueset(criterion.params["observation_valueset"])
    window = criterion.params.get("window_days")
    return DataRequirement(
        "Observation",
        vs.url,
        f"{criterion.title}: a final result within {window} days before the evaluation date",
    )


def _no_result(criterion: CriterionDef, ctx: Context, window: int | None) -> CriterionResult:
    """Nothing in the window: say when the most recent result (if any) was."""
    vs = ctx.protocol.valueset(criterion.params["observation_valueset"])
    context = context_valueset(ctx.protocol, criterion.params, "observation_valueset")
    older = candidate_observations(ctx.record, ctx.protocol, vs, ctx.as_of, None, [], context)
    if older:
        why = f"no result in the last {window} days; the most recent is from {older[0].shown}"
    else:
        why = "no result found"
    return undetermined(criterion.code, why, needs=[lab_requirement(criterion, ctx)])


def _decide(
    criterion: CriterionDef,
    ctx: Context,
    dated: Dated,
    reading: Reading,
    op: str,
    threshold: float,
    threshold_text: str,
) -> CriterionResult:
    evidence = [ctx.record.ref(dated.resource)]
    shown = f"{reading.shown} ({reading.converted})" if reading.converted else reading.shown
    verdict = satisfies(reading.value, reading.comparator, op, threshold)
    base = (
        f"{criterion.params.get('analyte', criterion.title)} {shown} on {dated.shown}"
        f"{origin(ctx.record, dated)}"
    )
    if verdict is True:
        return met(criterion.code, f"{base} {_SYMBOL[op]} {threshold_text}", evidence)
    if verdict is False:
        return not_met(criterion.code, f"{base}: not {_SYMBOL[op]} {threshold_text}", evidence)
    return undetermined(
        criterion.code,
        f"{base}: the reported bound cannot decide {_SYMBOL[op]} {threshold_text}",
        evidence,
        [lab_requirement(criterion, ctx)],
    )


def _candidates(criterion: CriterionDef, ctx: Context, issues: list[Issue]) -> list[Dated]:
    vs = ctx.protocol.valueset(criterion.params["observation_valueset"])
    context = context_valueset(ctx.protocol, criterion.params, "observation_valueset")
    window = criterion.params.get("window_days")
    return candidate_observations(ctx.record, ctx.protocol, vs, ctx.as_of, window, issues, context)


def newest_lab_verdict(
    criterion: CriterionDef,
    ctx: Context,
    target: str,
    decide: Callable[[Dated, Reading], CriterionResult],
) -> CriterionResult:
    """Let the most recent result in the window decide; undetermined when it is unusable.

    An unusable newest result is not skipped for an older one (see the module docstring).
    """
    issues: list[Issue] = []

    def judge(dated: Dated) -> Judged:
        reading = read_quantity(dated, criterion.params, target, ctx, issues)
        return reading if isinstance(reading, Unusable) else decide(dated, reading)

    result = newest_verdict(
        criterion.code,
        ctx.record,
        _candidates(criterion, ctx, issues),
        judge,
        what=criterion.params.get("analyte", criterion.title),
        needs=[lab_requirement(criterion, ctx)],
        issues=issues,
    ) or _no_result(criterion, ctx, criterion.params.get("window_days"))
    result.issues.extend(issues)
    return result


@rule("lab_threshold", params=LabThresholdParams)
def lab_threshold(criterion: CriterionDef, ctx: Context) -> CriterionResult:
    p = criterion.params
    target = p["threshold"]["unit"]
    threshold = float(p["threshold"]["value"])
    threshold_text = f"{p['threshold']['value']} {units.describe(target)}"

    def decide(dated: Dated, reading: Reading) -> CriterionResult:
        return _decide(criterion, ctx, dated, reading, p["comparator"], threshold, threshold_text)

    return newest_lab_verdict(criterion, ctx, target, decide)


@rule("lab_uln_multiple", params=LabUlnMultipleParams)
def lab_uln_multiple(criterion: CriterionDef, ctx: Context) -> CriterionResult:
    """Value ≤ N × ULN; ULN from the result's own reference range, else the protocol default."""
    p = criterion.params
    default = p["default_uln"]
    target = default["unit"]

    def decide(dated: Dated, reading: Reading) -> CriterionResult:
        ref = ctx.record.ref(dated.resource).reference
        uln, source = _upper_limit(dated, ctx, p, target, uln_issues, ref)
        if uln is None:
            return undetermined(
                criterion.code,
                f"{p.get('analyte', criterion.title)} {reading.shown} on {dated.shown}"
                f"{origin(ctx.record, dated)}: {source}",
                [ctx.record.ref(dated.resource)],
                [lab_requirement(criterion, ctx)],
            )
        limit = float(p["max_uln_multiple"]) * uln
        unit = units.describe(target)
        uln_text, limit_text = format_number(uln), format_number(limit)
        threshold_text = (
            f"{p['max_uln_multiple']} × ULN {uln_text} {unit} = {limit_text} {unit} ({source})"
        )
        return _decide(criterion, ctx, dated, reading, "<=", limit, threshold_text)

    uln_issues: list[Issue] = []
    result = newest_lab_verdict(criterion, ctx, target, decide)
    result.issues.extend(uln_issues)
    return result


def _range_over(dated: Dated, ctx: Context, target: str) -> Any:
    """``reference_ranges.upper_limit`` on the result's day; for a date that is not one day,
    on its first and last day, and only when both give the same limit (an age-specific range
    may change within the month)."""
    rules = reference_ranges.RangeRules.of(ctx.protocol)
    days = list(dict.fromkeys(d for d in (dated.when.earliest, dated.when.latest) if d))
    patient = ctx.record.patient
    found = [reference_ranges.upper_limit(dated.item, patient, d, target, rules) for d in days]
    if len(found) == 1 or (found and all(f == found[0] for f in found)):
        return found[0]
    return reference_ranges.NoUln(
        f"the result is dated {dated.shown}, and which of its reference ranges applies on that "
        "date cannot be told"
    )


def _upper_limit(
    dated: Dated, ctx: Context, spec: dict[str, Any], target: str, issues: list[Issue], ref: str
) -> tuple[float | None, str]:
    """This patient's ULN from the result, or the protocol default with the assumption said.

    The range must be a normal range that applies to this patient (sex, age at the result's
    day); see ``reference_ranges``. The default is used only when the result reports no
    upper limit at all: when it reports ranges but none, or several different ones, may be
    the patient's, there is no ULN (None, with the reason), never a guessed default. A ULN
    outside the protocol's plausible range casts doubt on the result itself: no ULN either.
    """
    found = _range_over(dated, ctx, target)
    if isinstance(found, reference_ranges.NoUln):
        issues.append(Issue(Severity.WARNING, "business-rule", found.why, ref))
        return None, found.why
    if found is None:
        value = units.convert(
            float(spec["default_uln"]["value"]), spec["default_uln"]["unit"], target
        )
        return value, "protocol default ULN; the result has no usable reference range"
    plausible = spec.get("uln_plausible")
    if plausible and not (
        units.convert(plausible["low"], plausible["unit"], target)
        <= found.value
        <= units.convert(plausible["high"], plausible["unit"], target)
    ):
        why = (
            f"the result's upper limit of normal {format_number(found.value)} "
            f"{units.describe(target)} is implausible, so the result cannot be judged"
        )
        issues.append(Issue(Severity.WARNING, "value", why, ref))
        return None, why
    return found.value, found.source
