"""I10: ECOG performance status 0-2, with Karnofsky only when the window holds no ECOG."""

from __future__ import annotations

import copy
import json
from datetime import date, timedelta
from pathlib import Path

import pytest

from service.clinical.model import CriterionResult, Outcome
from service.clinical.rules import RULES, Context
from service.clinical.rules import performance as _performance  # noqa: F401  (registers)
from service.protocol import default_protocol
from service.record import record_from_bundle
from tests.builders import AS_OF, LOINC, SNOMED, bundle, concept, observation, patient

SAMPLES = Path(__file__).parents[2] / "shared" / "fhir-samples"
ECOG = "89247-1"
KARNOFSKY = "89243-0"
DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
RECENT = AS_OF - timedelta(days=5)  # 2026-11-15


def evaluate(*resources: dict, as_of: date = AS_OF) -> CriterionResult:
    protocol = default_protocol()
    res = list(resources)
    if not any(r["resourceType"] == "Patient" for r in res):
        res.insert(0, patient())
    record = record_from_bundle(bundle(*res), protocol)
    criterion = protocol.criteria["I10"]
    return RULES[criterion.rule].evaluate(criterion, Context(record, protocol, as_of))


def ecog(value: int | None = None, day: date | str = RECENT, **extra) -> dict:
    if value is not None:
        extra["valueInteger"] = value
    return observation(ECOG, day=day, **extra)


def karnofsky(value: int, day: date | str = RECENT, **extra) -> dict:
    return observation(KARNOFSKY, day=day, valueInteger=value, **extra)


def refs(result: CriterionResult) -> list[str]:
    return [e.reference for e in result.evidence]


def messages(result: CriterionResult) -> str:
    return " | ".join(i.message for i in result.issues)


# -- ECOG -----------------------------------------------------------------------------------


def test_ecog_0_and_2_are_met_3_is_not():
    for grade, outcome in ((0, Outcome.MET), (2, Outcome.MET), (3, Outcome.NOT_MET)):
        obs = ecog(grade)
        r = evaluate(obs)
        assert r.outcome is outcome, grade
        assert r.reason.startswith(f"ECOG {grade} on 2026-11-15")
        assert refs(r) == [f"Observation/{obs['id']}"]
    assert evaluate(ecog(2)).reason == "ECOG 2 on 2026-11-15 ≤ 2"
    assert evaluate(ecog(3)).reason == "ECOG 3 on 2026-11-15: above 2"


def test_loinc_answer_code_as_value():
    obs = ecog(valueCodeableConcept=concept(LOINC, "LA9624-3"))
    r = evaluate(obs)
    assert r.outcome is Outcome.MET
    assert r.reason == "ECOG 2 (from the coded value) on 2026-11-15 ≤ 2"
    assert refs(r) == [f"Observation/{obs['id']}"]


def test_snomed_grade_finding_as_value():
    obs = ecog(valueCodeableConcept=concept(SNOMED, "423053003"))  # grade 3 finding
    r = evaluate(obs)
    assert r.outcome is Outcome.NOT_MET
    assert r.reason.startswith("ECOG 3 (from the coded value)")


def test_unknown_coded_value_is_unusable():
    r = evaluate(ecog(valueCodeableConcept=concept(LOINC, "LA6576-8")))
    assert r.outcome is Outcome.UNDETERMINED
    assert "coded value is not one known grade" in messages(r)


def test_interpretation_agreeing_with_value_is_used():
    obs = ecog(1, interpretation=[concept(LOINC, "LA9623-5")])
    r = evaluate(obs)
    assert r.outcome is Outcome.MET
    assert r.reason == "ECOG 1 on 2026-11-15 ≤ 2"


def test_interpretation_alone_is_used():
    r = evaluate(ecog(interpretation=[concept(LOINC, "LA9626-8")]))  # grade 4
    assert r.outcome is Outcome.NOT_MET
    assert r.reason.startswith("ECOG 4 (from the interpretation)")


def test_value_and_interpretation_disagreeing_is_unusable():
    r = evaluate(ecog(1, interpretation=[concept(LOINC, "LA9625-0")]))  # says grade 3
    assert r.outcome is Outcome.UNDETERMINED
    assert "sources disagree (value 1, interpretation 3)" in messages(r)


