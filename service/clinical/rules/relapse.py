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

A disease-status Observation whose ``focus`` names another Condition of the patient is about
another disease and is not used. One whose focus cannot be tied to an ALL Condition is
"unplaced": like an undated event it can keep the criterion open but never decide it. A
remission recorded on the same day as a relapse never separates two relapse episodes: the
order within a day is not known.

Reasons name the disease and the treatment lines with the words of the criterion's parameters
(``disease``, ``treatment``), never with words of their own.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass, field
from datetime import date
from enum import IntEnum
from typing import Generic, TypeGuard, TypeVar

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
    onset_time,
    usable_conditions,
    with_article,
)
from service.clinical.rules.params import RelapsedRefractoryParams
from service.clinical.timing import When, clinical_start
from service.protocol import Code, CriterionDef, ValueSet
from service.record import PatientRecord, Resource, codings


class Kind(IntEnum):
    """Event kinds; the value orders events of the same day for display and for the
    treatment rule. The true order within a day is unknown, so ``relapse_episodes`` never
    lets a remission separate episodes when a relapse shares its day."""

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


Day = TypeVar("Day", bound=date | None, covariant=True)


@dataclass(frozen=True, slots=True)
class Event(Generic[Day]):
    """``Event[date]`` on the dated timeline; ``Event[date | None]`` before it is sorted."""

    day: Day
    kind: Kind
    what: str  # the detail: code and source, for the reason
    resource: Resource
    from_observation: bool = False

    def sort_key(self: Event[date]) -> tuple[date, int]:
        return (self.day, int(self.kind))


def _is_dated(event: Event[date | None]) -> TypeGuard[Event[date]]:
    return event.day is not None


@dataclass
class Timeline:
    dated: list[Event[date]]
    undated: list[Event]
    has_diagnosis: bool
    disease: str  # how reasons name the disease: the protocol's word, e.g. "ALL"
    unplaced: list[Event] = field(default_factory=list)  # focus not tied to a disease Condition

    def of(self, *kinds: Kind) -> list[Event[date]]:
        return [e for e in self.dated if e.kind in kinds]

    def undated_of(self, *kinds: Kind) -> list[Event]:
        return [e for e in self.undated if e.kind in kinds]

    def unplaced_of(self, *kinds: Kind) -> list[Event]:
        return [e for e in self.unplaced if e.kind in kinds]

    def everything(self) -> list[Event]:
        return [*self.dated, *self.undated, *self.unplaced]

    def same_day_relapse_and_remission(self) -> list[date]:
        """Days with both a relapse and a remission: their order is unknown."""
        relapses = {e.day for e in self.of(Kind.RELAPSE)}
        return sorted({e.day for e in self.of(Kind.REMISSION) if e.day in relapses})

    def text(self, limit: int = 20) -> str:
        items = [f"{e.day} {e.kind.words}" for e in self.dated]
        if len(items) > limit:
            items = [f"… {len(items) - limit} earlier event(s)", *items[-limit:]]
        items += [f"undated {e.kind.words} ({e.what})" for e in self.undated]
        items += [
            f"{e.day or 'undated'} {e.kind.words} not tied to the {self.disease} ({e.what})"
            for e in self.unplaced
        ]
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
        onset = onset_time(condition, ctx.record.patient.get("birthDate"))
        has_diagnosis = True
        ref = ctx.record.ref(condition).reference + _dated(onset, "onset")
        if rel := first_match(codes, relapse):
            kind, label = Kind.RELAPSE, code_label(rel.code, relapse)
        elif rem := first_match(codes, remission):
            kind, label = Kind.REMISSION, code_label(rem.code, remission)
        else:
            kind, label = Kind.DIAGNOSIS, code_label(hit.code, all_any)
        out.append(Event(onset.day if onset else None, kind, f"{label}, {ref}", condition))
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


@dataclass(frozen=True, slots=True)
class _Conditions:
    """This patient's usable Conditions (by identity): ALL ones and the others. A focus is
    followed through the record's reference index, so ``Condition/1``, an absolute URL on
    the same server or a Bundle's ``urn:uuid`` fullUrl all find the same Condition."""

    all: frozenset[int]
    other: frozenset[int]
    record: PatientRecord

    @classmethod
    def of(cls, criterion: CriterionDef, ctx: Context) -> _Conditions:
        p = criterion.params
        all_any = ctx.protocol.valueset(p["all_condition_valueset"])
        extension = p.get("histology_extension")
        usable = usable_conditions(ctx)[0]
        ours = frozenset(
            id(c) for c in usable if first_match(condition_codes(c, extension), all_any)
        )
        return cls(ours, frozenset(id(c) for c in usable) - ours, ctx.record)

    def about(self, obs: Resource) -> str:
        """What a disease status is about: 'all' (no focus, or only ALL Conditions), 'other'
        (only other Conditions of this patient) or 'unknown' (anything else)."""
        focus = obs.get("focus")
        if focus is None or focus == []:
            return "all"
        if not isinstance(focus, list):
            return "unknown"
        found = [self.record.resolve(f, obs) for f in focus]
        targets = {id(t) for t in found if t is not None}
        if None in found or not targets:
            return "unknown"
        if targets <= self.all:
            return "all"
        return "other" if targets <= self.other else "unknown"


