"""Clinical time as an interval (service.clinical.timing) and the rules that read it.

A result that *may* be the newest (a month, a year, a Period with no end, an onset as text or
as an age) takes part: it blocks older results and cannot decide. These tests show, per rule,
the false *met* the old "no full date; not used" drop gave, and check by property that making
a date coarser can only move an answer towards undetermined.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.clinical.model import Outcome
from service.clinical.timing import (
    NO_TIME,
    Placement,
    When,
    certainly_before,
    clinical_start,
    clinical_time,
    not_followed,
    place,
)
from tests.builders import (
    AS_OF,
    SNOMED,
    condition,
    observation,
    procedure,
)

MET, NOT_MET, UNDETERMINED = Outcome.MET, Outcome.NOT_MET, Outcome.UNDETERMINED
D = date


def when(resource: dict, birth: str | None = None) -> tuple[date | None, date | None]:
    found = clinical_time(resource, birth)
    return found.earliest, found.latest


# -- reading every shape --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "earliest", "latest", "text"),
    [
        ("2026-11-20", D(2026, 11, 20), D(2026, 11, 20), "2026-11-20"),
        ("2026-11", D(2026, 11, 1), D(2026, 11, 30), "2026-11"),
        ("2026-02", D(2026, 2, 1), D(2026, 2, 28), "2026-02"),
        ("2026", D(2026, 1, 1), D(2026, 12, 31), "2026"),
        ("2026-11-20T10:00:00Z", D(2026, 11, 20), D(2026, 11, 20), "2026-11-20"),
        ("2026-11-20T10:00:00", D(2026, 11, 20), D(2026, 11, 20), "2026-11-20"),  # no zone
        ("2026-11-21T01:00:00+14:00", D(2026, 11, 21), D(2026, 11, 21), "2026-11-21"),
    ],
)
def test_dates_and_datetimes_read_as_the_days_they_may_mean(value, earliest, latest, text):
    found = clinical_time(observation("777-3", day=value))
    assert (found.earliest, found.latest, found.text) == (earliest, latest, text)


def test_a_zone_gives_an_instant_and_no_zone_gives_none():
    assert clinical_time(observation("x", day="2026-11-20T10:00:00+02:00")).moment == datetime(
        2026, 11, 20, 8, tzinfo=UTC
    )
    assert clinical_time(observation("x", day="2026-11-20T10:00:00")).moment is None
    assert clinical_time(observation("x", day="2026-11")).moment is None


def test_no_time_or_an_unreadable_one_may_be_any_time():
    obs = observation("x")
    del obs["effectiveDateTime"]
    assert clinical_time(obs) == NO_TIME
    assert clinical_time(observation("x", day="20-11-2026")).unknown
    assert clinical_time(obs | {"effectiveTiming": {"event": ["2026-11-20"]}}).unknown


def test_observation_issued_is_read_when_there_is_no_effective_time():
    obs = observation("x")
    del obs["effectiveDateTime"]
    assert when(obs | {"issued": "2026-11-19T10:00:00Z"}) == (D(2026, 11, 19), D(2026, 11, 19))
    assert when(obs | {"effectivePeriod": {}, "issued": "2026-11-19"})[0] == D(2026, 11, 19)


def test_periods():
    proc = procedure(SNOMED, "x", performed="")
    del proc["performedDateTime"]
    both = proc | {"performedPeriod": {"start": "2026-10-01", "end": "2026-11"}}
    assert when(both) == (D(2026, 10, 1), D(2026, 11, 30))
    assert when(proc | {"performedPeriod": {"start": "2026-10-01"}}) == (D(2026, 10, 1), None)
    assert when(proc | {"performedPeriod": {"end": "2026-10-05"}}) == (None, D(2026, 10, 5))
    # a treatment line is placed where it began
    assert clinical_start(both).day == D(2026, 10, 1)
    # a result applies when collection ended; with no end it may still be running
    obs = observation("x")
    del obs["effectiveDateTime"]
    period = {"start": "2026-11-01", "end": "2026-11-03"}
    assert when(obs | {"effectivePeriod": period}) == (D(2026, 11, 3), D(2026, 11, 3))
    assert when(obs | {"effectivePeriod": {"start": "2026-11-01"}}) == (D(2026, 11, 1), None)


def test_onsets_as_age_range_string_and_recorded_date():
    cond = condition(SNOMED, "x")
    age = {"value": 34, "unit": "years", "system": "http://unitsofmeasure.org", "code": "a"}
    assert when(cond | {"onsetAge": age}, "1990-03-15") == (D(2024, 3, 15), D(2025, 3, 14))
    # a birth date known only to the year widens the span
    assert when(cond | {"onsetAge": age}, "1990") == (D(2024, 1, 1), D(2025, 12, 30))
    assert when(cond | {"onsetAge": age}, None) == (None, None)
    span = {"low": age, "high": age | {"value": 36}}
    assert when(cond | {"onsetRange": span}, "1990-03-15") == (D(2024, 3, 15), D(2027, 3, 14))
    assert clinical_time(cond | {"onsetString": "in childhood"}).unknown
    assert when(cond | {"recordedDate": "2026-11"}) == (D(2026, 11, 1), D(2026, 11, 30))


@pytest.mark.parametrize(
    ("resource", "earliest"),
    [
        ({"resourceType": "QuestionnaireResponse", "authored": "2026-11"}, D(2026, 11, 1)),
        ({"resourceType": "Consent", "dateTime": "2026-11-10"}, D(2026, 11, 10)),
        ({"resourceType": "DiagnosticReport", "issued": "2026-11-10T09:00:00Z"}, D(2026, 11, 10)),
        ({"resourceType": "MedicationRequest", "authoredOn": "2026-11-10"}, D(2026, 11, 10)),
        ({"resourceType": "MedicationAdministration", "effectiveDateTime": "2026"}, D(2026, 1, 1)),
        ({"resourceType": "MedicationStatement", "dateAsserted": "2026-11-10"}, D(2026, 11, 10)),
        ({"resourceType": "MedicationDispense", "whenPrepared": "2026-11-10"}, D(2026, 11, 10)),
    ],
)
def test_the_table_covers_each_resource_type(resource, earliest):
    assert clinical_time(resource).earliest == earliest


# -- ordering and windows -------------------------------------------------------------------


def w(earliest: date | None, latest: date | None, moment: datetime | None = None) -> When:
    return When(earliest, latest, "t", moment)


def test_certainly_before_needs_the_whole_interval_before():
    nov = w(D(2026, 11, 1), D(2026, 11, 30))
    assert certainly_before(w(D(2026, 10, 31), D(2026, 10, 31)), nov)
    assert not certainly_before(w(D(2026, 11, 20), D(2026, 11, 20)), nov)
    assert not certainly_before(nov, w(D(2026, 11, 20), D(2026, 11, 20)))
    assert not certainly_before(NO_TIME, nov) and not certainly_before(nov, NO_TIME)
    day = D(2026, 11, 20)
    early = w(day, day, datetime(2026, 11, 20, 8, tzinfo=UTC))
    late = w(day, day, datetime(2026, 11, 20, 9, tzinfo=UTC))
    assert certainly_before(early, late) and not certainly_before(late, early)
    assert not certainly_before(early, late, by_instant=False)  # same day, by day only


def test_newest_group_holds_what_may_be_as_new():
    a, b = w(D(2026, 11, 20), D(2026, 11, 20)), w(D(2026, 11, 1), D(2026, 11, 30))
    c, old = w(D(2026, 11, 25), D(2026, 11, 25)), w(D(2026, 10, 1), D(2026, 10, 1))
    assert not_followed([a, b, old], lambda x: x) == [a, b]
    assert not_followed([a, b, c], lambda x: x) == [b, c]
    assert not_followed([old, NO_TIME], lambda x: x) == [old, NO_TIME]


@pytest.mark.parametrize(
    ("earliest", "latest", "expected"),
    [
        (D(2026, 11, 10), D(2026, 11, 10), Placement.INSIDE),
        (D(2026, 11, 6), D(2026, 11, 20), Placement.INSIDE),  # both edges included
        (D(2026, 11, 1), D(2026, 11, 30), Placement.PARTLY),  # may be after as_of
        (D(2026, 11, 1), D(2026, 11, 10), Placement.PARTLY),  # may be before the window
        (None, None, Placement.PARTLY),
        (D(2026, 11, 1), D(2026, 11, 5), Placement.BEFORE),
        (D(2026, 11, 21), None, Placement.AFTER),
    ],
)
def test_a_window_holds_only_for_the_whole_interval(earliest, latest, expected):
    assert place(w(earliest, latest), AS_OF, 14) is expected


_DAYS = st.dates(D(2025, 1, 1), D(2026, 12, 31))


@given(_DAYS, _DAYS, st.integers(0, 120), st.data())
def test_widening_an_interval_never_makes_it_certain(a, b, window, data):
    lo, hi = min(a, b), max(a, b)
    exact = w(lo, hi)
    wider = w(
        data.draw(st.sampled_from([lo, lo - timedelta(days=31), None])),
        data.draw(st.sampled_from([hi, hi + timedelta(days=31), None])),
    )
    narrow, wide = place(exact, AS_OF, window), place(wider, AS_OF, window)
    assert wide is narrow or wide is Placement.PARTLY
    other = w(D(2026, 6, 1), D(2026, 6, 1))
    assert not certainly_before(wider, other) or certainly_before(exact, other)
    assert not certainly_before(other, wider) or certainly_before(other, exact)
