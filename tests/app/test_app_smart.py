"""SMART App Launch against the EHR simulator (loopback), FHIR data from the demo layer.

The simulator checks PKCE, state, aud and the redirect URI, and forwards FHIR calls only with
a token it issued, so these tests show the app reads and writes with the user's token.
"""

from __future__ import annotations

import json
import logging
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.fhir.demo_layer import DemoLayer
from service.fhir.demo_store import DEMO_BASE_URL
from service.settings import Settings
from tests.app.helpers import open_form, results, row, status
from tests.app.smart_sim import CLIENT_ID, Launch, SmartSim, serve

APP = "http://testserver"
ALL_YES = {"I5": "true", "I9": "true", "I11": "true", "I12": "true"}


@pytest.fixture(scope="module")
def sim():
    layer = DemoLayer()
    sim = SmartSim(upstream=DEMO_BASE_URL, transport=httpx.MockTransport(layer.handle))
    sim.redirect_uris.add(f"{APP}/app/callback")
    sim.layer = layer  # type: ignore[attr-defined]
    with serve(sim.app) as base:
        sim.base_url = base
        yield sim


def smart_settings(sim: SmartSim, **overrides) -> Settings:
    return Settings(
        _env_file=None,
        log_level="WARNING",
        app_smart_client_id=CLIENT_ID,
        app_smart_allowed_issuers=[sim.fhir_base],
        public_base_url=APP,
        **overrides,
    )


@pytest.fixture
def client(sim):
    with TestClient(create_app(smart_settings(sim))) as c:
        yield c


def launch(client: TestClient, sim: SmartSim, launch_ctx: Launch) -> httpx.Response:
    """EHR launch -> authorize (auto-approved) -> callback; returns the callback's answer."""
    launch_id = sim.add_launch(launch_ctx)
    started = client.get(
        "/app/launch", params={"iss": sim.fhir_base, "launch": launch_id}, follow_redirects=False
    )
    assert started.status_code == 302, started.text
    approved = httpx.get(started.headers["location"], follow_redirects=False)
    assert approved.status_code == 302, approved.text
    back = urlsplit(approved.headers["location"])
    assert f"{back.scheme}://{back.netloc}" == APP
    return client.get(f"{back.path}?{back.query}", follow_redirects=False)


def test_authorization_request_uses_pkce_state_aud_and_the_scopes(client, sim) -> None:
    launch_id = sim.add_launch(Launch(patient="demo-potential"))
    started = client.get(
        "/app/launch", params={"iss": sim.fhir_base, "launch": launch_id}, follow_redirects=False
    )
    query = parse_qs(urlsplit(started.headers["location"]).query)
    assert started.headers["location"].startswith(f"{sim.base_url}/authorize?")
    assert query["code_challenge_method"] == ["S256"] and len(query["code_challenge"][0]) >= 43
    assert query["aud"] == [sim.fhir_base] and query["launch"] == [launch_id]
    assert len(query["state"][0]) >= 20
    assert "code_verifier" not in query
    assert query["scope"][0].split() == [
        "launch",
        "openid",
        "fhirUser",
        "patient/*.rs",
        "patient/QuestionnaireResponse.c",
    ]
    assert "HttpOnly" in started.headers["set-cookie"]


