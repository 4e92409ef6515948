"""POST /ResearchStudy/{id}/$screen: the FHIR asynchronous request pattern."""

from __future__ import annotations

import csv
import io
import time

import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.screening import http as screen_http
from service.settings import Settings

STUDY = "cd19-cart-rr-ball"


@pytest.fixture
def client(tmp_path, monkeypatch):
    monkeypatch.setattr(screen_http, "SCREEN_DIR", tmp_path)
    app = create_app(Settings(fhir_base_url=None, api_keys=["k1"]))
    app.include_router(screen_http.router)
    with TestClient(app) as c:
        yield c


AUTH = {"Authorization": "Bearer k1"}


def _wait(client, url, seconds=30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        resp = client.get(url, headers=AUTH)
        if resp.status_code != 202:
            return resp
        assert resp.headers["X-Progress"]
        time.sleep(0.1)
    raise AssertionError("the job did not finish")


def test_kick_off_poll_and_download_the_worklist(client):
    resp = client.post(
        f"/ResearchStudy/{STUDY}/$screen", headers={**AUTH, "Prefer": "respond-async"}
    )
    assert resp.status_code == 202
    status_url = resp.headers["Content-Location"]
    done = _wait(client, status_url)
    assert done.status_code == 200
    manifest = done.json()
    assert manifest["cancelled"] is False and manifest["requiresAccessToken"] is True
    links = {o["type"]: o["url"] for o in manifest["output"]}
    assert set(links) == {"Bundle", "worklist", "summary", "report"}
    assert client.get(links["worklist"]).status_code == 401  # same keys as $eligibility
    table = client.get(links["worklist"], headers=AUTH).text
    rows = {r["patient"]: r for r in csv.DictReader(io.StringIO(table))}
    assert rows["demo-eligible"]["status"] == "eligible"
    assert rows["demo-pediatric"]["blocking"] == "I1"
    summary = client.get(links["summary"], headers=AUTH).json()
    # demo-eligible, demo-us-units, and demo-zuma3-eligible (ZUMA-3's demo patient has the
    # seed's eligible history); the DAPA-CKD demo patients have no ALL: not candidates
    assert summary["byStatus"]["eligible"] == 3
    assert rows["demo-zuma3-eligible"]["status"] == "eligible"
    assert "demo-ckd-eligible" not in rows


def test_kick_off_needs_respond_async_a_known_study_and_a_key(client):
    no_prefer = client.post(f"/ResearchStudy/{STUDY}/$screen", headers=AUTH)
    assert no_prefer.status_code == 400
    assert no_prefer.json()["resourceType"] == "OperationOutcome"
    prefer = {**AUTH, "Prefer": "respond-async"}
    assert client.post("/ResearchStudy/other/$screen", headers=prefer).status_code == 404
    anonymous = client.post(f"/ResearchStudy/{STUDY}/$screen", headers={"Prefer": "respond-async"})
    assert anonymous.status_code == 401


def test_delete_cancels_and_unknown_jobs_are_404(client):
    resp = client.post(
        f"/ResearchStudy/{STUDY}/$screen", headers={**AUTH, "Prefer": "respond-async"}
    )
    status_url = resp.headers["Content-Location"]
    assert client.delete(status_url, headers=AUTH).status_code == 202
    assert _wait(client, status_url).status_code == 200
    assert client.get("/$screen-status/nope", headers=AUTH).status_code == 404
    assert client.delete("/$screen-status/nope", headers=AUTH).status_code == 404
