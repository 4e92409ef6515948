"""Choosing the result that decides: status, date, window, ordering and comparator logic.

The MOST RECENT result in the window decides, even when it is not usable. Earlier versions
let the most recent *usable* result decide; that was changed on purpose: a newer result the
rule cannot read (unknown unit, implausible value, no value, ``dataAbsentReason``) may be the
one that fails, so letting an older result decide in its place would be a guess.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import date, datetime
from typing import Any

from service.clinical import method_context
from service.clinical.model import (
    CriterionResult,
    DataRequirement,
    Issue,
    Severity,
    SourceRef,
    undetermined,
)
from service.clinical.timing import (
    Placement,
    When,
    certainly_before,
    clinical_time,
    newest_first_key,
    not_followed,
    place,
    placement_why,
)
from service.protocol import Protocol, ValueSet
from service.record import PatientRecord, Resource, codings


@dataclass(frozen=True, slots=True)
class Dated:
    """One result: an Observation, or one component of it (a panel sent as one resource).

    ``resource`` is always the Observation (its status and time, and what evidence names);
    ``item`` is where the value is read: the component when there is one, else the
    Observation. ``context`` is set when only a code broader than the criterion matched:
    such a result is listed as evidence but never decides. ``partly`` is set (why, in words)
    when its time may fall outside the window: it blocks older results but cannot decide.
    """

    when: When
    resource: Resource
    part: Resource | None = None  # the component that carries the value, if any
    context: ValueSet | None = None  # the evidence-only ValueSet that matched, if any
    method: str | None = None  # the method that made a broader code specific, in words
    partly: str | None = None  # why the time may be outside the window, if it may

    @property
    def item(self) -> Resource:
        return self.resource if self.part is None else self.part

    @property
    def day(self) -> date | None:
        """The result's day when it is one known day (a partial date has none)."""
        return self.when.day

    @property
    def moment(self) -> datetime | None:
        """Aware time, only when the source gives a time and a zone."""
        return self.when.moment

    @property
    def shown(self) -> str:
        """The time as recorded, for reasons: '2026-11-20', '2026-11'."""
        return self.when.text


@dataclass(frozen=True, slots=True)
class Broader:
    """Codes broader than a criterion's meaning: listed as evidence, never deciding.

    ``method``: an Observation whose ``method`` is coded in this ValueSet is specific enough
    after all (e.g. a method-agnostic LVEF code measured by echocardiography). ``report`` /
    ``procedure``: so is one listed in ``DiagnosticReport.result`` of a report coded in
    ``report``, or ``partOf`` a Procedure coded in ``procedure`` (``method_context``).
    """

    valueset: ValueSet
    method: ValueSet | None = None
    report: ValueSet | None = None
    procedure: ValueSet | None = None

    def method_of(self, obs: Resource, record: PatientRecord | None = None) -> str | None:
        """The qualifying method of ``obs`` in words, or None when it has none.

        A coded ``Observation.method`` outside the ValueSet, or ``partOf`` another kind of
        Procedure, contradicts any report: None.
        """
        if self.method is None:
            return None
        if obs.get("method") is not None:
            for code in codings(obs.get("method")):
                if code in self.method.codes:
                    return self.method.display(code) or code[1]
            return None
        if record is None:
            return None
        said = None
        if self.procedure is not None:
            said = method_context.from_procedure(obs, record, self.procedure)
            if said is False:
                return None
        if said is None and self.report is not None:
            said = method_context.from_report(obs, record, self.report)
        return said or None


def context_valueset(protocol: Protocol, params: dict[str, Any], key: str) -> Broader | None:
    """The evidence-only codes beside ``params[key]``, if the protocol gives them.

    ``observation_valueset`` pairs with ``context_observation_valueset`` (and
    ``context_observation_method_valueset``), ``ecog_observation_valueset`` with
    ``ecog_context_observation_valueset``, and so on.
    """
    context_key = key.replace("observation_valueset", "context_observation_valueset")
    vs_id = params.get(context_key)
    if not vs_id:
        return None
    linked = [
        params.get(context_key.replace("_valueset", f"_{kind}_valueset"))
        for kind in ("method", "report", "procedure")
    ]
    method, report, procedure = (protocol.valueset(v) if v else None for v in linked)
    return Broader(protocol.valueset(vs_id), method, report, procedure)


