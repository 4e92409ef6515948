"""Time since an event (``time_since_event``): days since a Procedure or Condition of a
ValueSet, read as intervals through ``service.clinical.timing``.

What counts as the event: a Procedure with status completed or in-progress (``unknown``:
it may have happened, so it is doubtful; any other status, e.g. not-done or
entered-in-error, is not counted); a Condition whose verificationStatus is not refuted or
entered-in-error (anything but confirmed, when recorded, is doubtful), whatever its
clinicalStatus (a resolved myocardial infarction still happened). Its time is onset /
performed (a partial date, an age or a Period cover every day they may mean); a Condition
with no onset happened on or before its recordedDate (any day up to it).

* ``at_least_days`` (inclusion, "≥ 100 days after allogeneic HSCT"): the newest event decides
  (with every event that cannot be ordered before it). Met when it is certainly at least N
  days before as-of (its latest possible day is on or before as-of - N); not met when a
  certain event is certainly more recent; undetermined when it may or may not be, and when
  no event is recorded.
* ``within_days`` as an exclusion ("MI, stroke or TIA within 12 weeks"): not met when a
  certain event is certainly in the window; undetermined when one may be; met only on
  evidence of absence, the semantics of ``condition_absent``: the investigator's attestation,
  or no event in the window when the protocol sets ``absence_in_record_clears`` (said in
  words). As an inclusion: met on a certain event in the window, not met when every recorded
  event is certainly before it, undetermined otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from service.clinical.model import (
    CriterionResult,
    DataRequirement,
    SourceRef,
    met,
    not_met,
    undetermined,
)
from service.clinical.rules import Context, rule
from service.clinical.rules.attestations import (
    attestation_requirement,
    decide_by_attestation,
    lookup_attestation,
)
from service.clinical.rules.diagnosis import code_label
from service.clinical.rules.params import TimeSinceEventParams
from service.clinical.timing import (
    Placement,
    When,
    clinical_time,
    element_time,
    not_followed,
    place,
)
from service.protocol import CriterionDef, ValueSet
from service.record import Resource, codings

_PROCEDURE_DONE = frozenset({"completed", "in-progress"})
_NEVER = frozenset({"refuted", "entered-in-error"})


@dataclass(frozen=True, slots=True)
class Event:
    """One recorded event, its time, how reasons name it, and why it is doubtful (if so)."""

    resource: Resource
    when: When
    line: str
    doubt: str | None = None


def _label(resource: Resource, vs: ValueSet) -> str:
    codes = [c for c in codings(resource.get("code")) if c in vs.codes]
    return code_label(codes[0], vs) if codes else vs.id


def _procedure(ctx: Context, proc: Resource, vs: ValueSet) -> tuple[Event | None, str | None]:
    """(event, None), or (None, why it is not counted)."""
    when = clinical_time(proc)
    line = f"{ctx.record.ref(proc).reference} {_label(proc, vs)} (dated {when.text}"
    status = proc.get("status")
    if status in _PROCEDURE_DONE:
        return Event(proc, when, f"{line}; {status})"), None
    if status == "unknown":
        return Event(proc, when, f"{line})", "status unknown"), None
    return None, f"{line}; status {status})"


def _event_time(cond: Resource, birth: object) -> When:
    """The onset; without one, any day up to the recorded date (an event is recorded on or
    after the day it happened, so recordedDate alone never places it inside a window)."""
    onset = element_time(cond, "onset[x]", birth)
    if onset is not None:
        return onset
    recorded = clinical_time(cond, birth)
    if recorded.unknown:
        return recorded
    return When(None, recorded.latest, f"on or before {recorded.text} (recorded; no onset)")


def _condition(ctx: Context, cond: Resource, vs: ValueSet) -> tuple[Event | None, str | None]:
    when = _event_time(cond, ctx.record.patient.get("birthDate"))
    line = f"{ctx.record.ref(cond).reference} {_label(cond, vs)} (dated {when.text}"
    verification = {c for _, c in codings(cond.get("verificationStatus"))}
    if verification & _NEVER:
        return None, f"{line}; {', '.join(sorted(verification))})"
    if cond.get("verificationStatus") is not None and "confirmed" not in verification:
        return Event(
            cond, when, f"{line})", f"verification status {', '.join(sorted(verification))}"
        ), None
    return Event(cond, when, f"{line})"), None


def _gather(criterion: CriterionDef, ctx: Context) -> tuple[list[Event], list[str]]:
    """Events of the ValueSets known on or before as-of, and lines for those not counted."""
    p: TimeSinceEventParams = criterion.typed
    events: list[Event] = []
    ignored: list[str] = []
    sources = (
        (p.procedure_valueset, ctx.record.procedures, _procedure),
        (p.condition_valueset, ctx.record.conditions, _condition),
    )
    for vs_id, resources, read in sources:
        if vs_id is None:
            continue
        vs = ctx.protocol.valueset(vs_id)
        for resource in resources:
            if not vs.matches(codings(resource.get("code"))):
                continue
            event, why = read(ctx, resource, vs)
            if event is not None and place(event.when, ctx.as_of, None) is Placement.AFTER:
                continue  # certainly after the evaluation date: not part of it
            if event is None:
                ignored.append(why or "")
            else:
                events.append(event)
    return events, ignored


def _needs(criterion: CriterionDef, ctx: Context, what: str) -> list[DataRequirement]:
    p: TimeSinceEventParams = criterion.typed
    found = []
    for rtype, vs_id in (("Procedure", p.procedure_valueset), ("Condition", p.condition_valueset)):
        if vs_id is not None:
            found.append(DataRequirement(rtype, ctx.protocol.valueset(vs_id).url, what))
    return found


def _refs(ctx: Context, events: list[Event]) -> list[SourceRef]:
    return list(dict.fromkeys(ctx.record.ref(e.resource) for e in events))


def _lines(events: list[Event]) -> str:
    return "; ".join(e.line + (f": {e.doubt}" if e.doubt else "") for e in events)


def _with_ignored(result: CriterionResult, ignored: list[str]) -> CriterionResult:
    if ignored:
        result.reason += f"; not counted: {'; '.join(ignored)}"
    return result


@rule(
    "time_since_event",
    reads=("Procedure", "Condition", "QuestionnaireResponse"),
    params=TimeSinceEventParams,
)
def time_since_event(criterion: CriterionDef, ctx: Context) -> CriterionResult:
    """Days since the event, against at_least_days or within_days (see the module)."""
    p: TimeSinceEventParams = criterion.typed
    events, ignored = _gather(criterion, ctx)
    if p.at_least_days is not None:
        return _with_ignored(_at_least(criterion, ctx, events, p.at_least_days), ignored)
    assert p.within_days is not None
    return _with_ignored(_within(criterion, ctx, events, p.within_days), ignored)


def _at_least(
    criterion: CriterionDef, ctx: Context, events: list[Event], days: int
) -> CriterionResult:
    p: TimeSinceEventParams = criterion.typed
    cutoff = ctx.as_of - timedelta(days=days)
    wanted = f"at least {days} days before {ctx.as_of} (on or before {cutoff})"
    needs = _needs(criterion, ctx, f"{criterion.title}: a dated {p.event}")
    if not events:
        return undetermined(criterion.code, f"no {p.event} is recorded", [], needs)
    newest = not_followed(events, lambda e: e.when)
    recent = [e for e in newest if e.when.earliest is not None and e.when.earliest > cutoff]
    if any(e.doubt is None for e in recent):
        certain = [e for e in recent if e.doubt is None]
        return not_met(
            criterion.code,
            f"the most recent {p.event} is not {wanted}: {_lines(certain)}",
            _refs(ctx, certain),
        )
    old = [e for e in newest if e.when.latest is not None and e.when.latest <= cutoff]
    if len(old) == len(newest) and all(e.doubt is None for e in old):
        since = min((ctx.as_of - e.when.latest).days for e in old if e.when.latest)
        return met(
            criterion.code,
            f"the most recent {p.event} is {wanted}: {_lines(old)} (at least {since} days)",
            _refs(ctx, old),
        )
    older = len(events) - len(newest)
    reason = f"the most recent {p.event} may or may not be {wanted}: {_lines(newest)}" + (
        f"; {older} older record(s) cannot decide in its place" if older else ""
    )
    return undetermined(criterion.code, reason, _refs(ctx, newest), needs)


def _within(
    criterion: CriterionDef, ctx: Context, events: list[Event], days: int
) -> CriterionResult:
    p: TimeSinceEventParams = criterion.typed
    start = ctx.as_of - timedelta(days=days)
    window = f"within {days} days before {ctx.as_of} (from {start})"
    applies: list[Event] = []
    possible: list[Event] = []
    before: list[Event] = []
    for event in events:
        placed = place(event.when, ctx.as_of, days)
        if placed is Placement.BEFORE:
            before.append(event)
        elif placed is Placement.INSIDE and event.doubt is None:
            applies.append(event)
        else:
            why = event.doubt or "its date may or may not be in the window"
            possible.append(Event(event.resource, event.when, event.line, why))
    needs = _needs(criterion, ctx, f"{criterion.title}: {p.event} dated {window}")
    exclusion = criterion.kind == "exclusion"
    if applies:
        text = f"{p.event} {window}: {_lines(applies)}"
        made = not_met if exclusion else met
        return made(criterion.code, text, _refs(ctx, applies))
    if possible:
        return undetermined(
            criterion.code,
            f"{p.event} may be {window}: {_lines(possible)}",
            _refs(ctx, possible),
            needs,
        )
    earlier = f"; earlier: {_lines(before)}" if before else ""
    if not exclusion:
        if before:
            return not_met(
                criterion.code,
                f"no {p.event} {window}; every recorded one is earlier: {_lines(before)}",
                _refs(ctx, before),
            )
        return undetermined(criterion.code, f"no {p.event} is recorded", [], needs)
    return _absence(criterion, ctx, window, earlier, needs, _refs(ctx, before))


def _absence(
    criterion: CriterionDef,
    ctx: Context,
    window: str,
    earlier: str,
    needs: list[DataRequirement],
    evidence: list[SourceRef],
) -> CriterionResult:
    """No event in the window is recorded: met only on evidence of absence."""
    p: TimeSinceEventParams = criterion.typed
    missing = ""
    if p.attestation_item is not None:
        lookup = lookup_attestation(ctx, p.attestation_item)
        if lookup.found:
            return decide_by_attestation(
                criterion,
                ctx,
                lookup,
                prefix=f"attestation that no {p.event} {window} applies: ",
                evidence=evidence,
            )
        needs = [*needs, attestation_requirement(ctx, p.attestation_item)]
        missing = f" ({lookup.missing})" if lookup.missing else ""
    if p.absence_in_record_clears:
        return met(
            criterion.code,
            f"no {p.event} {window} is recorded; the protocol accepts the absence in the record "
            f"as evidence{earlier}",
            [ctx.record.patient_ref, *evidence],
        )
    return undetermined(
        criterion.code,
        f"no {p.event} {window} is recorded, but a missing record is not evidence that there "
        f"was none: the investigator's attestation would resolve it{missing}{earlier}",
        evidence,
        needs,
    )
