"""Investigator attestations (I5, I11), survival (I9) and informed consent (I12)."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from service.clinical.engine import _run
from service.clinical.model import CriterionResult, Outcome
from service.clinical.rules import RULES, Context
from service.clinical.rules import attestations as _attestations  # noqa: F401  (registers)
from service.protocol import default_protocol
from service.record import record_from_bundle
from tests.builders import (
    AS_OF,
    SNOMED,
    bundle,
    consent,
    patient,
    procedure,
    qr_item,
    questionnaire_response,
)

CPT = "http://www.ama-assn.org/go/cpt"
RECENT = AS_OF - timedelta(days=5)  # 2026-11-15


def evaluate(code: str, *resources: dict, as_of: date = AS_OF, truncated=frozenset()):
    """Run one criterion's rule over a Bundle of ``resources`` (plus a default Patient)."""
    protocol = default_protocol()
    res = list(resources)
    if not any(r["resourceType"] == "Patient" for r in res):
        res.insert(0, patient())
    record = record_from_bundle(bundle(*res), protocol)
    record.truncated = frozenset(truncated)
    criterion = protocol.criteria[code]
    ctx = Context(record, protocol, as_of)
    if truncated:
        return _run(criterion, ctx, RULES)
    return RULES[criterion.rule].evaluate(criterion, ctx)


def refs(result: CriterionResult) -> list[str]:
    return [e.reference for e in result.evidence]


def messages(result: CriterionResult) -> str:
    return " | ".join(i.message for i in result.issues)


# -- the attestation lookup (through I11, a plain attestation) ------------------------------


def test_attested_true_is_met_with_author_and_date():
    qr = questionnaire_response({"I11": True}, authored=RECENT)
    r = evaluate("I11", qr)
    assert r.outcome is Outcome.MET
    assert r.reason == "I11 attested true by Practitioner/dr-x on 2026-11-15"
    assert refs(r) == [f"QuestionnaireResponse/{qr['id']}"]


def test_attested_false_is_not_met():
    qr = questionnaire_response({"I11": False}, authored=RECENT)
    r = evaluate("I11", qr)
    assert r.outcome is Outcome.NOT_MET
    assert "attested false by Practitioner/dr-x on 2026-11-15" in r.reason
    assert refs(r) == [f"QuestionnaireResponse/{qr['id']}"]


def test_author_display_is_preferred():
    qr = questionnaire_response({"I11": True}, authored=RECENT)
    qr["author"] = {"reference": "Practitioner/dr-x", "display": "Dr X"}
    assert "attested true by Dr X on" in evaluate("I11", qr).reason


# -- who may attest -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "author",
    [
        {"reference": "PractitionerRole/pi-1"},
        {"reference": "https://ehr.example.org/fhir/Practitioner/dr-x"},
        {"reference": "Practitioner/dr-x/_history/2"},
        {"reference": "Practitioner/dr-x", "type": "Practitioner"},
        {"reference": "urn:uuid:4b1d6b3e-8a4e-4f0c-9d5e-2f6b7c1a0e11", "type": "Practitioner"},
    ],
)
def test_investigator_authors_count(author):
    qr = questionnaire_response({"I11": True}, authored=RECENT) | {"author": author}
    assert evaluate("I11", qr).outcome is Outcome.MET


def test_contained_practitioner_author_counts():
    qr = questionnaire_response({"I11": True}, authored=RECENT)
    qr["contained"] = [{"resourceType": "Practitioner", "id": "pi"}]
    qr["author"] = {"reference": "#pi"}
    assert evaluate("I11", qr).outcome is Outcome.MET


@pytest.mark.parametrize(
    ("author", "shown"),
    [
        ({"reference": "Patient/p1"}, "authored by Patient/p1"),
        ({"reference": "RelatedPerson/mother"}, "authored by RelatedPerson/mother"),
        ({"reference": "Device/tablet"}, "authored by Device/tablet"),
        ({"reference": "Practitioner/dr-x", "type": "Patient"}, "authored by Practitioner/dr-x"),
        ({"reference": "urn:uuid:4b1d6b3e-8a4e-4f0c-9d5e-2f6b7c1a0e11"}, "authored by urn:"),
        ({"display": "Dr X"}, "with no author reference"),
        (None, "with no author reference"),
    ],
    ids=["patient", "relative", "device", "type-disagrees", "urn-untyped", "display", "none"],
)
def test_other_authors_are_ignored_and_named(author, shown):
    qr = questionnaire_response({"I11": True}, authored=RECENT, author=None)
    if author is not None:
        qr["author"] = author
    r = evaluate("I11", qr)
    assert r.outcome is Outcome.UNDETERMINED
    assert r.reason.startswith(
        "no investigator attestation of I11 found; ignored, not authored by a Practitioner "
        f"or PractitionerRole: QuestionnaireResponse/{qr['id']} ({shown}"
    )
    assert shown in messages(r) and "not used" in messages(r)
    assert r.evidence == []


