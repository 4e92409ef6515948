"""I3 — B-ALL diagnosis, in Condition.code or the mCODE histology extension."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from service.clinical.engine import evaluate
from service.clinical.model import CriterionResult, Outcome
from service.clinical.rules.diagnosis import with_article
from service.protocol import Protocol, default_protocol
from service.record import record_from_resources
from tests.builders import (
    AS_OF,
    ICD10CM,
    ICDO3,
    LOINC,
    SNOMED,
    coded_observation,
    concept,
    condition,
    patient,
    result,
    run,
)

HISTOLOGY = "http://hl7.org/fhir/us/mcode/StructureDefinition/mcode-histology-morphology-behavior"
VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
SAMPLES = Path(__file__).parents[2] / "shared" / "fhir-samples"
SP_216 = (
    SAMPLES / "pcsp-pancaresurpass/test-and-validation/2022-december/Spain/2-changed_data/sp_216"
)


def i3(*resources):
    return result(run(*resources), "I3")


def cd19_positive() -> dict:
    return coded_observation("8117-4", LOINC, "LA9633-4", day="2026-11-01")


def histology_only(code: str) -> dict:
    """A Condition with no Condition.code, the morphology only in the mCODE extension."""
    res = condition(SNOMED, "x")
    del res["code"]
    res["extension"] = [{"url": HISTOLOGY, "valueCodeableConcept": concept(ICDO3, code)}]
    return res


def verified(res: dict, status: str) -> dict:
    res["verificationStatus"] = concept(VERIFICATION, status)
    return res


def test_snomed_b_all_is_met():
    cond = condition(SNOMED, "277571004", onset="2025-02-03")
    r = i3(cond)
    assert r.outcome is Outcome.MET
    assert "SNOMED CT 277571004" in r.reason and "onset 2025-02-03" in r.reason
    assert [e.reference for e in r.evidence] == [f"Condition/{cond['id']}"]


@pytest.mark.parametrize("code", ["9811/3", "9819/3", "9836/3"])
def test_icdo3_b_lymphoblastic_codes_are_met(code):
    r = i3(condition(ICDO3, code))
    assert r.outcome is Outcome.MET
    assert code in r.reason


def test_histology_extension_is_read():
    cond = histology_only("9811/3")
    r = i3(cond)
    assert r.outcome is Outcome.MET
    assert "in the histology extension of" in r.reason
    assert r.evidence[0].reference == f"Condition/{cond['id']}"


@pytest.mark.skipif(not SP_216.is_dir(), reason="../shared/fhir-samples not present")
def test_pcsp_sample_with_morphology_only_in_the_extension_is_met():
    pcsp_patient = json.loads((SP_216 / "Patient-47009.json").read_text(encoding="utf-8"))
    conditions = [
        json.loads(p.read_text(encoding="utf-8")) for p in sorted(SP_216.glob("Condition-*.json"))
    ]
    assert not any(c["id"] == "47010" and "code" in c for c in conditions)  # as published
    r = i3(pcsp_patient, *conditions)
    assert r.outcome is Outcome.MET
    assert "ICD-O-3 9836/3" in r.reason and "histology extension" in r.reason
    assert [e.reference for e in r.evidence] == ["Condition/47010"]


def test_t_all_only_is_not_met():
    cond = condition(ICDO3, "9837/3")
    r = i3(cond)
    assert r.outcome is Outcome.NOT_MET
    assert "9837/3" in r.reason and "no B-ALL or ALL diagnosis" in r.reason
    assert r.evidence[0].reference == f"Condition/{cond['id']}"


def test_other_leukemia_is_not_met():
    r = i3(condition(SNOMED, "91861009"))  # acute myeloid leukemia
    assert r.outcome is Outcome.NOT_MET
    assert "91861009" in r.reason


def test_no_condition_at_all_is_undetermined():
    r = i3()
    assert r.outcome is Outcome.UNDETERMINED
    assert "no Condition in the record" in r.reason
    assert r.needs[0].resource_type == "Condition"
    assert r.needs[0].valueset.endswith("/b-all-diagnosis")


@pytest.mark.parametrize("code", ["C91.00", "C91.02"])
def test_unstated_lineage_with_cd19_positive_is_met(code):
    cond = condition(ICD10CM, code)
    cd19 = cd19_positive()
    r = i3(cond, cd19)
    assert r.outcome is Outcome.MET
    assert "without a stated lineage" in r.reason and "B lineage shown by I2" in r.reason
    assert {e.reference for e in r.evidence} == {
        f"Condition/{cond['id']}",
        f"Observation/{cd19['id']}",
    }


def test_unstated_lineage_without_cd19_is_undetermined():
    r = i3(condition(ICDO3, "9835/3"))
    assert r.outcome is Outcome.UNDETERMINED
    assert "9835/3" in r.reason and "I2 is undetermined" in r.reason
    kinds = [n.resource_type for n in r.needs]
    assert kinds[0] == "Condition" and "Observation" in kinds


def test_unstated_lineage_with_cd19_negative_is_undetermined():
    negative = coded_observation("8117-4", LOINC, "LA9634-2", day="2026-11-01")
    r = i3(condition(SNOMED, "91857003"), negative)
    assert r.outcome is Outcome.UNDETERMINED
    assert "I2 is not met" in r.reason and "does not rule out B lineage" in r.reason


def test_refuted_b_all_is_ignored():
    refuted = verified(condition(SNOMED, "277571004"), "refuted")
    t_all = condition(ICDO3, "9837/3")
    r = i3(refuted, t_all)
    assert r.outcome is Outcome.NOT_MET
    assert f"Condition/{refuted['id']}" not in {e.reference for e in r.evidence}


def test_only_refuted_conditions_is_undetermined():
    r = i3(verified(condition(SNOMED, "277571004"), "entered-in-error"))
    assert r.outcome is Outcome.UNDETERMINED
    assert "refuted or entered in error" in r.reason


@pytest.mark.parametrize("status", ["provisional", "differential", "unconfirmed"])
def test_unconfirmed_diagnosis_is_undetermined_and_says_why(status):
    cond = verified(condition(SNOMED, "277571004"), status)
    r = i3(cond)
    assert r.outcome is Outcome.UNDETERMINED
    assert "recorded but not confirmed" in r.reason
    assert f"verification status: {status}" in r.reason
    assert [e.reference for e in r.evidence] == [f"Condition/{cond['id']}"]
    assert r.needs[0].resource_type == "Condition"


def test_unreadable_verification_status_is_not_a_confirmation():
    cond = condition(SNOMED, "277571004")
    cond["verificationStatus"] = {"text": "confirmed?"}
    r = i3(cond)
    assert r.outcome is Outcome.UNDETERMINED
    assert "verification status: unreadable" in r.reason


def test_absent_verification_status_counts_with_a_caveat():
    r = i3(condition(SNOMED, "277571004"))
    assert r.outcome is Outcome.MET
    assert "verification status not recorded" in r.reason


def test_confirmed_diagnosis_is_met_without_caveat_next_to_a_provisional_one():
    confirmed = verified(condition(SNOMED, "277571004"), "confirmed")
    provisional = verified(condition(ICDO3, "9811/3"), "provisional")
    r = i3(confirmed, provisional)
    assert r.outcome is Outcome.MET
    assert "verification status" not in r.reason
    assert [e.reference for e in r.evidence] == [f"Condition/{confirmed['id']}"]


def test_unconfirmed_unstated_lineage_is_not_upgraded_by_cd19():
    r = i3(verified(condition(ICD10CM, "C91.00"), "provisional"), cd19_positive())
    assert r.outcome is Outcome.UNDETERMINED
    assert "not confirmed" in r.reason and "C91.00" in r.reason


def test_unstated_lineage_with_cd19_decides_over_an_unconfirmed_b_all():
    provisional = verified(condition(SNOMED, "277571004"), "provisional")
    r = i3(provisional, condition(ICD10CM, "C91.00"), cd19_positive())
    assert r.outcome is Outcome.MET
    assert "B lineage shown by I2" in r.reason


def test_accepted_verification_statuses_come_from_the_protocol():
    assert default_protocol().general["condition_confirmed_verification"] == ["confirmed"]


# -- conflicting lineage ----------------------------------------------------------------------


def test_t_all_next_to_unstated_lineage_and_cd19_positive_is_undetermined():
    t_all, unstated = condition(ICDO3, "9837/3"), condition(ICD10CM, "C91.00")
    r = i3(t_all, unstated, cd19_positive())
    assert r.outcome is Outcome.UNDETERMINED
    assert r.reason.startswith("conflicting lineage: Precursor T-cell lymphoblastic leukemia")
    assert "C91.00" in r.reason
    assert {e.reference for e in r.evidence} == {
        f"Condition/{t_all['id']}",
        f"Condition/{unstated['id']}",
    }


def test_t_all_next_to_b_all_is_undetermined():
    r = i3(condition(ICDO3, "9837/3"), condition(SNOMED, "277571004"))
    assert r.outcome is Outcome.UNDETERMINED
    assert "conflicting lineage" in r.reason and "277571004" in r.reason


def test_refuted_t_all_does_not_conflict():
    refuted = verified(condition(ICDO3, "9837/3"), "refuted")
    r = i3(refuted, condition(SNOMED, "277571004"))
    assert r.outcome is Outcome.MET


def test_t_all_in_the_histology_extension_conflicts_too():
    r = i3(histology_only("9837/3"), condition(ICD10CM, "C91.02"), cd19_positive())
    assert r.outcome is Outcome.UNDETERMINED
    assert "conflicting lineage" in r.reason and "histology extension" in r.reason


def test_text_only_condition_is_not_read():
    text_only = condition(SNOMED, "x")
    text_only["code"] = {"text": "B-ALL"}
    r = i3(text_only)
    assert r.outcome is Outcome.UNDETERMINED
    assert "text only" in r.reason and f"Condition/{text_only['id']}" in r.reason


def test_condition_with_onset_after_the_evaluation_date_is_ignored():
    r = i3(condition(SNOMED, "277571004", onset="2027-01-05"))
    assert r.outcome is Outcome.UNDETERMINED
    assert "no Condition known on or before 2026-11-20" in r.reason


def test_condition_without_onset_recorded_after_the_evaluation_date_is_ignored():
    r = i3(condition(SNOMED, "277571004", recordedDate="2026-12-01"))
    assert r.outcome is Outcome.UNDETERMINED
    assert "no Condition known on or before 2026-11-20 (by onset, else record date)" in r.reason


@pytest.mark.parametrize(
    ("extra", "outcome"),
    [
        ({"recordedDate": "2026-11-20"}, Outcome.MET),
        ({"recordedDate": "2026-11"}, Outcome.MET),  # may be on or before: kept, like onset
        ({"recordedDate": "2026-12-01", "onsetDateTime": "2022-01-01"}, Outcome.MET),
        ({"recordedDate": "2027"}, Outcome.UNDETERMINED),
    ],
)
def test_record_date_decides_only_without_onset(extra, outcome):
    assert i3(condition(SNOMED, "277571004", **extra)).outcome is outcome


def test_a_truncated_condition_search_makes_a_met_undetermined():
    protocol = default_protocol()
    record = record_from_resources(
        patient(), [condition(SNOMED, "277571004")], protocol, truncated=frozenset({"Condition"})
    )
    r = result(evaluate(record, protocol, AS_OF), "I3")
    assert r.outcome is Outcome.UNDETERMINED
    assert "truncated" in r.reason


# -- the words come from the protocol ---------------------------------------------------------

T_LBL = {
    "disease": "LBL",
    "confirmed_disease": "T-LBL",
    "confirmed_disease_long": "T-cell LBL",
    "lineage": "T",
    "lineage_marker": "CD7",
}
# This trial's words; code displays from the ValueSets ("B-cell acute ...") may still appear.
B_ALL_WORDS = re.compile(r"\bALL\b|B-ALL|B-cell ALL|CD19|\bB lineage")


def relabelled(**words: str) -> Protocol:
    """The default protocol with I3's naming parameters replaced."""
    protocol = default_protocol()
    base = protocol.criteria["I3"]
    criteria = {
        **protocol.criteria,
        "I3": dataclasses.replace(base, params={**base.params, **words}),
    }
    return dataclasses.replace(protocol, criteria=criteria)


