"""Relapsed or refractory disease, from a dated timeline of disease events.

The timeline is built from ALL Conditions (a relapse or remission code at its onset; a
clinical status of relapse), disease-status Observations (remission / relapse / refractory
values) and treatment Procedures. The criterion is met by any one of: enough separate relapse
episodes, a short first remission, refractory disease, or a treatment given outside remission
that was followed by relapse/refractory status and no remission.

Only events dated on or before the evaluation date are ordered. A relapse-coded Condition
(C91.02) is placed at its onset only if a remission is documented before that onset: otherwise
the onset is likely the first diagnosis date, and the relapse is treated as undated. An
undated relapse is evidence of relapse (so "not met" is impossible) but, having no place on
the timeline, it can never make the criterion met; an undated remission blocks the paths that
need to know there was no remission at a time (short first remission, failed treatment).
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import date
from enum import IntEnum

from service.clinical.dates import effective_date, parse_date
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
from service.clinical.observations import candidate_observations
from service.clinical.rules import Context, rule
from service.clinical.rules.diagnosis import (
    code_label,
    condition_codes,
    first_match,
    onset_date,
    usable_conditions,
)
from service.protocol import Code, CriterionDef, ValueSet
from service.record import Resource, codings


class Kind(IntEnum):
    """Event kinds; the value orders events of the same day (a same-day remission comes
    after a relapse, so it never splits one relapse episode into two)."""

    DIAGNOSIS = 0
    RELAPSE = 1
    REFRACTORY = 2
    OTHER_STATUS = 3  # a disease status that is neither remission, relapse nor refractory
    REMISSION = 4
    TREATMENT = 5

    @property
    def words(self) -> str:
        return self.name.lower().replace("_", " ")


STATUS_KINDS = (Kind.RELAPSE, Kind.REFRACTORY, Kind.OTHER_STATUS, Kind.REMISSION)


@dataclass(frozen=True, slots=True)
class Event:
    day: date | None
    kind: Kind
    what: str  # the detail: code and source, for the reason
    resource: Resource
    from_observation: bool = False

    def sort_key(self) -> tuple[date, int]:
        assert self.day is not None
        return (self.day, int(self.kind))


@dataclass
class Timeline:
    dated: list[Event]
    undated: list[Event]
    has_diagnosis: bool

    def of(self, *kinds: Kind) -> list[Event]:
        return [e for e in self.dated if e.kind in kinds]

    def undated_of(self, *kinds: Kind) -> list[Event]:
        return [e for e in self.undated if e.kind in kinds]

    def text(self, limit: int = 20) -> str:
        items = [f"{e.day} {e.kind.words}" for e in self.dated]
        if len(items) > limit:
            items = [f"… {len(items) - limit} earlier event(s)", *items[-limit:]]
        items += [f"undated {e.kind.words} ({e.what})" for e in self.undated]
        return "; ".join(items) if items else "no dated disease events"


# -- calendar arithmetic ------------------------------------------------------------------


def add_months(day: date, months: int) -> date:
    """The same day of the month ``months`` later, clamped to the month's last day."""
    index = day.month - 1 + months
    year, month = day.year + index // 12, index % 12 + 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def whole_months(start: date, end: date) -> int:
    """Completed calendar months from ``start`` to ``end``, counted as ``add_months`` does."""
    months = (end.year - start.year) * 12 + end.month - start.month
    return months - 1 if add_months(start, months) > end else months


# -- building the timeline ----------------------------------------------------------------


def _condition_events(criterion: CriterionDef, ctx: Context, out: list[Event]) -> bool:
    """Add Condition events; return whether any ALL diagnosis is recorded."""
    p = criterion.params
    vs = ctx.protocol.valueset
    all_any = vs(p["all_condition_valueset"])
    relapse, remission = vs(p["relapse_condition_valueset"]), vs(p["remission_condition_valueset"])
    relapse_status = set(p["relapse_clinical_status"])
    has_diagnosis = False
    conditions, _ = usable_conditions(ctx)
    for condition in conditions:
        codes = condition_codes(condition, p.get("histology_extension"))
        hit = first_match(codes, all_any)
        if hit is None:
            continue
        onset = onset_date(condition)
        has_diagnosis = True
        ref = ctx.record.ref(condition).reference
        if rel := first_match(codes, relapse):
            kind, label = Kind.RELAPSE, code_label(rel.code, relapse)
        elif rem := first_match(codes, remission):
            kind, label = Kind.REMISSION, code_label(rem.code, remission)
        else:
            kind, label = Kind.DIAGNOSIS, code_label(hit.code, all_any)
        out.append(Event(onset, kind, f"{label}, {ref}", condition))
        status = {code for _, code in codings(condition.get("clinicalStatus"))} & relapse_status
        if status and kind is not Kind.RELAPSE:
            # The onset of a Condition is when the disease began, not when it relapsed: a
            # relapse known only from the clinical status has no date of its own.
            label = f"clinical status {', '.join(sorted(status))}, {ref}"
            out.append(Event(None, Kind.RELAPSE, label, condition))
    return has_diagnosis