def test_older_investigator_answer_counts_when_a_newer_other_one_agrees():
    older = questionnaire_response({"I11": True}, authored=AS_OF - timedelta(days=10))
    newer = questionnaire_response({"I11": True}, authored=RECENT, author="Patient/p1")
    r = evaluate("I11", older, newer)
    assert r.outcome is Outcome.MET
    assert "on 2026-11-10" in r.reason
    assert "authored by Patient/p1" in messages(r)


def test_newer_different_answer_by_someone_else_leaves_the_item_open():
    older = questionnaire_response({"I9": True}, authored=AS_OF - timedelta(days=10))
    newer = questionnaire_response({"I9": False}, authored=RECENT, author=None)
    r = evaluate("I9", older, newer)
    assert r.outcome is Outcome.UNDETERMINED
    assert r.reason.startswith("I9 attested true by Practitioner/dr-x on 2026-11-10, but a ")
    assert f"QuestionnaireResponse/{newer['id']} (with no author reference, 2026-11-15)" in (
        r.reason
    )


def test_older_different_answer_by_someone_else_does_not_matter():
    older = questionnaire_response({"I11": False}, authored=AS_OF - timedelta(days=10))
    older["author"] = {"reference": "Patient/p1"}
    newer = questionnaire_response({"I11": True}, authored=RECENT)
    assert evaluate("I11", older, newer).outcome is Outcome.MET


def test_author_types_come_from_the_protocol():
    general = default_protocol().general
    assert general["attestation_author_types"] == ["Practitioner", "PractitionerRole"]


# -- one item answered twice in one response ------------------------------------------------


def test_item_answered_twice_with_different_answers_is_undetermined():
    qr = questionnaire_response(
        {"I9": True}, items=[qr_item("group", items=[qr_item("I9", False)])], authored=RECENT
    )
    r = evaluate("I9", qr)
    assert r.outcome is Outcome.UNDETERMINED
    assert r.reason == (
        "the latest attestation of I9 (2026-11-15) answers it more than once, with different "
        "answers"
    )
    assert "given more than once in the response" in messages(r)
    assert refs(r) == [f"QuestionnaireResponse/{qr['id']}"]


def test_item_answered_twice_alike_or_once_unanswered_counts():
    alike = questionnaire_response({"I9": True}, items=[qr_item("I9", True)], authored=RECENT)
    assert evaluate("I9", alike).outcome is Outcome.MET
    empty_copy = questionnaire_response({"I9": False}, items=[qr_item("I9")], authored=RECENT)
    assert evaluate("I9", empty_copy).outcome is Outcome.NOT_MET


def test_missing_attestation_is_undetermined_and_asks_for_it():
    r = evaluate("I11")
    assert r.outcome is Outcome.UNDETERMINED
    assert r.reason == "no investigator attestation of I11 found"
    assert r.evidence == []
    [need] = r.needs
    assert need.resource_type == "QuestionnaireResponse"
    assert "item I11" in need.description
    assert default_protocol().questionnaire_url in need.description


def test_attestation_older_than_window_is_not_used():
    old = AS_OF - timedelta(days=31)
    r = evaluate("I11", questionnaire_response({"I11": True}, authored=old))
    assert r.outcome is Outcome.UNDETERMINED
    assert r.reason == "the latest attestation of I11, 2026-10-20, is older than 30 days"
    assert r.evidence == []


def test_attestation_exactly_at_window_edge_is_used():
    edge = AS_OF - timedelta(days=30)
    r = evaluate("I11", questionnaire_response({"I11": True}, authored=edge))
    assert r.outcome is Outcome.MET
    assert "on 2026-10-21" in r.reason


def test_future_dated_attestation_is_ignored():
    future = AS_OF + timedelta(days=1)
    r = evaluate("I11", questionnaire_response({"I11": True}, authored=future))
    assert r.outcome is Outcome.UNDETERMINED
    assert r.reason == "no investigator attestation of I11 found"


