"""A finding read from a coded positive/negative result (the CD19 immunophenotype).

Only a coded reading decides: the value (valueCodeableConcept) or the interpretation coded in
the protocol's positive / negative ValueSets. A numeric percentage or a narrative report is
listed as evidence but never interpreted here: what counts as "positive" in a flow report is a
clinical reading, and parsing free text is not reliable enough to enrol on.

The most recent result in the window decides. A newer result without a coded reading (e.g.
0 % CD19 after blinatumomab, a CD19-negative escape, or a narrative) makes the criterion
undetermined: an older coded positive does not decide in its place (a deliberate change from
"the latest coded result decides").
"""

from __future__ import annotations

from dataclasses import dataclass
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
    Broader,
    Dated,
    Judged,
    Unusable,
    candidate_observations,
    context_valueset,
    newest_verdict,
)
from service.clinical.rules import Context, rule
from service.clinical.rules.diagnosis import code_label
from service.clinical.rules.params import CodedFindingParams
from service.protocol import CriterionDef, ValueSet
from service.record import codings

POSITIVE = "positive"
NEGATIVE = "negative"


@dataclass(frozen=True, slots=True)
class Reading:
    dated: Dated
    polarity: str | None  # POSITIVE, NEGATIVE, or None when the result has no coded reading
    how: str  # what was read, in words
    conflict: bool = False  # the value and interpretation say different things


def read_finding(dated: Dated, positive: ValueSet, negative: ValueSet) -> Reading:
    obs = dated.item  # the component that carries the result, if it came in one
    found: list[tuple[str, str]] = []
    interpretations = [c for cc in obs.get("interpretation") or () for c in codings(cc)]
    for source, codes in (
        ("value", list(codings(obs.get("valueCodeableConcept")))),
        ("interpretation", interpretations),
    ):
        for code in codes:
            if code in positive.codes:
                found.append((POSITIVE, f"{source} {code_label(code, positive)}"))
            elif code in negative.codes:
                found.append((NEGATIVE, f"{source} {code_label(code, negative)}"))
    polarities = {p for p, _ in found}
    if len(polarities) == 1:
        return Reading(dated, found[0][0], found[0][1])
    if polarities:
        how = "contradictory coding (" + "; ".join(h for _, h in found) + ")"
        return Reading(dated, None, how, conflict=True)
    return Reading(dated, None, _uncoded(obs))


def _uncoded(obs: dict[str, Any]) -> str:
    quantity = obs.get("valueQuantity")
    if isinstance(quantity, dict) and quantity.get("value") is not None:
        unit = quantity.get("unit") or quantity.get("code") or ""
        return f"numeric value only ({quantity.get('comparator', '')}{quantity['value']} {unit})"
    if isinstance(obs.get("valueString"), str):
        return "narrative text only"
    concept = obs.get("valueCodeableConcept")
    if isinstance(concept, dict):
        codes = list(codings(concept))
        if codes:
            return f"coded value {code_label(codes[0])} is not a positive/negative finding"
        return "narrative text only"
    return "no value"


def _title(dated: Dated, valueset: ValueSet) -> str:
    codes = [c for c in codings(dated.item.get("code")) if c in valueset.codes]
    return code_label(codes[0], valueset) if codes else "result"


def _line(ctx: Context, r: Reading, valueset: ValueSet) -> str:
    ref = ctx.record.ref(r.dated.resource).reference
    part = " component" if r.dated.part is not None else ""
    return f"{_title(r.dated, valueset)} on {r.dated.shown}: {r.how} ({ref}{part})"


def _judge(
    criterion: CriterionDef,
    ctx: Context,
    dated: Dated,
    valuesets: tuple[ValueSet, ValueSet, ValueSet],
    issues: list[Issue],
) -> Judged:
    """Met / not met from a coded reading; ``Unusable`` (its words listed) without one."""
    vs, positive, negative = valuesets
    r = read_finding(dated, positive, negative)
    ref = ctx.record.ref(dated.resource)
    if r.conflict:
        issues.append(
            Issue(Severity.WARNING, "value", "contradictory positive/negative", ref.reference)
        )
    if r.polarity is None:
        return Unusable(f"{_title(dated, vs)}: {r.how}")
    if r.polarity == POSITIVE:
        return met(criterion.code, f"positive: {_line(ctx, r, vs)}", [ref])
    return not_met(criterion.code, f"negative: {_line(ctx, r, vs)}", [ref])


@rule("coded_finding", params=CodedFindingParams)
def coded_finding(criterion: CriterionDef, ctx: Context) -> CriterionResult:
    """The newest result decides, and only through a coded positive/negative reading."""
    p = criterion.params
    vs = ctx.protocol.valueset(p["observation_valueset"])
    context = context_valueset(ctx.protocol, p, "observation_valueset")
    positive = ctx.protocol.valueset(p["positive_valueset"])
    negative = ctx.protocol.valueset(p["negative_valueset"])
    window = p.get("window_days")
    issues: list[Issue] = []
    candidates = candidate_observations(
        ctx.record, ctx.protocol, vs, ctx.as_of, window, issues, context
    )
    within = f" within {window} days" if window else ""
    need = DataRequirement(
        "Observation",
        vs.url,
        f"{criterion.title}: a final result{within} with a coded positive or negative value "
        f"or interpretation (ValueSets {positive.id} / {negative.id})",
    )
    result = newest_verdict(
        criterion.code,
        ctx.record,
        candidates,
        lambda d: _judge(criterion, ctx, d, (vs, positive, negative), issues),
        what=p.get("analyte", ""),
        needs=[need],
        issues=issues,
        hint=f"; it needs a result coded as {vs.resource.get('title') or vs.id} with a coded "
        "reading (positive or negative value or interpretation): text and numbers are not "
        "interpreted automatically",
    ) or _no_result(criterion, ctx, vs, window, need, context)
    result.issues.extend(issues)
    return result


def _no_result(
    criterion: CriterionDef,
    ctx: Context,
    vs: ValueSet,
    window: int | None,
    need: DataRequirement,
    context: Broader | None,
) -> CriterionResult:
    """Nothing in the window: say when the most recent result (if any) was."""
    older = candidate_observations(ctx.record, ctx.protocol, vs, ctx.as_of, None, [], context)
    why = "no result found"
    if older:
        why = f"no result in the last {window} days; the most recent is from {older[0].shown}"
    return undetermined(criterion.code, why, needs=[need])
