"""FHIR date handling: partial dates, a resource's clinically relevant time, look-back windows."""

from __future__ import annotations

import calendar
import re
from datetime import date, datetime, timedelta
from functools import lru_cache
from typing import Any

_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")
_FULL_DAY = re.compile(r"^(\d{4})-(\d{2})-(\d{2})")  # _DATE when it matches all three parts


class DateRange(tuple):
    """The earliest and latest calendar day a (possibly partial) FHIR date can mean."""

    __slots__ = ()

    def __new__(cls, earliest: date, latest: date) -> DateRange:
        return super().__new__(cls, (earliest, latest))

    @property
    def earliest(self) -> date:
        return self[0]

    @property
    def latest(self) -> date:
        return self[1]

    @property
    def exact(self) -> bool:
        return self[0] == self[1]


def parse_date(value: Any) -> DateRange | None:
    """Read a FHIR date, dateTime or instant; ``None`` for anything unreadable.

    The calendar day is taken as written (the time zone of the source); day precision
    is all eligibility windows need.
    """
    if not isinstance(value, str):
        return None
    m = _DATE.match(value)
    if not m:
        return None
    try:
        year = int(m.group(1))
        if m.group(3):
            d = date(year, int(m.group(2)), int(m.group(3)))
            return DateRange(d, d)
        if m.group(2):
            month = int(m.group(2))
            last = calendar.monthrange(year, month)[1]
            return DateRange(date(year, month, 1), date(year, month, last))
        return DateRange(date(year, 1, 1), date(year, 12, 31))
    except ValueError:
        return None


def effective_date(resource: dict[str, Any]) -> date | None:
    """When a result applies: effectiveDateTime, else effectivePeriod end/start, else
    effectiveInstant, else issued. Only a full calendar day counts."""
    if "effectivePeriod" not in resource:  # the usual case, read without the tuple below
        value = resource.get("effectiveDateTime")
        if value is not None:
            return _full_day(value)
    candidates = (
        resource.get("effectiveDateTime"),
        (resource.get("effectivePeriod") or {}).get("end"),
        (resource.get("effectivePeriod") or {}).get("start"),
        resource.get("effectiveInstant"),
        resource.get("issued"),
    )
    for value in candidates:
        if value is None:
            continue
        return _full_day(value)
    return None


def _full_day(value: Any) -> date | None:
    """``parse_date(value).latest`` when that is one exact day, else None: only a value with
    year, month and day is exact (a month or a year spans several days). Without building
    the range, as every Observation's time is read this way."""
    return _full_day_of(value[:10]) if isinstance(value, str) else None


@lru_cache(maxsize=16_384)  # keyed by the day part: a chart's results share few days
def _full_day_of(value: str) -> date | None:
    m = _FULL_DAY.match(value)
    if m is None:
        return None
    year, month, day = m.groups()
    try:
        return date(int(year), int(month), int(day))
    except ValueError:
        return None


def parse_moment(value: Any) -> datetime | None:
    """A FHIR dateTime with a time and a zone as an aware datetime; None otherwise.

    Without a zone a time cannot be compared with another source's, so callers order such
    values by calendar day only.
    """
    if not isinstance(value, str) or "T" not in value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def in_window(day: date, as_of: date, window_days: int | None) -> bool:
    """On or before ``as_of`` and, when a window is set, no more than ``window_days`` before it."""
    if day > as_of:
        return False
    return window_days is None or day >= as_of - timedelta(days=window_days)


def today() -> date:
    return datetime.now().date()
