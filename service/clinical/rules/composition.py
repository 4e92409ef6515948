"""One-of, all-of and conditional criteria, combined from member criteria.

Real protocols define a criterion by alternatives ("relapsed or refractory" has four ways)
or apply one only when a finding holds ("if Ph+: TKI intolerance or two TKIs"). The members
are criteria of their own, evaluated once before the criterion that combines them and nested
under it in every output. The tri-state logic is exact: an undetermined member never counts
as met or as not met, so a stale or unreadable result cannot decide through a combination.
"""

from __future__ import annotations

from service.clinical.model import CriterionResult, Outcome
from service.clinical.rules import Context, rule
from service.clinical.rules.params import ConditionalParams, NoParams
from service.protocol import CriterionDef


def _named(ctx: Context, results: list[CriterionResult]) -> str:
    """'I4a (Primary refractory), I4b (...)': members by code and title."""
    return ", ".join(f"{r.code} ({ctx.protocol.criterion_display(r.code)})" for r in results)


def _members(criterion: CriterionDef, ctx: Context) -> list[CriterionResult]:
    return [ctx.results[code] for code in criterion.members]


def _of(results: list[CriterionResult], outcome: Outcome) -> list[CriterionResult]:
    return [r for r in results if r.outcome is outcome]


def _evidence(results: list[CriterionResult]):
    return list(dict.fromkeys(ref for r in results for ref in r.evidence))


def _needs(open_: list[CriterionResult]):
    """What would resolve the open members (only asked for when the result is open)."""
    return list(dict.fromkeys(n for r in open_ for n in r.needs))


@rule("any_of", params=NoParams)
def any_of(criterion: CriterionDef, ctx: Context) -> CriterionResult:
    """Met when one member is met; not met only when every member is not met."""
    members = _members(criterion, ctx)
    met_ = _of(members, Outcome.MET)
    open_ = _of(members, Outcome.UNDETERMINED)
    if met_:
        outcome, reason = Outcome.MET, f"met through {_named(ctx, met_)}"
        deciding, open_ = met_, []
    elif not open_:
        outcome, reason = Outcome.NOT_MET, f"no alternative is met: {_named(ctx, members)}"
        deciding = members
    else:
        outcome = Outcome.UNDETERMINED
        reason = f"none met; still open: {_named(ctx, open_)}"
        failed = _of(members, Outcome.NOT_MET)
        if failed:
            reason += f"; not met: {_named(ctx, failed)}"
        deciding = open_
    return CriterionResult(
        criterion.code, outcome, reason, _evidence(deciding), members=members, needs=_needs(open_)
    )


@rule("all_of", params=NoParams)
def all_of(criterion: CriterionDef, ctx: Context) -> CriterionResult:
    """Met when every member is met; not met when any member is not met."""
    members = _members(criterion, ctx)
    failed = _of(members, Outcome.NOT_MET)
    open_ = _of(members, Outcome.UNDETERMINED)
    if failed:
        outcome, reason, deciding = Outcome.NOT_MET, f"not met: {_named(ctx, failed)}", failed
        open_ = []
    elif not open_:
        outcome, reason = Outcome.MET, f"every part is met: {_named(ctx, members)}"
        deciding = members
    else:
        outcome, reason, deciding = (
            Outcome.UNDETERMINED,
            f"still open: {_named(ctx, open_)}",
            open_,
        )
    return CriterionResult(
        criterion.code, outcome, reason, _evidence(deciding), members=members, needs=_needs(open_)
    )


@rule("conditional", params=ConditionalParams)
def conditional(criterion: CriterionDef, ctx: Context) -> CriterionResult:
    """The ``then`` criterion decides when ``applies_when`` is met; met when it is not met.

    An undetermined condition leaves the criterion undetermined, whatever ``then`` says: the
    requirement may or may not apply.
    """
    p = criterion.params
    condition = ctx.results[p["applies_when"]]
    then = ctx.results[p["then"]]
    members = [condition, then]
    when = _named(ctx, [condition])
    if condition.outcome is Outcome.NOT_MET:
        reason = f"does not apply: {when} is not met"
        return CriterionResult(
            criterion.code, Outcome.MET, reason, list(condition.evidence), members=members
        )
    if condition.outcome is Outcome.UNDETERMINED:
        reason = f"may apply: {when} is undetermined, so {_named(ctx, [then])} may be required"
        return CriterionResult(
            criterion.code,
            Outcome.UNDETERMINED,
            reason,
            list(condition.evidence),
            members=members,
            needs=list(condition.needs),
        )
    word = {Outcome.MET: "met", Outcome.NOT_MET: "not met", Outcome.UNDETERMINED: "undetermined"}
    reason = f"applies ({when} is met); {_named(ctx, [then])} is {word[then.outcome]}"
    return CriterionResult(
        criterion.code,
        then.outcome,
        reason,
        _evidence([condition, then]),
        members=members,
        needs=list(then.needs),
    )
