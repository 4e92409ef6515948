"""CDS Hooks over HTTP: discovery, prefetch use, fetching what is missing, 412, SSRF guard, JWT."""

from __future__ import annotations

import copy
import time
import uuid

import httpx
import jwt
import pytest
import respx
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from jwt.algorithms import ECAlgorithm

from service.api import create_app
from service.demo import load_demo_bundles
from service.fhir.demo_store import DemoStore
from service.fhir.queries import plan_queries, prefetch_templates
from service.protocol import default_protocol
from service.settings import Settings, TrustedIssuer

EHR = "https://ehr.example.org/fhir"
DISCOVERY = "http://testserver/cds-services"
SID = f"{default_protocol().id}-screening"
ISSUER = "https://ehr.example.org"
KID = "test-key-1"
PRIVATE_KEY = ec.generate_private_key(ec.SECP384R1())
JWK = {**ECAlgorithm.to_jwk(PRIVATE_KEY.public_key(), as_dict=True), "kid": KID, "alg": "ES384"}


def _settings(**extra) -> Settings:
    base = {"cds_auth_enabled": False, "cds_allowed_fhir_servers": [EHR]}
    return Settings(**(base | extra))


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(_settings())) as c:
        yield c


def _store() -> DemoStore:
    return DemoStore(load_demo_bundles(), base_url=EHR, default_page_size=500, max_page_size=500)


def full_prefetch(patient_id: str) -> dict:
    """Answer every prefetch template from the demo data, as an EHR would."""
    store = _store()
    out = {}
    for key, template in prefetch_templates(default_protocol()).items():
        url = f"{EHR}/{template.replace('{{context.patientId}}', patient_id)}"
        out[key] = store.handle(httpx.Request("GET", url)).json()
    return out


def call(patient_id: str, prefetch: dict | None = None, **extra) -> dict:
    body = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/dr-1", "patientId": patient_id},
        **extra,
    }
    if prefetch is not None:
        body["prefetch"] = prefetch
    return body


def test_discovery_lists_one_patient_view_service_with_r4_prefetch(client):
    services = client.get("/cds-services").json()["services"]
    assert len(services) == 1
    service = services[0]
    assert service["hook"] == "patient-view" and service["id"] == SID
    assert service["title"] and service["description"]
    prefetch = service["prefetch"]
    assert prefetch["patient"] == "Patient/{{context.patientId}}"
    assert {q.key for q in plan_queries(default_protocol(), "x", None)} == set(prefetch)
    obs = [t for t in prefetch.values() if t.startswith("Observation?")]
    assert obs and all("_sort=-date" in t and "sort:desc" not in t for t in obs)
    assert "http://loinc.org|1975-2" in prefetch["labs"]


@respx.mock(assert_all_mocked=True)
def test_full_prefetch_makes_no_outbound_request(client):
    r = client.post(
        f"/cds-services/{SID}", json=call("demo-potential", full_prefetch("demo-potential"))
    )
    assert r.status_code == 200, r.text
    [card] = r.json()["cards"]
    assert len(card["summary"]) < 140
    assert "need review" in card["summary"]
    assert respx.calls.call_count == 0


def test_eligible_patient_gets_a_card_and_ineligible_none(client):
    eligible = client.post(
        f"/cds-services/{SID}", json=call("demo-eligible", full_prefetch("demo-eligible"))
    )
    assert eligible.json()["cards"][0]["indicator"] == "warning"
    inel = client.post(
        f"/cds-services/{SID}", json=call("demo-ineligible", full_prefetch("demo-ineligible"))
    )
    assert inel.json() == {"cards": []}


def test_partial_prefetch_fetches_only_missing_keys(client):
    prefetch = full_prefetch("demo-eligible")
    del prefetch["labs"]
    prefetch["consents"] = None
    store = _store()
    with respx.mock(assert_all_mocked=True) as mock:
        route = mock.route(host="ehr.example.org").mock(side_effect=store.handle)
        r = client.post(
            f"/cds-services/{SID}",
            json=call(
                "demo-eligible",
                prefetch,
                fhirServer=EHR,
                fhirAuthorization={
                    "access_token": "opaque-token-123",
                    "token_type": "Bearer",
                    "expires_in": 300,
                    "scope": "user/Observation.read user/Consent.read",
                    "subject": "cds-service",
                },
            ),
        )
    assert r.status_code == 200, r.text
    assert r.json()["cards"][0]["summary"].startswith("Meets all 12")
    paths = {(c.request.url.path, c.request.url.params.get("code", "")[:30]) for c in route.calls}
    assert {p for p, _ in paths} == {"/fhir/Observation", "/fhir/Consent"}
    assert all(c.request.headers["authorization"] == "Bearer opaque-token-123" for c in route.calls)