def origin(record: PatientRecord, dated: Dated) -> str:
    """Where a result came from, when that is not simply its Observation's code: a component
    (" (a component of Observation/cbc-1)") or a method that made a broader code count."""
    said = ""
    if dated.part is not None:
        said += f" (a component of {record.ref(dated.resource).reference})"
    if dated.method:
        said += f" (method {dated.method})"
    return said


def result_parts(obs: Resource, valueset: ValueSet) -> list[Resource | None]:
    """Where ``obs`` reports a result of ``valueset``: itself (None) and/or its components.

    An Observation without components was indexed by its own code, so the common case
    costs one dictionary lookup.
    """
    components = obs.get("component")
    if not components:
        return [None]
    found: list[Resource | None] = []
    if valueset.matches(codings(obs.get("code"))):
        found.append(None)
    if isinstance(components, list):
        for part in components:
            if isinstance(part, dict) and valueset.matches(codings(part.get("code"))):
                found.append(part)
    return found


@dataclass(frozen=True, slots=True)
class Unusable:
    """A result the rule cannot read, and why in plain words (it still blocks older ones)."""

    why: str


Judged = CriterionResult | Unusable


_Fact = tuple[Resource, list[Resource | None], When]


_Candidate = tuple[Resource, list[Resource | None], When, ValueSet | None, Any]


def _own_results(deciding: list[_Fact], evidence_only: dict[int, ValueSet]) -> Iterator[_Candidate]:
    """The ValueSet's own results as candidates, lazily (the caller stops at the window)."""
    for obs, parts, when in deciding:
        yield obs, parts, when, evidence_only.get(id(obs)) if evidence_only else None, None


def _facts(record: PatientRecord, valueset: ValueSet) -> tuple[list[_Fact], set[int]]:
    """The Observations of ``valueset`` that report a result of it, with where (parts) and
    their day, newest first (``newest_first_key``; ties in the data's order), and the ids of
    every Observation coded in it (reporting or not). Built once per record and ValueSet, as
    several criteria read the same codes, and once per patient for every study whose record
    takes its Observations from shared groups (service.record.SharedObservations). Rebuilt
    if ``record.observations`` was replaced since."""
    shared = record.shared_facts
    if shared is not None:
        key: tuple[Any, ...]
        if record.observations is record.shared_view:  # the shared groups' lists
            key = (valueset.codes, frozenset(c for c in valueset.codes if c in record.observations))
        else:  # each study's own lists (a CDS Hooks prefetch): the very results, by identity
            key = (valueset.codes, *map(id, record.observations_in(valueset)))
        found = shared.get(key)  # the facts depend on nothing else (it holds what it names)
        if found is None:
            found = shared[key] = _read_facts(record, valueset)
        return found
    cached = record._by_valueset.get(id(valueset))
    if cached is not None and cached[0] is valueset and cached[1] is record.observations:
        return cached[2], cached[3]
    facts, ids = _read_facts(record, valueset)
    record._by_valueset[id(valueset)] = (valueset, record.observations, facts, ids)
    return facts, ids


def _read_facts(record: PatientRecord, valueset: ValueSet) -> tuple[list[_Fact], set[int]]:
    facts: list[_Fact] = []
    coded = record.observations_in(valueset)
    for obs in coded:
        parts = result_parts(obs, valueset)
        if parts:
            facts.append((obs, parts, clinical_time(obs)))
    facts.sort(key=lambda fact: newest_first_key(fact[2]), reverse=True)
    return facts, {id(obs) for obs in coded}


def effective_moment(resource: Resource) -> datetime | None:
    """The result's time as an aware datetime; None for a date only or a time without zone.

    Without a zone a time cannot be compared with another source's, so it orders like a
    date (by day only).
    """
    return clinical_time(resource).moment


def _sort_key(dated: Dated) -> tuple[date, date, float]:
    return newest_first_key(dated.when)