def test_draft_status_is_ignored_with_a_warning():
    qr = questionnaire_response({"I11": True}, authored=RECENT, status="in-progress")
    r = evaluate("I11", qr)
    assert r.outcome is Outcome.UNDETERMINED
    assert "status 'in-progress' ignored" in messages(r)
    assert r.issues[0].expression == f"QuestionnaireResponse/{qr['id']}"


def test_amended_status_counts():
    r = evaluate("I11", questionnaire_response({"I11": True}, authored=RECENT, status="amended"))
    assert r.outcome is Outcome.MET


def test_wrong_questionnaire_is_ignored():
    qr = questionnaire_response(
        {"I11": True}, authored=RECENT, questionnaire="http://example.org/Questionnaire/phq9"
    )
    r = evaluate("I11", qr)
    assert r.outcome is Outcome.UNDETERMINED
    assert r.issues == []  # another form is not a problem, just not ours


def test_versioned_canonical_is_accepted_only_for_our_version():
    url = default_protocol().questionnaire_url
    version = default_protocol().questionnaire["version"]
    ok = questionnaire_response({"I11": True}, authored=RECENT, questionnaire=f"{url}|{version}")
    assert evaluate("I11", ok).outcome is Outcome.MET
    other = questionnaire_response({"I11": True}, authored=RECENT, questionnaire=f"{url}|0.1")
    r = evaluate("I11", other)
    assert r.outcome is Outcome.UNDETERMINED
    assert "version '0.1'" in messages(r)


def test_latest_answer_wins_per_item_across_responses():
    older = questionnaire_response({"I5": True, "I11": True}, authored=AS_OF - timedelta(days=10))
    newer = questionnaire_response({"I11": False}, authored=RECENT)
    i11 = evaluate("I11", older, newer)
    assert i11.outcome is Outcome.NOT_MET
    assert refs(i11) == [f"QuestionnaireResponse/{newer['id']}"]
    # the newer response has no I5: it does not erase the older answer
    i5 = evaluate("I5", older, newer)
    assert i5.outcome is Outcome.MET
    assert refs(i5) == [f"QuestionnaireResponse/{older['id']}"]
    assert "on 2026-11-10" in i5.reason


def test_nested_items_are_found():
    in_group = questionnaire_response(
        items=[qr_item("investigator", items=[qr_item("I11", True)])], authored=RECENT
    )
    assert evaluate("I11", in_group).outcome is Outcome.MET
    under_answer = questionnaire_response(
        items=[qr_item("screening", True, items=[])], authored=RECENT
    )
    under_answer["item"][0]["answer"][0]["item"] = [qr_item("I11", False)]
    assert evaluate("I11", under_answer).outcome is Outcome.NOT_MET


def test_non_boolean_answer_is_unusable_and_does_not_fall_back():
    older = questionnaire_response({"I11": True}, authored=AS_OF - timedelta(days=10))
    newer = questionnaire_response({"I11": "yes"}, authored=RECENT)
    r = evaluate("I11", older, newer)
    assert r.outcome is Outcome.UNDETERMINED
    assert r.reason == "the latest attestation of I11 (2026-11-15) has no usable yes/no answer"
    assert "not a single yes/no (boolean) answer" in messages(r)
    assert refs(r) == [f"QuestionnaireResponse/{newer['id']}"]


def test_unanswered_item_does_not_erase_older_answer():
    older = questionnaire_response({"I11": True}, authored=AS_OF - timedelta(days=10))
    newer = questionnaire_response(items=[qr_item("I11")], authored=RECENT)
    assert evaluate("I11", older, newer).outcome is Outcome.MET


def test_same_day_disagreement_is_undetermined_unless_timestamps_order_it():
    a = questionnaire_response({"I11": True}, authored="2026-11-15")
    b = questionnaire_response({"I11": False}, authored="2026-11-15")
    r = evaluate("I11", a, b)
    assert r.outcome is Outcome.UNDETERMINED
    assert "disagree" in r.reason
    a["authored"] = "2026-11-15T09:00:00+01:00"
    b["authored"] = "2026-11-15T10:00:00+01:00"
    assert evaluate("I11", a, b).outcome is Outcome.NOT_MET