def _classify(codes: list[Code], valuesets: list[tuple[Kind, ValueSet]]) -> tuple[Kind, str, bool]:
    """(kind, label, contradictory) of a disease-status value."""
    hits = {(kind, code_label(c, v)) for c in codes for kind, v in valuesets if c in v.codes}
    kinds = {k for k, _ in hits}
    if len(kinds) == 1:
        kind = kinds.pop()
        return kind, min(label for k, label in hits if k is kind), False
    if kinds:
        return (
            Kind.OTHER_STATUS,
            "contradictory values " + ", ".join(sorted(h for _, h in hits)),
            True,
        )
    if codes:
        return Kind.OTHER_STATUS, code_label(codes[0]), False
    return Kind.OTHER_STATUS, "no coded value", False


def _observation_events(
    criterion: CriterionDef, ctx: Context, out: list[Event], issues: list[Issue]
) -> None:
    p = criterion.params
    vs = ctx.protocol.valueset
    status_vs = vs(p["disease_status_observation_valueset"])
    valuesets = [
        (Kind.REFRACTORY, vs(p["refractory_value_valueset"])),
        (Kind.RELAPSE, vs(p["relapse_value_valueset"])),
        (Kind.REMISSION, vs(p["remission_value_valueset"])),
    ]

    def event(obs: Resource, day: date | None) -> Event:
        ref = ctx.record.ref(obs).reference
        codes = list(codings(obs.get("valueCodeableConcept")))
        kind, label, contradictory = _classify(codes, valuesets)
        if contradictory:
            issues.append(Issue(Severity.WARNING, "value", "contradictory disease status", ref))
        return Event(day, kind, f"{label}, {ref}", obs, from_observation=True)

    for dated in candidate_observations(
        ctx.record, ctx.protocol, status_vs, ctx.as_of, None, issues
    ):
        out.append(event(dated.resource, dated.day))
    # Undated results are unusable, but one that may show disease must stop a "not met".
    allowed = set(ctx.protocol.general["observation_statuses"])
    for obs in ctx.record.observations_in(status_vs):
        if obs.get("status") in allowed and effective_date(obs) is None:
            undated = event(obs, None)
            if undated.kind is not Kind.REMISSION:
                out.append(undated)


def _procedure_events(criterion: CriterionDef, ctx: Context, out: list[Event]) -> None:
    treatment = ctx.protocol.valueset(criterion.params["treatment_valueset"])
    allowed = set(ctx.protocol.general["procedure_statuses"])
    for proc in ctx.record.procedures:
        if proc.get("status") not in allowed:
            continue
        codes = [c for c in codings(proc.get("code")) if c in treatment.codes]
        if not codes:
            continue
        period = proc.get("performedPeriod")
        parsed = parse_date(
            proc.get("performedDateTime")
            or (period.get("start") if isinstance(period, dict) else None)
        )
        day = parsed.earliest if parsed and parsed.exact else None
        if day is not None and day > ctx.as_of:
            continue
        what = f"{code_label(codes[0], treatment)}, {ctx.record.ref(proc).reference}"
        out.append(Event(day, Kind.TREATMENT, what, proc))


def _place_condition_relapses(events: list[Event]) -> list[Event]:
    """A relapse-coded Condition is dated at its onset only when a remission is documented
    before that onset. Otherwise the onset may well be when the disease itself began
    (ICD-10-CM C91.02 codes the current phase; many systems keep the first diagnosis date as
    onset), so the relapse is kept as undated evidence rather than counted as an episode.
    """
    remissions = [e.day for e in events if e.kind is Kind.REMISSION and e.day is not None]
    placed: list[Event] = []
    for e in events:
        if (
            e.kind is Kind.RELAPSE
            and not e.from_observation
            and e.day is not None
            and not any(day < e.day for day in remissions)
        ):
            note = f"{e.what}; onset {e.day} is not after a documented remission"
            e = Event(None, e.kind, note, e.resource)
        placed.append(e)
    return placed


