"""HTTP API: $eligibility (bundle and pull mode), protocol resources, OperationOutcome errors."""

from __future__ import annotations

import logging
from datetime import date

import orjson
import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.demo import load_demo_bundles
from service.settings import Settings
from tests.builders import bundle, lab, patient

FHIR = {"Content-Type": "application/fhir+json"}


@pytest.fixture(scope="module")
def client():
    app = create_app(Settings(cds_auth_enabled=False, max_body_bytes=200_000))
    with TestClient(app) as c:
        yield c


def _types(body: dict) -> list[str]:
    return [e["resource"]["resourceType"] for e in body["entry"]]


def test_post_bundle_returns_result_bundle(client):
    data = bundle(patient(), lab("777-3", 12, "10*9/L"))
    r = client.post("/$eligibility?asOf=2026-11-20", content=orjson.dumps(data), headers=FHIR)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/fhir+json")
    body = r.json()
    assert _types(body)[0] == "ResearchSubject"
    assert body["entry"][0]["resource"]["status"] == "ineligible"  # platelets 12


def test_post_parameters_with_patient_data_and_as_of(client):
    params = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "patientData", "resource": bundle(patient(), lab("777-3", 12, "10*9/L"))},
            {"name": "asOf", "valueDate": "2026-11-20"},
        ],
    }
    r = client.post("/$eligibility", json=params)  # application/json is accepted too
    assert r.status_code == 200
    obs = [
        e["resource"] for e in r.json()["entry"] if e["resource"]["resourceType"] == "Observation"
    ]
    assert {o["effectiveDateTime"] for o in obs} == {"2026-11-20"}


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        (b"{oops", 400, "not valid JSON"),
        (orjson.dumps(patient()), 400, "expected a FHIR Bundle"),
        (orjson.dumps(bundle(lab("777-3", 1, "10*9/L"))), 400, "no Patient"),
    ],
)
def test_bad_input_is_an_operation_outcome(client, body, status, text):
    r = client.post("/$eligibility", content=body, headers=FHIR)
    assert r.status_code == status
    out = r.json()
    assert out["resourceType"] == "OperationOutcome"
    assert text in out["issue"][0]["diagnostics"]


def test_bad_as_of_is_400(client):
    r = client.post(
        "/$eligibility?asOf=yesterday", content=orjson.dumps(bundle(patient())), headers=FHIR
    )
    assert r.status_code == 400
    assert "asOf" in r.json()["issue"][0]["diagnostics"]


def test_body_over_limit_is_413(client):
    big = b" " * 200_001
    r = client.post("/$eligibility", content=big, headers=FHIR)
    assert r.status_code == 413
    assert r.json()["issue"][0]["code"] == "too-long"


def test_wrong_content_type_is_415(client):
    r = client.post("/$eligibility", content=b"<xml/>", headers={"Content-Type": "application/xml"})
    assert r.status_code == 415


@pytest.mark.parametrize(
    ("path", "rtype"),
    [
        ("/ResearchStudy/cd19-cart-rr-ball", "ResearchStudy"),
        ("/Questionnaire/cd19-cart-rr-ball-attestation", "Questionnaire"),
        ("/ValueSet/bilirubin-total", "ValueSet"),
        ("/CodeSystem/cd19-cart-rr-ball-criteria", "CodeSystem"),
        ("/OperationDefinition/eligibility", "OperationDefinition"),
    ],
)
def test_protocol_resources_are_served(client, path, rtype):
    r = client.get(path)
    assert r.status_code == 200
    assert r.json()["resourceType"] == rtype


def test_unknown_protocol_resource_is_404_outcome(client):
    r = client.get("/ValueSet/nope")
    assert r.status_code == 404
    assert r.json()["resourceType"] == "OperationOutcome"


