"""Bad input is a 400 OperationOutcome that names the element, never a 500, never an echo.

Each case here returned a 500 (or echoed the input, or retried for seconds) before the input
shapes were checked in one place (service/inputs.py, cds/models.py, pipeline.unwrap_parameters).
"""

from __future__ import annotations

import time
import uuid
from urllib.parse import quote

import httpx
import orjson
import pytest
import respx
from fastapi.testclient import TestClient

from service.api import create_app
from service.pipeline import evaluate_body, parse_as_of
from service.protocol import default_protocol
from service.record import InputError
from service.settings import Settings
from tests.builders import bundle, lab, patient

FHIR = {"Content-Type": "application/fhir+json"}
EHR = "https://ehr.example.org/fhir"
SID = f"{default_protocol().id}-screening"
HUGE = "x" * 1_000_000
MAX_ERROR_BYTES = 600


@pytest.fixture(scope="module")
def client():
    app = create_app(
        Settings(cds_auth_enabled=False, cds_allowed_fhir_servers=[EHR], api_keys=["k-123"])
    )
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


AUTH = {**FHIR, "Authorization": "Bearer k-123"}


def _bad(r: httpx.Response, text: str) -> str:
    assert r.status_code == 400, (r.status_code, r.text[:300])
    assert len(r.content) <= MAX_ERROR_BYTES
    out = r.json()
    assert out["resourceType"] == "OperationOutcome"
    diagnostics = out["issue"][0]["diagnostics"]
    assert text in diagnostics, diagnostics
    return diagnostics


def _params(*parameter) -> dict:
    return {"resourceType": "Parameters", "parameter": list(parameter)}


DATA = {"name": "patientData", "resource": bundle(patient())}


@pytest.mark.parametrize(
    ("body", "text"),
    [
        (_params(), "no 'patientData'"),
        ({"resourceType": "Parameters", "parameter": 5}, "Parameters.parameter is a number"),
        ({"resourceType": "Parameters", "parameter": {"a": 1}}, "is an object, not an array"),
        (_params(DATA, 7), "parameter[1] is a number"),
        (_params(DATA, {"name": ["asOf"]}), "parameter[1].name is an array"),
        (_params(DATA, DATA), "more than one 'patientData'"),
        (_params({"name": "patientData", "resource": "Bundle"}), "got a string"),
        (_params({"name": "patientData", "resource": {"resourceType": "Bundle", "entry": 1}}), ""),
        (_params(DATA, {"name": "asOf", "valueDate": 20261120}), "asOf must be a date"),
        (_params(DATA, {"name": "asOf"}), "exactly one of valueDate, valueDateTime"),
        (_params(DATA, {"name": "patient", "valueString": 5}), "not a valid FHIR id"),
        (_params(DATA, {"name": "patient", "valueString": HUGE}), "not a valid FHIR id"),
        ({"resourceType": 5}, "got a number that is not a resource type"),
        ({"resourceType": HUGE}, "got a string that is not a resource type"),
        ({"resourceType": "Bundle", "entry": {"resource": {}}}, "Bundle.entry in the input"),
        ([bundle(patient())], "got an array"),
    ],
)
def test_malformed_envelopes_are_400(client, body, text):
    _bad(client.post("/$eligibility", content=orjson.dumps(body), headers=AUTH), text)


def test_bundles_nested_without_end_are_400(client):
    inner = bundle(patient())
    for _ in range(6):
        inner = {"resourceType": "Bundle", "type": "batch-response", "entry": [{"resource": inner}]}
    _bad(client.post("/$eligibility", content=orjson.dumps(inner), headers=AUTH), "nests Bundles")


def test_resource_with_a_non_string_type_is_skipped_with_a_warning(client):
    data = bundle(patient(), lab("777-3", 12, "10*9/L"))
    data["entry"].append({"resource": {"resourceType": ["Observation"], "id": "x"}})
    data["entry"].append({"resource": {"resourceType": {"a": 1}}})
    r = client.post("/$eligibility?asOf=2026-11-20", content=orjson.dumps(data), headers=AUTH)
    assert r.status_code == 200
    notes = str(r.json())
    assert "has no resource" in notes  # the skipped entries are reported, not silently used


@pytest.mark.parametrize("pid", ["x" * 60_000, "a/b", "..", ".", "x" * 65, "é", "p 1"])
def test_invalid_patient_ids_in_the_path_are_400_and_not_echoed(client, pid):
    quoted = quote(pid, safe="").replace(".", "%2E")  # a client would resolve a bare '..'
    r = client.get(f"/Patient/{quoted}/$eligibility", headers=AUTH)
    if pid == "a/b":
        assert r.status_code in (400, 404) and pid not in r.text
        return
    text = _bad(r, "not a valid FHIR id")
    assert pid not in text or pid in (".", "..")


def test_invalid_patient_query_parameter_is_400_and_not_echoed(client):
    r = client.post("/$eligibility", params={"patient": "x" * 60_000},
                    content=orjson.dumps(bundle(patient())), headers=AUTH)  # fmt: skip
    _bad(r, "not a valid FHIR id")


