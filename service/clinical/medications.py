"""Medication exposures: what a MedicationRequest, -Administration, -Statement or -Dispense
says the patient received, and when. Pure functions: the record supplies the resources and
resolves references; the rule kinds (service.clinical.rules.medications) decide.

What counts as exposure (each decision is a safety decision, so it is stated here):

* **Never given** (not counted at all): MedicationRequest ``entered-in-error``, ``cancelled``
  (R4: withdrawn before any administration), ``draft`` (not yet an order), or an intent that
  is not an order (``proposal``, ``plan``, ``directive``, ``option``); MedicationAdministration
  ``not-done``, ``entered-in-error``; MedicationStatement ``not-taken``, ``entered-in-error``,
  ``intended`` (may be taken in the future, not yet); MedicationDispense ``cancelled``,
  ``declined``, ``entered-in-error``, ``preparation`` (not handed over), and ``stopped`` with
  no ``whenHandedOver`` (stopped before handing over).
* **Uncertain** (may have been given; never evidence that it was): status ``unknown`` or
  missing, a request with no intent, a dispense ``in-progress`` or ``on-hold``.
* Everything else is a **certain** exposure. ``active`` orders and statements are *current*
  (the record says the patient is on it now).

When (``start`` and ``end`` are ``service.clinical.timing.When`` intervals, ``end`` None when
the record does not say when it ended):

* MedicationRequest: ``dosageInstruction.timing.repeat.boundsPeriod`` (widest over the
  instructions), else ``dispenseRequest.validityPeriod`` (its end plus
  ``expectedSupplyDuration`` when given in days or weeks: a supply dispensed on the last
  valid day lasts that long; without one the end is unknown), else ``authoredOn`` as the
  start with an unknown end.
* MedicationAdministration / MedicationStatement: ``effective[x]`` (a dateTime is one day;
  a Period with no end is open). A statement with no effective time but a ``dateAsserted``
  happened at an unknown time up to that date.
* MedicationDispense: ``whenHandedOver`` (else ``whenPrepared``) to that day plus
  ``daysSupply`` (in days); no supply: the end is unknown.
* No usable time: an exposure at an unknown time (it blocks "none within N days").

The agent: ``medicationCodeableConcept``, or the ``code`` of the Medication a
``medicationReference`` names (contained ``#id``, ``Medication/id``, urn:uuid or absolute, all
through the record's reference index). A reference that does not resolve is an exposure to an
unknown agent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from enum import Enum
from typing import Any

from service.clinical.timing import NO_TIME, When, element_time, time_of
from service.protocol import Code, ValueSet

Resource = dict[str, Any]
Resolver = Callable[[Any, Resource], Resource | None]

NEVER_GIVEN: dict[str, frozenset[str]] = {
    "MedicationRequest": frozenset({"entered-in-error", "cancelled", "draft"}),
    "MedicationAdministration": frozenset({"not-done", "entered-in-error"}),
    "MedicationStatement": frozenset({"not-taken", "entered-in-error", "intended"}),
    "MedicationDispense": frozenset({"cancelled", "declined", "entered-in-error", "preparation"}),
}
UNCERTAIN: dict[str, frozenset[str]] = {
    "MedicationRequest": frozenset({"unknown"}),
    "MedicationAdministration": frozenset({"unknown"}),
    "MedicationStatement": frozenset({"unknown"}),
    "MedicationDispense": frozenset({"unknown", "in-progress", "on-hold"}),
}
ORDER_INTENTS = frozenset(
    {"order", "original-order", "reflex-order", "filler-order", "instance-order"}
)
CURRENT = {"MedicationRequest": "active", "MedicationStatement": "active"}
_DAYS = {"d": 1, "day": 1, "days": 1, "wk": 7, "week": 7, "weeks": 7}


class Certainty(Enum):
    CERTAIN = "certain"  # the record says it was given (or is being taken)
    UNCERTAIN = "uncertain"  # may have been given: never evidence that it was
    NEVER = "never"  # never given: not counted


@dataclass(frozen=True, slots=True)
class Exposure:
    """One resource's statement that the patient received a medication."""

    resource: Resource
    codes: tuple[Code, ...]  # the agent's codes; empty when the agent is unknown
    start: When
    end: When | None  # None: the record does not say when it ended
    certainty: Certainty
    current: bool  # an active order or statement: the patient is on it now
    how: str  # for reasons: "MedicationRequest (active order)"
    agent_note: str = ""  # why the agent is unknown, when it is

    @property
    def counts(self) -> bool:
        return self.certainty is not Certainty.NEVER

    @property
    def certain(self) -> bool:
        return self.certainty is Certainty.CERTAIN

    @property
    def dated(self) -> bool:
        return not self.start.unknown

    def text(self) -> str:
        """Its time in words: "2026-11-02 to 2026-11-30", "from 2026-10 (end not recorded)"."""
        if self.start.unknown and (self.end is None or self.end.unknown):
            return "no usable date"
        if self.end is None:
            return f"from {self.start.text} (end not recorded)"
        if self.end == self.start:
            return f"on {self.start.text}"
        return f"{self.start.text} to {self.end.text}"


