"""Every evaluation leaves an AuditEvent on the FHIR server (issue 11), read back from HAPI.

``-m hapi``: the local HAPI FHIR server that ``deploy/hapi/run-tests`` starts (HAPI_BASE_URL),
with the demo patients loaded by ``eligibility load-demo``.
"""

from __future__ import annotations

import os
import time
import uuid

import httpx
import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.settings import Settings

HAPI = os.environ.get("HAPI_BASE_URL")
pytestmark = [
    pytest.mark.hapi,
    pytest.mark.skipif(not HAPI, reason="needs the local HAPI server (HAPI_BASE_URL)"),
]


def audit_events(base: str, patient_id: str) -> list[dict]:
    with httpx.Client(timeout=30) as http:
        answer = http.get(
            f"{base}/AuditEvent", params={"entity": f"Patient/{patient_id}", "_count": "100"}
        )
    answer.raise_for_status()
    return [e["resource"] for e in answer.json().get("entry") or []]


def test_each_evaluation_is_audited_on_the_fhir_server():
    base = HAPI.rstrip("/")
    pid = "demo-potential"
    before = {e["id"] for e in audit_events(base, pid)}
    settings = Settings(
        _env_file=None,
        fhir_base_url=base,
        audit_sink="fhir",
        rate_limit_enabled=False,
        log_level="WARNING",
    )
    marker = uuid.uuid4().hex
    with TestClient(create_app(settings)) as client:
        for _ in range(2):
            answer = client.get(f"/Patient/{pid}/$eligibility", headers={"X-Request-Id": marker})
            assert answer.status_code == 200, answer.text
    # The sink posts in the background; shutting the app down drains its queue.
    deadline = time.monotonic() + 20
    new: list[dict] = []
    while time.monotonic() < deadline:
        new = [e for e in audit_events(base, pid) if e["id"] not in before]
        if len(new) >= 2:
            break
        time.sleep(0.5)
    assert len(new) == 2
    for event in new:
        assert event["action"] == "E" and event["outcome"] == "0"
        (entity,) = [e for e in event["entity"] if e.get("role", {}).get("code") == "1"]
        assert entity["what"]["reference"] == f"Patient/{pid}"
        details = {d["type"]: d.get("valueString") for d in entity.get("detail", [])}
        assert details.get("eligibility-status") == "potential-candidate"