def test_truncated_response_search_makes_an_attestation_unconfirmed():
    qr = questionnaire_response({"I11": True}, authored=RECENT)
    r = evaluate("I11", qr, truncated={"QuestionnaireResponse"})
    assert r.outcome is Outcome.UNDETERMINED
    assert "truncated" in r.reason


# -- I5: supporting records never decide ----------------------------------------------------


def test_i5_lists_supporting_hsct_but_stays_undetermined():
    hsct = procedure(SNOMED, "425843001", performed="2025-03-01")
    hsct["code"]["coding"][0]["display"] = "Allogeneic peripheral blood stem cell transplant"
    harvest = procedure(CPT, "38225", performed="2026-06-01")
    not_done = procedure(CPT, "0537T", performed="2026-07-01", status="not-done")
    later = procedure(SNOMED, "58776007", performed="2026-12-01")
    r = evaluate("I5", hsct, harvest, not_done, later)
    assert r.outcome is Outcome.UNDETERMINED
    assert r.reason.startswith("no investigator attestation of I5 found; supporting records")
    assert (
        f"Procedure/{hsct['id']} Allogeneic peripheral blood stem cell transplant (425843001) "
        "(completed, 2025-03-01)" in r.reason
    )
    assert f"Procedure/{harvest['id']} 38225 (completed, 2026-06-01)" in r.reason
    assert refs(r) == [f"Procedure/{harvest['id']}", f"Procedure/{hsct['id']}"]
    assert not_done["id"] not in r.reason and later["id"] not in r.reason
    assert r.needs[0].resource_type == "QuestionnaireResponse"


def test_i5_attestation_decides_even_with_supporting_records():
    hsct = procedure(SNOMED, "425843001", performed="2025-03-01")
    qr = questionnaire_response({"I5": False}, authored=RECENT)
    r = evaluate("I5", hsct, qr)
    assert r.outcome is Outcome.NOT_MET
    assert refs(r) == [f"QuestionnaireResponse/{qr['id']}"]


# -- I9: survival ----------------------------------------------------------------------------


def test_i9_deceased_boolean_is_not_met_whatever_the_attestation():
    qr = questionnaire_response({"I9": True}, authored=RECENT)
    r = evaluate("I9", patient(deceasedBoolean=True), qr)
    assert r.outcome is Outcome.NOT_MET
    assert r.reason == "the patient is recorded as deceased"
    assert refs(r) == ["Patient/p1"]


def test_i9_death_before_as_of_is_not_met():
    r = evaluate("I9", patient(deceasedDateTime="2026-10-01T08:00:00Z"))
    assert r.outcome is Outcome.NOT_MET
    assert r.reason == "the patient died on 2026-10-01"
    assert refs(r) == ["Patient/p1"]


def test_i9_death_after_as_of_falls_back_to_attestation():
    qr = questionnaire_response({"I9": True}, authored=RECENT)
    r = evaluate("I9", patient(deceasedDateTime="2027-01-05"), qr)
    assert r.outcome is Outcome.MET
    assert "death is recorded on 2027-01-05, after the evaluation date 2026-11-20" in r.reason
    assert "I9 attested true" in r.reason
    assert refs(r) == ["Patient/p1", f"QuestionnaireResponse/{qr['id']}"]


def test_i9_partial_death_date_around_as_of_is_undetermined():
    r = evaluate("I9", patient(deceasedDateTime="2026-11"))
    assert r.outcome is Outcome.UNDETERMINED
    assert "2026-11" in r.reason


def test_i9_alive_uses_attestation_or_stays_undetermined():
    qr = questionnaire_response({"I9": False}, authored=RECENT)
    assert evaluate("I9", patient(deceasedBoolean=False), qr).outcome is Outcome.NOT_MET
    r = evaluate("I9", patient(deceasedBoolean=False))
    assert r.outcome is Outcome.UNDETERMINED
    assert r.reason == "no investigator attestation of I9 found"


# -- I12: consent ---------------------------------------------------------------------------


def test_i12_active_consent_covering_as_of_is_met():
    study = "https://fhir.cart-eligibility.example.org/ResearchStudy/cd19-cart-rr-ball"
    c = consent(
        date_time="2026-11-01", period=("2026-11-01", "2027-11-01"), policy=[{"uri": study}]
    )
    r = evaluate("I12", c)
    assert r.outcome is Outcome.MET
    assert r.reason == (
        f"active research consent Consent/{c['id']} (signed 2026-11-01) covers 2026-11-20"
    )
    assert refs(r) == [f"Consent/{c['id']}"]


