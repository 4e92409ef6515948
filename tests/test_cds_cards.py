"""patient-view cards built from hand-made Evaluations, plus the CDS Hooks wire models."""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.researchsubject import ResearchSubject
from pydantic import ValidationError

from service.cds import cards
from service.cds.cards import patient_view_cards, trial_name
from service.cds.models import (
    CdsServiceResponse,
    FeedbackRequest,
    PatientViewRequest,
)
from service.clinical.evaluation import Evaluation, SubjectStatus
from service.clinical.model import CriterionResult, Issue, Outcome, Severity
from service.protocol import Protocol, default_protocol
from service.settings import Settings

BASE = "https://cds.example.org"
SHORT_TITLE_EXT = "http://hl7.org/fhir/5.0/StructureDefinition/extension-ResearchStudy.label"
ATTESTATION_CODES = ["I5", "I9", "I11", "I12"]


@pytest.fixture(scope="module")
def protocol() -> Protocol:
    return default_protocol()


def settings(**overrides: Any) -> Settings:
    return Settings(_env_file=None, **overrides)


def with_short_title(protocol: Protocol, short: str) -> Protocol:
    label = {
        "url": SHORT_TITLE_EXT,
        "extension": [
            {
                "url": "type",
                "valueCodeableConcept": {
                    "coding": [{"system": "http://hl7.org/fhir/title-type", "code": "short-title"}]
                },
            },
            {"url": "value", "valueString": short},
        ],
    }
    study = dict(protocol.research_study)
    study["extension"] = [*study.get("extension", []), label]
    return dataclasses.replace(protocol, research_study=study)


def _reason(code: str, outcome: Outcome) -> str:
    return f"{code} reason: value 12 umol/L <= 51 umol/L, {outcome.value}"


def evaluation(protocol: Protocol, **outcomes: Outcome) -> Evaluation:
    """All criteria met unless named (member codes use _ for -: I6_ast=Outcome.UNDETERMINED)."""
    outcomes = {code.replace("_", "-"): o for code, o in outcomes.items()}
    results = []
    for definition in protocol.top_level:
        members = [
            CriterionResult(
                m, outcomes.get(m, Outcome.MET), _reason(m, outcomes.get(m, Outcome.MET))
            )
            for m in definition.members
        ]
        member_outcomes = {m.outcome for m in members}
        derived = (
            Outcome.NOT_MET
            if Outcome.NOT_MET in member_outcomes
            else Outcome.UNDETERMINED
            if Outcome.UNDETERMINED in member_outcomes
            else Outcome.MET
        )
        outcome = outcomes.get(definition.code, derived)
        results.append(
            CriterionResult(
                definition.code, outcome, _reason(definition.code, outcome), members=members
            )
        )
    return Evaluation(
        patient_id="p1",
        patient_reference="Patient/p1",
        as_of=date(2026, 11, 20),
        evaluated_at=datetime(2026, 11, 20, 9, 0, tzinfo=UTC),
        results=results,
    )


def potential(protocol: Protocol) -> Evaluation:
    return evaluation(
        protocol, I5=Outcome.UNDETERMINED, I9=Outcome.UNDETERMINED, I6_ast=Outcome.UNDETERMINED
    )


def only_card(response: dict[str, Any]) -> dict[str, Any]:
    CdsServiceResponse.model_validate(response)  # the CDS Hooks response shape, <140 summary
    assert len(response["cards"]) == 1
    return response["cards"][0]


# -- status -> card ---------------------------------------------------------------
def test_potential_candidate_card(protocol: Protocol) -> None:
    ev = potential(protocol)
    assert ev.status is SubjectStatus.POTENTIAL_CANDIDATE
    card = only_card(patient_view_cards(ev, protocol, settings(), service_base_url=BASE))
    assert "9 of 12 criteria met, 3 need review" in card["summary"]
    assert len(card["summary"]) < 140
    assert card["indicator"] == "info"
    assert card["selectionBehavior"] == "at-most-one"
    assert card["source"]["url"] == protocol.canonical and card["source"]["label"]
    uuid.UUID(card["uuid"])
    uuid.UUID(card["suggestions"][0]["uuid"])


def test_summary_uses_the_short_title_from_protocol_data(protocol: Protocol) -> None:
    named = with_short_title(protocol, "donor-derived CD19 CAR-T trial")
    assert trial_name(named) == "donor-derived CD19 CAR-T trial"
    card = only_card(patient_view_cards(potential(named), named, settings(), service_base_url=BASE))
    assert card["summary"] == (
        "Possible candidate for donor-derived CD19 CAR-T trial: 9 of 12 criteria met, 3 need review"
    )
    eligible = only_card(
        patient_view_cards(evaluation(named), named, settings(), service_base_url=BASE)
    )
    assert (
        eligible["summary"] == "Meets all 12 inclusion criteria of donor-derived CD19 CAR-T trial"
    )


