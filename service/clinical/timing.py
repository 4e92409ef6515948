"""When a resource happened, as an interval: the one place rules read clinical time.

A FHIR time is rarely one instant: "2026-11" is any day of November, a Period with no end may
still be running, an onset given as an age is a span of a year, an onsetString is any time at
all. Every rule reads a resource's time as a ``When`` [earliest, latest] (calendar days as
written, i.e. in the source's time zone) and orders results with ``certainly_before``. An
older result may decide only over results that are certainly older than it: one that *may*
be newer takes part, and if it disagrees or cannot decide, the answer is undetermined. A
window holds only when the whole interval is inside it (``Placement``).

Two results on the same day are ordered by their aware instants only when both carry a time
with a zone, so data with full dates gives exactly the answers it gave before intervals.
"""

from __future__ import annotations

import calendar
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import Enum
from functools import lru_cache
from typing import Any

from service.clinical.dates import DateRange, parse_date, parse_moment
from service.resource_kinds import KINDS

Resource = dict[str, Any]


@dataclass(frozen=True, slots=True)
class When:
    """The earliest and latest calendar day something may have happened; None is unbounded.

    ``text`` is the time as recorded (for reasons: "2026-11", "onset age 34 a"); ``moment`` is
    the aware instant when the source gives a time with a zone, used only to order two results
    that both have one.
    """

    earliest: date | None
    latest: date | None
    text: str
    moment: datetime | None = None

    @property
    def exact(self) -> bool:
        """One known calendar day."""
        return self.earliest is not None and self.earliest == self.latest

    @property
    def day(self) -> date | None:
        """The day, when the time is one known day; else None."""
        return self.earliest if self.exact else None

    @property
    def unknown(self) -> bool:
        """No bound at all: may be any time (no time recorded, or one that cannot be read)."""
        return self.earliest is None and self.latest is None


NO_TIME = When(None, None, "no recorded time")


def _from_range(found: DateRange, text: str, moment: datetime | None = None) -> When:
    return When(found.earliest, found.latest, text, moment if found.exact else None)


@lru_cache(maxsize=16_384)  # a chart's results share few distinct time strings
def read_time(value: str) -> When | None:
    """A FHIR date, dateTime or instant as a When; None when it cannot be read."""
    found = parse_date(value)
    if found is None:
        return None
    text = str(found.earliest) if found.exact else value[:7] if len(value) >= 7 else value[:4]
    return _from_range(found, text, parse_moment(value))


def time_of(value: Any) -> When:
    """``read_time`` for any JSON value: a non-string or unreadable value may be any time."""
    if isinstance(value, str):
        found = read_time(value)
        if found is not None:
            return found
        return When(None, None, f"unreadable time {value[:40]!r}")
    return NO_TIME


def period_time(period: Any) -> When:
    """A Period from start.earliest to end.latest; a missing or unreadable end is open."""
    if not isinstance(period, dict):
        return NO_TIME
    start, end = time_of(period.get("start")), time_of(period.get("end"))
    if start.unknown and end.unknown:
        return NO_TIME if not period else When(None, None, "a Period with no readable bound")
    if start.exact and end.exact and start.earliest == end.earliest:
        moment = start.moment if start.moment == end.moment else None
        return When(start.earliest, start.earliest, start.text, moment)
    text = f"{start.text if not start.unknown else '…'} to {end.text if not end.unknown else '…'}"
    return When(start.earliest, end.latest, text)


# -- ages (Condition.onsetAge, onsetRange) relative to the birth date ---------------------------

_AGE_UNITS = {"a": "years", "mo": "months", "wk": "weeks", "d": "days"}


def _add(day: date, amount: int, unit: str) -> date | None:
    """``day`` plus a whole number of units (a missing day of the month clamps to its end)."""
    try:
        if unit in ("years", "months"):
            months = amount * (12 if unit == "years" else 1)
            index = day.month - 1 + months
            year, month = day.year + index // 12, index % 12 + 1
            return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))
        return day + timedelta(days=amount * (7 if unit == "weeks" else 1))
    except (ValueError, OverflowError):
        return None