def test_i12_active_consent_without_period_is_met():
    c = consent(date_time="2026-11-01")
    assert evaluate("I12", c).outcome is Outcome.MET


def test_i12_active_consent_not_covering_as_of_falls_back():
    c = consent(date_time="2025-01-01", period=("2025-01-01", "2025-12-31"))
    r = evaluate("I12", c)
    assert r.outcome is Outcome.UNDETERMINED
    assert f"Consent/{c['id']} is active but its consent period (2025-01-01 to 2025-12-31)" in (
        r.reason
    )
    assert {n.resource_type for n in r.needs} == {"Consent", "QuestionnaireResponse"}
    qr = questionnaire_response({"I12": True}, authored=RECENT)
    r = evaluate("I12", c, qr)
    assert r.outcome is Outcome.MET
    assert "I12 attested true by Practitioner/dr-x" in r.reason


def test_i12_rejected_only_is_not_met():
    c = consent(status="rejected", date_time="2026-11-10")
    qr = questionnaire_response({"I12": True}, authored=RECENT)
    r = evaluate("I12", c, qr)
    assert r.outcome is Outcome.NOT_MET
    assert f"research consent refused: Consent/{c['id']} (2026-11-10)" in r.reason
    assert refs(r) == [f"Consent/{c['id']}"]


def test_i12_active_deny_provision_is_a_refusal():
    c = consent(date_time="2026-11-10", provision={"type": "deny"})
    assert evaluate("I12", c).outcome is Outcome.NOT_MET


def test_i12_active_consent_wins_over_an_older_refusal_but_not_a_newer_one():
    refused = consent(status="rejected", date_time="2026-10-01")
    active = consent(date_time="2026-11-01")
    assert evaluate("I12", refused, active).outcome is Outcome.MET
    later = consent(status="rejected", date_time="2026-11-10")
    r = evaluate("I12", active, later)
    assert r.outcome is Outcome.UNDETERMINED
    assert r.reason == (
        f"active research consent Consent/{active['id']} (signed 2026-11-01) covers 2026-11-20, "
        f"but a refusal is not dated before it: Consent/{later['id']} (2026-11-10) is later"
    )
    assert refs(r) == [f"Consent/{active['id']}", f"Consent/{later['id']}"]


@pytest.mark.parametrize(
    ("signed", "refused", "why"),
    [
        ("2026-11-10", "2026-11-10", "(2026-11-10) is on the same day"),
        ("2026-11-10", None, "is undated"),
        (None, "2026-10-01", "(2026-10-01) cannot be ordered against the undated consent"),
        ("2026-11-10", "2026-11", "(2026-11) may be on the same day or later"),
        ("2026-10", "2026-10-05", "(2026-10-05) may be on the same day or later"),
    ],
)
def test_i12_refusal_not_strictly_before_the_consent_is_undetermined(signed, refused, why):
    active = consent(date_time=signed)
    refusal = consent(status="rejected", date_time=refused)
    qr = questionnaire_response({"I12": True}, authored=RECENT)
    r = evaluate("I12", active, refusal, qr)
    assert r.outcome is Outcome.UNDETERMINED
    assert f"but a refusal is not dated before it: Consent/{refusal['id']} {why}" in r.reason
    assert {n.resource_type for n in r.needs} == {"Consent"}


def test_i12_newest_covering_consent_is_compared_with_the_refusal():
    first = consent(date_time="2026-01-10")
    refusal = consent(status="rejected", date_time="2026-05-01")
    again = consent(date_time="2026-10-01")
    r = evaluate("I12", first, refusal, again)
    assert r.outcome is Outcome.MET
    assert f"Consent/{again['id']} (signed 2026-10-01)" in r.reason


@pytest.mark.parametrize("signed", ["2026-11", "2026"])
def test_i12_consent_possibly_signed_after_as_of_is_undetermined_despite_attestation(signed):
    c = consent(date_time=signed)
    qr = questionnaire_response({"I12": True}, authored=RECENT)
    r = evaluate("I12", c, qr)
    assert r.outcome is Outcome.UNDETERMINED
    assert r.reason == (
        f"Consent/{c['id']} was signed {signed}, possibly after 2026-11-20: a full signing "
        "date is needed"
    )
    assert refs(r) == [f"Consent/{c['id']}"]


