"""I4 — relapsed/refractory disease from a dated timeline (AS_OF is 2026-11-20)."""

from __future__ import annotations

import dataclasses
from datetime import date

import pytest

from service.clinical.model import CriterionResult, Outcome
from service.clinical.rules import RULES, Context, load_all
from service.clinical.rules.relapse import add_months, relapsed_refractory, whole_months
from service.protocol import default_protocol
from service.record import record_from_bundle
from tests.builders import (
    AS_OF,
    ICD10CM,
    ICDO3,
    SNOMED,
    bundle,
    coded_observation,
    concept,
    condition,
    patient,
    procedure,
    result,
    run,
)

CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
HISTOLOGY = "http://hl7.org/fhir/us/mcode/StructureDefinition/mcode-histology-morphology-behavior"
REMISSION, RELAPSE, REFRACTORY = "103338009", "263855007", "266721009"
PROGRESSION = "419835002"


def dx(onset: str | None = "2022-01-01", **extra) -> dict:
    return condition(SNOMED, "277571004", onset=onset, **extra)


def status(day: str, value: str) -> dict:
    return coded_observation("97509-4", SNOMED, value, day=day)


def chemo(day: str, **extra) -> dict:
    return procedure(SNOMED, "367336001", performed=day, **extra)


def i4(*resources, as_of: date = AS_OF):
    return result(run(*resources, as_of=as_of), "I4")


def refs(r) -> set[str]:
    return {e.reference for e in r.evidence}


def test_two_relapses_separated_by_remission_are_met():
    first, second = status("2023-06-01", RELAPSE), status("2025-10-01", RELAPSE)
    r = i4(
        dx(),
        status("2022-03-01", REMISSION),
        first,
        status("2023-09-01", REMISSION),
        second,
    )
    assert r.outcome is Outcome.MET
    assert "2 relapse episodes" in r.reason and "2023-06-01, 2025-10-01" in r.reason
    assert {f"Observation/{first['id']}", f"Observation/{second['id']}"} <= refs(r)


def test_two_relapse_results_without_remission_between_are_one_episode():
    r = i4(
        dx(),
        status("2022-03-01", REMISSION),
        status("2024-06-01", RELAPSE),
        status("2024-07-01", RELAPSE),
    )
    assert r.outcome is Outcome.UNDETERMINED
    assert "relapse is recorded (1 dated relapse episode(s))" in r.reason
    assert "2024-06-01 relapse; 2024-07-01 relapse" in r.reason
    assert [n.resource_type for n in r.needs] == ["Observation", "Procedure"]


def test_same_day_remission_does_not_split_an_episode():
    r = i4(
        dx(),
        status("2022-03-01", REMISSION),
        status("2024-06-01", RELAPSE),
        status("2024-07-01", REMISSION),
        status("2024-07-01", RELAPSE),
    )
    assert r.outcome is Outcome.UNDETERMINED
    assert "(1 dated relapse episode(s); a remission on the day of a relapse (2024-07-01)" in (
        r.reason
    )
    assert "2024-07-01 relapse; 2024-07-01 remission" in r.reason


def test_same_day_relapse_and_remission_never_separate_two_episodes():
    # Relapse and remission on one day, then a relapse a month later: which came first on
    # that day is unknown, so the remission cannot prove two separate episodes.
    r = i4(
        dx(),
        status("2022-03-01", REMISSION),
        status("2026-09-01", RELAPSE),
        status("2026-09-01", REMISSION),
        status("2026-10-01", RELAPSE),
    )
    assert r.outcome is Outcome.UNDETERMINED
    assert "(1 dated relapse episode(s); a remission on the day of a relapse (2026-09-01)" in (
        r.reason
    )
    assert any("order is unknown" in i.message for i in r.issues)


def test_remission_on_another_day_still_separates_episodes():
    r = i4(
        dx(),
        status("2022-03-01", REMISSION),
        status("2026-09-01", RELAPSE),
        status("2026-09-02", REMISSION),
        status("2026-10-01", RELAPSE),
    )
    assert r.outcome is Outcome.MET
    assert "2 relapse episodes" in r.reason
    assert not r.issues