def build_timeline(criterion: CriterionDef, ctx: Context, issues: list[Issue]) -> Timeline:
    events: list[Event] = []
    has_diagnosis = _condition_events(criterion, ctx, events)
    _observation_events(criterion, ctx, events, issues)
    _procedure_events(criterion, ctx, events)
    events = _place_condition_relapses(events)
    dated = sorted((e for e in events if e.day is not None), key=Event.sort_key)
    undated = [e for e in events if e.day is None]
    return Timeline(dated, undated, has_diagnosis)


# -- the grounds for "met" ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ground:
    text: str
    events: tuple[Event, ...]


def _refractory(t: Timeline) -> Ground | None:
    found = t.of(Kind.REFRACTORY)
    if not found:
        return None
    first = found[0]
    return Ground(f"refractory disease on {first.day} ({first.what})", tuple(found))


def relapse_episodes(t: Timeline) -> tuple[list[list[Event]], list[Event]]:
    """(episodes, separating remissions): dated relapse events not separated by a documented
    remission are one episode. Undated relapses are left out: they cannot be placed."""
    episodes: list[list[Event]] = []
    between: list[Event] = []
    in_relapse = False
    for e in t.of(Kind.RELAPSE, Kind.REMISSION):
        if e.kind is Kind.RELAPSE:
            if not in_relapse:
                episodes.append([])
                in_relapse = True
            episodes[-1].append(e)
        else:
            if in_relapse:
                between.append(e)
            in_relapse = False
    return episodes, between


def _relapse_episodes(t: Timeline, minimum: int) -> Ground | None:
    episodes, between = relapse_episodes(t)
    if len(episodes) < minimum:
        return None
    starts = ", ".join(str(ep[0].day) for ep in episodes)
    used = [e for ep in episodes for e in ep] + [r for r in between if r.day < episodes[-1][0].day]
    return Ground(
        f"{len(episodes)} relapse episodes separated by remission (relapses on {starts}; "
        f"at least {minimum} needed)",
        tuple(used),
    )


def _short_first_remission(t: Timeline, months: int) -> Ground | None:
    """First documented remission → the first relapse after it, shorter than ``months``.

    Calendar arithmetic: the relapse must fall before the remission date plus ``months``
    calendar months (a day of the month that does not exist is clamped to the month's end).
    """
    if t.undated_of(Kind.REMISSION):
        return None  # an undated remission may be the real first one
    remissions = t.of(Kind.REMISSION)
    if not remissions:
        return None
    first = remissions[0]
    relapses = t.of(Kind.RELAPSE)
    if any(r.day <= first.day for r in relapses):
        return None  # a relapse before it: this is not the first complete remission
    if not relapses:
        return None
    relapse = relapses[0]
    limit = add_months(first.day, months)
    if relapse.day >= limit:
        return None
    return Ground(
        f"first remission on {first.day} ({first.what}) was followed by relapse on "
        f"{relapse.day} ({relapse.what}): {whole_months(first.day, relapse.day)} whole calendar "
        f"month(s), under {months} (a relapse before {limit} counts)",
        (first, relapse),
    )


def _failed_treatment(t: Timeline) -> Ground | None:
    """A treatment given outside remission, then relapse/refractory status and no remission.

    A treatment given in remission (consolidation, maintenance) is skipped: a relapse after it
    is a relapse, not a failure to respond.
    """
    if t.undated_of(Kind.REMISSION):
        return None
    statuses = t.of(*STATUS_KINDS)
    for treatment in t.of(Kind.TREATMENT):
        day = treatment.day
        before = [s for s in statuses if s.day <= day]
        state = before[-1] if before else None
        if state is not None and state.kind is Kind.REMISSION:
            continue
        if any(s.kind is Kind.REMISSION and s.day > day for s in statuses):
            continue
        after = [
            s
            for s in statuses
            if s.day > day and s.from_observation and s.kind in (Kind.RELAPSE, Kind.REFRACTORY)
        ]
        if not after:
            continue
        if state is None or state.kind is Kind.OTHER_STATUS:
            why = "no remission after treatment (primary refractory)"
        else:
            why = f"salvage after {state.kind.words} on {state.day} failed"
        return Ground(
            f"{why}: treatment on {day} ({treatment.what}), then {after[0].kind.words} on "
            f"{after[0].day} ({after[0].what}) and no remission since",
            (treatment, *after[:1], *([state] if state else [])),
        )
    return None


