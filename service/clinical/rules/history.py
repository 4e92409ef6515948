"""An earlier qualifying result (``documented_before``): "albuminuria documented 3 months or
more before visit 1".

Unlike ``lab_threshold``, the newest result does not decide: the criterion asks whether the
finding was *documented* at least ``min_days_before`` days before the evaluation date (as-of,
i.e. visit 1; not before the newest result), and a later result does not undo that. So:

* met: a result dated *certainly* at least N days before as-of (its latest possible day is
  on or before as-of - N) that is certainly within the bounds;
* undetermined: no such result, but one that may qualify (a partial date across the cut-off,
  no readable time, an unreadable value, a reported bound that cannot decide, a date that
  may be before the look-back window) or no old-enough result at all (an earlier record may
  be elsewhere);
* not met: old-enough results exist and every one is certainly outside the bounds.
"""

from __future__ import annotations

from datetime import timedelta

from service.clinical.model import (
    CriterionResult,
    DataRequirement,
    Issue,
    met,
    not_met,
    undetermined,
)
from service.clinical.observations import Dated, candidate_observations, context_only, data_absent
from service.clinical.rules import Context, rule
from service.clinical.rules.labs import Reading, read_quantity
from service.clinical.rules.params import DocumentedBeforeParams
from service.clinical.rules.ranges import bounds_text, in_bounds, judged, shown
from service.protocol import CriterionDef


def _line(ctx: Context, dated: Dated, what: str) -> str:
    return f"{ctx.record.ref(dated.resource).reference} on {dated.shown}: {what}"


@rule("documented_before", params=DocumentedBeforeParams)
def documented_before(criterion: CriterionDef, ctx: Context) -> CriterionResult:
    """Met on a qualifying result certainly at least N days before as-of (see module)."""
    p: DocumentedBeforeParams = criterion.typed
    cutoff = ctx.as_of - timedelta(days=p.min_days_before)
    wanted = bounds_text(p)
    vs = ctx.protocol.valueset(p.observation_valueset)
    issues: list[Issue] = []
    name = p.analyte or criterion.title
    needs = [
        DataRequirement(
            "Observation",
            vs.url,
            f"{criterion.title}: a final result {wanted} dated on or before {cutoff} "
            f"({p.min_days_before} days before the evaluation date)",
        )
    ]
    qualifying: list[tuple[Dated, str]] = []
    doubtful: list[tuple[Dated, str]] = []
    failing: list[tuple[Dated, str]] = []
    candidates = candidate_observations(
        ctx.record, ctx.protocol, vs, ctx.as_of, p.window_days, issues
    )
    for dated in candidates:
        when = dated.when
        if when.earliest is not None and when.earliest > cutoff:
            continue  # certainly too recent to count
        old_enough = when.latest is not None and when.latest <= cutoff
        skip = context_only(dated) or data_absent(ctx.record, dated, issues)
        reading = skip or read_quantity(dated, criterion.params, p.unit, ctx, issues)
        if not isinstance(reading, Reading):
            doubtful.append((dated, _line(ctx, dated, reading.why)))
            continue
        verdict = in_bounds(reading.value, reading.comparator, p)
        said = f"{name} {shown(reading)}"
        if verdict is False:
            failing.append((dated, _line(ctx, dated, f"{said}, {judged(p, False)}")))
        elif verdict is None:
            doubtful.append((dated, _line(ctx, dated, f"{said}: the bound cannot decide")))
        elif not old_enough:
            why = f"{said}, but its date {when.text} may be after {cutoff}"
            doubtful.append((dated, _line(ctx, dated, why)))
        elif dated.partly:
            doubtful.append((dated, _line(ctx, dated, f"{said}, but {dated.partly}")))
        else:
            qualifying.append((dated, _line(ctx, dated, f"{said}, {judged(p, True)}")))
    result = _decide(criterion, ctx, (qualifying, doubtful, failing), cutoff, needs)
    result.issues[:0] = issues
    return result


def _decide(criterion, ctx, found, cutoff, needs) -> CriterionResult:
    qualifying, doubtful, failing = found
    p: DocumentedBeforeParams = criterion.typed
    days = f"{p.min_days_before} days or more before {ctx.as_of} (on or before {cutoff})"

    def refs(items):
        return list(dict.fromkeys(ctx.record.ref(d.resource) for d, _ in items))

    def lines(items):
        return "; ".join(text for _, text in items)

    if qualifying:
        first = qualifying[0]  # the newest qualifying one
        return met(criterion.code, f"documented {days}: {first[1]}", refs([first]))
    if doubtful:
        reason = f"no result certainly qualifies {days}; may qualify: {lines(doubtful)}"
        if failing:
            reason += f"; not qualifying: {lines(failing)}"
        return undetermined(criterion.code, reason, refs(doubtful + failing), needs)
    if failing:
        return not_met(
            criterion.code,
            f"no qualifying result {days}; every result then is outside the bounds: "
            f"{lines(failing)}",
            refs(failing),
        )
    return undetermined(
        criterion.code,
        f"no result {days} in the record; an earlier one may be recorded elsewhere",
        [],
        needs,
    )