def test_first_remission_of_8_months_then_relapse_is_met():
    remission, relapse = status("2024-01-10", REMISSION), status("2024-09-12", RELAPSE)
    r = i4(dx("2023-11-01"), chemo("2023-11-05"), remission, relapse)
    assert r.outcome is Outcome.MET
    assert "8 whole calendar month(s), under 12" in r.reason
    assert "a relapse before 2025-01-10 counts" in r.reason
    assert {f"Observation/{remission['id']}", f"Observation/{relapse['id']}"} <= refs(r)


def test_first_remission_of_20_months_then_relapse_without_salvage_is_undetermined():
    r = i4(
        dx("2022-12-20"),
        chemo("2023-01-05"),
        status("2023-03-01", REMISSION),
        status("2024-11-02", RELAPSE),
    )
    assert r.outcome is Outcome.UNDETERMINED
    assert (
        "Timeline: 2022-12-20 diagnosis; 2023-01-05 treatment; 2023-03-01 remission; "
        "2024-11-02 relapse" in r.reason
    )


def test_refractory_value_is_met():
    obs = status("2025-05-05", REFRACTORY)
    r = i4(dx(), obs)
    assert r.outcome is Outcome.MET
    assert "refractory disease on 2025-05-05" in r.reason and "266721009" in r.reason
    assert f"Observation/{obs['id']}" in refs(r)


def test_chemo_then_progression_without_remission_is_primary_refractory():
    treatment, progression = chemo("2024-01-10"), status("2024-03-01", PROGRESSION)
    r = i4(dx("2024-01-02"), treatment, progression)
    assert r.outcome is Outcome.MET
    assert "primary refractory" in r.reason and "treatment on 2024-01-10" in r.reason
    assert {f"Procedure/{treatment['id']}", f"Observation/{progression['id']}"} <= refs(r)


def test_remission_after_chemo_is_not_primary_refractory():
    r = i4(
        dx("2024-01-02"),
        chemo("2024-01-10"),
        status("2024-02-01", PROGRESSION),
        status("2024-04-01", REMISSION),
    )
    # Progression (in the relapse ValueSet) before the remission still rules out "not met".
    assert r.outcome is Outcome.UNDETERMINED
    assert "primary refractory" not in r.reason and "2024-04-01 remission" in r.reason


def test_failed_salvage_after_relapse_is_met():
    salvage = chemo("2024-05-10")
    r = i4(
        dx(),
        chemo("2022-01-10"),
        status("2022-03-01", REMISSION),
        status("2024-05-01", RELAPSE),
        salvage,
        status("2024-08-01", RELAPSE),
    )
    assert r.outcome is Outcome.MET
    assert "salvage after relapse on 2024-05-01 failed" in r.reason
    assert f"Procedure/{salvage['id']}" in refs(r)


def test_treatment_given_in_remission_is_not_a_failure():
    r = i4(
        dx(),
        chemo("2022-01-10"),
        status("2022-03-01", REMISSION),
        chemo("2022-04-01"),  # consolidation, in remission
        status("2024-05-01", RELAPSE),
    )
    assert r.outcome is Outcome.UNDETERMINED
    assert "relapse is recorded" in r.reason


def test_diagnosis_and_remission_only_is_not_met():
    diagnosis, remission = dx(), status("2022-03-01", REMISSION)
    r = i4(diagnosis, chemo("2022-01-10"), remission)
    assert r.outcome is Outcome.NOT_MET
    assert "documented remission and no relapse" in r.reason
    assert {f"Condition/{diagnosis['id']}", f"Observation/{remission['id']}"} <= refs(r)


def test_no_disease_status_data_is_undetermined():
    r = i4(dx())
    assert r.outcome is Outcome.UNDETERMINED
    assert "no remission, relapse or refractory status is recorded" in r.reason
    assert r.needs[0].valueset.endswith("/disease-status-observation")


def test_nothing_at_all_is_undetermined_and_asks_for_the_diagnosis():
    r = i4()
    assert r.outcome is Outcome.UNDETERMINED
    assert "no ALL diagnosis, disease status or treatment found" in r.reason
    assert r.needs[0].resource_type == "Condition"