def test_patient_selector_accepts_a_urn_uuid_full_url(client):
    full_url = f"urn:uuid:{uuid.uuid4()}"
    p = patient()
    del p["id"]
    data = {"resourceType": "Bundle", "entry": [{"fullUrl": full_url, "resource": p}]}
    r = client.post(f"/$eligibility?patient={full_url}", content=orjson.dumps(data), headers=AUTH)
    assert r.status_code == 200


def test_as_of_echo_is_bounded():
    with pytest.raises(InputError) as exc:
        parse_as_of("2026-11-20" + HUGE)
    assert len(str(exc.value)) < 100
    with pytest.raises(InputError):
        parse_as_of("20261120")  # Python 3.11 would read this; FHIR dates have dashes
    assert str(parse_as_of("2026-11-20T23:00:00+02:00")) == "2026-11-20"


def test_cli_path_refuses_the_same_input():
    with pytest.raises(InputError, match="Parameters.parameter"):
        evaluate_body(b'{"resourceType":"Parameters","parameter":5}', default_protocol())
    with pytest.raises(InputError, match="not a valid FHIR id"):
        evaluate_body(orjson.dumps(bundle(patient())), default_protocol(), patient_id="..")


@pytest.mark.parametrize(
    "header",
    [b"Bearer \xff\xfe", b"Bearer k-123\xc3\xa9", b"\x80\x81", b"Bearer " + b"a" * 10_000, b""],
)
def test_odd_authorization_bytes_are_401_not_500(client, header):
    r = client.post(
        "/$eligibility", content=orjson.dumps(bundle(patient())),
        headers={**FHIR, "Authorization": header},
    )  # fmt: skip
    assert r.status_code == 401


def test_odd_request_id_is_replaced_not_echoed(client):
    r = client.get("/healthz", headers={"X-Request-Id": b"a\xffb"})
    assert r.status_code == 200 and r.headers["x-request-id"] != "a\xffb"
    assert len(r.headers["x-request-id"]) == 32
    r = client.get("/healthz", headers={"X-Request-Id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"


# -- CDS Hooks ------------------------------------------------------------------------------


def _cds(patient_id: str = "p1", **extra) -> dict:
    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/dr-1", "patientId": patient_id},
        **extra,
    }


def _auth(token: str) -> dict:
    return {
        "fhirServer": EHR,
        "fhirAuthorization": {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": "cds",
        },
    }


def _post_cds(client, body):
    return client.post(f"/cds-services/{SID}", content=orjson.dumps(body),
                       headers={"Content-Type": "application/json"})  # fmt: skip


@pytest.mark.parametrize(
    ("prefetch", "text"),
    [
        ({"labs": {"resourceType": "Bundle", "entry": 5}}, "Bundle.entry in prefetch 'labs'"),
        ({"labs": {"resourceType": "Bundle", "entry": "x"}}, "is a string, not an array"),
        ({"labs": 5}, "prefetch 'labs' must be a FHIR resource or null"),
        ({HUGE: 5}, "a prefetch key must be"),
    ],
)
def test_malformed_prefetch_is_400(client, prefetch, text):
    _bad(_post_cds(client, _cds(prefetch=prefetch)), text)


def test_prefetched_resources_with_odd_types_are_skipped(client):
    prefetch = {
        "patient": {"resourceType": "Patient", "id": "p1", "birthDate": "1990-01-01"},
        "labs": {"resourceType": "Bundle", "link": 5, "entry": [{"resource": {"resourceType": 1}}]},
        "conditions": {"resourceType": "Bundle", "entry": [{"resource": {"resourceType": ["x"]}}]},
        "consents": {"resourceType": "Bundle", "entry": [
            {"resource": {"resourceType": "OperationOutcome", "issue": 3}}]},
    }  # fmt: skip
    r = _post_cds(client, _cds(prefetch=prefetch))
    assert r.status_code == 412  # unusable keys are fetched, and there is no fhirServer
    assert "labs" in r.json()["issue"][0]["diagnostics"]
    assert "conditions" not in r.json()["issue"][0]["diagnostics"]  # read, odd entry skipped


@pytest.mark.parametrize("token", ["tökén", "abc\n", "abc def", "a\x00b", "x" * 20_000])
def test_unsendable_cds_token_is_400_at_once_with_no_request(client, token):
    with respx.mock(assert_all_called=False) as mock:
        route = mock.route(url__startswith=EHR).mock(return_value=httpx.Response(503))
        started = time.perf_counter()
        r = _post_cds(client, _cds(**_auth(token)))
        elapsed = time.perf_counter() - started
    text = _bad(r, "access_token is not a Bearer token")
    assert token not in text and not route.called and elapsed < 1.0


@pytest.mark.parametrize("pid", [HUGE, "..", ".", "a/b"])
def test_invalid_cds_patient_id_is_400_and_not_echoed(client, pid):
    text = _bad(_post_cds(client, _cds(pid)), "context.patientId")
    assert pid not in text or pid in (".", "..")


def test_cds_user_id_with_dot_segments_is_400(client):
    body = _cds()
    body["context"]["userId"] = "Practitioner/.."
    _bad(_post_cds(client, body), "context.userId")


def test_two_versions_with_a_malformed_meta_do_not_sink_the_evaluation():
    first = lab("777-3", 12, "10*9/L")
    first["id"], first["meta"] = "o1", "x"
    second = {**first, "valueQuantity": {**first["valueQuantity"], "value": 50}, "meta": [1]}
    _, result = evaluate_body(orjson.dumps(bundle(patient(), first, second)), default_protocol())
    assert "meta has the wrong type" in str(result)


def test_a_bundle_patient_with_an_odd_id_is_400_not_an_amplified_answer(client):
    big = "x" * 100_000
    data = bundle(patient(pid=big), lab("777-3", 12, "10*9/L", patient_ref=f"Patient/{big}"))
    r = client.post("/$eligibility", content=orjson.dumps(data), headers=AUTH)
    text = _bad(r, "the Patient's id is not a valid FHIR id")  # was a 2.2 MB answer
    assert big[:100] not in text
    data = bundle(patient())
    data["entry"][0]["fullUrl"] = "urn:x:" + big
    _bad(
        client.post("/$eligibility", content=orjson.dumps(data), headers=AUTH), "fullUrl is longer"
    )


def test_cli_pull_mode_refuses_dot_segments_before_any_request():
    from typer.testing import CliRunner

    from service.cli import app as cli

    with respx.mock(assert_all_called=False) as mock:
        route = mock.route().mock(return_value=httpx.Response(200, json={}))
        result = CliRunner().invoke(
            cli, ["evaluate", "--fhir-base", "http://fhir.test/r4", "--patient", ".."]
        )
    assert result.exit_code == 2 and "not a valid FHIR id" in result.stderr
    assert not route.called


@pytest.mark.parametrize("token", ["tok-1\n", "tök", "a b"])
def test_an_unsendable_settings_token_is_refused_at_start(token, monkeypatch):
    from typer.testing import CliRunner

    from service.cli import app as cli
    from service.inputs import ConfigurationError
    from service.settings import get_settings

    settings = Settings(fhir_base_url="http://fhir.test/r4", fhir_auth="static",
                        fhir_token=token, api_keys=["k"])  # fmt: skip
    with pytest.raises(ConfigurationError, match="ELIGIBILITY_FHIR_TOKEN") as exc:
        create_app(settings)
    assert token not in str(exc.value)
    monkeypatch.setenv("ELIGIBILITY_FHIR_TOKEN", token)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli, ["evaluate", "--fhir-base", "http://fhir.test/r4",
                                          "--patient", "p1"])  # fmt: skip
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2 and "ELIGIBILITY_FHIR_TOKEN" in result.stderr
    assert token not in result.stderr


