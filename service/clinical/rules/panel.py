"""A panel criterion (organ function, blood counts) combines its member criteria."""

from __future__ import annotations

from service.clinical.model import CriterionResult, Outcome
from service.clinical.rules import Context, rule
from service.protocol import CriterionDef


@rule("panel")
def panel(criterion: CriterionDef, ctx: Context) -> CriterionResult:
    """Met when every member is met, not met when any is not met, else undetermined."""
    members = [ctx.results[code] for code in criterion.members]
    outcomes = [m.outcome for m in members]
    if Outcome.NOT_MET in outcomes:
        outcome = Outcome.NOT_MET
        failing = [m.code for m in members if m.outcome is Outcome.NOT_MET]
        reason = "not met: " + ", ".join(failing)
    elif all(o is Outcome.MET for o in outcomes):
        outcome = Outcome.MET
        reason = "all members met"
    else:
        outcome = Outcome.UNDETERMINED
        open_ = [m.code for m in members if m.outcome is Outcome.UNDETERMINED]
        reason = "undetermined: " + ", ".join(open_)
    return CriterionResult(criterion.code, outcome, reason, members=members)
