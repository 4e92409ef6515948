"""A finding read from a coded positive/negative result (the CD19 immunophenotype).

Only a coded reading decides: the value (valueCodeableConcept) or the interpretation coded in
the protocol's positive / negative ValueSets. A numeric percentage or a narrative report is
listed as evidence but never interpreted here: what counts as "positive" in a flow report is a
clinical reading, and parsing free text is not reliable enough to enrol on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.clinical.model import (
    CriterionResult,
    DataRequirement,
    Issue,
    Severity,
    SourceRef,
    met,
    not_met,
    undetermined,
)
from service.clinical.observations import Dated, candidate_observations
from service.clinical.rules import Context, rule
from service.clinical.rules.diagnosis import code_label
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
    obs = dated.resource
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
    codes = [c for c in codings(dated.resource.get("code")) if c in valueset.codes]
    return code_label(codes[0], valueset) if codes else "result"


def _line(ctx: Context, r: Reading, valueset: ValueSet) -> str:
    ref = ctx.record.ref(r.dated.resource).reference
    return f"{_title(r.dated, valueset)} on {r.dated.day}: {r.how} ({ref})"


@rule("coded_finding")
def coded_finding(criterion: CriterionDef, ctx: Context) -> CriterionResult:
    p = criterion.params
    vs = ctx.protocol.valueset(p["observation_valueset"])
    positive = ctx.protocol.valueset(p["positive_valueset"])
    negative = ctx.protocol.valueset(p["negative_valueset"])
    window = p.get("window_days")
    issues: list[Issue] = []
    candidates = candidate_observations(ctx.record, ctx.protocol, vs, ctx.as_of, window, issues)
    readings = [read_finding(d, positive, negative) for d in candidates]
    for r in readings:
        if r.conflict:
            ref = ctx.record.ref(r.dated.resource).reference
            issues.append(Issue(Severity.WARNING, "value", "contradictory positive/negative", ref))

    coded = [r for r in readings if r.polarity is not None]
    within = f" within {window} days" if window else ""
    need = DataRequirement(
        "Observation",
        vs.url,
        f"{criterion.title}: a final result{within} with a coded positive or negative value "
        f"or interpretation (ValueSets {positive.id} / {negative.id})",
    )
    if not coded:
        result = _no_coded_result(criterion, ctx, vs, readings, window, need)
    else:
        decisive = coded[0]
        newer = [r for r in readings if r.dated.day > decisive.dated.day and r.polarity is None]
        same_day = [r for r in coded if r.dated.day == decisive.dated.day]
        used = [*same_day, *newer]
        evidence = list(dict.fromkeys(ctx.record.ref(r.dated.resource) for r in used))
        text = "; ".join(_line(ctx, r, vs) for r in same_day)
        if newer:
            text += ". Newer result(s) without a coded reading, not used: " + "; ".join(
                _line(ctx, r, vs) for r in newer
            )
        if len({r.polarity for r in same_day}) > 1:
            result = undetermined(
                criterion.code, f"conflicting results on the same day: {text}", evidence, [need]
            )
        elif decisive.polarity == POSITIVE:
            result = met(criterion.code, f"positive: {text}", evidence)
        else:
            result = not_met(criterion.code, f"negative: {text}", evidence)
    result.issues.extend(issues)
    return result


def _no_coded_result(
    criterion: CriterionDef,
    ctx: Context,
    vs: ValueSet,
    readings: list[Reading],
    window: int | None,
    need: DataRequirement,
) -> CriterionResult:
    if readings:
        evidence: list[SourceRef] = [ctx.record.ref(r.dated.resource) for r in readings]
        return undetermined(
            criterion.code,
            "no result with a coded positive/negative reading; each needs a coded reading "
            "(the text and numbers are not interpreted automatically): "
            + "; ".join(_line(ctx, r, vs) for r in readings),
            evidence,
            [need],
        )
    older = candidate_observations(ctx.record, ctx.protocol, vs, ctx.as_of, None, [])
    why = "no result found"
    if older:
        why = f"no result in the last {window} days; the most recent is from {older[0].day}"
    return undetermined(criterion.code, why, needs=[need])