def test_metadata_names_the_operation(client):
    body = client.get("/metadata").json()
    assert body["resourceType"] == "CapabilityStatement"
    assert body["fhirVersion"] == "4.0.1"
    ops = body["rest"][0]["operation"]
    assert ops[0]["name"] == "eligibility"


def test_healthz(client):
    assert client.get("/healthz").json()["status"] == "ok"


def test_pull_mode_from_the_embedded_demo_store(client):
    r = client.get("/Patient/demo-eligible/$eligibility")
    assert r.status_code == 200, r.text
    assert r.json()["entry"][0]["resource"]["status"] == "eligible"


def test_pull_mode_matches_bundle_mode_for_every_demo_patient(client):
    for pid, data in load_demo_bundles().items():
        pulled = client.get(f"/Patient/{pid}/$eligibility").json()
        posted = client.post("/$eligibility", content=orjson.dumps(data), headers=FHIR).json()

        def outcomes(b):
            return {
                o["code"]["coding"][0]["code"]: (
                    o.get("valueCodeableConcept", {})
                    .get("coding", [{}])[0]
                    .get("code", "undetermined")
                )
                for o in (e["resource"] for e in b["entry"])
                if o["resourceType"] == "Observation"
            }

        assert outcomes(pulled) == outcomes(posted), pid


def test_pull_mode_unknown_patient_is_404(client):
    r = client.get("/Patient/nobody/$eligibility")
    assert r.status_code == 404
    assert r.json()["resourceType"] == "OperationOutcome"


def test_logs_carry_no_patient_identifiers(client, caplog):
    caplog.set_level(logging.INFO)
    client.get("/Patient/demo-eligible/$eligibility")
    # The audit trail ("audit" logger, its own stream on stdout) names the patient by design.
    text = "\n".join(str(vars(r)) for r in caplog.records if r.name != "audit")
    assert "demo-eligible" not in text
    assert any(
        getattr(r, "route", None) == "/Patient/{patient_id}/$eligibility" for r in caplog.records
    )


def test_errors_never_leak_stack_traces(client, monkeypatch):
    import service.routes

    def boom(*a, **k):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(service.routes, "evaluate_body_json", boom)
    raw = TestClient(client.app, raise_server_exceptions=False)
    r = raw.post("/$eligibility", content=orjson.dumps(bundle(patient())), headers=FHIR)
    assert r.status_code == 500
    assert "secret" not in r.text and "Traceback" not in r.text


def test_as_of_default_is_today(client):
    body = client.post(
        "/$eligibility", content=orjson.dumps(bundle(patient())), headers=FHIR
    ).json()
    obs = next(
        e["resource"] for e in body["entry"] if e["resource"]["resourceType"] == "Observation"
    )
    assert obs["effectiveDateTime"] == date.today().isoformat()


def test_api_keys_guard_the_operation():
    settings = Settings(cds_auth_enabled=False, api_keys=["k-123"])
    with TestClient(create_app(settings)) as c:
        body = orjson.dumps(bundle(patient()))
        assert c.post("/$eligibility", content=body, headers=FHIR).status_code == 401
        wrong = {**FHIR, "Authorization": "Bearer k-124"}
        assert c.post("/$eligibility", content=body, headers=wrong).status_code == 401
        assert c.get("/Patient/demo-eligible/$eligibility").status_code == 401
        right = {**FHIR, "Authorization": "Bearer k-123"}
        assert c.post("/$eligibility", content=body, headers=right).status_code == 200
        assert c.get("/metadata").status_code == 200  # the protocol stays public


def test_pull_with_service_credentials_needs_api_keys():
    from service.api_keys import UnsafeConfiguration

    risky = {"fhir_base_url": "https://fhir.example.org", "fhir_auth": "static", "fhir_token": "t"}
    with pytest.raises(UnsafeConfiguration):
        create_app(Settings(**risky))
    create_app(Settings(**risky, api_keys=["k"]))
    create_app(Settings(**risky, allow_anonymous_pull=True))
