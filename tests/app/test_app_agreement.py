"""The CDS Hooks card, the web app and pull mode agree on every demo patient (issue 9).

Demo mode, one service: the review page's banner, ``GET /Patient/{id}/$eligibility`` and the
card a CDS client gets with the demo patients' data as prefetch must tell the same story, also
after an attestation written through the app.
"""

from __future__ import annotations

import uuid

import orjson
import pytest

from service import demo_ehr
from service.cds.router import service_id
from service.demo import load_demo_bundles
from tests.app.helpers import demo_client, open_form, results, status

CARD_STATUSES = {"eligible", "potential-candidate"}  # ineligible: no card by default


def pull_mode(client, pid: str) -> tuple[str, dict[str, str]]:
    bundle = client.get(f"/Patient/{pid}/$eligibility").json()
    resources = [e["resource"] for e in bundle["entry"]]
    (subject,) = [r for r in resources if r["resourceType"] == "ResearchSubject"]
    per_code = {}
    for r in resources:
        if r["resourceType"] == "Observation":
            code = r["code"]["coding"][0]["code"]
            value = r.get("valueCodeableConcept", {}).get("coding", [{}])[0].get("code")
            per_code[code] = value or "undetermined"
    return subject["status"], per_code


def card_for(client, pid: str) -> list[dict]:
    sid = service_id(client.app.state.protocol)
    url = f"http://testserver/cds-services/{sid}"
    templates = client.get(
        "/cds-services", headers={"Authorization": f"Bearer {demo_ehr.sign(url[: -len(sid) - 1])}"}
    ).json()["services"][0]["prefetch"]
    body = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/demo", "patientId": pid},
        "prefetch": demo_ehr.fill_prefetch(templates, pid, load_demo_bundles()),
    }
    answer = client.post(
        f"/cds-services/{sid}",
        content=orjson.dumps(body),
        headers={
            "Authorization": f"Bearer {demo_ehr.sign(url)}",
            "Content-Type": "application/json",
        },
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["cards"]


@pytest.mark.parametrize("pid", sorted(load_demo_bundles()))
def test_card_app_and_pull_mode_agree(pid: str) -> None:
    with demo_client(rate_limit_enabled=False) as client:
        page = client.get(f"/app/patients/{pid}").text
        api_status, api_results = pull_mode(client, pid)
        assert status(page) == api_status
        assert results(page) == api_results
        cards = card_for(client, pid)
        assert bool(cards) is (api_status in CARD_STATUSES)


def test_after_an_attestation_in_the_app_the_card_and_api_agree_with_the_page() -> None:
    answers = {"I5": "true", "I9": "true", "I11": "true", "I12": "true"}
    with demo_client(rate_limit_enabled=False) as client:
        _, hidden = open_form(client, "demo-potential")
        client.post("/app/patients/demo-potential/attest", data={**hidden, **answers})
        page = client.get("/app/patients/demo-potential").text
        api_status, _ = pull_mode(client, "demo-potential")
        assert status(page) == api_status == "eligible"
