"""One FHIR R4 AuditEvent per evaluation, to the audit log stream or a FHIR server; a failing
sink never blocks the clinical answer and is counted."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.auditevent import AuditEvent

from fhir_mappings import MAPPINGS_DIR
from service.api import create_app
from service.ops.caller import key_id
from service.settings import Settings, TrustedIssuer
from tests.builders import bundle, patient
from tests.ops_support import ISSUER, JWK, free_port, jwt_for
from tests.test_cds_service import SID, call, full_prefetch

KEY = "audit-test-key-" + "z" * 20
FHIR = {"Content-Type": "application/fhir+json"}


def _events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture()
def logged(tmp_path):
    path = tmp_path / "audit.jsonl"
    settings = Settings(
        _env_file=None,
        cds_auth_enabled=True,
        cds_issuers=[TrustedIssuer(iss=ISSUER, jwks={"keys": [JWK]})],
        api_keys=[KEY],
        audit_log_path=path,
    )
    with TestClient(create_app(settings)) as client:
        yield client, path


def test_pull_evaluation_writes_one_valid_audit_event_naming_the_key_id(logged):
    client, path = logged
    auth = {"Authorization": f"Bearer {KEY}"}
    r = client.get("/Patient/demo-eligible/$eligibility", headers=auth)
    assert r.status_code == 200
    (event,) = _events(path)
    AuditEvent.model_validate(event)  # a valid R4 AuditEvent
    assert event["action"] == "E" and event["outcome"] == "0"
    assert event["subtype"][0]["code"] == "operation"
    client_agent = event["agent"][0]
    assert client_agent["requestor"] is True
    assert client_agent["who"]["identifier"]["value"] == key_id(KEY)
    assert KEY not in path.read_text()  # the key itself never
    entity, study = event["entity"]
    assert entity["what"]["reference"] == "Patient/demo-eligible"
    assert entity["role"]["code"] == "1"  # Patient
    assert entity["detail"][0]["valueString"] == "eligible"
    assert study["what"]["reference"].endswith("/ResearchStudy/cd19-cart-rr-ball")
    assert study["role"]["code"] == "4" and study["detail"][0]["valueString"] == "eligible"


def test_several_studies_are_one_event_naming_each_study_and_its_status(tmp_path):
    """One request about one patient is one access to their data: one AuditEvent, the
    patient once, and each study it was evaluated for with the status found."""
    path = tmp_path / "audit.jsonl"
    settings = Settings(
        _env_file=None,
        api_keys=[KEY],
        audit_log_path=path,
        protocol_dirs=[MAPPINGS_DIR / "cd19-cart-rr-ball", MAPPINGS_DIR / "dapa-ckd"],
    )
    with TestClient(create_app(settings)) as client:
        auth = {"Authorization": f"Bearer {KEY}"}
        r = client.get("/Patient/demo-eligible/$eligibility", headers=auth)
        assert r.status_code == 200
    (event,) = _events(path)
    AuditEvent.model_validate(event)
    patient_entity, *studies = event["entity"]
    assert patient_entity["what"]["reference"] == "Patient/demo-eligible"
    assert "detail" not in patient_entity  # two studies, two statuses: each on its study
    found = {
        s["what"]["reference"].rsplit("/", 1)[1]: s["detail"][0]["valueString"] for s in studies
    }
    assert found == {"cd19-cart-rr-ball": "eligible", "dapa-ckd": "ineligible"}


def test_bundle_evaluation_is_audited_once(logged):
    client, path = logged
    headers = {**FHIR, "Authorization": f"Bearer {KEY}"}
    r = client.post("/$eligibility", content=orjson.dumps(bundle(patient())), headers=headers)
    assert r.status_code == 200
    assert len(_events(path)) == 1


def test_failed_evaluation_is_audited_with_its_outcome(logged):
    client, path = logged
    r = client.get("/Patient/no-such/$eligibility", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 404
    (event,) = _events(path)
    AuditEvent.model_validate(event)
    assert event["outcome"] == "4" and event["outcomeDesc"] == "HTTP 404"
    assert event["entity"][0]["what"]["reference"] == "Patient/no-such"


def test_unauthenticated_request_evaluates_nothing_and_writes_no_event(logged):
    client, path = logged
    assert client.get("/Patient/demo-eligible/$eligibility").status_code == 401
    assert _events(path) == []


def test_cds_call_is_audited_with_the_jwt_client_and_the_clinician(logged):
    client, path = logged
    url = f"http://testserver/cds-services/{SID}"
    r = client.post(
        f"/cds-services/{SID}",
        json=call("demo-eligible", full_prefetch("demo-eligible")),
        headers={"Authorization": f"Bearer {jwt_for(url, sub='ehr-app')}"},
    )
    assert r.status_code == 200
    (event,) = _events(path)
    AuditEvent.model_validate(event)
    ehr, clinician = event["agent"][0], event["agent"][1]
    assert ehr["who"]["identifier"] == {"system": ISSUER, "value": "ehr-app"}
    assert clinician["who"]["reference"] == "Practitioner/dr-1" and clinician["requestor"]
    assert event["entity"][0]["what"]["reference"] == "Patient/demo-eligible"


class _Receiver:
    """A loopback HTTP server standing in for the FHIR server's POST /AuditEvent."""

    def __init__(self, status: int) -> None:
        received: list[dict] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append({"path": self.path, "body": json.loads(body)})
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}/fhir"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _fhir_sink_app(base: str):
    settings = Settings(
        _env_file=None, cds_auth_enabled=False, audit_sink="fhir", audit_fhir_base_url=base
    )
    return create_app(settings)


