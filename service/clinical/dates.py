"""FHIR date primitives: a (possibly partial) date as a range of days, an aware instant.

Rules never read a resource's time from here: ``service.clinical.timing`` turns any FHIR time
(dates, Periods, ages, text) into one interval, and orders and windows them for every rule.
"""

from __future__ import annotations

import calendar
import re
from datetime import date, datetime
from typing import Any

_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")


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


def today() -> date:
    return datetime.now().date()