def test_short_title_may_come_from_the_protocol_file(protocol: Protocol) -> None:
    study = {
        **protocol.research_study,
        "extension": [
            e for e in protocol.research_study["extension"] if not e["url"].endswith(".label")
        ],
    }
    other = dataclasses.replace(
        protocol, research_study=study, general={**protocol.general, "short_title": "Trial X"}
    )
    assert trial_name(other) == "Trial X"


@pytest.mark.parametrize("indicator", ["info", "warning"])
def test_eligible_card_indicator_follows_settings(protocol: Protocol, indicator: str) -> None:
    ev = evaluation(protocol)
    assert ev.status is SubjectStatus.ELIGIBLE
    card = only_card(
        patient_view_cards(
            ev, protocol, settings(cds_eligible_indicator=indicator), service_base_url=BASE
        )
    )
    assert card["indicator"] == indicator
    assert card["summary"].startswith("Meets all 12 inclusion criteria of ")
    assert "links" not in card


def test_ineligible_gives_no_cards_by_default(protocol: Protocol) -> None:
    ev = evaluation(protocol, I8=Outcome.NOT_MET, I9=Outcome.UNDETERMINED)
    assert ev.status is SubjectStatus.INELIGIBLE
    assert patient_view_cards(ev, protocol, settings(), service_base_url=BASE) == {"cards": []}


def test_ineligible_card_when_configured(protocol: Protocol) -> None:
    ev = evaluation(protocol, I8=Outcome.NOT_MET, I6_alt=Outcome.NOT_MET)
    card = only_card(
        patient_view_cards(ev, protocol, settings(cds_show_ineligible=True), service_base_url=BASE)
    )
    assert "2 of 12 criteria not met" in card["summary"]
    assert card["indicator"] == "info"
    assert "suggestions" not in card and "links" not in card


@pytest.mark.parametrize("title_length", [10, 134, 400])
def test_summary_under_140_in_every_status(protocol: Protocol, title_length: int) -> None:
    study = {**protocol.research_study, "title": "T" * title_length}
    long = dataclasses.replace(protocol, research_study=study)
    shown = settings(cds_show_ineligible=True)
    for ev in (evaluation(long), potential(long), evaluation(long, I1=Outcome.NOT_MET)):
        card = only_card(patient_view_cards(ev, long, shown, service_base_url=BASE))
        assert 0 < len(card["summary"]) < 140
        assert card["summary"].split(":")[-1].strip()[0].isdigit() or "Meets all" in card["summary"]


# -- detail ---------------------------------------------------------------------------
def test_detail_lists_every_criterion_with_result_and_reason(protocol: Protocol) -> None:
    ev = potential(protocol)
    card = only_card(patient_view_cards(ev, protocol, settings(), service_base_url=BASE))
    plain = card["detail"].replace("\\", "")  # undo Markdown escapes
    for definition in protocol.criteria.values():
        assert protocol.criterion_display(definition.code) in plain, definition.code
    for result in ev.results:
        for r in [result, *result.members]:
            assert r.reason in plain
    assert "**Undetermined** — I5 " in plain and "**Met** — I1 " in plain
    # members are nested one level under their panel
    assert "\n  - **Undetermined** — I6-ast " in plain
    assert "\n  - **Met** — I7-anc " in plain


def test_detail_escapes_markup_in_reasons(protocol: Protocol) -> None:
    ev = potential(protocol)
    ev.results[0].reason = "age <script>alert(1)</script> | *bold* [x](http://evil)"
    ev.issues.append(Issue(Severity.WARNING, "value", "Observation/o1 has no unit <b>"))
    detail = only_card(patient_view_cards(ev, protocol, settings(), service_base_url=BASE))[
        "detail"
    ]
    assert "<script>" not in detail and "\\<script\\>" in detail
    assert "\\*bold\\*" in detail and "\\[x\\]" in detail and "\\|" in detail
    assert "Data notes" in detail and "no unit \\<b\\>" in detail


# -- suggestion and links -------------------------------------------------------------
def test_suggestion_creates_a_valid_r4_research_subject(protocol: Protocol) -> None:
    card = only_card(
        patient_view_cards(potential(protocol), protocol, settings(), service_base_url=BASE)
    )
    (suggestion,) = card["suggestions"]
    assert suggestion["label"] == "Record as screening candidate"
    (action,) = suggestion["actions"]
    assert action["type"] == "create" and action["description"]
    resource = action["resource"]
    subject = ResearchSubject.model_validate(resource)
    assert subject.status == "potential-candidate"
    assert subject.individual.reference == "Patient/p1"
    assert subject.study.reference == f"ResearchStudy/{protocol.research_study['id']}"
    assert subject.study.identifier.value == protocol.canonical
    assert resource["meta"]["source"] == BASE


def test_suggestion_and_card_uuids_are_fresh(protocol: Protocol) -> None:
    ev = potential(protocol)
    a = only_card(patient_view_cards(ev, protocol, settings(), service_base_url=BASE))
    b = only_card(patient_view_cards(ev, protocol, settings(), service_base_url=BASE))
    assert a["uuid"] != b["uuid"]
    assert a["suggestions"][0]["uuid"] != b["suggestions"][0]["uuid"]