def test_i12_partial_consent_date_wholly_before_as_of_counts():
    r = evaluate("I12", consent(date_time="2026-10"))
    assert r.outcome is Outcome.MET
    assert "(signed 2026-10)" in r.reason


def test_i12_nested_deny_provision_is_a_refusal():
    c = consent(
        date_time="2026-11-10",
        provision={"type": "permit", "provision": [{"type": "permit"}, {"type": "deny"}]},
    )
    r = evaluate("I12", c)
    assert r.outcome is Outcome.NOT_MET
    assert f"Consent/{c['id']} (2026-11-10; a nested provision denies)" in r.reason


def test_i12_deeply_nested_deny_blocks_an_older_permit():
    older = consent(date_time="2026-10-01")
    deny = {"type": "permit", "provision": [{"type": "permit", "provision": [{"type": "deny"}]}]}
    newer = consent(date_time="2026-11-10", provision=deny)
    r = evaluate("I12", older, newer)
    assert r.outcome is Outcome.UNDETERMINED
    assert f"Consent/{newer['id']} (2026-11-10) is later" in r.reason


def test_i12_nested_permits_only_are_consent():
    c = consent(date_time="2026-11-10", provision={"type": "permit", "provision": [{}]})
    assert evaluate("I12", c).outcome is Outcome.MET


def test_i12_no_consent_uses_attestation():
    qr = questionnaire_response({"I12": True}, authored=RECENT)
    r = evaluate("I12", qr)
    assert r.outcome is Outcome.MET
    assert r.reason.startswith("no active research consent; I12 attested true")
    assert refs(r) == [f"QuestionnaireResponse/{qr['id']}"]


def test_i12_nothing_is_undetermined_and_asks_for_consent_or_attestation():
    r = evaluate("I12")
    assert r.outcome is Outcome.UNDETERMINED
    assert r.reason == "no active research consent; no investigator attestation of I12 found"
    consent_need = next(n for n in r.needs if n.resource_type == "Consent")
    assert consent_need.valueset == default_protocol().valueset("consent-scope-research").url
    assert any(n.resource_type == "QuestionnaireResponse" for n in r.needs)


def test_i12_draft_inactive_and_other_scope_do_not_count():
    draft = consent(status="draft", date_time="2026-11-01")
    proposed = consent(status="proposed", date_time="2026-11-01")
    inactive = consent(status="inactive", date_time="2026-01-01")
    treatment = consent("treatment", date_time="2026-11-01")
    r = evaluate("I12", draft, proposed, inactive, treatment)
    assert r.outcome is Outcome.UNDETERMINED
    assert f"Consent/{draft['id']} is draft: not consent yet" in r.reason
    assert f"Consent/{proposed['id']} is proposed: not consent yet" in r.reason
    assert f"Consent/{inactive['id']} is inactive and does not count" in r.reason
    assert treatment["id"] not in r.reason


def test_i12_consent_signed_after_as_of_is_ignored():
    c = consent(date_time="2026-11-25")
    r = evaluate("I12", c)
    assert r.outcome is Outcome.UNDETERMINED
    assert c["id"] not in r.reason and r.evidence == []


def test_i12_truncated_consent_search_makes_met_unconfirmed():
    c = consent(date_time="2026-11-01")
    r = evaluate("I12", c, truncated={"Consent"})
    assert r.outcome is Outcome.UNDETERMINED
    assert "truncated" in r.reason


# -- which study a Consent is for ---------------------------------------------------------

STUDY_CONTEXT = "http://hl7.org/fhir/StructureDefinition/consent-ResearchStudyContext"


def _i12(*resources):
    from tests.builders import result, run

    return result(run(*resources), "I12")


def test_consent_naming_this_study_is_met_without_caveat():
    from service.protocol import default_protocol

    c = consent(policy=[{"uri": default_protocol().canonical}])
    r = _i12(c)
    assert r.outcome is Outcome.MET
    assert "does not name the study" not in r.reason


def test_consent_naming_no_study_is_met_with_a_caveat():
    r = _i12(consent())
    assert r.outcome is Outcome.MET
    assert "does not name the study" in r.reason


def test_consent_to_another_study_does_not_count():
    other = {"url": STUDY_CONTEXT, "valueReference": {"reference": "ResearchStudy/other-trial"}}
    r = _i12(consent(extension=[other]))
    assert r.outcome is Outcome.UNDETERMINED
    assert "another study" in r.reason