def _age_unit(age: Any) -> tuple[float, str] | None:
    if not isinstance(age, dict):
        return None
    value, code = age.get("value"), age.get("code") or age.get("unit")
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return None
    if not math.isfinite(value) or code not in _AGE_UNITS:
        return None
    return float(value), _AGE_UNITS[code]


def age_time(low: Any, high: Any, birth: Any, text: str) -> When:
    """The days on which the patient was between age ``low`` and age ``high`` (inclusive, whole
    units: "34 years" lasts until the day before the 35th birthday). Open where unreadable."""
    born = time_of(birth)
    earliest = latest = None
    lo, hi = _age_unit(low), _age_unit(high)
    if lo is not None and born.earliest is not None:
        earliest = _add(born.earliest, math.floor(lo[0]), lo[1])
    if hi is not None and born.latest is not None:
        end = _add(born.latest, math.floor(hi[0]) + 1, hi[1])
        latest = end - timedelta(days=1) if end is not None else None
    return When(earliest, latest, text)


def _age_text(age: Any) -> str:
    if not isinstance(age, dict):
        return "?"
    return f"{age.get('value')} {age.get('unit') or age.get('code') or ''}".strip()


# -- the table: which elements give the clinical time of each resource type -------------------

# Each entry: the time elements of a type, in order; the first one present is the time.
# ``x`` elements are choice types (dateTime, Period, Instant, Age, Range, String).
# Which elements date each resource type: the one registry of resource kinds says.
CLINICAL_TIME_ELEMENTS: dict[str, tuple[str, ...]] = {
    name: kind.clinical_time for name, kind in KINDS.items() if kind.clinical_time
}

# Condition.abatement[x] ends a Condition; read it with ``element_time(c, "abatement[x]")``.


_KINDS = ("DateTime", "Period", "Instant", "Date", "Age", "Range", "String")


def element_time(resource: Resource, element: str, birth: Any = None) -> When | None:
    """The time in ``element`` of ``resource`` (a choice type when it ends in ``[x]``); None
    when the element is absent. ``birth`` (Patient.birthDate) places an Age or Range."""
    if not element.endswith("[x]"):
        value = resource.get(element)
        return None if value is None else time_of(value)
    stem = element[:-3]
    for kind in _KINDS:
        value = resource.get(stem + kind)
        if value is None:
            continue
        if kind == "Period":
            found = _observation_period(value) if stem == "effective" else period_time(value)
            if found is None:
                continue
            return found
        if kind == "Age":
            return age_time(value, value, birth, f"age {_age_text(value)}")
        if kind == "Range":
            low = value.get("low") if isinstance(value, dict) else None
            high = value.get("high") if isinstance(value, dict) else None
            return age_time(low, high, birth, f"age {_age_text(low)} to {_age_text(high)}")
        if kind == "String":
            return When(None, None, f"{stem} given as text {str(value)[:40]!r}")
        return time_of(value)
    for key in resource:
        kind = key[len(stem) :]
        if key.startswith(stem) and kind and kind not in _KINDS and resource[key] is not None:
            return When(None, None, f"{key} cannot be read as a time")
    return None


def _observation_period(period: Any) -> When | None:
    """A result's effectivePeriod: the result applies when collection ended, so its end; with
    no end, from the start on (the collection may still be running). This keeps a 24-hour
    collection that ended in the window a result in the window, as before intervals. None
    for a Period with neither end (the next element, e.g. ``issued``, is read)."""
    if not isinstance(period, dict):
        return time_of(period)
    if period.get("end") is not None:
        return time_of(period["end"])
    if period.get("start") is None:
        return None
    return period_time(period)


def clinical_time(resource: Resource, birth: Any = None) -> When:
    """When ``resource`` happened, from ``CLINICAL_TIME_ELEMENTS``: the first time element
    present decides (an unreadable one is not skipped for a later one: it may be the true
    time). ``NO_TIME`` (may be any time) when there is none."""
    if "effectivePeriod" not in resource:  # the usual Observation, without the table walk
        value = resource.get("effectiveDateTime")
        if isinstance(value, str):
            return read_time(value) or time_of(value)
    elements = CLINICAL_TIME_ELEMENTS.get(resource.get("resourceType") or "Observation", ())
    for element in elements:
        found = element_time(resource, element, birth)
        if found is not None:
            return found
    return NO_TIME