def _focus_issue(obs: Resource, ctx: Context, about: str, disease: str) -> Issue:
    """Why a disease status about another or an unknown Condition is set aside."""
    ref = ctx.record.ref(obs).reference
    if about == "other":
        why = f"is about another Condition (focus), not the {disease}; not used"
    else:
        why = (
            f"has a focus that is not {with_article(disease)} Condition of this patient; "
            "not placed on the timeline"
        )
    return Issue(Severity.WARNING, "business-rule", f"disease status {why}", ref)


def _observation_events(
    criterion: CriterionDef,
    ctx: Context,
    out: list[Event],
    unplaced: list[Event],
    issues: list[Issue],
) -> None:
    p = criterion.params
    vs = ctx.protocol.valueset
    status_vs = vs(p["disease_status_observation_valueset"])
    valuesets = [
        (Kind.REFRACTORY, vs(p["refractory_value_valueset"])),
        (Kind.RELAPSE, vs(p["relapse_value_valueset"])),
        (Kind.REMISSION, vs(p["remission_value_valueset"])),
    ]

    def event(obs: Resource, when: When, part: Resource | None = None) -> Event:
        ref = ctx.record.ref(obs).reference + _dated(when, "")
        day = when.day
        codes = list(codings((obs if part is None else part).get("valueCodeableConcept")))
        kind, label, contradictory = _classify(codes, valuesets)
        if contradictory:
            issues.append(Issue(Severity.WARNING, "value", "contradictory disease status", ref))
        return Event(day, kind, f"{label}, {ref}", obs, from_observation=True)

    conditions = _Conditions.of(criterion, ctx)

    def place(obs: Resource, when: When, part: Resource | None = None) -> None:
        about = conditions.about(obs)
        if about != "all":
            issues.append(_focus_issue(obs, ctx, about, p["disease"]))
            if about == "unknown":
                unplaced.append(event(obs, when, part))
            return
        e = event(obs, when, part)
        # A result with no time at all is unusable, but one that may show disease must stop
        # a "not met", and a remission must stop the paths that need "no remission since"
        # (unplaced: it counts as no documented remission). A partial date is undated.
        if not when.unknown or e.kind is not Kind.REMISSION:
            out.append(e)
        else:
            unplaced.append(e)

    # Every result not certainly after the evaluation date: a partial date is undated here.
    for dated in candidate_observations(
        ctx.record, ctx.protocol, status_vs, ctx.as_of, None, issues
    ):
        if dated.context is not None:  # evidence only (a non-exact site mapping)
            unplaced.append(event(dated.resource, dated.when, dated.part))
            continue
        place(dated.resource, dated.when, dated.part)


def _procedure_events(criterion: CriterionDef, ctx: Context, out: list[Event]) -> None:
    treatment = ctx.protocol.valueset(criterion.params["treatment_valueset"])
    allowed = set(ctx.protocol.general["procedure_statuses"])
    for proc in ctx.record.procedures:
        if proc.get("status") not in allowed:
            continue
        codes = [c for c in codings(proc.get("code")) if c in treatment.codes]
        if not codes:
            continue
        when = clinical_start(proc)  # a treatment line is placed where it began
        if when.earliest is not None and when.earliest > ctx.as_of:
            continue  # certainly after the evaluation date
        ref = ctx.record.ref(proc).reference + _dated(when, "")
        what = f"{code_label(codes[0], treatment)}, {ref}"
        # A treatment whose start day is not known (a partial date) is undated: the
        # failed-treatment path, which needs its order, never uses it.
        out.append(Event(when.day, Kind.TREATMENT, what, proc))


def _dated(when: When | None, label: str) -> str:
    """' (onset 2026-11)' for a time that is known but not to the day; '' otherwise."""
    if when is None or when.exact or when.unknown:
        return ""
    return f" ({label + ' ' if label else ''}dated {when.text})"


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
    unplaced: list[Event] = []
    has_diagnosis = _condition_events(criterion, ctx, events)
    _observation_events(criterion, ctx, events, unplaced, issues)
    _procedure_events(criterion, ctx, events)
    events = _place_condition_relapses(events)
    dated = sorted(filter(_is_dated, events), key=Event.sort_key)
    undated = [e for e in events if e.day is None]
    return Timeline(dated, undated, has_diagnosis, criterion.params["disease"], unplaced)


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