# -- the rule -------------------------------------------------------------------------------


def _refs(ctx: Context, events: list[Event] | tuple[Event, ...]) -> list[SourceRef]:
    return list(dict.fromkeys(ctx.record.ref(e.resource) for e in events))


@rule("relapsed_refractory", reads=("Condition", "Procedure"))
def relapsed_refractory(criterion: CriterionDef, ctx: Context) -> CriterionResult:
    p = criterion.params
    issues: list[Issue] = []
    t = build_timeline(criterion, ctx, issues)
    everything = [*t.dated, *t.undated]
    months = int(p["short_first_remission_months"])
    grounds = [
        g
        for g in (
            _refractory(t),
            _relapse_episodes(t, int(p["min_relapse_episodes"])),
            _short_first_remission(t, months),
            _failed_treatment(t),
        )
        if g is not None
    ]
    timeline = f"Timeline: {t.text()}"
    if grounds:
        used = [e for g in grounds for e in g.events]
        result = met(
            criterion.code,
            "; ".join(g.text for g in grounds) + f". {timeline}",
            _refs(ctx, [*used, *everything]),
        )
    else:
        result = _not_met_or_undetermined(criterion, ctx, t, months, timeline)
    result.issues.extend(issues)
    return result


def _not_met_or_undetermined(
    criterion: CriterionDef, ctx: Context, t: Timeline, months: int, timeline: str
) -> CriterionResult:
    p = criterion.params
    evidence = _refs(ctx, [*t.dated, *t.undated])
    relapse = t.of(Kind.RELAPSE) + t.undated_of(Kind.RELAPSE, Kind.REFRACTORY)
    remissions = t.of(Kind.REMISSION)
    any_remission = bool(remissions or t.undated_of(Kind.REMISSION))
    last_remission = remissions[-1].day if remissions else None
    unclear = [
        e for e in t.of(Kind.OTHER_STATUS) if last_remission is None or e.day > last_remission
    ] + t.undated_of(Kind.OTHER_STATUS)

    if t.has_diagnosis and any_remission and not relapse and not unclear:
        return not_met(
            criterion.code,
            "ALL diagnosis with documented remission and no relapse or refractory disease "
            f"recorded. {timeline}",
            evidence,
        )

    needs = [
        DataRequirement(
            "Observation",
            ctx.protocol.valueset(p["disease_status_observation_valueset"]).url,
            "dated disease-status assessments (remission, relapse, refractory) of the ALL",
        ),
        DataRequirement(
            "Procedure",
            ctx.protocol.valueset(p["treatment_valueset"]).url,
            "dated antileukemic treatment lines",
        ),
    ]
    if not t.has_diagnosis:
        needs.insert(
            0,
            DataRequirement(
                "Condition",
                ctx.protocol.valueset(p["all_condition_valueset"]).url,
                "the ALL diagnosis",
            ),
        )
    if relapse:
        dated = len(relapse_episodes(t)[0])
        undated = len(t.undated_of(Kind.RELAPSE, Kind.REFRACTORY))
        counted = f"{dated} dated relapse episode(s)" + (f", {undated} undated" if undated else "")
        why = (
            f"relapse is recorded ({counted}), but not: "
            f"{p['min_relapse_episodes']} relapse episodes separated by remission, a first "
            f"remission shorter than {months} months, refractory disease, or a treatment "
            "followed by relapse/refractory status without remission"
        )
    elif unclear:
        after = "after the last remission" if any_remission else "(no remission recorded)"
        shown = "; ".join(e.what for e in unclear[:3])
        why = f"the disease status {after} is neither remission, relapse nor refractory ({shown})"
    elif not any_remission and t.has_diagnosis:
        why = "no remission, relapse or refractory status is recorded"
    elif not t.has_diagnosis and not t.dated and not t.undated:
        why = "no ALL diagnosis, disease status or treatment found"
    else:
        why = "no ALL diagnosis is recorded with the disease-status data"
    return undetermined(criterion.code, f"{why}. {timeline}", evidence, needs)
