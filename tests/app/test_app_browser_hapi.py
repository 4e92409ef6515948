"""EHR launch -> review -> attest -> the response is in HAPI -> pull mode agrees with the page.

A real browser (headless Chromium), the SMART EHR simulator in front of the local HAPI FHIR
server (``deploy/hapi/run-tests`` sets HAPI_BASE_URL), and the service on loopback. The test
works on its own copy of ``demo-potential`` (unique ids) so other HAPI tests keep their data.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.app.fhir_access import FhirAccess
from service.demo import load_demo_bundles
from service.fhir.loader import load_bundles
from service.settings import Settings
from tests.app.browser import launch_browser, screenshot
from tests.app.smart_sim import CLIENT_ID, Launch, SmartSim, free_port, serve

HAPI = os.environ.get("HAPI_BASE_URL")
pytestmark = [
    pytest.mark.hapi,
    pytest.mark.browser,
    pytest.mark.skipif(
        not HAPI, reason="no HAPI server: set HAPI_BASE_URL (deploy/hapi/run-tests)"
    ),
]
playwright_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def patient_id() -> str:
    """A fresh copy of demo-potential (and its Practitioner) in HAPI."""
    prefix = f"w{uuid.uuid4().hex[:8]}-"
    bundle = load_demo_bundles()["demo-potential"]
    copy = orjson.loads(orjson.dumps(bundle).replace(b"demo-", prefix.encode() + b"demo-"))
    load_bundles(HAPI, [(f"{prefix}demo-potential", copy)])
    return f"{prefix}demo-potential"


def test_ehr_launch_attest_in_hapi_and_pull_mode_agrees(patient_id: str) -> None:
    investigator = "Practitioner/" + patient_id.replace("demo-potential", "demo-investigator")
    sim = SmartSim(upstream=HAPI)
    port = free_port()
    service_url = f"http://127.0.0.1:{port}"
    sim.redirect_uris.add(f"{service_url}/app/callback")
    with serve(sim.app) as sim_base:
        sim.base_url = sim_base
        settings = Settings(
            _env_file=None,
            log_level="WARNING",
            app_smart_client_id=CLIENT_ID,
            app_smart_allowed_issuers=[sim.fhir_base],
            app_smart_launch_url=f"{service_url}/app/launch",
            app_enrolment_enabled=True,
            public_base_url=service_url,
        )
        app = create_app(settings)
        study = app.state.protocol.versioned_canonical
        launch_id = sim.add_launch(
            Launch(
                patient=patient_id,
                fhir_user=investigator,
                user_name="Dr. Hapi Investigator",
                app_context=json.dumps({"study": study}),
            )
        )
        with serve(app, port=port), playwright_api.sync_playwright() as p:
            browser = launch_browser(p)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            try:
                page.goto(sim.ehr_launch_url(f"{service_url}/app/launch", launch_id))
                page.wait_for_url(f"{service_url}/app/patients/{patient_id}")
                assert page.get_attribute("[data-status]", "data-status") == "potential-candidate"
                page.get_by_role("link", name="Record investigator attestation").click()
                for item in ("I5", "I9", "I11", "I12"):
                    page.check(f'input[name="{item}"][value="true"]')
                page.get_by_role("button", name="Sign and submit attestation").click()
                page.wait_for_url(f"{service_url}/app/patients/{patient_id}")
                assert page.get_attribute("[data-status]", "data-status") == "eligible"
                shown = {
                    row.get_attribute("data-criterion"): row.get_attribute("data-result")
                    for row in page.locator("tr[data-criterion]").all()
                }
                screenshot(page, "hapi-review-eligible")
                page.get_by_role("button", name="Enrol in the study").click()
                page.wait_for_selector("[data-enrolment]")
                assert page.get_attribute("[data-enrolment]", "data-enrolment") == "on-study"
            finally:
                browser.close()

    # every FHIR call of the app went through the simulator with a token it issued
    assert sim.forwarded and all(f.token in sim.tokens for f in sim.forwarded)
    assert not [r for r in sim.refused if r.startswith("no valid token")]

    # the response is in HAPI: read it back
    with httpx.Client(base_url=HAPI.rstrip("/") + "/", timeout=30) as hapi:
        found = hapi.get(
            "QuestionnaireResponse", params={"subject": f"Patient/{patient_id}"}
        ).json()
        (qr,) = [e["resource"] for e in found.get("entry", [])]
        subjects = hapi.get("ResearchSubject", params={"patient": f"Patient/{patient_id}"}).json()
    q = app.state.protocol.questionnaire
    assert qr["questionnaire"] == f"{q['url']}|{q['version']}"
    assert qr["status"] == "completed"
    assert qr["author"]["reference"] == investigator
    assert {i["linkId"]: i["answer"][0]["valueBoolean"] for i in qr["item"]} == {
        "I5": True,
        "I9": True,
        "I11": True,
        "I12": True,
    }
    assert len(subjects.get("entry", [])) == 1

    # a repeat of the same submission (same identifier) does not create a second response,
    # and enrolling again updates the one ResearchSubject: HAPI honours both conditions
    access = FhirAccess(Settings(_env_file=None), base_url=HAPI, token=None)
    ident = qr["identifier"]
    again = asyncio.run(access.create_once(_fresh(qr), f"{ident['system']}|{ident['value']}"))
    assert again["id"] == qr["id"]
    subject = subjects["entry"][0]["resource"]
    (sid,) = subject["identifier"]
    updated = asyncio.run(access.upsert(_fresh(subject), f"{sid['system']}|{sid['value']}"))
    assert updated["id"] == subject["id"]
    with httpx.Client(base_url=HAPI.rstrip("/") + "/", timeout=30) as hapi:
        for rtype in ("QuestionnaireResponse", "ResearchSubject"):
            found = hapi.get(rtype, params={"patient": f"Patient/{patient_id}"}).json()
            assert len(found.get("entry", [])) == 1, rtype

    # pull mode on its own (the service's own access to HAPI) agrees with the page
    pull = Settings(_env_file=None, log_level="WARNING", fhir_base_url=HAPI)
    with TestClient(create_app(pull)) as client:
        bundle = client.get(f"/Patient/{patient_id}/$eligibility").json()
    resources = [e["resource"] for e in bundle["entry"]]
    assert resources[0]["status"] == "eligible"
    from_pull = {
        r["code"]["coding"][0]["code"]: r.get("valueCodeableConcept", {})
        .get("coding", [{}])[0]
        .get("code", "undetermined")
        for r in resources
        if r["resourceType"] == "Observation"
    }
    assert shown == from_pull


def _fresh(resource: dict) -> dict:
    """The resource as a client would send it again: no server id or meta."""
    return {k: v for k, v in resource.items() if k not in ("id", "meta")}