def relapse_episodes(t: Timeline) -> tuple[list[list[Event[date]]], list[Event[date]]]:
    """(episodes, separating remissions): dated relapse events not separated by a documented
    remission are one episode. Undated relapses are left out: they cannot be placed. A
    remission on the same day as a relapse separates nothing: which came first is unknown."""
    episodes: list[list[Event[date]]] = []
    between: list[Event[date]] = []
    in_relapse = False
    ambiguous = set(t.same_day_relapse_and_remission())
    for e in t.of(Kind.RELAPSE, Kind.REMISSION):
        if e.kind is Kind.REMISSION and e.day in ambiguous:
            continue
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
    if t.undated_of(Kind.REMISSION) or t.unplaced_of(Kind.REMISSION):
        return None  # an undated or unplaced remission may be the real first one
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
    if t.undated_of(Kind.REMISSION) or t.unplaced_of(Kind.REMISSION):
        return None  # it may be a remission after the treatment
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


@rule("relapsed_refractory", reads=("Condition", "Procedure"), params=RelapsedRefractoryParams)
def relapsed_refractory(criterion: CriterionDef, ctx: Context) -> CriterionResult:
    p = criterion.params
    issues: list[Issue] = []
    t = build_timeline(criterion, ctx, issues)
    everything = t.everything()
    for day in t.same_day_relapse_and_remission():
        issues.append(
            Issue(
                Severity.WARNING,
                "business-rule",
                f"relapse and remission both recorded on {day}: their order is unknown, so the "
                "remission does not separate relapse episodes",
            )
        )
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


def _relapse_count(t: Timeline) -> str:
    """'2 dated relapse episode(s), 1 undated', with what kept the count down."""
    counted = f"{len(relapse_episodes(t)[0])} dated relapse episode(s)"
    undated = len(t.undated_of(Kind.RELAPSE, Kind.REFRACTORY))
    unplaced = len(t.unplaced_of(Kind.RELAPSE, Kind.REFRACTORY))
    counted += f", {undated} undated" if undated else ""
    counted += f", {unplaced} not tied to the {t.disease}" if unplaced else ""
    same_day = t.same_day_relapse_and_remission()
    if same_day:
        days = ", ".join(str(d) for d in same_day)
        counted += f"; a remission on the day of a relapse ({days}) separates no episodes"
    return counted


def _not_met_or_undetermined(
    criterion: CriterionDef, ctx: Context, t: Timeline, months: int, timeline: str
) -> CriterionResult:
    p = criterion.params
    disease = p["disease"]
    evidence = _refs(ctx, t.everything())
    relapse = (
        t.of(Kind.RELAPSE)
        + t.undated_of(Kind.RELAPSE, Kind.REFRACTORY)
        + t.unplaced_of(Kind.RELAPSE, Kind.REFRACTORY)
    )
    remissions = t.of(Kind.REMISSION)
    any_remission = bool(remissions or t.undated_of(Kind.REMISSION))
    last_remission = remissions[-1].day if remissions else None
    unclear = (
        [e for e in t.of(Kind.OTHER_STATUS) if last_remission is None or e.day > last_remission]
        + t.undated_of(Kind.OTHER_STATUS)
        + t.unplaced_of(Kind.OTHER_STATUS)
    )

    if t.has_diagnosis and any_remission and not relapse and not unclear:
        return not_met(
            criterion.code,
            f"{disease} diagnosis with documented remission and no relapse or refractory "
            f"disease recorded. {timeline}",
            evidence,
        )

    needs = [
        DataRequirement(
            "Observation",
            ctx.protocol.valueset(p["disease_status_observation_valueset"]).url,
            f"dated disease-status assessments (remission, relapse, refractory) of the {disease}",
        ),
        DataRequirement(
            "Procedure",
            ctx.protocol.valueset(p["treatment_valueset"]).url,
            f"dated {p['treatment']} lines",
        ),
    ]
    if not t.has_diagnosis:
        needs.insert(
            0,
            DataRequirement(
                "Condition",
                ctx.protocol.valueset(p["all_condition_valueset"]).url,
                f"the {disease} diagnosis",
            ),
        )
    if relapse:
        counted = _relapse_count(t)
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
        why = f"no {disease} diagnosis, disease status or treatment found"
    else:
        why = f"no {disease} diagnosis is recorded with the disease-status data"
    return undetermined(criterion.code, f"{why}. {timeline}", evidence, needs)
