"""The review page and the patient list in demo mode, from the pull-mode pipeline's result."""

from __future__ import annotations

import dataclasses
import re

import pytest

from service.protocol import default_protocol
from tests.app.helpers import demo_client, results, row, status

EXPECTED = {
    "demo-eligible": "eligible",
    "demo-ineligible": "ineligible",
    "demo-potential": "potential-candidate",
    "demo-us-units": "eligible",
    "demo-stale-labs": "potential-candidate",
    "demo-pediatric": "ineligible",
    # written for ZUMA-3 and DAPA-CKD; their answers for the seed trial
    "demo-zuma3-eligible": "eligible",
    "demo-zuma3-potential": "potential-candidate",
    "demo-ckd-eligible": "ineligible",
    "demo-ckd-potential": "ineligible",
}


@pytest.fixture
def client():
    with demo_client() as c:
        yield c


def test_index_lists_every_demo_patient_with_its_status(client) -> None:
    page = client.get("/app/")
    assert page.status_code == 200
    listed = re.findall(r'data-patient="([^"]+)"', page.text)
    assert sorted(listed) == sorted(EXPECTED)
    for pid, expected in EXPECTED.items():
        block = page.text[page.text.index(f'data-patient="{pid}"') :]
        assert f"status-pill status-{expected}" in block[:600], pid


@pytest.mark.parametrize("pid", sorted(EXPECTED))
def test_review_page_agrees_with_pull_mode(client, pid: str) -> None:
    page = client.get(f"/app/patients/{pid}")
    assert page.status_code == 200
    bundle = client.get(f"/Patient/{pid}/$eligibility").json()
    subject = bundle["entry"][0]["resource"]
    assert status(page.text) == subject["status"] == EXPECTED[pid]
    from_bundle = {}
    for entry in bundle["entry"]:
        res = entry["resource"]
        if res["resourceType"] == "Observation":
            code = res["code"]["coding"][0]["code"]
            value = res.get("valueCodeableConcept", {}).get("coding", [{}])[0].get("code")
            from_bundle[code] = value or "undetermined"
    assert results(page.text) == from_bundle


def test_every_criterion_and_member_has_a_row_with_reason_and_title(client) -> None:
    protocol = default_protocol()
    page = client.get("/app/patients/demo-stale-labs").text
    shown = results(page)
    assert list(shown) == [c for c in _protocol_order(protocol)]
    bili = row(page, "I6-bilirubin")
    assert _html(protocol.criterion_display("I6-bilirubin")) in bili
    assert "no result in the last 14 days" in bili  # the reason, in words
    assert shown["I6"] == "undetermined"


def _protocol_order(protocol):
    for c in protocol.top_level:
        yield c.code
        yield from c.members


def test_evidence_is_named_for_people(client) -> None:
    page = client.get("/app/patients/demo-eligible").text
    platelets = row(page, "I7-platelets")
    assert "Result: " in platelets and "Observation/demo-eligible-" in platelets
    consent = row(page, "I12")
    assert "Consent" in consent


def test_what_is_still_needed_comes_from_the_guidance_response(client) -> None:
    page = client.get("/app/patients/demo-potential").text
    needed = page[page.index("What is still needed") : page.index('id="criteria-title"')]
    for code in ("I5", "I9", "I11", "I12"):
        assert f"<strong>{code} " in needed
    bundle = client.get("/Patient/demo-potential/$eligibility").json()
    guidance = next(
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "GuidanceResponse"
    )
    notes = [n["text"].removeprefix("Needed: ") for n in guidance["note"][1:]]
    assert notes and all(_html(n) in needed for n in notes)


def _html(text: str) -> str:
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&#34;")
    )


def test_attestations_on_record_name_who_and_when(client) -> None:
    page = client.get("/app/patients/demo-eligible").text
    section = page[page.index("attestations on record") :]
    assert 'data-attestation="QuestionnaireResponse/' in section
    assert "I5: Yes" in section and "I12: Yes" in section


def test_pages_with_patient_data_are_not_stored_and_scripts_are_ours_only(client) -> None:
    for path in ("/app/", "/app/patients/demo-potential", "/app/patients/demo-potential/attest"):
        page = client.get(path)
        assert page.headers["cache-control"] == "no-store", path
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "frame-ancestors" in csp
        assert "<script>" not in page.text and " on" + "click=" not in page.text
        assert re.findall(r'<script src="([^"]+)"', page.text) == ["/app/static/app.js"]


def test_session_cookie_is_httponly_samesite_and_holds_only_a_signed_id(client) -> None:
    page = client.get("/app/patients/demo-potential")
    cookie = page.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/app" in cookie
    value = cookie.split(";")[0].split("=", 1)[1]
    assert "demo" not in value and len(value) < 120


def test_static_assets_are_served_by_the_service(client) -> None:
    css = client.get("/app/static/app.css")
    js = client.get("/app/static/app.js")
    assert css.status_code == js.status_code == 200
    assert css.headers["content-type"].startswith("text/css")
    assert "print" in css.text and "addEventListener" in js.text
    assert client.get("/app/static/../settings.py").status_code == 404
    assert client.get("/app/static/other.js").status_code == 404


def test_unknown_and_invalid_patients_get_a_page_not_a_500(client) -> None:
    missing = client.get("/app/patients/nobody-here")
    assert missing.status_code == 404 and "Patient not found" in missing.text
    bad = client.get("/app/patients/bad%20id%3F")
    assert bad.status_code == 400 and "Invalid patient id" in bad.text
    assert missing.headers["cache-control"] == "no-store"


def test_reasons_are_escaped(client) -> None:
    """A reason is data from the patient's record: it must never become markup."""
    app = client.app
    protocol = app.state.protocol
    criteria = dict(protocol.criteria)
    criteria["I1"] = dataclasses.replace(criteria["I1"], title="Age <b>18</b>")
    app.state.protocol = dataclasses.replace(protocol, criteria=criteria)
    page = client.get("/app/patients/demo-eligible").text
    assert "Age &lt;b&gt;18&lt;/b&gt;" in page and "<b>18</b>" not in page


def test_an_ineligible_patient_shows_why_and_is_not_sent_to_the_attestation(client) -> None:
    page = client.get("/app/patients/demo-ineligible").text
    why = page[page.index("Why not eligible") : page.index('id="criteria-title"')]
    assert "<strong>I7 " in why and "<strong>I10 " in why
    assert "What is still needed" not in page  # nothing is undetermined
    assert "Record investigator attestation" not in page  # all four attestations are met
    assert "Change an attestation" in page