def test_a_fetched_lab_key_reads_results_with_no_time_as_its_template_would(client):
    """Issue 19 §4: the prefetch template has no date filter, the fetch of a missing key has;
    a failing count with no time (it may be the newest) must be read on both paths."""
    bundles = copy.deepcopy(load_demo_bundles())  # the loader's dicts are shared: never edit them
    undated = {
        "resourceType": "Observation",
        "id": "undated-platelets",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "777-3"}]},
        "subject": {"reference": "Patient/demo-eligible"},
        "valueQuantity": {"value": 5, "unit": "10*9/L", "system": "http://unitsofmeasure.org",
                          "code": "10*9/L"},
    }  # fmt: skip
    bundles["demo-eligible"]["entry"].append({"resource": undated})
    store = DemoStore(bundles, base_url=EHR, default_page_size=500, max_page_size=500)
    prefetch = full_prefetch("demo-eligible")
    del prefetch["labs"]
    with respx.mock(assert_all_mocked=True) as mock:
        mock.route(host="ehr.example.org").mock(side_effect=store.handle)
        r = client.post(
            f"/cds-services/{SID}", json=call("demo-eligible", prefetch, fhirServer=EHR)
        )
    assert r.status_code == 200, r.text
    summary = r.json()["cards"][0]["summary"]
    assert not summary.startswith("Meets all 12"), summary
    assert "undated-platelets" in r.text or "I7" in r.text


def test_prefetch_holding_an_operation_outcome_is_fetched(client):
    prefetch = full_prefetch("demo-eligible")
    prefetch["conditions"] = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "forbidden"}],
    }
    store = _store()
    with respx.mock(assert_all_mocked=True) as mock:
        route = mock.route(host="ehr.example.org").mock(side_effect=store.handle)
        r = client.post(
            f"/cds-services/{SID}", json=call("demo-eligible", prefetch, fhirServer=EHR)
        )
    assert r.status_code == 200
    assert [c.request.url.path for c in route.calls] == ["/fhir/Condition"]


def test_missing_data_and_no_fhir_server_is_412(client):
    prefetch = full_prefetch("demo-eligible")
    del prefetch["patient"]
    r = client.post(f"/cds-services/{SID}", json=call("demo-eligible", prefetch))
    assert r.status_code == 412
    out = r.json()
    assert out["resourceType"] == "OperationOutcome" and "patient" in out["issue"][0]["diagnostics"]


@respx.mock(assert_all_mocked=True)
def test_fhir_server_not_allowlisted_is_refused_before_any_request(client):
    r = client.post(
        f"/cds-services/{SID}",
        json=call("demo-eligible", {}, fhirServer="http://169.254.169.254/latest"),
    )
    assert r.status_code == 403
    assert respx.calls.call_count == 0


@pytest.mark.parametrize(
    "body",
    [
        {"hook": "patient-view"},  # no hookInstance, no context
        {"hook": "order-sign", "hookInstance": str(uuid.uuid4()), "context": {"patientId": "x"}},
        {
            "hook": "patient-view",
            "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/1", "patientId": "p"},
            "fhirAuthorization": {
                "access_token": "t",
                "token_type": "Bearer",
                "expires_in": 1,
                "scope": "s",
                "subject": "c",
            },  # fhirAuthorization without fhirServer
        },
    ],
)
def test_invalid_requests_are_400(client, body):
    r = client.post(f"/cds-services/{SID}", json=body)
    assert r.status_code == 400
    assert r.json()["resourceType"] == "OperationOutcome"


def test_unknown_service_is_404(client):
    assert client.post("/cds-services/nope", json=call("x", {})).status_code == 404