def test_events_after_the_evaluation_date_are_ignored():
    late = status("2026-12-01", RELAPSE)
    r = i4(
        dx(),
        status("2022-03-01", REMISSION),
        late,
        condition(ICD10CM, "C91.02", onset="2027-01-01"),
    )
    assert r.outcome is Outcome.NOT_MET
    assert "2026-12-01" not in r.reason
    assert f"Observation/{late['id']}" not in refs(r)


def test_c91_02_condition_onset_is_a_relapse():
    remission = condition(ICD10CM, "C91.01", onset="2024-01-10")
    relapse = condition(ICD10CM, "C91.02", onset="2024-06-01")
    r = i4(remission, relapse)
    assert r.outcome is Outcome.MET
    assert "C91.02" in r.reason and "4 whole calendar month(s)" in r.reason
    assert {f"Condition/{remission['id']}", f"Condition/{relapse['id']}"} <= refs(r)


def test_c91_02_onset_before_any_remission_is_not_a_dated_relapse():
    # One Condition coded C91.02 whose onset is the first diagnosis (as many systems record
    # it), then remission and one late relapse: only one relapse can be placed.
    diagnosis = condition(ICD10CM, "C91.02", onset="2023-12-06")
    r = i4(diagnosis, status("2024-01-23", REMISSION), status("2025-06-01", RELAPSE))
    assert r.outcome is Outcome.UNDETERMINED
    assert "(1 dated relapse episode(s), 1 undated)" in r.reason
    assert "onset 2023-12-06 is not after a documented remission" in r.reason
    assert f"Condition/{diagnosis['id']}" in refs(r)


def test_clinical_status_relapse_is_undated_relapse_evidence():
    relapsed = dx(clinicalStatus=concept(CLINICAL, "relapse"))
    r = i4(relapsed, status("2024-01-10", REMISSION))
    # Evidence of relapse rules out "not met", but an undated relapse cannot make it met,
    # not even by the short-first-remission rule.
    assert r.outcome is Outcome.UNDETERMINED
    assert "0 dated relapse episode(s), 1 undated" in r.reason
    assert "undated relapse (clinical status relapse" in r.reason
    assert f"Condition/{relapsed['id']}" in refs(r)


def test_undated_relapse_never_adds_a_second_episode():
    r = i4(
        dx(onset=None, clinicalStatus=concept(CLINICAL, "recurrence")),
        status("2022-03-01", REMISSION),
        status("2024-05-01", RELAPSE),
    )
    assert r.outcome is Outcome.UNDETERMINED


def test_undated_remission_blocks_the_short_first_remission_rule():
    r = i4(
        condition(ICD10CM, "C91.01"),  # in remission, no onset: may be the real first one
        status("2024-01-10", REMISSION),
        status("2024-06-01", RELAPSE),
    )
    assert r.outcome is Outcome.UNDETERMINED
    assert "undated remission" in r.reason


def test_refuted_and_not_done_inputs_are_ignored():
    refuted = dx(
        verificationStatus=concept(
            "http://terminology.hl7.org/CodeSystem/condition-ver-status", "refuted"
        )
    )
    not_done = chemo("2024-01-10", status="not-done")
    r = i4(refuted, not_done, status("2024-03-01", PROGRESSION))
    assert r.outcome is Outcome.UNDETERMINED
    assert not refs(r) & {f"Condition/{refuted['id']}", f"Procedure/{not_done['id']}"}


def test_status_neither_remission_nor_relapse_prevents_not_met():
    stable = status("2024-06-01", "359746009")  # patient's condition stable
    r = i4(dx(), status("2022-03-01", REMISSION), stable)
    assert r.outcome is Outcome.UNDETERMINED
    assert "after the last remission is neither remission, relapse nor refractory" in r.reason
    assert f"Observation/{stable['id']}" in refs(r)


def test_preliminary_status_is_ignored():
    r = i4(dx(), coded_observation("97509-4", SNOMED, REFRACTORY, status="preliminary"))
    assert r.outcome is Outcome.UNDETERMINED
    assert any("preliminary" in i.message for i in r.issues)


def test_undated_relapse_observation_prevents_not_met():
    undated = status("2024-01-01", RELAPSE)
    del undated["effectiveDateTime"]
    r = i4(dx(), status("2022-03-01", REMISSION), undated)
    assert r.outcome is Outcome.UNDETERMINED
    assert "undated relapse" in r.reason