def test_out_of_range_newest_ecog_is_undetermined_and_an_older_one_does_not_decide():
    """Changed on purpose: the most recent ECOG decides even when it cannot be read."""
    bad = ecog(-1, day=RECENT)
    good = ecog(1, day=AS_OF - timedelta(days=10))
    r = evaluate(bad, good)
    assert r.outcome is Outcome.UNDETERMINED
    assert r.reason.startswith(
        f"the most recent ECOG result cannot be used: Observation/{bad['id']} on 2026-11-15: "
        "ECOG value -1 is outside 0–5; 1 older result(s) in the window not used in its place"
    )
    assert refs(r) == [f"Observation/{bad['id']}"]
    assert "ECOG value -1 is outside 0–5; result ignored" in messages(r)
    assert r.issues[0].expression == f"Observation/{bad['id']}"


def test_out_of_range_ecog_alone_is_undetermined():
    obs = ecog(7)
    r = evaluate(obs)
    assert r.outcome is Outcome.UNDETERMINED
    assert r.reason == (
        f"the most recent ECOG result cannot be used: Observation/{obs['id']} on 2026-11-15: "
        "ECOG value 7 is outside 0–5; Karnofsky is read only when there is no ECOG result in "
        "the window"
    )
    assert r.needs and r.needs[0].valueset == default_protocol().valueset("ecog").url


@pytest.mark.parametrize(
    "newest",
    [
        {"valueQuantity": {"value": 3}},  # ECOG 3 as a Quantity
        {"valueString": "3"},
        {"valueInteger": 3, "dataAbsentReason": concept(DATA_ABSENT, "error")},
    ],
    ids=["quantity", "string", "data-absent-reason"],
)
def test_unreadable_newest_ecog_never_lets_an_older_passing_one_decide(newest):
    r = evaluate(ecog(day=RECENT, **newest), ecog(1, day=AS_OF - timedelta(days=20)))
    assert r.outcome is Outcome.UNDETERMINED
    assert "the most recent ECOG result cannot be used" in r.reason


def test_data_absent_reason_with_a_grade_is_unusable_with_a_warning():
    r = evaluate(ecog(1, dataAbsentReason=concept(DATA_ABSENT, "error")))
    assert r.outcome is Outcome.UNDETERMINED
    assert "dataAbsentReason 'error' and also a value; result ignored" in messages(r)


def test_same_day_ecogs_without_time_that_disagree_are_undetermined():
    r = evaluate(ecog(1), ecog(3))
    assert r.outcome is Outcome.UNDETERMINED
    assert r.reason.startswith("two results on 2026-11-15 disagree")
    assert len(r.evidence) == 2


def test_same_day_ecogs_with_times_the_later_one_decides():
    later = ecog(3, day="2026-11-15T16:00:00+02:00")
    earlier = ecog(1, day="2026-11-15T09:00:00+02:00")
    r = evaluate(later, earlier)
    assert r.outcome is Outcome.NOT_MET
    assert refs(r) == [f"Observation/{later['id']}"]


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="../shared/fhir-samples not present")
def test_real_sample_with_ecog_and_karnofsky_minus_one_is_undetermined():
    path = SAMPLES / "mcode-clinical-trial-matching"
    path = path / "patient_data_missing_birthdate_invalid_ecog_karnofsky.json"
    sample = json.loads(path.read_text())
    resources = [copy.deepcopy(e["resource"]) for e in sample["entry"]]
    pat = next(r for r in resources if r["resourceType"] == "Patient")
    scores = [
        r
        for r in resources
        if r["resourceType"] == "Observation"
        and r["id"]
        in ("mCODEECOGPerformanceStatusExample", "mCODEKarnofskyPerformanceStatusExample")
    ]
    assert {s["valueInteger"] for s in scores} == {-1}
    for s in scores:  # the fixture's scores name another Patient id; link them to its Patient
        s["subject"] = {"reference": f"Patient/{pat['id']}"}
    r = evaluate(pat, *scores, as_of=date(2019, 4, 15))
    assert r.outcome is Outcome.UNDETERMINED
    text = messages(r)
    assert "ECOG value -1 is outside 0–5" in text  # its interpretation (grade 3) is not trusted
    assert "Karnofsky" not in text  # an ECOG in the window: Karnofsky is not read
    assert "the most recent ECOG result cannot be used" in r.reason
    assert refs(r) == ["Observation/mCODEECOGPerformanceStatusExample"]


