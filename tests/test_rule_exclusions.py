"""Exclusion criteria (rule ``condition_absent``): met only on evidence of absence.

Through a seed copy with two exclusions: E1 Burkitt lymphoma (active only; a named negative
test or the investigator's attestation clears it) and E2 myocardial infarction (history,
within 12 weeks, and the protocol accepts absence in the record).
"""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from fhir.resources.R4B.bundle import Bundle

from service.clinical.engine import evaluate
from service.clinical.model import CriterionResult, Outcome
from service.protocol import ProtocolError, load_protocol
from service.record import record_from_bundle
from tests.builders import AS_OF, bundle, coded_observation, concept, condition, patient
from tests.builders import questionnaire_response as qr
from tests.protocol_copies import (
    ICD10CM,
    SNOMED,
    TEST_CODES,
    composed_protocol,
    edit_toml,
)

CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
NEG = ("http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "NEG")
POS = ("http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "POS")


@pytest.fixture(scope="module")
def protocol(tmp_path_factory):
    return load_protocol(composed_protocol(tmp_path_factory.mktemp("p") / "composed"))


def run(protocol, code: str, *resources: dict, truncated=frozenset()) -> CriterionResult:
    data = bundle(patient(), *resources)
    Bundle.model_validate(data)  # test data is valid R4
    record = record_from_bundle(data, protocol)
    record.truncated = frozenset(truncated)
    found = [r for r in evaluate(record, protocol, AS_OF).results if r.code == code]
    return found[0]


def burkitt(*, clinical: str | None = "active", verification: str | None = "confirmed", **kw):
    extra = dict(kw)
    if clinical:
        extra["clinicalStatus"] = concept(CLINICAL, clinical)
    if verification:
        extra["verificationStatus"] = concept(VERIFICATION, verification)
    return condition(SNOMED, "118617000", **extra)


def mi(onset: str | None, clinical: str = "resolved", **kw):
    return condition(
        ICD10CM,
        "I21.9",
        onset=onset,
        clinicalStatus=concept(CLINICAL, clinical),
        verificationStatus=concept(VERIFICATION, "confirmed"),
        **kw,
    )


def myc(day: date, reading: tuple[str, str] = NEG):
    return coded_observation(
        "myc-fish", None, None, system=TEST_CODES, day=day, interpretation=reading
    )


def refs(r: CriterionResult) -> list[str]:
    return [e.reference for e in r.evidence]


# -- not met: the record shows the excluding Condition ----------------------------------------


def test_confirmed_active_condition_is_not_met_with_evidence(protocol):
    c = burkitt(onset="2026-01-10")
    r = run(protocol, "E1", c)
    assert r.outcome is Outcome.NOT_MET
    assert r.reason.startswith(f"Burkitt lymphoma is recorded: Condition/{c['id']}")
    assert refs(r) == [f"Condition/{c['id']}"]


def test_condition_without_verification_status_counts(protocol):
    c = condition(ICD10CM, "C83.7", clinicalStatus=concept(CLINICAL, "relapse"))
    assert run(protocol, "E1", c).outcome is Outcome.NOT_MET


def test_it_outweighs_an_attestation_that_none_apply(protocol):
    r = run(protocol, "E1", burkitt(), qr({"E1": True}))
    assert r.outcome is Outcome.NOT_MET


@pytest.mark.parametrize("status", ["refuted", "entered-in-error"])
def test_refuted_or_erroneous_condition_never_counts(protocol, status):
    c = burkitt(verification=status)
    r = run(protocol, "E1", c, qr({"E1": True}))
    assert r.outcome is Outcome.MET
    assert "not counted" in r.reason and status in r.reason


@pytest.mark.parametrize("status", ["provisional", "differential", "unconfirmed"])
def test_unconfirmed_condition_is_undetermined_even_with_attestation(protocol, status):
    c = burkitt(verification=status)
    r = run(protocol, "E1", c, qr({"E1": True}), myc(AS_OF))
    assert r.outcome is Outcome.UNDETERMINED
    assert "may be recorded" in r.reason and status in r.reason
    assert f"Condition/{c['id']}" in refs(r)
    assert any(n.resource_type == "Condition" for n in r.needs)


def test_condition_with_no_clinical_status_is_undetermined(protocol):
    r = run(protocol, "E1", burkitt(clinical=None), qr({"E1": True}))
    assert r.outcome is Outcome.UNDETERMINED
    assert "clinical status not recorded" in r.reason


def test_resolved_condition_does_not_count_for_an_active_only_criterion(protocol):
    r = run(protocol, "E1", burkitt(clinical="resolved"))
    assert r.outcome is Outcome.UNDETERMINED  # not excluded, but nothing shows absence either
    assert "not counted" in r.reason


# -- met: evidence of absence -------------------------------------------------------------------


def test_negative_test_in_window_is_met(protocol):
    obs = myc(AS_OF - timedelta(days=10))
    r = run(protocol, "E1", obs)
    assert r.outcome is Outcome.MET
    assert r.reason.startswith("negative test:")
    assert refs(r) == [f"Observation/{obs['id']}"]


def test_negative_test_outside_its_window_is_not_evidence(protocol):
    r = run(protocol, "E1", myc(AS_OF - timedelta(days=91)))
    assert r.outcome is Outcome.UNDETERMINED
    assert {n.resource_type for n in r.needs} == {"Observation", "QuestionnaireResponse"}


def test_positive_test_is_not_met(protocol):
    r = run(protocol, "E1", myc(AS_OF - timedelta(days=3), POS))
    assert r.outcome is Outcome.NOT_MET
    assert r.reason.startswith("positive test:")


def test_newest_test_decides(protocol):
    older_neg, newer_pos = myc(AS_OF - timedelta(days=20)), myc(AS_OF - timedelta(days=2), POS)
    assert run(protocol, "E1", older_neg, newer_pos).outcome is Outcome.NOT_MET
    older_pos, newer_neg = myc(AS_OF - timedelta(days=20), POS), myc(AS_OF - timedelta(days=2))
    assert run(protocol, "E1", older_pos, newer_neg).outcome is Outcome.MET


def test_unreadable_newest_test_is_undetermined_not_cleared_by_an_older_one(protocol):
    unread = coded_observation("myc-fish", None, None, system=TEST_CODES, day=AS_OF)
    r = run(protocol, "E1", myc(AS_OF - timedelta(days=20)), unread, qr({"E1": True}))
    assert r.outcome is Outcome.UNDETERMINED


def test_attestation_that_none_apply_is_met_and_no_is_not_met(protocol):
    yes = run(protocol, "E1", qr({"E1": True}, authored=AS_OF - timedelta(days=2)))
    assert yes.outcome is Outcome.MET
    assert yes.reason.startswith("attestation that no Burkitt lymphoma applies: E1 attested true")
    no = run(protocol, "E1", qr({"E1": False}))
    assert no.outcome is Outcome.NOT_MET


def test_missing_diagnosis_alone_is_undetermined_with_what_would_resolve_it(protocol):
    r = run(protocol, "E1")
    assert r.outcome is Outcome.UNDETERMINED
    assert "a missing diagnosis is not evidence that there is none" in r.reason
    assert [n.resource_type for n in r.needs] == ["Observation", "QuestionnaireResponse"]
    assert r.evidence == []


# -- E2: history, a 12-week window, absence in the record clears --------------------------------


def test_absence_in_record_clears_when_the_protocol_opts_in_and_says_so(protocol):
    r = run(protocol, "E2")
    assert r.outcome is Outcome.MET
    assert r.reason == (
        "no myocardial infarction is recorded; the protocol accepts the absence in the record "
        "as evidence"
    )


def test_history_criterion_counts_a_resolved_condition_inside_the_window(protocol):
    c = mi(str(AS_OF - timedelta(days=30)))
    r = run(protocol, "E2", c)
    assert r.outcome is Outcome.NOT_MET
    assert "within 84 days" in r.reason


def test_condition_before_the_window_does_not_count(protocol):
    r = run(protocol, "E2", mi(str(AS_OF - timedelta(days=85))))
    assert r.outcome is Outcome.MET
    assert "before the 84-day window" in r.reason


def test_partial_date_that_may_be_inside_the_window_is_undetermined(protocol):
    # 2026-08 is 2026-08-01..31; the window starts on 2026-08-28
    r = run(protocol, "E2", mi("2026-08"))
    assert r.outcome is Outcome.UNDETERMINED
    assert "may or may not be within 84 days" in r.reason


def test_partial_date_wholly_inside_the_window_counts(protocol):
    assert run(protocol, "E2", mi("2026-10")).outcome is Outcome.NOT_MET


def test_undated_condition_with_a_window_is_undetermined(protocol):
    r = run(protocol, "E2", mi(None))
    assert r.outcome is Outcome.UNDETERMINED


def test_recorded_date_is_used_without_an_onset(protocol):
    c = mi(None, recordedDate=str(AS_OF - timedelta(days=10)))
    assert run(protocol, "E2", c).outcome is Outcome.NOT_MET


def test_condition_known_only_after_the_evaluation_date_is_not_part_of_it(protocol):
    assert run(protocol, "E2", mi(str(AS_OF + timedelta(days=1)))).outcome is Outcome.MET


def test_absence_is_unconfirmed_when_the_condition_search_was_truncated(protocol):
    r = run(protocol, "E2", truncated={"Condition"})
    assert r.outcome is Outcome.UNDETERMINED
    assert "truncated" in r.reason


def test_incomplete_test_parameters_are_a_load_error(tmp_path):
    folder = composed_protocol(tmp_path / "p")
    edit_toml(folder, 'test_positive_valueset = "finding-positive"\n', "")
    with pytest.raises(ProtocolError, match=r"\[criteria\.E1\].*go together"):
        load_protocol(folder)
