"""The attestation form: rendered from the Questionnaire, written as a QuestionnaireResponse."""

from __future__ import annotations

import copy
import dataclasses
import re
from datetime import UTC, datetime, timedelta

import pytest

from service.app.router import DEMO_AUTHOR
from tests.app.helpers import demo_client, open_form, results, row, status

ALL_YES = {"I5": "true", "I9": "true", "I11": "true", "I12": "true"}


@pytest.fixture
def client():
    with demo_client() as c:
        yield c


def written(client) -> list[dict]:
    return client.app.state.web_app.demo.written("QuestionnaireResponse")


def test_form_items_come_from_the_questionnaire(client) -> None:
    html, _ = open_form(client, "demo-potential")
    questionnaire = client.app.state.protocol.questionnaire
    assert (
        '<form method="post" action="/app/patients/demo-potential/attest" data-form="attestation">'
        in html
    )
    for item in questionnaire["item"]:
        link = item["linkId"]
        assert re.findall(rf'name="{link}" value="(true|false)"', html) == ["true", "false"]
        assert item["text"].split("(")[0].strip()[:60] in html.replace("&#39;", "'")
        assert f'name="comment.{link}"' in html


def test_only_open_or_contradicted_items_are_required(client) -> None:
    open_html, _ = open_form(client, "demo-potential")
    assert re.findall(r'name="(I\d+)" value="true" required', open_html) == [
        "I5",
        "I9",
        "I11",
        "I12",
    ]
    done_html, _ = open_form(client, "demo-eligible")  # all four attested yes already
    assert re.findall(r'value="true" required', done_html) == []


def test_attesting_yes_to_all_open_items_makes_demo_potential_eligible(client) -> None:
    before = client.get("/app/patients/demo-potential").text
    assert status(before) == "potential-candidate"
    _, hidden = open_form(client, "demo-potential")
    answer = client.post(
        "/app/patients/demo-potential/attest", data={**hidden, **ALL_YES}, follow_redirects=False
    )
    assert answer.status_code == 303
    assert answer.headers["location"] == "/app/patients/demo-potential"
    page = client.get("/app/patients/demo-potential").text
    assert status(page) == "eligible"
    assert set(results(page).values()) == {"met"}
    assert "Attestation saved" in page
    (qr,) = written(client)
    assert qr["status"] == "completed"
    # The API's pull mode reads the same demo data: app and $eligibility agree.
    api = client.get("/Patient/demo-potential/$eligibility").json()
    (subject,) = [
        e["resource"] for e in api["entry"] if e["resource"]["resourceType"] == "ResearchSubject"
    ]
    assert subject["status"] == "eligible"


def test_the_response_is_canonical_versioned_signed_and_dated_now(client) -> None:
    _, hidden = open_form(client, "demo-potential")
    data = {**hidden, **ALL_YES, "comment.I9": "  discussed at tumour board  "}
    client.post("/app/patients/demo-potential/attest", data=data)
    (qr,) = written(client)
    q = client.app.state.protocol.questionnaire
    assert qr["questionnaire"] == f"{q['url']}|{q['version']}"
    assert qr["status"] == "completed"
    assert qr["subject"] == {"reference": "Patient/demo-potential"}
    assert qr["author"] == DEMO_AUTHOR
    authored = datetime.fromisoformat(qr["authored"])
    assert authored.tzinfo is not None
    assert abs(datetime.now(UTC) - authored) < timedelta(minutes=1)
    assert qr["identifier"]["value"].startswith("urn:uuid:")
    answers = {i["linkId"]: i["answer"][0]["valueBoolean"] for i in qr["item"]}
    assert answers == {"I5": True, "I9": True, "I11": True, "I12": True}
    i9 = next(i for i in qr["item"] if i["linkId"] == "I9")
    assert i9["extension"][0]["valueAnnotation"]["text"] == "discussed at tumour board"


def test_a_no_gives_not_met_with_the_attestor_named(client) -> None:
    _, hidden = open_form(client, "demo-potential")
    client.post("/app/patients/demo-potential/attest", data={**hidden, **ALL_YES, "I9": "false"})
    page = client.get("/app/patients/demo-potential").text
    assert status(page) == "ineligible"
    assert results(page)["I9"] == "not-met"
    i9 = row(page, "I9")
    assert "attested false" in i9 and "Demo Investigator" in i9


def test_a_double_submit_creates_one_response(client) -> None:
    _, hidden = open_form(client, "demo-potential")
    data = {**hidden, **ALL_YES}
    first = client.post("/app/patients/demo-potential/attest", data=data, follow_redirects=False)
    second = client.post("/app/patients/demo-potential/attest", data=data, follow_redirects=False)
    assert first.status_code == second.status_code == 303
    assert len(written(client)) == 1


def test_the_same_submission_from_another_session_is_still_one_response() -> None:
    """The conditional create on the identifier holds even without the session's memory."""
    with demo_client() as c:
        _, hidden = open_form(c, "demo-potential")
        data = {**hidden, **ALL_YES}
        c.post("/app/patients/demo-potential/attest", data=data)
        c.cookies.clear()
        _, fresh = open_form(c, "demo-potential")
        c.post(
            "/app/patients/demo-potential/attest",
            data={**data, "csrf_token": fresh["csrf_token"]},
        )
        assert len(written(c)) == 1


