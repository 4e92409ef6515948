"""Exclusion criteria: the patient satisfies one when the excluding condition is known absent.

Every criterion keeps one tri-state, "the patient satisfies this criterion", so an exclusion
is *not met* when the record shows the excluding Condition (confirmed or with no verification
status; active, or any status for a history criterion; inside the ``within_days`` window).
It is *met* only on evidence of absence: a negative test the protocol names, or the
investigator's attestation that none of these apply. A record that simply has no such
Condition proves nothing (charts are incomplete) unless the protocol opts in with
``absence_in_record_clears``, and then the reason says so in words. Anything in between
(a provisional diagnosis, a date that may fall inside the window) is undetermined.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, Literal

from service.clinical.model import (
    CriterionResult,
    DataRequirement,
    Issue,
    Outcome,
    SourceRef,
    met,
    not_met,
    undetermined,
)
from service.clinical.observations import Judged, Unusable, candidate_observations, newest_verdict
from service.clinical.rules import Context, rule
from service.clinical.rules.attestations import (
    attestation_requirement,
    decide_by_attestation,
    lookup_attestation,
)
from service.clinical.rules.diagnosis import code_label
from service.clinical.rules.immunophenotype import NEGATIVE, POSITIVE, read_finding
from service.clinical.rules.params import ConditionAbsentParams
from service.clinical.timing import Placement, clinical_time, place
from service.protocol import CriterionDef, ValueSet
from service.record import Resource, codings

_ACTIVE = frozenset({"active", "recurrence", "relapse"})
_NEVER = frozenset({"refuted", "entered-in-error"})  # never evidence of anything

Timing = Literal["inside", "outside", "maybe", "later"]


def _timing(
    condition: Resource, as_of: date, within_days: int | None, birth: Any = None
) -> tuple[Timing, str]:
    """Where the Condition's time falls, read through the one interval reading of
    ``service.clinical.timing`` (onset[x], else recordedDate; a partial date, an age or a
    Period covers every day it may mean).

    "later": known only after ``as_of`` (not part of this evaluation); "inside" / "outside"
    the window of ``within_days`` before ``as_of``; "maybe" when the interval straddles an
    edge or there is no readable time while a window applies. Without a window every
    Condition known on or before ``as_of`` is "inside" (an undated one too: the record holds
    it now).
    """
    when = clinical_time(condition, birth)
    text = f"dated {when.text}"
    if when.unknown:
        if within_days is None:
            return "inside", "date not recorded"
        return "maybe", f"{when.text}, so it may fall within {within_days} days"
    placement = place(when, as_of, within_days)
    if placement is Placement.AFTER:
        return "later", text
    if placement is Placement.BEFORE:
        start = as_of - timedelta(days=within_days or 0)
        return "outside", f"{text}, before the {within_days}-day window (from {start})"
    if placement is Placement.INSIDE:
        return "inside", text if within_days is None else f"{text}, within {within_days} days"
    if within_days is None:
        return "maybe", f"{text}, which may be after {as_of}"
    return "maybe", f"{text}, which may or may not be within {within_days} days"


@dataclass(slots=True)
class _Found:
    """The record's Conditions of the excluding ValueSet, sorted by what they show."""

    applies: list[tuple[Resource, str]] = field(default_factory=list)
    possible: list[tuple[Resource, str]] = field(default_factory=list)
    ignored: list[tuple[Resource, str]] = field(default_factory=list)


def _sort(criterion: CriterionDef, ctx: Context, vs: ValueSet) -> _Found:
    p: ConditionAbsentParams = criterion.typed
    found = _Found()
    for condition in ctx.record.conditions:
        codes = [c for c in codings(condition.get("code")) if c in vs.codes]
        if not codes:
            continue
        timing, when = _timing(
            condition, ctx.as_of, p.within_days, ctx.record.patient.get("birthDate")
        )
        if timing == "later":
            continue
        ref = ctx.record.ref(condition).reference
        line = f"{ref} {code_label(codes[0], vs)} ({when}"
        verification = {c for _, c in codings(condition.get("verificationStatus"))}
        clinical = {c for _, c in codings(condition.get("clinicalStatus"))}
        if verification & _NEVER:
            found.ignored.append((condition, f"{line}; {', '.join(sorted(verification))})"))
            continue
        doubt = []
        if condition.get("verificationStatus") is not None and "confirmed" not in verification:
            doubt.append(f"verification status {', '.join(sorted(verification)) or 'unreadable'}")
        if not p.history:
            if not clinical:
                doubt.append("clinical status not recorded")
            elif not clinical & _ACTIVE:
                found.ignored.append((condition, f"{line}; {', '.join(sorted(clinical))})"))
                continue
        if timing == "outside":
            found.ignored.append((condition, f"{line})"))
            continue
        if timing == "maybe":
            doubt.append("its date")
        target = found.possible if doubt else found.applies
        status = ", ".join(sorted(clinical)) if clinical else ""
        extra = f"; {status}" if status and not doubt else ""
        target.append((condition, f"{line}{extra})" + (f": {'; '.join(doubt)}" if doubt else "")))
    return found


