"""Medication criteria: washout, required therapy and distinct agents.

Exposures come from ``service.clinical.medications`` (what counts, and when). The tri-state
follows the exclusion rule (``condition_absent``): the record showing an exposure decides
against a washout, but a record that shows none proves nothing (charts are incomplete)
unless the protocol opts in (``absence_in_record_clears``, said in the reason) or the
investigator attests. An exposure that may fall in the window (undated, a partial date, an
order whose end is not recorded, a status that does not say it was given) is undetermined.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Literal

from service.clinical.medications import Exposure, agent_of, exposures, in_valueset
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
from service.clinical.rules.params import (
    DistinctAgentsParams,
    RequiredTherapyParams,
    WashoutParams,
)
from service.protocol import CriterionDef, ValueSet
from service.resource_kinds import MEDICATION_TYPES

Place = Literal["later", "before", "inside", "maybe"]


def _place(item: Exposure, as_of: date, start: date | None) -> Place:
    """Where an exposure falls against [start, as_of] (``start`` None: all history).

    "inside" only when the record makes it certain: it began by ``as_of`` and its known end
    (or its known start, or being a current order) is not before ``start``. An open end may
    still be running, so it is never "before".
    """
    begin, end = item.start, item.end
    if begin.earliest is not None and begin.earliest > as_of:
        return "later"
    last = end.latest if end is not None else None
    if start is not None and last is not None and last < start:
        return "before"
    if begin.latest is None or begin.latest > as_of:
        return "maybe"
    if start is None or item.current:
        return "inside"
    if (end is not None and end.earliest is not None and end.earliest >= start) or (
        begin.earliest is not None and begin.earliest >= start
    ):
        return "inside"
    return "maybe"


def _line(ctx: Context, item: Exposure, vs: ValueSet) -> str:
    ref = ctx.record.ref(item.resource).reference
    codes = in_valueset(item, vs)
    what = code_label(codes[0], vs) if codes else f"unknown agent ({item.agent_note})"
    return f"{ref} {what}, {item.how}, {item.text()}"


def _refs(ctx: Context, items: list[Exposure]) -> list[SourceRef]:
    return [ctx.record.ref(i.resource) for i in items]


def _lines(ctx: Context, items: list[Exposure], vs: ValueSet) -> str:
    return "; ".join(_line(ctx, i, vs) for i in items)


def _need(vs: ValueSet, text: str) -> DataRequirement:
    return DataRequirement("MedicationStatement", vs.url, text)


@dataclass(slots=True)
class _Sorted:
    shows: list[Exposure]
    possible: list[Exposure]
    cleared: list[Exposure]
    ignored: list[Exposure]


def _sort(ctx: Context, vs: ValueSet, start: date | None) -> _Sorted:
    """The record's exposures to the ValueSet's agents (and to unknown agents) by placement."""
    found = _Sorted([], [], [], [])
    for item in exposures(ctx.record.medications, ctx.record.resolve):
        unknown = not item.codes
        if not in_valueset(item, vs) and not unknown:
            continue  # another medication
        if not item.counts:
            if not unknown:
                found.ignored.append(item)
            continue
        where = _place(item, ctx.as_of, start)
        if where == "later":
            continue
        if where == "before":
            if not unknown:
                found.cleared.append(item)
        elif where == "inside" and item.certain and not unknown:
            found.shows.append(item)
        else:
            found.possible.append(item)
    return found


def _not_counted(ctx: Context, vs: ValueSet, result: CriterionResult, found: _Sorted) -> None:
    """Name what was read and set aside, so a reviewer sees why it did not decide."""
    aside = found.cleared + found.ignored
    if aside:
        result.reason += f"; not counted: {_lines(ctx, aside, vs)}"
        result.evidence.extend(r for r in _refs(ctx, aside) if r not in result.evidence)


@rule("washout", reads=(*MEDICATION_TYPES, "QuestionnaireResponse"), params=WashoutParams)
def washout(criterion: CriterionDef, ctx: Context) -> CriterionResult:
    """Not met on an exposure in the window; met only on evidence of none; else undetermined."""
    p: WashoutParams = criterion.typed
    vs = ctx.protocol.valueset(p.medication_valueset)
    start = ctx.as_of - timedelta(days=p.within_days)
    found = _sort(ctx, vs, start)
    window = f"within {p.within_days} days before {ctx.as_of} (from {start})"
    if found.shows:
        return not_met(
            criterion.code,
            f"{p.medication} given {window}: {_lines(ctx, found.shows, vs)}",
            _refs(ctx, found.shows),
        )
    if found.possible:
        result = undetermined(
            criterion.code,
            f"{p.medication} may have been given {window}: {_lines(ctx, found.possible, vs)}",
            _refs(ctx, found.possible),
            [_need(vs, f"{p.medication}: the dates (start and end) and status of these records")],
        )
    else:
        result = _absence(criterion, ctx, vs, window)
    _not_counted(ctx, vs, result, found)
    return result


def _absence(criterion: CriterionDef, ctx: Context, vs: ValueSet, window: str) -> CriterionResult:
    """No exposure in the window is recorded: evidence only by attestation or opt-in."""
    p: WashoutParams = criterion.typed
    needs: list[DataRequirement] = []
    missing = ""
    if p.attestation_item is not None:
        lookup = lookup_attestation(ctx, p.attestation_item)
        if lookup.found:
            return decide_by_attestation(
                criterion, ctx, lookup, prefix=f"attestation that no {p.medication} was given: "
            )
        needs.append(attestation_requirement(ctx, p.attestation_item))
        missing = lookup.missing
    if p.absence_in_record_clears:
        return met(
            criterion.code,
            f"no {p.medication} is recorded {window}; the protocol accepts the absence in the "
            "record as evidence",
            [ctx.record.patient_ref],
        )
    reason = (
        f"no {p.medication} is recorded {window}, but a missing record is not evidence that "
        "none was given: the investigator's attestation would resolve it"
    )
    if missing:
        reason += f" ({missing})"
    if not needs:
        needs.append(_need(vs, f"{p.medication}: a complete medication history"))
    return undetermined(criterion.code, reason, [], needs)


# -- required therapy ---------------------------------------------------------------------------

Span = tuple[date, date, Exposure]


def _sure_span(item: Exposure, as_of: date) -> Span | None:
    """The days the record makes certain the patient was on it (None: its start is unknown).
    A current order runs to ``as_of`` unless it records an end; otherwise its known end, or
    only its start day when the end is not recorded."""
    begin = item.start.latest
    if begin is None or begin > as_of:
        return None
    if item.end is not None and item.end.earliest is not None:
        end = item.end.earliest
    else:
        end = as_of if item.current else begin
    return begin, min(max(end, begin), as_of), item


def _open_span(item: Exposure, as_of: date) -> Span | None:
    """The most the record allows: earliest start, latest end (open: up to ``as_of``)."""
    begin = item.start.earliest or date.min
    if begin > as_of:
        return None
    end = item.end.latest if item.end is not None and item.end.latest else as_of
    return begin, min(max(end, begin), as_of), item


def _run(spans: list[Span], as_of: date, gap: int) -> tuple[date, date, list[Exposure]] | None:
    """The run of spans (gaps of at most ``gap`` days between them) that reaches ``as_of``
    (within ``gap`` days), or None."""
    run: tuple[date, date, list[Exposure]] | None = None
    for begin, end, item in sorted(spans, key=lambda s: s[0]):
        if run is not None and (begin - run[1]).days - 1 <= gap:
            run = (run[0], max(run[1], end), [*run[2], item])
        else:
            run = (begin, end, [item])
    if run is None or (as_of - run[1]).days > gap:
        return None
    return run


@rule("required_therapy", reads=MEDICATION_TYPES, params=RequiredTherapyParams)
def required_therapy(criterion: CriterionDef, ctx: Context) -> CriterionResult:
    """Met when the record proves N continuous days up to as-of; not met when even the widest
    reading of the recorded exposures cannot; else undetermined."""
    p: RequiredTherapyParams = criterion.typed
    vs = ctx.protocol.valueset(p.medication_valueset)
    since = ctx.as_of - timedelta(days=p.min_days)
    found = _sort(ctx, vs, None)
    known = [i for i in found.shows + found.possible if in_valueset(i, vs)]
    want = f"{p.medication} continuously for {p.min_days} days up to {ctx.as_of} (from {since})"
    sure = [s for i in known if i.certain if (s := _sure_span(i, ctx.as_of)) is not None]
    run = _run(sure, ctx.as_of, p.max_gap_days)
    if run is not None and run[0] <= since:
        result = met(
            criterion.code,
            f"{want}: taken from {run[0]} to {run[1]}: {_lines(ctx, run[2], vs)}",
            _refs(ctx, run[2]),
        )
        _not_counted(ctx, vs, result, found)
        return result
    widest = [s for i in found.possible + found.shows if (s := _open_span(i, ctx.as_of))]
    wide = _run(widest, ctx.as_of, p.max_gap_days)
    if known and (wide is None or wide[0] > since):
        gap = f" (gaps of more than {p.max_gap_days} days break it)" if p.max_gap_days else ""
        result = not_met(
            criterion.code,
            f"{want} is not what the record shows{gap}: {_lines(ctx, known, vs)}",
            _refs(ctx, known),
        )
        _not_counted(ctx, vs, result, found)
        return result
    need = _need(vs, f"{p.medication}: the start date and a current order or statement")
    if not known:
        reason = f"{want}: no {p.medication} is recorded"
        if found.possible:
            reason += f"; records of unknown agents: {_lines(ctx, found.possible, vs)}"
        result = undetermined(criterion.code, reason, _refs(ctx, found.possible), [need])
    else:
        result = undetermined(
            criterion.code,
            f"{want}: the start or the currency of the therapy is uncertain: "
            f"{_lines(ctx, found.shows + found.possible, vs)}",
            _refs(ctx, found.shows + found.possible),
            [need],
        )
    _not_counted(ctx, vs, result, found)
    return result


# -- distinct agents ----------------------------------------------------------------------------


@rule("distinct_agents", reads=MEDICATION_TYPES, params=DistinctAgentsParams)
def distinct_agents(criterion: CriterionDef, ctx: Context) -> CriterionResult:
    """At least K different agents: met on K certain ones; undetermined while the uncertain
    ones could make up the difference, or when the record may be incomplete."""
    p: DistinctAgentsParams = criterion.typed
    vs = ctx.protocol.valueset(p.medication_valueset)
    start = ctx.as_of - timedelta(days=p.within_days) if p.within_days is not None else None
    found = _sort(ctx, vs, start)
    sure: dict[str, list[Exposure]] = {}
    for item in found.shows:
        sure.setdefault(agent_of(in_valueset(item, vs)[0], vs), []).append(item)
    maybe: set[str] = set()
    for n, item in enumerate(found.possible):
        codes = in_valueset(item, vs)
        maybe.add(agent_of(codes[0], vs) if codes else f"unknown agent {n}")
    maybe -= set(sure)
    within = f" within {p.within_days} days" if p.within_days is not None else ""
    want = f"at least {p.min_agents} different {p.medication}{within}"
    agents = ", ".join(sorted(sure)) or "none"
    evidence = [r for items in sure.values() for r in _refs(ctx, items)]
    if len(sure) >= p.min_agents:
        shown = [i for items in sure.values() for i in items]
        result = met(
            criterion.code,
            f"{want}: {len(sure)} recorded ({agents}): {_lines(ctx, shown, vs)}",
            evidence,
        )
    elif len(sure) + len(maybe) >= p.min_agents:
        result = undetermined(
            criterion.code,
            f"{want}: {len(sure)} certain ({agents}); these may add more: "
            f"{_lines(ctx, found.possible, vs)}",
            evidence + _refs(ctx, found.possible),
            [_need(vs, f"{p.medication}: the status, date and agent of these records")],
        )
    elif p.absence_in_record_clears:
        result = not_met(
            criterion.code,
            f"{want}: only {len(sure)} recorded ({agents}); the protocol takes the record as "
            "complete",
            evidence or [ctx.record.patient_ref],
        )
    else:
        result = undetermined(
            criterion.code,
            f"{want}: only {len(sure)} recorded ({agents}), but a missing record is not "
            "evidence that none other was given",
            evidence,
            [_need(vs, f"{p.medication}: a complete treatment history")],
        )
    _not_counted(ctx, vs, result, found)
    return result
