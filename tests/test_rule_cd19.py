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

CD19_RESULT = "8116-6"  # CD19-specific; the general report 101119-6 never decides
CD19_PERCENT = "8117-4"
V3 = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
PRESENT, ABSENT = "LA9633-4", "LA9634-2"
DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"


def days_ago(n: int) -> str:
    return str(AS_OF - timedelta(days=n))


def i2(*resources):
    return result(run(*resources), "I2")


def test_loinc_present_is_met():
    obs = coded_observation(CD19_RESULT, LOINC, PRESENT, day=days_ago(10))
    r = i2(obs)
    assert r.outcome is Outcome.MET
    assert "Present (LOINC LA9633-4)" in r.reason and days_ago(10) in r.reason
    assert [e.reference for e in r.evidence] == [f"Observation/{obs['id']}"]


def test_loinc_absent_is_not_met():
    r = i2(coded_observation(CD19_RESULT, LOINC, ABSENT, day=days_ago(5)))
    assert r.outcome is Outcome.NOT_MET
    assert r.reason.startswith("negative") and "LA9634-2" in r.reason


def test_snomed_negative_is_not_met():
    r = i2(coded_observation(CD19_RESULT, SNOMED, "260385009"))
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
        CD19_RESULT,
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
    r = i2(coded_observation(CD19_RESULT, LOINC, PRESENT, day=days_ago(91)))
    assert r.outcome is Outcome.UNDETERMINED
    assert "no result in the last 90 days" in r.reason and days_ago(91) in r.reason


def test_result_90_days_old_is_inside_the_window():
    assert i2(coded_observation(CD19_RESULT, LOINC, PRESENT, day=days_ago(90))).outcome is (
        Outcome.MET
    )


def test_preliminary_result_is_ignored_with_a_warning():
    obs = coded_observation(CD19_RESULT, LOINC, PRESENT, status="preliminary")
    r = i2(obs)
    assert r.outcome is Outcome.UNDETERMINED
    assert any("preliminary" in i.message for i in r.issues)


def test_the_most_recent_coded_result_decides():
    old_positive = coded_observation(CD19_RESULT, LOINC, PRESENT, day=days_ago(60))
    new_negative = coded_observation(CD19_RESULT, LOINC, ABSENT, day=days_ago(5))
    r = i2(old_positive, new_negative)
    assert r.outcome is Outcome.NOT_MET
    assert days_ago(5) in r.reason and days_ago(60) not in r.reason


def test_newer_uncoded_result_makes_it_undetermined_and_is_listed():
    """Changed on purpose: 2 % CD19 after an older coded positive may be CD19-negative escape."""
    coded = coded_observation(CD19_RESULT, LOINC, PRESENT, day=days_ago(30))
    numeric = lab(CD19_PERCENT, 2, "%", day=days_ago(2))
    r = i2(coded, numeric)
    assert r.outcome is Outcome.UNDETERMINED
    assert f"Observation/{numeric['id']} on {days_ago(2)}" in r.reason
    assert "numeric value only (2 %)" in r.reason and "1 older result(s)" in r.reason
    assert [e.reference for e in r.evidence] == [f"Observation/{numeric['id']}"]
    assert r.needs


def test_newer_narrative_after_a_coded_positive_is_undetermined():
    coded = coded_observation(CD19_RESULT, LOINC, PRESENT, day=days_ago(30))
    text = observation(CD19_RESULT, day=days_ago(3), valueString="CD19 dim/negative")
    r = i2(coded, text)
    assert r.outcome is Outcome.UNDETERMINED
    assert "narrative text only" in r.reason


def test_older_uncoded_result_does_not_block_a_newer_coded_one():
    numeric = lab(CD19_PERCENT, 85, "%", day=days_ago(30))
    coded = coded_observation(CD19_RESULT, LOINC, PRESENT, day=days_ago(2))
    r = i2(numeric, coded)
    assert r.outcome is Outcome.MET
    assert [e.reference for e in r.evidence] == [f"Observation/{coded['id']}"]


def test_coded_positive_with_data_absent_reason_is_unusable():
    obs = coded_observation(CD19_RESULT, LOINC, PRESENT, day=days_ago(2))
    obs["dataAbsentReason"] = {"coding": [{"system": DATA_ABSENT, "code": "error"}]}
    r = i2(obs)
    assert r.outcome is Outcome.UNDETERMINED
    assert "dataAbsentReason 'error'" in r.reason
    assert any("dataAbsentReason" in i.message for i in r.issues)


def test_same_day_conflict_is_undetermined():
    r = i2(
        coded_observation(CD19_RESULT, LOINC, PRESENT, day=days_ago(1)),
        coded_observation(CD19_RESULT, LOINC, ABSENT, day=days_ago(1)),
    )
    assert r.outcome is Outcome.UNDETERMINED
    assert r.reason.startswith(f"two results on {days_ago(1)} disagree")
    assert len(r.evidence) == 2


def test_same_day_results_with_times_the_later_one_decides():
    later = coded_observation(CD19_RESULT, LOINC, ABSENT, day=days_ago(1) + "T15:00:00Z")
    earlier = coded_observation(CD19_RESULT, LOINC, PRESENT, day=days_ago(1) + "T09:00:00Z")
    r = i2(later, earlier)
    assert r.outcome is Outcome.NOT_MET
    assert [e.reference for e in r.evidence] == [f"Observation/{later['id']}"]


def test_same_day_uncoded_result_blocks_a_coded_positive():
    coded = coded_observation(CD19_RESULT, LOINC, PRESENT, day=days_ago(1))
    numeric = lab(CD19_PERCENT, 0, "%", day=days_ago(1))
    r = i2(coded, numeric)
    assert r.outcome is Outcome.UNDETERMINED
    assert "numeric value only (0 %)" in r.reason


def test_value_and_interpretation_contradicting_is_not_used():
    obs = coded_observation(CD19_RESULT, LOINC, PRESENT, interpretation=(V3, "NEG"))
    r = i2(obs)
    assert r.outcome is Outcome.UNDETERMINED
    assert "contradictory" in r.reason
    assert any(i.code == "value" for i in r.issues)


def test_unrelated_coded_value_is_undetermined():
    r = i2(coded_observation(CD19_RESULT, SNOMED, "123456"))
    assert r.outcome is Outcome.UNDETERMINED
    assert "is not a positive/negative finding" in r.reason
