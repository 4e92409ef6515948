"""I2 — CD19-positive immunophenotype: only a coded positive/negative reading decides."""

from __future__ import annotations

from datetime import timedelta

from service.clinical.model import Outcome
from tests.builders import (
    AS_OF,
    LOINC,
    SNOMED,
    coded_observation,
    lab,
    observation,
    result,
    run,
)

IMMUNOPHENOTYPE = "101119-6"
CD19_PERCENT = "8117-4"
V3 = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
PRESENT, ABSENT = "LA9633-4", "LA9634-2"


def days_ago(n: int) -> str:
    return str(AS_OF - timedelta(days=n))


def i2(*resources):
    return result(run(*resources), "I2")


def test_loinc_present_is_met():
    obs = coded_observation(IMMUNOPHENOTYPE, LOINC, PRESENT, day=days_ago(10))
    r = i2(obs)
    assert r.outcome is Outcome.MET
    assert "Present (LOINC LA9633-4)" in r.reason and days_ago(10) in r.reason
    assert [e.reference for e in r.evidence] == [f"Observation/{obs['id']}"]


def test_loinc_absent_is_not_met():
    r = i2(coded_observation(IMMUNOPHENOTYPE, LOINC, ABSENT, day=days_ago(5)))
    assert r.outcome is Outcome.NOT_MET
    assert r.reason.startswith("negative") and "LA9634-2" in r.reason


def test_snomed_negative_is_not_met():
    r = i2(coded_observation(IMMUNOPHENOTYPE, SNOMED, "260385009"))
    assert r.outcome is Outcome.NOT_MET
    assert "260385009" in r.reason


def test_interpretation_pos_on_a_numeric_result_is_met():
    obs = lab(CD19_PERCENT, 85, "%", day=days_ago(3))
    obs["interpretation"] = [{"coding": [{"system": V3, "code": "POS"}]}]
    r = i2(obs)
    assert r.outcome is Outcome.MET
    assert "interpretation" in r.reason and "POS" in r.reason


def test_numeric_only_is_undetermined_and_listed():
    obs = lab(CD19_PERCENT, 85, "%", day=days_ago(3))
    r = i2(obs)
    assert r.outcome is Outcome.UNDETERMINED
    assert "numeric value only (85 %)" in r.reason and "coded reading" in r.reason
    assert [e.reference for e in r.evidence] == [f"Observation/{obs['id']}"]
    assert r.needs[0].resource_type == "Observation"
    assert r.needs[0].valueset.endswith("/cd19-immunophenotype")


def test_narrative_only_is_undetermined_and_not_parsed():
    obs = observation(
        IMMUNOPHENOTYPE,
        day=days_ago(3),
        valueString="positive for CD10, CD79a, TdT, CD19, and CD20",
    )
    r = i2(obs)
    assert r.outcome is Outcome.UNDETERMINED
    assert "narrative text only" in r.reason
    assert r.evidence[0].reference == f"Observation/{obs['id']}"


def test_no_result_is_undetermined():
    r = i2()
    assert r.outcome is Outcome.UNDETERMINED
    assert r.reason == "no result found"
    assert r.evidence == [] and r.needs


def test_result_91_days_old_is_outside_the_window():
    r = i2(coded_observation(IMMUNOPHENOTYPE, LOINC, PRESENT, day=days_ago(91)))
    assert r.outcome is Outcome.UNDETERMINED
    assert "no result in the last 90 days" in r.reason and days_ago(91) in r.reason


def test_result_90_days_old_is_inside_the_window():
    assert i2(coded_observation(IMMUNOPHENOTYPE, LOINC, PRESENT, day=days_ago(90))).outcome is (
        Outcome.MET
    )


def test_preliminary_result_is_ignored_with_a_warning():
    obs = coded_observation(IMMUNOPHENOTYPE, LOINC, PRESENT, status="preliminary")
    r = i2(obs)
    assert r.outcome is Outcome.UNDETERMINED
    assert any("preliminary" in i.message for i in r.issues)


def test_the_most_recent_coded_result_decides():
    old_positive = coded_observation(IMMUNOPHENOTYPE, LOINC, PRESENT, day=days_ago(60))
    new_negative = coded_observation(IMMUNOPHENOTYPE, LOINC, ABSENT, day=days_ago(5))
    r = i2(old_positive, new_negative)
    assert r.outcome is Outcome.NOT_MET
    assert days_ago(5) in r.reason and days_ago(60) not in r.reason


def test_newer_uncoded_result_is_listed_but_the_coded_one_decides():
    coded = coded_observation(IMMUNOPHENOTYPE, LOINC, PRESENT, day=days_ago(30))
    numeric = lab(CD19_PERCENT, 2, "%", day=days_ago(2))
    r = i2(coded, numeric)
    assert r.outcome is Outcome.MET
    assert "without a coded reading, not used" in r.reason and "numeric value only" in r.reason
    assert {e.reference for e in r.evidence} == {
        f"Observation/{coded['id']}",
        f"Observation/{numeric['id']}",
    }


def test_same_day_conflict_is_undetermined():
    r = i2(
        coded_observation(IMMUNOPHENOTYPE, LOINC, PRESENT, day=days_ago(1)),
        coded_observation(IMMUNOPHENOTYPE, LOINC, ABSENT, day=days_ago(1)),
    )
    assert r.outcome is Outcome.UNDETERMINED
    assert "conflicting" in r.reason and len(r.evidence) == 2


def test_value_and_interpretation_contradicting_is_not_used():
    obs = coded_observation(IMMUNOPHENOTYPE, LOINC, PRESENT, interpretation=(V3, "NEG"))
    r = i2(obs)
    assert r.outcome is Outcome.UNDETERMINED
    assert "contradictory" in r.reason
    assert any(i.code == "value" for i in r.issues)


def test_unrelated_coded_value_is_undetermined():
    r = i2(coded_observation(IMMUNOPHENOTYPE, SNOMED, "123456"))
    assert r.outcome is Outcome.UNDETERMINED
    assert "is not a positive/negative finding" in r.reason
