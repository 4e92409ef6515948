"""A result between two bounds (``lab_range``): UACR 200–5000 mg/g, eGFR 25–75.

The most recent result in the window decides, exactly as for ``lab_threshold`` (an unusable
newest result leaves it undetermined). Each bound is inclusive unless the protocol says
``min_exclusive`` / ``max_exclusive``; a reported bound (``<3``) decides only when every value
it allows falls on the same side of both bounds. ``in_bounds`` is shared by the rules that
compare a number with a range (computed values, documented history).
"""

from __future__ import annotations

import re

from service import units
from service.clinical.model import CriterionResult, met, not_met, undetermined
from service.clinical.observations import Dated, origin, satisfies
from service.clinical.rules import Context, rule
from service.clinical.rules.labs import Reading, format_number, lab_requirement, newest_lab_verdict
from service.clinical.rules.params import Bounds, LabRangeParams
from service.protocol import CriterionDef

_ANNOTATION = re.compile(r"\{[^}]*\}")


def annotation_mismatch(dated: Dated, target: str) -> str | None:
    """Why a result's unit means another quantity than ``target``, if it does.

    UCUM ignores annotations when converting, so ``mL/min`` converts 1:1 to
    ``mL/min/{1.73_m2}``; but an eGFR normalised to body surface and an absolute clearance
    are different quantities. When the protocol's unit carries an annotation, the result's
    unit must carry the same ones.
    """
    wanted = set(_ANNOTATION.findall(target))
    if not wanted:
        return None
    quantity = dated.item.get("valueQuantity")
    unit = units.unit_of(quantity) if isinstance(quantity, dict) else None
    if unit is None or set(_ANNOTATION.findall(unit)) == wanted:
        return None  # no unit: read_quantity says so
    return (
        f"reported in {unit}, not {units.describe(target)}: the annotation "
        f"{', '.join(sorted(wanted))} names a different quantity, so it is not converted"
    )


def in_bounds(value: float, comparator: str | None, bounds: Bounds) -> bool | None:
    """Whether a value (maybe a reported bound) is within ``bounds``; None when it cannot be
    told. Both bounds must hold; one that certainly fails decides "no"."""
    checks = []
    if bounds.min is not None:
        checks.append(
            satisfies(value, comparator, ">" if bounds.min_exclusive else ">=", bounds.min.value)
        )
    if bounds.max is not None:
        checks.append(
            satisfies(value, comparator, "<" if bounds.max_exclusive else "<=", bounds.max.value)
        )
    if False in checks:
        return False
    if None in checks:
        return None
    return True


def bounds_text(bounds: Bounds) -> str:
    """'200–5000 mg/g (inclusive)', '≥ 60 mL/min', '> 25 and ≤ 75 ...' in words."""
    unit = units.describe(bounds.unit)
    low, high = bounds.min, bounds.max
    if low is not None and high is not None:
        if not bounds.min_exclusive and not bounds.max_exclusive:
            return f"{format_number(low.value)}–{format_number(high.value)} {unit} (inclusive)"
        lo = ">" if bounds.min_exclusive else "≥"
        hi = "<" if bounds.max_exclusive else "≤"
        return f"{lo} {format_number(low.value)} and {hi} {format_number(high.value)} {unit}"
    if low is not None:
        return f"{'>' if bounds.min_exclusive else '≥'} {format_number(low.value)} {unit}"
    assert high is not None
    return f"{'<' if bounds.max_exclusive else '≤'} {format_number(high.value)} {unit}"


def judged(bounds: Bounds, inside: bool) -> str:
    """'within 25–75 mL/min/1.73 m² (inclusive)' / 'not ≥ 60 mL/min', for reasons."""
    wanted = bounds_text(bounds)
    two = bounds.min is not None and bounds.max is not None
    return f"{'' if inside else 'not '}{'within ' if two else ''}{wanted}"


def shown(reading: Reading) -> str:
    return f"{reading.shown} ({reading.converted})" if reading.converted else reading.shown


@rule("lab_range", params=LabRangeParams)
def lab_range(criterion: CriterionDef, ctx: Context) -> CriterionResult:
    """The newest result in the window within ``min``..``max``."""
    p: LabRangeParams = criterion.typed
    wanted = bounds_text(p)

    def decide(dated: Dated, reading: Reading) -> CriterionResult:
        evidence = [ctx.record.ref(dated.resource)]
        mismatch = annotation_mismatch(dated, p.unit)
        if mismatch:
            return undetermined(
                criterion.code,
                f"the most recent {p.analyte or criterion.title} result on {dated.shown} "
                f"cannot be used: {mismatch}",
                evidence,
                [lab_requirement(criterion, ctx)],
            )
        base = (
            f"{p.analyte or criterion.title} {shown(reading)} on {dated.shown}"
            f"{origin(ctx.record, dated)}"
        )
        verdict = in_bounds(reading.value, reading.comparator, p)
        if verdict is True:
            return met(criterion.code, f"{base}: {judged(p, True)}", evidence)
        if verdict is False:
            return not_met(criterion.code, f"{base}: {judged(p, False)}", evidence)
        return undetermined(
            criterion.code,
            f"{base}: the reported bound cannot tell whether it is within {wanted}",
            evidence,
            [lab_requirement(criterion, ctx)],
        )

    return newest_lab_verdict(criterion, ctx, p.unit, decide)