def _judge_test(criterion: CriterionDef, ctx: Context, valuesets, dated) -> Judged:
    """A negative reading of the named test is evidence of absence; a positive one shows it."""
    vs, positive, negative = valuesets
    reading = read_finding(dated, positive, negative)
    ref = ctx.record.ref(dated.resource)
    codes = [c for c in codings(dated.item.get("code")) if c in vs.codes]
    title = code_label(codes[0], vs) if codes else "test"
    line = f"{title} on {dated.day}: {reading.how} ({ref.reference})"
    if reading.polarity == NEGATIVE:
        return met(criterion.code, f"negative test: {line}", [ref])
    if reading.polarity == POSITIVE:
        return not_met(criterion.code, f"positive test: {line}", [ref])
    return Unusable(f"{title}: {reading.how}")


def _test_verdict(
    criterion: CriterionDef, ctx: Context, issues: list[Issue]
) -> tuple[CriterionResult | None, list[DataRequirement]]:
    """The newest named test in its window decides, or None when there is none."""
    p: ConditionAbsentParams = criterion.typed
    if p.test_observation_valueset is None:
        return None, []
    vs = ctx.protocol.valueset(p.test_observation_valueset)
    positive = ctx.protocol.valueset(p.test_positive_valueset or "")
    negative = ctx.protocol.valueset(p.test_negative_valueset or "")
    within = f" within {p.window_days} days" if p.window_days is not None else ""
    needs = [
        DataRequirement(
            "Observation",
            vs.url,
            f"{criterion.title}: a final {vs.resource.get('title') or vs.id} result{within} "
            f"coded negative (ValueSet {negative.id})",
        )
    ]
    candidates = candidate_observations(
        ctx.record, ctx.protocol, vs, ctx.as_of, p.window_days, issues
    )
    verdict = newest_verdict(
        criterion.code,
        ctx.record,
        candidates,
        lambda d: _judge_test(criterion, ctx, (vs, positive, negative), d),
        needs=needs,
        issues=issues,
        what=vs.resource.get("title") or vs.id,
    )
    return verdict, needs


def _lines(items: list[tuple[Resource, str]]) -> str:
    return "; ".join(text for _, text in items)


def _refs(ctx: Context, items: list[tuple[Resource, str]]) -> list[SourceRef]:
    return [ctx.record.ref(r) for r, _ in items]


@rule(
    "condition_absent",
    reads=("Condition", "QuestionnaireResponse"),
    params=ConditionAbsentParams,
)
def condition_absent(criterion: CriterionDef, ctx: Context) -> CriterionResult:
    """Not met on the excluding Condition; met only on evidence of absence; else undetermined."""
    p: ConditionAbsentParams = criterion.typed
    vs = ctx.protocol.valueset(p.condition_valueset)
    found = _sort(criterion, ctx, vs)
    issues: list[Issue] = []
    if found.applies:
        return not_met(
            criterion.code,
            f"{p.condition} is recorded: {_lines(found.applies)}",
            _refs(ctx, found.applies),
        )
    test, test_needs = _test_verdict(criterion, ctx, issues)
    result = _absence(criterion, ctx, found, test, test_needs)
    if found.ignored and result.outcome is not Outcome.NOT_MET:
        result.reason += f"; not counted: {_lines(found.ignored)}"
        result.evidence.extend(r for r in _refs(ctx, found.ignored) if r not in result.evidence)
    result.issues[:0] = issues
    return result


def _absence(
    criterion: CriterionDef,
    ctx: Context,
    found: _Found,
    test: CriterionResult | None,
    test_needs: list[DataRequirement],
) -> CriterionResult:
    """Decide once the record shows no Condition that applies."""
    p: ConditionAbsentParams = criterion.typed
    if test is not None and test.outcome is not Outcome.MET:
        return test  # a positive test shows it; an unusable newest test leaves it open
    if found.possible:
        # A possible diagnosis is a question the record raises: a negative test or an
        # attestation does not silently answer it.
        needs = [
            DataRequirement(
                "Condition",
                ctx.protocol.valueset(p.condition_valueset).url,
                f"{p.condition}: a confirmed or refuted diagnosis",
            )
        ]
        return undetermined(
            criterion.code,
            f"{p.condition} may be recorded: {_lines(found.possible)}",
            _refs(ctx, found.possible) + (test.evidence if test is not None else []),
            needs,
        )
    if test is not None:
        return test
    needs = list(test_needs)
    if p.attestation_item is not None:
        lookup = lookup_attestation(ctx, p.attestation_item)
        if lookup.found:
            return decide_by_attestation(
                criterion, ctx, lookup, prefix=f"attestation that no {p.condition} applies: "
            )
        needs.append(attestation_requirement(ctx, p.attestation_item))
        missing = lookup.missing
    else:
        missing = ""
    if p.absence_in_record_clears:
        return met(
            criterion.code,
            f"no {p.condition} is recorded; the protocol accepts the absence in the record "
            "as evidence",
            [ctx.record.patient_ref],
        )
    vs = ctx.protocol.valueset(p.condition_valueset)
    reason = (
        f"no {p.condition} is recorded, but a missing diagnosis is not evidence that there is "
        "none: a negative test or the investigator's attestation would resolve it"
    )
    if missing:
        reason += f" ({missing})"
    if not needs:  # nothing the protocol names can show absence: only a diagnosis decides
        needs.append(DataRequirement("Condition", vs.url, f"{p.condition}: a recorded diagnosis"))
    return undetermined(criterion.code, reason, [], needs)