def clinical_start(resource: Resource, birth: Any = None) -> When:
    """When ``resource`` began: ``clinical_time`` with a Period read as its start only (a
    treatment line is placed on the timeline where it began). No start: up to its end."""
    for element in CLINICAL_TIME_ELEMENTS.get(resource.get("resourceType") or "", ()):
        if element.endswith("[x]"):
            period = resource.get(element[:-3] + "Period")
            if isinstance(period, dict) and (period.get("start") or period.get("end")):
                if period.get("start") is not None:
                    return time_of(period["start"])
                end = time_of(period.get("end"))
                return When(None, end.latest, f"… to {end.text}")
    return clinical_time(resource, birth)


# -- ordering and windows -----------------------------------------------------------------------


def certainly_before(a: When, b: When, *, by_instant: bool = True) -> bool:
    """Whether ``a`` is known to precede ``b``: by aware instant when both have one (unless
    ``by_instant`` is off: then by day only), else ``a``'s latest day before ``b``'s earliest
    (two results of one day are not ordered)."""
    if by_instant and a.moment is not None and b.moment is not None:
        return a.moment < b.moment
    return a.latest is not None and b.earliest is not None and a.latest < b.earliest


def not_followed(items: list[Any], when: Callable[[Any], When]) -> list[Any]:
    """The items no other item is certainly after: the newest and every item that may be as
    new (a partial date overlapping it, an undated one). Linear, not pairwise."""
    if not items:
        return []
    times = [when(i) for i in items]
    starts = [t.earliest for t in times if t.earliest is not None]
    top = max(starts, default=None)
    top_dateonly = max((t.earliest for t in times if t.earliest and t.moment is None), default=None)
    top_moment = max((t.moment for t in times if t.moment is not None), default=None)

    def followed(t: When) -> bool:
        if t.latest is None:
            return False
        if t.moment is None or top_moment is None:
            return top is not None and t.latest < top
        return t.moment < top_moment or (top_dateonly is not None and t.latest < top_dateonly)

    group = [i for i, t in zip(items, times, strict=True) if not followed(t)]
    # Mixed zones can make the day/time comparison cyclic; then keep the whole newest day.
    if group or top is None:  # no start known anywhere: nothing was followed by a start
        return group or list(items)
    return [i for i, t in zip(items, times, strict=True) if t.latest is None or t.latest >= top]


def newest_first_key(when: When) -> tuple[date, date, float]:
    """Sort key, newest first with ``reverse=True``: latest day (open = newest), then time."""
    latest = when.latest or date.max
    earliest = when.earliest or date.min
    return latest, earliest, when.moment.timestamp() if when.moment else float("-inf")


class Placement(Enum):
    """Where a time falls against a look-back window ending on the evaluation date."""

    INSIDE = "inside"  # wholly inside: may decide
    PARTLY = "partly"  # may be inside: takes part, blocks older results, cannot decide
    BEFORE = "before"  # wholly before the window: ignored
    AFTER = "after"  # wholly after the evaluation date: not part of this evaluation


def place(when: When, as_of: date, window_days: int | None) -> Placement:
    """INSIDE only when the whole interval is in [as_of - window_days, as_of]."""
    if when.earliest is not None and when.earliest > as_of:
        return Placement.AFTER
    start = None if window_days is None else as_of - timedelta(days=window_days)
    if start is not None and when.latest is not None and when.latest < start:
        return Placement.BEFORE
    if when.latest is None or when.latest > as_of:
        return Placement.PARTLY
    if start is not None and (when.earliest is None or when.earliest < start):
        return Placement.PARTLY
    return Placement.INSIDE


def placement_why(when: When, as_of: date, window_days: int | None) -> str:
    """Why a PARTLY placed time cannot decide, in words."""
    if when.unknown:
        return f"it has {when.text}, so it may be the most recent"
    if when.latest is None or when.latest > as_of:
        return f"it is dated {when.text}, which may be after the evaluation date {as_of}"
    return f"it is dated {when.text}, which may be before the {window_days}-day window"