def test_ehr_launch_review_attest_with_the_users_token(client, sim, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    context = json.dumps({"study": client.app.state.protocol.versioned_canonical})
    done = launch(client, sim, Launch(patient="demo-potential", app_context=context))
    assert done.status_code == 303
    assert done.headers["location"] == "/app/patients/demo-potential"
    sim.forwarded.clear()
    page = client.get("/app/patients/demo-potential").text
    assert status(page) == "potential-candidate"
    assert "Dr. Ada Simulated" in page
    assert sim.forwarded and all(f.token in sim.tokens for f in sim.forwarded)

    html, hidden = open_form(client, "demo-potential")
    answer = client.post("/app/patients/demo-potential/attest", data={**hidden, **ALL_YES})
    assert answer.status_code == 200
    assert status(answer.text) == "eligible"
    assert any(f.method == "POST" and f.path == "/QuestionnaireResponse" for f in sim.forwarded)
    (qr,) = [
        r
        for r in sim.layer.written("QuestionnaireResponse")
        if r["subject"]["reference"] == "Patient/demo-potential"
    ]
    assert qr["author"] == {
        "reference": "Practitioner/sim-investigator",
        "display": "Dr. Ada Simulated",
    }
    assert "Dr. Ada Simulated" in row(answer.text, "I5")

    # the token never reaches the browser or the logs
    tokens = list(sim.tokens)
    shown = page + html + answer.text + str(client.cookies) + done.headers["location"]
    assert not any(t in shown for t in tokens)
    assert not any(t in caplog.text for t in tokens)


def test_the_session_is_bound_to_the_launched_patient(client, sim) -> None:
    launch(client, sim, Launch(patient="demo-stale-labs"))
    other = client.get("/app/patients/demo-eligible")
    assert other.status_code == 403
    assert client.get("/app/patients/demo-stale-labs").status_code == 200


def test_a_user_who_is_not_a_practitioner_cannot_attest(client, sim) -> None:
    launch(client, sim, Launch(patient="demo-potential", fhir_user="Patient/demo-potential"))
    page = client.get("/app/patients/demo-potential").text
    assert "Record investigator attestation" not in page
    assert client.get("/app/patients/demo-potential/attest").status_code == 403


def test_without_a_session_the_app_asks_for_a_launch(client) -> None:
    page = client.get("/app/patients/demo-potential")
    assert page.status_code == 401 and "SMART launch" in page.text
    assert results(page.text) == {}


def test_an_iss_off_the_allowlist_is_refused_before_any_request(client, sim) -> None:
    before = sim.discoveries
    refused = client.get("/app/launch", params={"iss": "http://127.0.0.1:9/fhir", "launch": "x"})
    assert refused.status_code == 400 and "not allowed" in refused.text
    assert sim.discoveries == before


def test_a_callback_with_another_state_is_refused(client, sim) -> None:
    launch_id = sim.add_launch(Launch(patient="demo-potential"))
    client.get("/app/launch", params={"iss": sim.fhir_base, "launch": launch_id})
    forged = client.get("/app/callback", params={"code": "abc", "state": "not-ours"})
    assert forged.status_code == 400 and "state" in forged.text


def test_a_code_replayed_is_refused_by_the_simulator_and_the_app_says_so(client, sim) -> None:
    launch_id = sim.add_launch(Launch(patient="demo-potential"))
    started = client.get(
        "/app/launch", params={"iss": sim.fhir_base, "launch": launch_id}, follow_redirects=False
    )
    approved = httpx.get(started.headers["location"], follow_redirects=False)
    code = parse_qs(urlsplit(approved.headers["location"]).query)["code"][0]
    sim.codes.pop(code)  # as if already used
    back = urlsplit(approved.headers["location"])
    failed = client.get(f"{back.path}?{back.query}")
    assert failed.status_code == 400 and "refused" in failed.text


def test_standalone_launch_asks_for_launch_patient(sim) -> None:
    sim.standalone_patient = "demo-eligible"
    with TestClient(create_app(smart_settings(sim))) as c:
        started = c.get("/app/launch", follow_redirects=False)
        query = parse_qs(urlsplit(started.headers["location"]).query)
        assert query["scope"][0].split()[0] == "launch/patient" and "launch" not in query
        approved = httpx.get(started.headers["location"], follow_redirects=False)
        back = urlsplit(approved.headers["location"])
        done = c.get(f"{back.path}?{back.query}", follow_redirects=False)
        assert done.headers["location"] == "/app/patients/demo-eligible"


def test_enrolment_adds_the_write_scope(sim) -> None:
    with TestClient(create_app(smart_settings(sim, app_enrolment_enabled=True))) as c:
        launch_id = sim.add_launch(Launch(patient="demo-eligible"))
        started = c.get(
            "/app/launch",
            params={"iss": sim.fhir_base, "launch": launch_id},
            follow_redirects=False,
        )
        scope = parse_qs(urlsplit(started.headers["location"]).query)["scope"][0]
        assert "patient/ResearchSubject.cu" in scope.split()


def test_a_token_the_fhir_server_no_longer_accepts_ends_the_session(client, sim) -> None:
    launch(client, sim, Launch(patient="demo-potential"))
    assert client.get("/app/patients/demo-potential").status_code == 200
    sim.tokens.clear()  # the EHR revoked every token
    ended = client.get("/app/patients/demo-potential")
    assert ended.status_code == 401 and "Launch the app again" in ended.text
    assert client.get("/app/patients/demo-potential").status_code == 401  # session gone