def _codings(concept: Any) -> tuple[Code, ...]:
    if not isinstance(concept, dict):
        return ()
    found: list[Code] = []
    for coding in concept.get("coding") or ():
        if isinstance(coding, dict) and "code" in coding:
            found.append((coding.get("system") or "", str(coding["code"])))
    return tuple(found)


def agent_codes(resource: Resource, resolve: Resolver) -> tuple[tuple[Code, ...], str]:
    """The medication's codes, and why they are unknown when they are ("" otherwise)."""
    concept = resource.get("medicationCodeableConcept")
    if concept is not None:
        codes = _codings(concept)
        return codes, "" if codes else "its medication is not coded"
    ref = resource.get("medicationReference")
    if not isinstance(ref, dict):
        return (), "it names no medication"
    target = resolve(ref, resource)
    label = str(ref.get("reference") or ref.get("display") or "?")[:80]
    if not isinstance(target, dict) or target.get("resourceType") != "Medication":
        return (), f"its medicationReference {label} is not in the data"
    codes = _codings(target.get("code"))
    return codes, "" if codes else f"the Medication {label} is not coded"


def _status(resource: Resource) -> str | None:
    status = resource.get("status")
    return status if isinstance(status, str) else None


def certainty(resource: Resource) -> tuple[Certainty, str]:
    """Whether the resource says the medication was given, and why in words when not."""
    rtype = resource.get("resourceType", "")
    status = _status(resource)
    if status in NEVER_GIVEN.get(rtype, ()):
        return Certainty.NEVER, f"status {status}"
    if rtype == "MedicationRequest":
        intent = resource.get("intent")
        if isinstance(intent, str) and intent not in ORDER_INTENTS:
            return Certainty.NEVER, f"intent {intent} (not an order)"
        if not isinstance(intent, str):
            return Certainty.UNCERTAIN, "no intent"
    if rtype == "MedicationDispense" and status == "stopped" and not resource.get("whenHandedOver"):
        return Certainty.NEVER, "stopped before handing over"
    if status is None:
        return Certainty.UNCERTAIN, "no status"
    if status in UNCERTAIN.get(rtype, ()):
        return Certainty.UNCERTAIN, f"status {status}"
    return Certainty.CERTAIN, f"status {status}"


def _duration_days(quantity: Any) -> int | None:
    if not isinstance(quantity, dict):
        return None
    value, unit = quantity.get("value"), quantity.get("code") or quantity.get("unit")
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    factor = _DAYS.get(str(unit).lower()) if unit is not None else None
    if factor is None:
        return None
    return int(value * factor + 0.999999)  # a part day is a whole day of supply


def _plus(when: When, days: int, *, supply: bool = False) -> When:
    """The interval ``days`` later. A supply (``supply``) of ``days`` handed over on day 0
    lasts through day ``days - 1`` at least and perhaps to day ``days`` (taken from the
    next morning): the end is that interval, each rule reading the side that is safe."""
    first = days - 1 if supply and days > 0 else days
    earliest = when.earliest + timedelta(days=first) if when.earliest else None
    latest = when.latest + timedelta(days=days) if when.latest else None
    if earliest is not None and earliest == latest:
        text = str(earliest)
    elif earliest is not None and latest is not None:
        text = f"{earliest} or {latest}"
    else:
        text = f"{when.text} + {days} d"
    return When(earliest, latest, text)


def _period_bounds(period: Any) -> tuple[When, When | None] | None:
    """A Period's start and end as intervals of their own (partial dates kept wide)."""
    if not isinstance(period, dict) or not (period.get("start") or period.get("end")):
        return None
    start = time_of(period.get("start")) if period.get("start") else NO_TIME
    end = time_of(period.get("end")) if period.get("end") else None
    return start, end