def test_histology_extension_is_read_when_the_protocol_names_it():
    cond = condition(SNOMED, "x", onset="2022-01-01")
    del cond["code"]
    cond["extension"] = [{"url": HISTOLOGY, "valueCodeableConcept": concept(ICDO3, "9836/3")}]
    protocol = default_protocol()
    record = record_from_bundle(bundle(patient(), cond, status("2022-03-01", REMISSION)), protocol)
    base = protocol.criteria["I4"]
    with_ext = dataclasses.replace(base, params={**base.params, "histology_extension": HISTOLOGY})
    r = relapsed_refractory(with_ext, Context(record, protocol, AS_OF))
    assert r.outcome is Outcome.NOT_MET
    assert f"Condition/{cond['id']}" in refs(r)


def test_reads_conditions_and_procedures():
    load_all()
    assert RULES["relapsed_refractory"].reads == {"Condition", "Procedure"}


@pytest.mark.parametrize(
    ("start", "months", "expected"),
    [
        (date(2024, 1, 31), 1, date(2024, 2, 29)),
        (date(2023, 1, 31), 1, date(2023, 2, 28)),
        (date(2024, 1, 10), 12, date(2025, 1, 10)),
        (date(2024, 11, 15), 3, date(2025, 2, 15)),
    ],
)
def test_add_months_clamps_to_the_end_of_the_month(start, months, expected):
    assert add_months(start, months) == expected


def test_whole_months():
    assert whole_months(date(2024, 1, 10), date(2024, 9, 12)) == 8
    assert whole_months(date(2024, 1, 10), date(2025, 1, 9)) == 11
    assert whole_months(date(2024, 1, 10), date(2025, 1, 10)) == 12


# -- what a disease status is about (Observation.focus) --------------------------------------


def about(obs: dict, *targets: str) -> dict:
    obs["focus"] = [{"reference": t} for t in targets]
    return obs


def test_status_about_an_all_condition_is_used():
    diagnosis = dx()
    refractory = about(status("2025-05-05", REFRACTORY), f"Condition/{diagnosis['id']}")
    r = i4(diagnosis, refractory)
    assert r.outcome is Outcome.MET
    assert "refractory disease on 2025-05-05" in r.reason
    assert not r.issues


def test_versioned_focus_reference_is_read():
    diagnosis = dx()
    target = f"Condition/{diagnosis['id']}/_history/3"
    assert i4(diagnosis, about(status("2025-05-05", REFRACTORY), target)).outcome is Outcome.MET


def test_status_about_another_condition_is_not_used():
    breast = condition(SNOMED, "254837009", onset="2019-01-01")
    refractory = about(status("2020-01-01", REFRACTORY), f"Condition/{breast['id']}")
    r = i4(dx(), status("2022-03-01", REMISSION), breast, refractory)
    assert r.outcome is Outcome.NOT_MET
    assert "2020-01-01" not in r.reason
    assert f"Observation/{refractory['id']}" not in refs(r)
    [issue] = r.issues
    assert "about another Condition" in issue.message
    assert issue.expression == f"Observation/{refractory['id']}"


@pytest.mark.parametrize(
    "target",
    [
        "Condition/not-in-the-record",
        "https://other.example.org/fhir/Condition/x",
        "urn:uuid:0d6c1f0e-2d6e-4a0e-9a55-6c1c3b0d2a11",
        "Procedure/x",
    ],
)
def test_status_with_an_unresolved_focus_keeps_the_criterion_open(target):
    refractory = about(status("2025-05-05", REFRACTORY), target)
    r = i4(dx(), status("2022-03-01", REMISSION), refractory)
    assert r.outcome is Outcome.UNDETERMINED  # neither met (refractory) nor not met
    assert "1 not tied to the ALL" in r.reason
    assert "2025-05-05 refractory not tied to the ALL" in r.reason
    assert any("not placed on the timeline" in i.message for i in r.issues)


def test_focus_on_both_the_all_and_another_condition_is_unresolved():
    diagnosis, breast = dx(), condition(SNOMED, "254837009", onset="2019-01-01")
    refractory = about(
        status("2025-05-05", REFRACTORY),
        f"Condition/{diagnosis['id']}",
        f"Condition/{breast['id']}",
    )
    r = i4(diagnosis, breast, status("2022-03-01", REMISSION), refractory)
    assert r.outcome is Outcome.UNDETERMINED