@pytest.mark.parametrize("code", ATTESTATION_CODES)
def test_questionnaire_link_when_an_attestation_is_undetermined(
    protocol: Protocol, code: str
) -> None:
    ev = evaluation(protocol, **{code: Outcome.UNDETERMINED})
    card = only_card(patient_view_cards(ev, protocol, settings(), service_base_url=BASE))
    assert card["links"] == [
        {
            "label": "Complete investigator attestation",
            "url": f"{BASE}/app/patients/p1",
            "type": "absolute",
        }
    ]


def test_attestation_link_is_a_smart_launch_when_configured(protocol: Protocol) -> None:
    ev = evaluation(protocol, I12=Outcome.UNDETERMINED)
    launch = "https://cds.example.org/app/launch"
    shown = settings(app_smart_launch_url=launch)
    card = only_card(patient_view_cards(ev, protocol, shown, service_base_url=BASE))
    (link,) = card["links"]
    assert link["type"] == "smart" and link["url"] == launch
    assert json.loads(link["appContext"]) == {"study": protocol.versioned_canonical}
    assert protocol.questionnaire_url not in str(card["links"])  # no raw Questionnaire JSON


def test_no_questionnaire_link_when_only_data_is_missing(protocol: Protocol) -> None:
    ev = evaluation(protocol, I8=Outcome.UNDETERMINED, I7_platelets=Outcome.UNDETERMINED)
    card = only_card(patient_view_cards(ev, protocol, settings(), service_base_url=BASE))
    assert "links" not in card


def test_attestation_criteria_come_from_protocol_data(protocol: Protocol) -> None:
    codes = [c.code for c in protocol.criteria.values() if "attestation_item" in c.params]
    assert codes == ATTESTATION_CODES


def test_no_trial_name_is_hard_coded() -> None:
    source = Path(cards.__file__).read_text(encoding="utf-8")
    assert "CD19" not in source and "CAR-T" not in source


# -- wire models (request, feedback) --------------------------------------------------
REQUEST: dict[str, Any] = {
    "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
    "fhirServer": "http://hooks.smarthealthit.org:9080",
    "hook": "patient-view",
    "fhirAuthorization": {
        "access_token": "some-opaque-fhir-access-token",
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "user/Patient.read user/Observation.read",
        "subject": "cds-service4",
    },
    "context": {"userId": "Practitioner/example", "patientId": "1288992", "encounterId": "89284"},
    "prefetch": {"patient": {"resourceType": "Patient", "id": "1288992"}, "labs": None},
    "extension": {"com.example.timestamp": "2017-11-27T22:13:25Z"},
}


def test_spec_example_request_parses_and_hides_the_token() -> None:
    request = PatientViewRequest.model_validate(REQUEST)
    assert request.context.patientId == "1288992"
    assert request.fhirServer == "http://hooks.smarthealthit.org:9080"  # not normalised
    assert request.prefetch["labs"] is None
    assert "some-opaque" not in repr(request)
    assert request.fhirAuthorization.access_token.get_secret_value().startswith("some-opaque")


@pytest.mark.parametrize(
    "change",
    [
        {"fhirServer": None},  # fhirAuthorization without fhirServer
        {"hookInstance": "not-a-uuid"},
        {"hook": "order-sign"},
        {"fhirServer": "file:///etc/passwd"},
        {"context": {"userId": "Practitioner/example"}},
        {"context": {"userId": "Practitioner/example", "patientId": "../Patient/x"}},
        {"context": {"userId": "example", "patientId": "1"}},
    ],
)
def test_invalid_requests_are_rejected(change: dict[str, Any]) -> None:
    body = {**REQUEST, **change}
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(ValidationError):
        PatientViewRequest.model_validate(body)


def test_feedback_models() -> None:
    accepted = {
        "card": "4e0a3a1e-3283-4575-ab82-028d55fe2719",
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": "e56e1945-20b3-4393-8503-a1a20fd73152"}],
        "outcomeTimestamp": "2021-12-11T10:05:31Z",
    }
    overridden = {
        "card": "9368d37b-283f-44a0-93ea-547cebab93ed",
        "outcome": "overridden",
        "overrideReason": {
            "reason": {"code": "d7ecf885", "system": "https://example.com/override"},
            "userComment": "A comment",
        },
        "outcomeTimestamp": "2020-12-11T00:00:00Z",
    }
    parsed = FeedbackRequest.model_validate({"feedback": [accepted, overridden]})
    assert parsed.feedback[0].acceptedSuggestions[0].id.startswith("e56e")
    assert parsed.feedback[1].overrideReason.reason.code == "d7ecf885"
    for bad in (
        {**accepted, "acceptedSuggestions": None},
        {**accepted, "outcome": "ignored"},
        {**accepted, "outcomeTimestamp": "2021-12-11T10:05:31"},  # no zone
    ):
        with pytest.raises(ValidationError):
            FeedbackRequest.model_validate({"feedback": [bad]})