def i3_as(words: dict[str, str], *resources: dict) -> CriterionResult:
    """I3 evaluated with the protocol's naming parameters replaced by ``words``."""
    protocol = relabelled(**words)
    record = record_from_resources(patient(), list(resources), protocol)
    return result(evaluate(record, protocol, AS_OF), "I3")


def text_only() -> dict:
    res = condition(SNOMED, "x")
    res["code"] = {"text": "lymphoblastic lymphoma"}
    return res


def test_the_default_protocol_names_b_all():
    params = default_protocol().criteria["I3"].params
    assert {k: params[k] for k in T_LBL} == {
        "disease": "ALL",
        "confirmed_disease": "B-ALL",
        "confirmed_disease_long": "B-cell ALL",
        "lineage": "B",
        "lineage_marker": "CD19",
    }


@pytest.mark.parametrize(
    ("resources", "expected"),
    [
        (lambda: [condition(SNOMED, "277571004")], "T-LBL diagnosis recorded: "),
        (lambda: [condition(ICDO3, "9837/3")], "no T-LBL or LBL diagnosis among 1 coded"),
        (lambda: [text_only()], "no coded LBL diagnosis; 1 Condition(s) have no code"),
        (
            lambda: [verified(condition(SNOMED, "277571004"), "provisional")],
            "LBL diagnosis recorded but not confirmed: ",
        ),
        (
            lambda: [condition(ICDO3, "9837/3"), condition(SNOMED, "277571004")],
            "; the T lineage is not taken as shown while another lineage is recorded",
        ),
        (
            lambda: [condition(ICDO3, "9835/3")],
            "LBL recorded without a stated lineage: ",
        ),
        (
            lambda: [
                condition(SNOMED, "91857003"),
                coded_observation("8117-4", LOINC, "LA9634-2", day="2026-11-01"),
            ],
            "; T lineage is not shown because I2 is not met "
            "(a CD7-negative result does not rule out T lineage)",
        ),
    ],
)
def test_reasons_use_the_protocol_words(resources, expected):
    r = i3_as(T_LBL, *resources())
    assert expected in r.reason
    assert not B_ALL_WORDS.search(r.reason), r.reason
    title = default_protocol().criteria["I3"].title
    for need in r.needs:
        if need.resource_type == "Condition":
            assert need.description == (
                f"{title}: a Condition coded as T-cell LBL "
                "(Condition.code or the histology-morphology-behavior extension)"
            )


def test_lineage_shown_by_the_named_criterion_uses_the_protocol_words():
    r = i3_as(T_LBL, condition(ICD10CM, "C91.00"), cd19_positive())
    assert r.outcome is Outcome.MET
    assert r.reason.startswith("LBL recorded without a stated lineage: ")
    assert "; T lineage shown by I2 (" in r.reason


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("CD19-negative result", "a CD19-negative result"),
        ("MPO-negative result", "an MPO-negative result"),
        ("ALL Condition", "an ALL Condition"),
        ("CLL Condition", "a CLL Condition"),
        ("lymphoma Condition", "a lymphoma Condition"),
        ("acute leukemia", "an acute leukemia"),
    ],
)
def test_with_article(word, expected):
    assert with_article(word) == expected