def test_a_missing_required_answer_is_refused_and_nothing_is_written(client) -> None:
    _, hidden = open_form(client, "demo-potential")
    data = {**hidden, "I5": "true", "I9": "true", "I11": "true"}
    answer = client.post("/app/patients/demo-potential/attest", data=data)
    assert answer.status_code == 422
    assert "This item is still open" in answer.text
    assert 'name="I5" value="true" required checked' in answer.text  # answers kept
    assert written(client) == []


def test_a_value_other_than_true_or_false_is_refused(client) -> None:
    _, hidden = open_form(client, "demo-potential")
    answer = client.post(
        "/app/patients/demo-potential/attest", data={**hidden, **ALL_YES, "I5": "maybe"}
    )
    assert answer.status_code == 422 and written(client) == []


def test_met_items_are_optional_but_one_answer_is_needed(client) -> None:
    _, hidden = open_form(client, "demo-eligible")
    empty = client.post("/app/patients/demo-eligible/attest", data=hidden)
    assert empty.status_code == 422 and "Answer at least one item" in empty.text
    one = client.post("/app/patients/demo-eligible/attest", data={**hidden, "I11": "false"})
    assert one.status_code == 200  # followed the redirect
    assert results(one.text)["I11"] == "not-met"


@pytest.mark.parametrize(
    "change",
    [
        {"csrf_token": ""},
        {"csrf_token": "forged"},
        {"submission_id": "not-a-key"},
    ],
)
def test_forged_or_broken_forms_write_nothing(client, change: dict) -> None:
    _, hidden = open_form(client, "demo-potential")
    answer = client.post(
        "/app/patients/demo-potential/attest", data={**hidden, **ALL_YES, **change}
    )
    assert answer.status_code in (400, 403)
    assert written(client) == []


def test_a_cross_site_post_is_refused_even_with_a_token(client) -> None:
    _, hidden = open_form(client, "demo-potential")
    answer = client.post(
        "/app/patients/demo-potential/attest",
        data={**hidden, **ALL_YES},
        headers={"Origin": "https://evil.example"},
    )
    assert answer.status_code == 403 and written(client) == []


def test_a_json_body_is_not_a_form(client) -> None:
    _, hidden = open_form(client, "demo-potential")
    answer = client.post("/app/patients/demo-potential/attest", json={**hidden, **ALL_YES})
    assert answer.status_code == 400 and written(client) == []


def test_a_second_trials_questionnaire_renders_without_code_changes(client) -> None:
    """Items, groups and display text come from the Questionnaire; linkIds name the fields."""
    protocol = client.app.state.protocol
    q = copy.deepcopy(protocol.questionnaire)
    q["title"] = "Second trial attestation"
    q["item"] = [
        {"linkId": "intro", "type": "display", "text": "Please answer for the second trial."},
        {
            "linkId": "g1",
            "type": "group",
            "text": "Judgement",
            "item": [
                {
                    "linkId": "X1",
                    "type": "boolean",
                    "text": "Is the washout complete?",
                    "required": True,
                },
                {"linkId": "X2", "type": "boolean", "text": "Any prior gene therapy?"},
            ],
        },
    ]
    client.app.state.protocol = dataclasses.replace(protocol, questionnaire=q)
    html, hidden = open_form(client, "demo-potential")
    assert "Second trial attestation" in html and "Please answer for the second trial." in html
    assert re.findall(r'name="(X\d)" value="true"( required)?', html) == [
        ("X1", " required"),
        ("X2", ""),
    ]
    assert 'name="I5"' not in html
    client.post("/app/patients/demo-potential/attest", data={**hidden, "X1": "true"})
    (qr,) = written(client)
    assert qr["item"] == [
        {
            "linkId": "g1",
            "text": "Judgement",
            "item": [
                {
                    "linkId": "X1",
                    "text": "Is the washout complete?",
                    "answer": [{"valueBoolean": True}],
                }
            ],
        }
    ]


def test_enrolment_only_when_eligible_and_only_once(client) -> None:
    page = client.get("/app/patients/demo-potential").text
    assert 'data-form="enrolment"' not in page
    _, hidden = open_form(client, "demo-potential")
    token = hidden["csrf_token"]
    refused = client.post("/app/patients/demo-potential/enrol", data={"csrf_token": token})
    assert refused.status_code == 409
    page = client.get("/app/patients/demo-eligible").text
    assert 'data-form="enrolment"' in page
    for _ in range(2):
        done = client.post("/app/patients/demo-eligible/enrol", data={"csrf_token": token})
        assert done.status_code == 200
    subjects = client.app.state.web_app.demo.written("ResearchSubject")
    assert len(subjects) == 1 and subjects[0]["meta"]["versionId"] == "2"
    assert subjects[0]["individual"] == {"reference": "Patient/demo-eligible"}
    assert subjects[0]["status"] == "on-study"
    assert 'data-enrolment="on-study"' in done.text


async def test_two_concurrent_submits_of_one_form_create_one_response() -> None:
    import asyncio

    import httpx

    from service.api import create_app
    from service.settings import Settings
    from tests.app.helpers import hidden as field

    app = create_app(Settings(_env_file=None, log_level="WARNING"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        form = await http.get("/app/patients/demo-potential/attest")
        data = {
            "csrf_token": field(form.text, "csrf_token"),
            "submission_id": field(form.text, "submission_id"),
            **ALL_YES,
        }
        answers = await asyncio.gather(
            *(http.post("/app/patients/demo-potential/attest", data=data) for _ in range(3))
        )
    assert [a.status_code for a in answers] == [303, 303, 303]
    assert len(app.state.web_app.demo.written("QuestionnaireResponse")) == 1