def candidate_observations(
    record: PatientRecord,
    protocol: Protocol,
    valueset: ValueSet,
    as_of: date,
    window_days: int | None,
    issues: list[Issue],
    context: Broader | None = None,
) -> list[Dated]:
    """Results of ``valueset`` that may be used, newest first (by day, then time).

    A component coded in ``valueset`` is a result of its own, with its Observation's status
    and time. Results with a status other than final/amended/corrected are left out with a
    warning; results certainly after ``as_of`` or certainly before the window are left out
    silently (they are simply not part of this evaluation). A result whose time may fall
    outside the window (a partial date across its edge, no readable time at all) is kept,
    marked ``partly``: it may be the newest, so it blocks older results, but it cannot decide
    (a result with no readable time also gets a warning). An Observation that matches only
    the evidence-only ``context`` ValueSet is returned marked as such.
    """
    allowed = set(protocol.general["observation_statuses"])
    found: list[Dated] = []
    deciding, seen = _facts(record, valueset)
    own = _own_results(deciding, record.evidence_only)
    broader: list[_Candidate] = []
    if context is not None:
        for obs, parts, when in _facts(record, context.valueset)[0]:
            if id(obs) not in seen:
                method = context.method_of(obs, record)
                marked = None if method else context.valueset
                broader.append((obs, parts, when, marked, method))
    for group in (own, broader):  # each newest first (``_facts``)
        for obs, parts, when, marked, method in group:
            placed = place(when, as_of, window_days)
            if placed is Placement.BEFORE:
                break  # wholly before the window, and so is every older result
            if placed is Placement.AFTER:
                continue
            status = obs.get("status")
            if status not in allowed:
                ref = record.ref(obs).reference
                issues.append(
                    Issue(Severity.WARNING, "business-rule", f"status {status!r} ignored", ref)
                )
                continue
            partly = None
            if placed is Placement.PARTLY:
                partly = placement_why(when, as_of, window_days)
                if when.unknown:
                    ref = record.ref(obs).reference
                    issues.append(
                        Issue(Severity.WARNING, "incomplete", "no usable result time", ref)
                    )
            found.extend(Dated(when, obs, part, marked, method, partly) for part in parts)
    found.sort(key=_sort_key, reverse=True)
    return found


# -- the newest result decides ----------------------------------------------------------


def strictly_before(a: Dated, b: Dated) -> bool:
    """Whether ``a`` is known to precede ``b`` (see ``timing.certainly_before``)."""
    return certainly_before(a.when, b.when)


def newest_group(candidates: list[Dated]) -> list[Dated]:
    """The newest result together with every result that cannot be ordered before it.

    These are the results no other candidate is known to follow (see ``strictly_before``):
    usually just one; a result with a partial date that overlaps the newest one joins it.
    """
    return not_followed(candidates, lambda d: d.when)


def _partly(dated: Dated) -> Unusable | None:
    """A result whose time may be outside the window: it may be the newest, never decides."""
    return Unusable(dated.partly) if dated.partly else None


def data_absent(record: PatientRecord, dated: Dated, issues: list[Issue]) -> Unusable | None:
    """A result with ``dataAbsentReason`` is never read, even when it also has a value."""
    item = dated.item
    if item.get("dataAbsentReason") is None:
        return None
    reason = next((code for _, code in codings(item.get("dataAbsentReason"))), None)
    said = f"dataAbsentReason {reason!r}" if reason else "a dataAbsentReason"
    has_value = any(key.startswith("value") for key in item)
    why = f"it carries {said} and also a value" if has_value else f"no value ({said})"
    where = record.ref(dated.resource).reference + (" (component)" if dated.part else "")
    issues.append(Issue(Severity.WARNING, "invalid", f"{why}; result ignored", where))
    return Unusable(why)


def context_only(dated: Dated) -> Unusable | None:
    """A result coded only more broadly than the criterion: evidence, never a verdict."""
    vs = dated.context
    if vs is None:
        return None
    codes = [c for c in codings(dated.item.get("code")) if c in vs.codes]
    label = (vs.display(codes[0]) or codes[0][1]) if codes else "result"
    title = vs.resource.get("title") or vs.id
    why = vs.resource.get("evidenceOnlyWhy") or "broader than the criterion"  # site mappings
    return Unusable(
        f"{label} is coded only as {title}, {why}: "
        "listed as evidence, its value and interpretation are not read"
    )


def _word(n: int) -> str:
    return {2: "two", 3: "three"}.get(n, str(n))


def _days(group: list[Dated]) -> str:
    return " and ".join(sorted({g.shown for g in group}))


def _inexact(record: PatientRecord, group: list[Dated]) -> str:
    """'; Observation/b dated 2026-11 may be the newer', naming every result of the group
    whose date is not one day (none for full dates, so their reasons read as before)."""
    named = [f"{record.ref(d.resource).reference} dated {d.shown}" for d in group if d.day is None]
    if not named:
        return ""
    return f"; {', '.join(dict.fromkeys(named))} may be the newer (its date is not one day)"


def _refs(record: PatientRecord, group: list[Dated]) -> list[SourceRef]:
    return list(dict.fromkeys(record.ref(d.resource) for d in group))