def test_unplaced_remission_blocks_the_failed_treatment_rule():
    # Without the remission this is primary refractory disease; a remission whose focus
    # cannot be resolved may be this ALL's, so "no remission after treatment" is not shown.
    remission = about(status("2024-02-01", REMISSION), "Condition/unknown")
    r = i4(dx("2024-01-02"), chemo("2024-01-10"), remission, status("2024-03-01", PROGRESSION))
    assert r.outcome is Outcome.UNDETERMINED
    assert "primary refractory" not in r.reason


def test_unplaced_remission_does_not_make_not_met():
    remission = about(status("2024-02-01", REMISSION), "Condition/unknown")
    r = i4(dx(), remission)
    assert r.outcome is Outcome.UNDETERMINED


def test_condition_recorded_after_the_evaluation_date_without_onset_is_ignored():
    late = condition(ICD10CM, "C91.02", recordedDate="2026-12-01")
    r = i4(dx(), status("2022-03-01", REMISSION), late)
    assert r.outcome is Outcome.NOT_MET
    assert f"Condition/{late['id']}" not in refs(r)


# -- the words come from the protocol ---------------------------------------------------------

CLL = {"disease": "CLL", "treatment": "CLL-directed treatment"}


def i4_as(words: dict[str, str], *resources: dict) -> CriterionResult:
    """I4 evaluated with the protocol's naming parameters replaced by ``words``."""
    protocol = default_protocol()
    base = protocol.criteria["I4"]
    criteria = {
        **protocol.criteria,
        "I4": dataclasses.replace(base, params={**base.params, **words}),
    }
    protocol = dataclasses.replace(protocol, criteria=criteria)
    record = record_from_bundle(bundle(patient(), *resources), protocol)
    return relapsed_refractory(protocol.criteria["I4"], Context(record, protocol, AS_OF))


def words(r: CriterionResult) -> str:
    """Everything the result says: reason, data requests and issues."""
    return " | ".join([r.reason, *(n.description for n in r.needs), *(i.message for i in r.issues)])


def test_the_default_protocol_names_all():
    params = default_protocol().criteria["I4"].params
    assert (params["disease"], params["treatment"]) == ("ALL", "antileukemic treatment")


def test_nothing_at_all_asks_in_the_protocol_words():
    r = i4_as(CLL)
    assert r.reason.startswith("no CLL diagnosis, disease status or treatment found.")
    assert [n.description for n in r.needs] == [
        "the CLL diagnosis",
        "dated disease-status assessments (remission, relapse, refractory) of the CLL",
        "dated CLL-directed treatment lines",
    ]
    assert "ALL" not in words(r) and "antileukemic" not in words(r)


def test_status_without_a_diagnosis_uses_the_protocol_words():
    r = i4_as(CLL, status("2022-03-01", REMISSION))
    assert r.reason.startswith("no CLL diagnosis is recorded with the disease-status data.")


def test_not_met_uses_the_protocol_words():
    r = i4_as(CLL, dx(), status("2022-03-01", REMISSION))
    assert r.outcome is Outcome.NOT_MET
    assert r.reason.startswith("CLL diagnosis with documented remission and no relapse")
    assert "ALL" not in words(r)


def test_focus_issues_use_the_protocol_words():
    breast = condition(SNOMED, "254837009", onset="2019-01-01")
    other = about(status("2020-01-01", REFRACTORY), f"Condition/{breast['id']}")
    unknown = about(status("2025-05-05", REFRACTORY), "Condition/not-in-the-record")
    r = i4_as(CLL, dx(), status("2022-03-01", REMISSION), breast, other, unknown)
    assert r.outcome is Outcome.UNDETERMINED
    assert "1 not tied to the CLL" in r.reason
    assert "2025-05-05 refractory not tied to the CLL" in r.reason
    messages = [i.message for i in r.issues]
    assert "disease status is about another Condition (focus), not the CLL; not used" in messages
    assert (
        "disease status has a focus that is not a CLL Condition of this patient; "
        "not placed on the timeline"
    ) in messages
    assert "ALL" not in words(r)