def test_ecog_older_than_window_is_not_used():
    old = ecog(1, day=AS_OF - timedelta(days=31))
    r = evaluate(old)
    assert r.outcome is Outcome.UNDETERMINED
    assert r.reason == (
        "no ECOG or Karnofsky in the last 30 days; the most recent ECOG is from 2026-10-20"
    )
    assert evaluate(ecog(1, day=AS_OF - timedelta(days=30))).outcome is Outcome.MET


def test_preliminary_ecog_is_ignored_with_a_warning():
    r = evaluate(ecog(1, status="preliminary"))
    assert r.outcome is Outcome.UNDETERMINED
    assert "status 'preliminary' ignored" in messages(r)


def test_most_recent_ecog_decides():
    r = evaluate(ecog(3, day=RECENT), ecog(1, day=AS_OF - timedelta(days=20)))
    assert r.outcome is Outcome.NOT_MET


# -- Karnofsky fallback ---------------------------------------------------------------------


def test_karnofsky_70_is_met_without_ecog():
    obs = karnofsky(70)
    r = evaluate(obs)
    assert r.outcome is Outcome.MET
    assert r.reason == (
        "no ECOG in the last 30 days; Karnofsky 70 on 2026-11-15 ≥ 60, i.e. ECOG ≤ 2"
    )
    assert refs(r) == [f"Observation/{obs['id']}"]


def test_karnofsky_50_is_undetermined_because_conversions_disagree():
    obs = karnofsky(50)
    r = evaluate(obs)
    assert r.outcome is Outcome.UNDETERMINED
    assert "published ECOG–Karnofsky conversions disagree" in r.reason
    assert refs(r) == [f"Observation/{obs['id']}"]
    assert r.needs[0].resource_type == "Observation"


def test_karnofsky_40_is_not_met():
    r = evaluate(karnofsky(40))
    assert r.outcome is Outcome.NOT_MET
    assert "Karnofsky 40 on 2026-11-15 ≤ 40" in r.reason


def test_ecog_is_preferred_over_a_newer_karnofsky():
    e = ecog(3, day=AS_OF - timedelta(days=20))
    k = karnofsky(90, day=RECENT)
    r = evaluate(e, k)
    assert r.outcome is Outcome.NOT_MET
    assert refs(r) == [f"Observation/{e['id']}"]


def test_unusable_ecog_in_the_window_blocks_the_karnofsky_fallback():
    r = evaluate(ecog(-1), karnofsky(80))
    assert r.outcome is Outcome.UNDETERMINED
    assert "Karnofsky is read only when there is no ECOG result in the window" in r.reason


def test_karnofsky_used_when_the_only_ecog_is_outside_the_window():
    r = evaluate(ecog(1, day=AS_OF - timedelta(days=31)), karnofsky(80))
    assert r.outcome is Outcome.MET
    assert r.reason.startswith("no ECOG in the last 30 days; Karnofsky 80")


def test_unusable_newest_karnofsky_is_undetermined():
    r = evaluate(karnofsky(110), karnofsky(80, day=AS_OF - timedelta(days=10)))
    assert r.outcome is Outcome.UNDETERMINED
    assert "the most recent Karnofsky result cannot be used" in r.reason


def test_same_day_karnofskys_that_disagree_are_undetermined():
    r = evaluate(karnofsky(80), karnofsky(30))
    assert r.outcome is Outcome.UNDETERMINED
    assert "disagree" in r.reason


def test_out_of_range_karnofsky_is_unusable():
    r = evaluate(karnofsky(110))
    assert r.outcome is Outcome.UNDETERMINED
    assert "Karnofsky value 110 is outside 0–100" in messages(r)


def test_nothing_is_undetermined():
    r = evaluate()
    assert r.outcome is Outcome.UNDETERMINED
    assert r.reason == "no ECOG or Karnofsky result found"
    assert "within 30 days" in r.needs[0].description