async def test_an_unsendable_smart_token_fails_once_without_retries(tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ec

    from service.fhir.auth import SmartBackendAuth
    from service.fhir.client import ClientConfig, FhirClient
    from service.fhir.errors import UpstreamAuthError

    base, token_url = "https://fhir.test/r4", "https://auth.test/token"
    config = {"token_endpoint": token_url, "capabilities": ["permission-v2"],
              "token_endpoint_auth_signing_alg_values_supported": ["ES384"]}  # fmt: skip
    with respx.mock(assert_all_called=False) as mock:
        mock.get(f"{base}/.well-known/smart-configuration").respond(200, json=config)
        token = mock.post(token_url).respond(
            200, json={"access_token": "abc\n", "token_type": "bearer", "expires_in": 300}
        )
        fhir = mock.get(f"{base}/Patient/p1").respond(200, json={"resourceType": "Patient"})
        async with httpx.AsyncClient() as http:
            key = ec.generate_private_key(ec.SECP384R1())
            auth = SmartBackendAuth(
                http, base, client_id="c", private_key=key, alg="ES384", kid="k",
                scopes="system/Patient.rs",
            )  # fmt: skip
            client = FhirClient(http, base, auth=auth, config=ClientConfig(retry_attempts=3))
            with pytest.raises(UpstreamAuthError, match="not sendable"):
                await client.read("Patient", "p1", key="patient")
    assert token.call_count == 1 and not fhir.called


def test_an_invalid_path_id_is_not_copied_into_the_audit_trail(tmp_path):
    path = tmp_path / "audit.jsonl"
    settings = Settings(_env_file=None, api_keys=["k-123"], audit_log_path=path)
    with TestClient(create_app(settings)) as client:
        big = "x" * 60_000
        r = client.get(f"/Patient/{big}/$eligibility", headers=AUTH)
        assert r.status_code == 400
    text = path.read_text() if path.exists() else ""
    assert big[:100] not in text