def test_feedback_is_accepted(client):
    body = {
        "feedback": [
            {
                "card": str(uuid.uuid4()),
                "outcome": "accepted",
                "acceptedSuggestions": [{"id": "s1"}],
                "outcomeTimestamp": "2026-11-27T10:00:00Z",
            }
        ]
    }
    assert client.post(f"/cds-services/{SID}/feedback", json=body).status_code == 200
    bad = {
        "feedback": [{"card": "x", "outcome": "maybe", "outcomeTimestamp": "2026-11-27T10:00:00Z"}]
    }
    assert client.post(f"/cds-services/{SID}/feedback", json=bad).status_code == 400


# -- client authentication over HTTP ---------------------------------------------------------


@pytest.fixture(scope="module")
def secured():
    settings = Settings(
        cds_auth_enabled=True,
        cds_issuers=[TrustedIssuer(iss=ISSUER, jwks={"keys": [JWK]})],
        cds_allowed_fhir_servers=[EHR],
    )
    with TestClient(create_app(settings)) as c:
        yield c


def _token(aud: str, **claims) -> str:
    now = int(time.time())
    payload = {"iss": ISSUER, "aud": aud, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
    return jwt.encode(
        payload | claims, PRIVATE_KEY, algorithm="ES384", headers={"kid": KID, "typ": "JWT"}
    )


def test_valid_es384_token_is_accepted_on_every_endpoint(secured):
    discovery = secured.get(
        "/cds-services",
        headers={"Authorization": f"Bearer {_token('http://testserver/cds-services')}"},
    )
    assert discovery.status_code == 200
    url = f"http://testserver/cds-services/{SID}"
    r = secured.post(
        f"/cds-services/{SID}",
        json=call("demo-eligible", full_prefetch("demo-eligible")),
        headers={"Authorization": f"Bearer {_token(url)}"},
    )
    assert r.status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer not-a-jwt"},
        {"Authorization": f"Bearer {_token('http://testserver/cds-services/other')}"},
        {"Authorization": f"Bearer {_token(DISCOVERY, exp=int(time.time()) - 600)}"},
    ],
    ids=["missing", "garbage", "wrong-aud", "expired"],
)
def test_bad_credentials_get_401_with_no_detail(secured, headers):
    r = secured.get("/cds-services", headers=headers)
    assert r.status_code == 401
    assert r.content == b""


def test_replayed_token_is_refused(secured):
    token = _token("http://testserver/cds-services")
    headers = {"Authorization": f"Bearer {token}"}
    assert secured.get("/cds-services", headers=headers).status_code == 200
    assert secured.get("/cds-services", headers=headers).status_code == 401


def test_cors_only_for_configured_origins():
    app = create_app(_settings(cors_origins=["https://sandbox.cds-hooks.org"]))
    with TestClient(app) as c:
        preflight = {"Access-Control-Request-Method": "POST"}
        ok = c.options(
            "/cds-services", headers={"Origin": "https://sandbox.cds-hooks.org", **preflight}
        )
        assert ok.headers["access-control-allow-origin"] == "https://sandbox.cds-hooks.org"
        other = c.options("/cds-services", headers={"Origin": "https://evil.example", **preflight})
        assert "access-control-allow-origin" not in other.headers


def test_no_cors_headers_by_default(client):
    r = client.get("/cds-services", headers={"Origin": "https://sandbox.cds-hooks.org"})
    assert "access-control-allow-origin" not in r.headers


def test_oversized_cds_request_is_413():
    with TestClient(create_app(_settings(max_body_bytes=1000))) as c:
        body = b"{" + b" " * 2000 + b"}"
        r = c.post(
            f"/cds-services/{SID}", content=body, headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 413


def test_cds_request_must_be_json(client):
    r = client.post(f"/cds-services/{SID}", content=b"{}", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415


def test_cds_fetch_never_borrows_the_services_own_credentials():
    settings = _settings(
        fhir_base_url=EHR, fhir_auth="static", fhir_token="service-secret", api_keys=["k"]
    )
    prefetch = full_prefetch("demo-eligible")
    del prefetch["labs"]
    store = _store()
    with TestClient(create_app(settings)) as c, respx.mock(assert_all_mocked=True) as mock:
        route = mock.route(host="ehr.example.org").mock(side_effect=store.handle)
        r = c.post(f"/cds-services/{SID}", json=call("demo-eligible", prefetch, fhirServer=EHR))
    assert r.status_code == 200
    assert route.calls and all("authorization" not in c.request.headers for c in route.calls)