def _wait(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_fhir_sink_posts_the_event_in_the_background():
    receiver = _Receiver(201)
    try:
        with TestClient(_fhir_sink_app(receiver.base)) as client:
            assert client.get("/Patient/demo-eligible/$eligibility").status_code == 200
            assert _wait(lambda: len(receiver.received) == 1)
        (posted,) = receiver.received
        assert posted["path"] == "/fhir/AuditEvent"
        AuditEvent.model_validate(posted["body"])
    finally:
        receiver.close()


def _sink_errors(client: TestClient) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith('eligibility_audit_sink_errors_total{sink="fhir"}'):
            return float(line.split()[-1])
    return 0.0


@pytest.mark.parametrize("failure", ["500", "unreachable"])
def test_failing_fhir_sink_never_blocks_the_answer_and_is_counted(failure):
    receiver = _Receiver(500) if failure == "500" else None
    base = receiver.base if receiver else f"http://127.0.0.1:{free_port()}/fhir"
    try:
        with TestClient(_fhir_sink_app(base)) as client:
            before = _sink_errors(client)
            r = client.get("/Patient/demo-eligible/$eligibility")
            assert r.status_code == 200
            assert r.json()["entry"][0]["resource"]["status"] == "eligible"
            assert _wait(lambda: _sink_errors(client) == before + 1)
    finally:
        if receiver:
            receiver.close()


def test_cds_call_whose_fhir_server_fails_is_audited_as_a_serious_failure(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}/fhir"
    path = tmp_path / "audit.jsonl"
    settings = Settings(
        _env_file=None,
        cds_auth_enabled=False,
        cds_allowed_fhir_servers=[dead],
        retry_attempts=1,
        audit_log_path=path,
    )
    with TestClient(create_app(settings)) as client:
        r = client.post(f"/cds-services/{SID}", json=call("pat-77", None, fhirServer=dead))
    assert r.status_code == 502
    (event,) = _events(path)
    AuditEvent.model_validate(event)
    assert event["outcome"] == "8" and event["outcomeDesc"] == "HTTP 502"
    assert event["entity"][0]["what"]["reference"] == "Patient/pat-77"
    assert event["agent"][1]["who"]["reference"] == "Practitioner/dr-1"
