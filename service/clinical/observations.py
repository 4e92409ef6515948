"""Choosing the result that decides: status, date, window, and comparator logic."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from service.clinical.dates import effective_date, in_window
from service.clinical.model import Issue, Severity
from service.protocol import Protocol, ValueSet
from service.record import PatientRecord, Resource


@dataclass(frozen=True, slots=True)
class Dated:
    day: date
    resource: Resource


def candidate_observations(
    record: PatientRecord,
    protocol: Protocol,
    valueset: ValueSet,
    as_of: date,
    window_days: int | None,
    issues: list[Issue],
) -> list[Dated]:
    """Observations of ``valueset`` that may be used, newest first.

    Results with a status other than final/amended/corrected, or with no full-day time,
    are left out with a warning; results after ``as_of`` or before the window are left out
    silently (they are simply not part of this evaluation).
    """
    allowed = set(protocol.general["observation_statuses"])
    found: list[Dated] = []
    for obs in record.observations_in(valueset):
        day = effective_date(obs)
        status = obs.get("status")
        ref = record.ref(obs).reference
        if day is not None and day > as_of:
            continue
        if status not in allowed:
            if day is None or in_window(day, as_of, window_days):
                issues.append(
                    Issue(Severity.WARNING, "business-rule", f"status {status!r} ignored", ref)
                )
            continue
        if day is None:
            issues.append(Issue(Severity.WARNING, "incomplete", "no usable result time", ref))
            continue
        if in_window(day, as_of, window_days):
            found.append(Dated(day, obs))
    found.sort(key=lambda d: d.day, reverse=True)
    return found


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
