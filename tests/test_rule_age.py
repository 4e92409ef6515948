"""I1 — age ≥ 18 at the evaluation date, from Patient.birthDate (AS_OF is 2026-11-20)."""

from __future__ import annotations

from datetime import date

import pytest

from service.clinical.model import Outcome
from service.clinical.rules.age import age_on
from service.protocol import default_protocol
from tests.builders import patient, result, run


def i1(birth_date: str | None, as_of: date | None = None, **extra):
    kwargs = {"as_of": as_of} if as_of else {}
    return result(run(patient(birth_date, **extra), **kwargs), "I1")


def test_adult_is_met_with_the_patient_as_evidence():
    r = i1("1990-01-01")
    assert r.outcome is Outcome.MET
    assert "36 years old on 2026-11-20" in r.reason
    assert [e.reference for e in r.evidence] == ["Patient/p1"]


def test_eighteenth_birthday_on_the_evaluation_date_is_met():
    r = i1("2008-11-20")
    assert r.outcome is Outcome.MET
    assert "18 years old" in r.reason


def test_one_day_short_of_eighteen_is_not_met():
    r = i1("2008-11-21")
    assert r.outcome is Outcome.NOT_MET
    assert "17 years old" in r.reason and "under the minimum of 18" in r.reason


@pytest.mark.parametrize(
    ("as_of", "outcome"),
    [
        (date(2026, 2, 28), Outcome.NOT_MET),  # common year: 29 Feb does not exist
        (date(2026, 3, 1), Outcome.MET),
        (date(2028, 2, 29), Outcome.MET),
    ],
)
def test_leap_day_birth(as_of, outcome):
    assert i1("2008-02-29", as_of).outcome is outcome


def test_age_on_counts_completed_years():
    assert age_on(date(2008, 2, 29), date(2026, 2, 28)) == 17
    assert age_on(date(2008, 2, 29), date(2026, 3, 1)) == 18
    assert age_on(date(2000, 12, 31), date(2001, 12, 30)) == 0


@pytest.mark.parametrize(
    ("birth_date", "outcome", "words"),
    [
        ("2008", Outcome.UNDETERMINED, "17 or 18 years"),  # Jan 1 → 18, Dec 31 → 17
        ("2008-11", Outcome.UNDETERMINED, "17 or 18 years"),  # Nov 1 → 18, Nov 30 → 17
        ("2008-12", Outcome.NOT_MET, "17 years"),  # even Dec 1 is after Nov 20
        ("2008-10", Outcome.MET, "18 years"),  # even Oct 31 is before Nov 20
        ("2007", Outcome.MET, "18 or 19 years"),
    ],
)
def test_partial_birth_dates(birth_date, outcome, words):
    r = i1(birth_date)
    assert r.outcome is outcome
    assert f"given only as {birth_date}" in r.reason and words in r.reason


def test_partial_birth_date_undetermined_asks_for_the_full_date():
    r = i1("2008")
    assert r.needs and r.needs[0].resource_type == "Patient"
    assert "full birth date" in r.reason


def test_missing_birth_date_is_undetermined():
    r = i1(None)
    assert r.outcome is Outcome.UNDETERMINED
    assert "no birth date" in r.reason
    assert r.needs[0].resource_type == "Patient"
    assert r.evidence[0].reference == "Patient/p1"


def test_data_absent_birth_date_is_undetermined():
    absent = {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason"}]}
    r = i1(None, _birthDate=absent)
    assert r.outcome is Outcome.UNDETERMINED


def test_unreadable_birth_date_is_undetermined():
    r = i1("unknown")
    assert r.outcome is Outcome.UNDETERMINED
    assert "unreadable" in r.reason


def test_birth_after_the_evaluation_date_is_implausible():
    r = i1("2027-01-01")
    assert r.outcome is Outcome.UNDETERMINED
    assert "implausible" in r.reason
    assert any("after the evaluation date" in i.message for i in r.issues)


@pytest.mark.parametrize("birth_date", ["0001-01-01", "1850-01-01", "1900"])
def test_placeholder_birth_date_is_implausible(birth_date):
    r = i1(birth_date)
    assert r.outcome is Outcome.UNDETERMINED
    assert "above the plausible maximum of 120" in r.reason and "implausible" in r.reason
    assert any("over 120 years" in i.message for i in r.issues)
    assert r.needs[0].resource_type == "Patient"


@pytest.mark.parametrize(
    ("birth_date", "outcome"),
    [
        ("1906-11-20", Outcome.MET),  # exactly 120: still plausible
        ("1906-11-19", Outcome.MET),  # 120 years and a day
        ("1905-11-20", Outcome.UNDETERMINED),  # 121
        ("1906", Outcome.MET),  # 119 or 120
        ("1905", Outcome.UNDETERMINED),  # 120 or 121: may be above the maximum
    ],
)
def test_plausible_maximum_boundary(birth_date, outcome):
    assert i1(birth_date).outcome is outcome


def test_plausible_maximum_comes_from_the_protocol():
    assert default_protocol().criteria["I1"].params["max_plausible_age_years"] == 120