def _unusable_result(
    code: str,
    record: PatientRecord,
    judged: list[tuple[Dated, Judged]],
    older: int,
    what: str,
    needs: list[DataRequirement],
    hint: str,
) -> CriterionResult:
    lines = [
        f"{record.ref(d.resource).reference}{' (component)' if d.part else ''} "
        f"on {d.shown}: {j.why}"
        for d, j in judged
        if isinstance(j, Unusable)
    ]
    group = [d for d, _ in judged]
    named = f"{what} result" if what else "result"
    reason = f"the most recent {named} cannot be used: " + "; ".join(lines)
    if len(group) > 1:
        reason += f"; {_word(len(group))} results on {_days(group)} cannot be ordered"
        reason += _inexact(record, group)
    if older:
        reason += f"; {older} older result(s) in the window not used in its place"
    return undetermined(code, reason + hint, _refs(record, group), needs)


def _disagreement(
    code: str,
    record: PatientRecord,
    judged: list[tuple[Dated, CriterionResult]],
    needs: list[DataRequirement],
) -> CriterionResult:
    group = [d for d, _ in judged]
    reason = (
        f"{_word(len(group))} results on {_days(group)} disagree and cannot be ordered: "
        + "; ".join(r.reason for _, r in judged)
        + _inexact(record, group)
    )
    return undetermined(code, reason, _refs(record, group), needs)


def _agreement(
    record: PatientRecord, judged: list[tuple[Dated, CriterionResult]]
) -> CriterionResult:
    """The first result, with every same-time result that agrees with it as evidence."""
    first = judged[0][1]
    if len(judged) == 1:
        return first
    group = [d for d, _ in judged]
    evidence = list(dict.fromkeys([*first.evidence, *_refs(record, group)]))
    reason = f"{first.reason} ({_word(len(group))} results on {_days(group)} agree)"
    return replace(first, reason=reason, evidence=evidence)


def newest_verdict(
    code: str,
    record: PatientRecord,
    candidates: list[Dated],
    judge: Callable[[Dated], Judged],
    *,
    needs: list[DataRequirement],
    issues: list[Issue],
    what: str = "",
    hint: str = "",
) -> CriterionResult | None:
    """The verdict of the most recent result in ``candidates``; None when there is none.

    Only the newest result (and any that cannot be ordered before it) is judged. If one of
    them is unusable, or they disagree, the criterion is undetermined: an older result
    never decides in place of a newer one. ``hint`` is added to an "unusable" reason.
    """
    if not candidates:
        return None
    group = newest_group(candidates)
    judged = [
        (d, context_only(d) or _partly(d) or data_absent(record, d, issues) or judge(d))
        for d in group
    ]
    older = len(candidates) - len(group)
    if any(isinstance(j, Unusable) for _, j in judged):
        return _unusable_result(code, record, judged, older, what, needs, hint)
    usable = [(d, j) for d, j in judged if isinstance(j, CriterionResult)]
    if len({r.outcome for _, r in usable}) > 1:
        return _disagreement(code, record, usable, needs)
    return _agreement(record, usable)


# -- comparators -----------------------------------------------------------------------

_BOUNDS = {  # FHIR valueQuantity.comparator -> (low bound kind, high bound kind)
    None: ("closed", "closed"),
    "<": (None, "open"),
    "<=": (None, "closed"),
    ">": ("open", None),
    ">=": ("closed", None),
}


def satisfies(value: float, comparator: Any, op: str, threshold: float) -> bool | None:
    """Whether a reported value meets ``<op> threshold`` (op is ``<=``, ``<``, ``>=`` or ``>``).

    With a comparator (e.g. ``<0.5``) the true value is any number in an interval; decide
    only when every value in it falls on the same side of the threshold, else ``None``.
    """
    if comparator not in _BOUNDS:
        return None  # "ad" (sufficient to achieve) or garbage: cannot be read as a bound
    low_kind, high_kind = _BOUNDS[comparator]
    low = value if low_kind else float("-inf")
    high = value if high_kind else float("inf")
    low_open = low_kind == "open"
    high_open = high_kind == "open"

    if op in ("<=", "<"):
        # all pass iff the interval's top passes; none pass iff its bottom fails
        all_pass = high < threshold or (high == threshold and (op == "<=" or high_open))
        none_pass = low > threshold or (low == threshold and (op == "<" or low_open))
    else:
        all_pass = low > threshold or (low == threshold and (op == ">=" or low_open))
        none_pass = high < threshold or (high == threshold and (op == ">" or high_open))
    if all_pass:
        return True
    if none_pass:
        return False
    return None