def _request_time(resource: Resource) -> tuple[When, When | None, str]:
    bounds: list[tuple[When, When | None]] = []
    for dosage in resource.get("dosageInstruction") or ():
        repeat = ((dosage or {}).get("timing") or {}).get("repeat") or {}
        found = _period_bounds(repeat.get("boundsPeriod")) if isinstance(repeat, dict) else None
        if found is not None:
            bounds.append(found)
    if bounds:
        starts = [s for s, _ in bounds]
        start = min(starts, key=lambda w: w.earliest or date.min)
        ends = [e for _, e in bounds]
        end = None if any(e is None for e in ends) else max(ends, key=_latest_key)
        return start, end, "dosage bounds"
    dispense = resource.get("dispenseRequest")
    if not isinstance(dispense, dict):
        dispense = {}
    found = _period_bounds(dispense.get("validityPeriod"))
    if found is not None:
        start, end = found
        supply = _duration_days(dispense.get("expectedSupplyDuration"))
        if end is not None and supply is not None:  # dispensed on the last valid day at most
            later = _plus(end, supply)
            end = When(end.earliest, later.latest, f"{end.text} (+ up to {supply} d of supply)")
        else:
            end = None
        return start, end, "validity period"
    authored = resource.get("authoredOn")
    if authored is not None:
        return time_of(authored), None, "authored"
    return NO_TIME, None, "no date"


def _latest_key(when: When | None) -> date:
    return date.max if when is None or when.latest is None else when.latest


def exposure_time(resource: Resource) -> tuple[When, When | None]:
    """(start, end) of one exposure (see the module docstring); end None: not recorded."""
    rtype = resource.get("resourceType")
    if rtype == "MedicationRequest":
        start, end, _ = _request_time(resource)
        return start, end
    if rtype in ("MedicationAdministration", "MedicationStatement"):
        period = resource.get("effectivePeriod")
        found = _period_bounds(period)
        if found is not None:
            return found
        when = element_time(resource, "effective[x]")
        if when is not None:
            # one dateTime (or instant): a single day, perhaps known only to the month
            return (when, None) if when.unknown else (when, when)
        asserted = resource.get("dateAsserted")
        if rtype == "MedicationStatement" and asserted is not None:
            upto = time_of(asserted)
            taken = When(None, upto.latest, f"some time up to {upto.text} (date asserted)")
            return taken, taken
        return NO_TIME, None
    if rtype == "MedicationDispense":
        handed = resource.get("whenHandedOver") or resource.get("whenPrepared")
        if handed is None:
            return NO_TIME, None
        start = time_of(handed)
        supply = _duration_days(resource.get("daysSupply"))
        return start, (_plus(start, supply, supply=True) if supply is not None else None)
    return NO_TIME, None


def exposure(resource: Resource, resolve: Resolver) -> Exposure:
    """One resource read as an exposure (``counts`` False when it says never given)."""
    rtype = resource.get("resourceType", "")
    how_sure, why = certainty(resource)
    codes, note = agent_codes(resource, resolve)
    start, end = exposure_time(resource)
    current = how_sure is Certainty.CERTAIN and CURRENT.get(rtype) == _status(resource)
    return Exposure(resource, codes, start, end, how_sure, current, f"{rtype} ({why})", note)


def exposures(resources: Iterable[Resource], resolve: Resolver) -> list[Exposure]:
    """Every medication resource read as an exposure, in record order."""
    return [exposure(r, resolve) for r in resources]


def in_valueset(item: Exposure, vs: ValueSet) -> list[Code]:
    return [c for c in item.codes if c in vs.codes]


def agent_of(code: Code, vs: ValueSet) -> str:
    """The agent (ingredient) a ValueSet code stands for: its ``designation`` with use code
    ``ingredient``, else its display, else the code itself (case-insensitive). Two product
    codes of one ingredient are one agent when they carry the same ingredient or display."""
    return _agents(vs).get(code) or (vs.display(code) or code[1]).strip().lower()


def _agents(vs: ValueSet) -> dict[Code, str]:
    found: dict[Code, str] = {}
    compose = vs.resource.get("compose") if isinstance(vs.resource, dict) else None
    for include in (compose or {}).get("include") or ():
        system = include.get("system") or ""
        for concept in include.get("concept") or ():
            for designation in concept.get("designation") or ():
                use = designation.get("use") or {}
                if use.get("code") == "ingredient" and designation.get("value"):
                    found[(system, str(concept.get("code")))] = designation["value"].lower()
    return found
