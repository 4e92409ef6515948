"""Pull mode, bundle mode and CDS Hooks against a real FHIR R4 server.

``-m hapi``: the local HAPI FHIR server that ``deploy/hapi/run-tests`` starts (HAPI_BASE_URL).
``-m live``: any server named by FHIR_BASE_URL (e.g. the public HAPI sandbox); the data is
created under unique ids and deleted afterwards. Neither runs in the fast suite.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from datetime import timedelta
from pathlib import Path

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.clinical.dates import today
from service.demo import load_demo_bundles
from service.fhir.loader import load_bundles
from service.fhir.queries import prefetch_templates
from service.protocol import default_protocol
from service.settings import Settings
from tests.builders import bundle, lab, patient

HAPI = os.environ.get("HAPI_BASE_URL")
LIVE = os.environ.get("FHIR_BASE_URL")
ROOT = Path(__file__).resolve().parents[2]
FHIR = {"Content-Type": "application/fhir+json"}
SID = f"{default_protocol().id}-screening"
PAGING_OBSERVATIONS = 120

servers = []
if HAPI:
    servers.append(pytest.param(("hapi", HAPI), marks=pytest.mark.hapi, id="hapi"))
if LIVE:
    servers.append(pytest.param(("live", LIVE), marks=pytest.mark.live, id="live"))
if not servers:
    pytest.skip("no FHIR server: set HAPI_BASE_URL or FHIR_BASE_URL", allow_module_level=True)


def _prefixed(data: dict, prefix: str) -> dict:
    """The same Bundle with every demo id (and so every reference) made unique."""
    return orjson.loads(orjson.dumps(data).replace(b"demo-", f"{prefix}demo-".encode()))


def _paging_patient(pid: str) -> dict:
    """More platelet counts than one page holds; the newest (decisive) one fails."""
    res = [patient(pid=pid, birthDate="1980-05-05")]
    for n in range(PAGING_OBSERVATIONS):
        day = today() - timedelta(days=n % 13 + 1)
        res.append(
            lab("777-3", 150, "10*9/L", day=day, subject=f"Patient/{pid}", id=f"{pid}-plt-{n}")
        )
    res.append(
        lab("777-3", 12, "10*9/L", day=today(), subject=f"Patient/{pid}", id=f"{pid}-plt-new")
    )
    return bundle(*res)


def _partly_dated_patient(pid: str, when: str | None) -> dict:
    """A passing platelet count yesterday and a failing one dated only ``when`` (a month) or
    not at all: the failing one may be the newest, so every path says undetermined."""
    passing = lab("777-3", 150, "10*9/L", day=today() - timedelta(days=1), subject=f"Patient/{pid}")
    failing = lab("777-3", 12, "10*9/L", subject=f"Patient/{pid}", id=f"{pid}-plt-partial")
    failing.pop("effectiveDateTime", None)
    if when is not None:
        failing["effectiveDateTime"] = when
    return bundle(patient(pid=pid, birthDate="1980-05-05"), passing, failing)


@pytest.fixture(scope="module", params=servers)
def server(request):
    kind, base = request.param
    prefix = f"t{uuid.uuid4().hex[:8]}-" if kind == "live" else ""
    data = {f"{prefix}{k}": _prefixed(v, prefix) for k, v in load_demo_bundles().items()}
    data[f"{prefix}edge-paging"] = _paging_patient(f"{prefix}edge-paging")
    data[f"{prefix}edge-undated"] = _partly_dated_patient(f"{prefix}edge-undated", None)
    month = today().isoformat()[:7]
    data[f"{prefix}edge-month"] = _partly_dated_patient(f"{prefix}edge-month", month)
    load_bundles(base, data.items())
    yield kind, base.rstrip("/"), data
    if kind == "live":
        _delete_all(base, data)


def _delete_all(base: str, data: dict) -> None:
    with httpx.Client(base_url=base.rstrip("/") + "/", timeout=30) as http:
        for b in data.values():
            for entry in reversed(b["entry"]):
                r = entry["resource"]
                if r.get("id"):
                    http.delete(f"{r['resourceType']}/{r['id']}")


@pytest.fixture(scope="module")
def client(server):
    _, base, _ = server
    settings = Settings(
        fhir_base_url=base,
        page_size=20,  # HAPI's default page: forces paging on the edge patient
        deadline_seconds=15,
        cds_auth_enabled=False,
        cds_allowed_fhir_servers=[base],
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def outcomes(result: dict) -> dict[str, str]:
    return {
        o["code"]["coding"][0]["code"]: o.get("valueCodeableConcept", {})
        .get("coding", [{}])[0]
        .get("code", "undetermined")
        for o in (e["resource"] for e in result["entry"])
        if o["resourceType"] == "Observation"
    }


def test_pull_mode_equals_bundle_mode_for_every_patient(server, client):
    _, _, data = server
    assert len(data) == len(load_demo_bundles()) + 3  # the demo patients and three edge cases
    for pid, patient_bundle in data.items():
        started = time.perf_counter()
        pulled = client.get(f"/Patient/{pid}/$eligibility")
        wall_ms = (time.perf_counter() - started) * 1000
        assert pulled.status_code == 200, (pid, pulled.text)
        posted = client.post("/$eligibility", content=orjson.dumps(patient_bundle), headers=FHIR)
        assert posted.status_code == 200
        assert outcomes(pulled.json()) == outcomes(posted.json()), pid
        status = pulled.json()["entry"][0]["resource"]["status"]
        print(f"pull {pid}: {status}, {wall_ms:.0f} ms")


def test_expected_statuses_through_the_server(server, client):
    _, _, data = server
    prefix = next(iter(data)).split("demo-")[0]
    expected = {
        "demo-eligible": "eligible",
        "demo-ineligible": "ineligible",
        "demo-pediatric": "ineligible",
    }
    for name, status in expected.items():
        body = client.get(f"/Patient/{prefix}{name}/$eligibility").json()
        assert body["entry"][0]["resource"]["status"] == status


@pytest.mark.parametrize("edge", ["edge-undated", "edge-month"])
def test_a_result_that_may_be_newest_blocks_in_pull_mode_too(server, client, edge):
    """Issue 19 §1/§4: a failing count dated only to this month, or not at all, may be newer
    than yesterday's passing one; the server's date-filtered searches must still return it."""
    _, _, data = server
    pid = next(k for k in data if k.endswith(edge))
    pulled = client.get(f"/Patient/{pid}/$eligibility").json()
    posted = client.post("/$eligibility", content=orjson.dumps(data[pid]), headers=FHIR).json()
    assert outcomes(pulled)["I7-platelets"] == "undetermined"
    assert outcomes(posted)["I7-platelets"] == "undetermined"


def test_paging_reaches_every_observation(server, client):
    _, base, data = server
    pid = next(k for k in data if k.endswith("edge-paging"))
    body = client.get(f"/Patient/{pid}/$eligibility").json()
    platelets = outcomes(body)["I7-platelets"]
    assert platelets == "not-met"  # the newest of 121 results decides
    # and the server really paged: ask it directly with the same page size
    r = httpx.get(f"{base}/Observation", params={"patient": pid, "_count": 20})
    assert any(link["relation"] == "next" for link in r.json().get("link", []))


def test_unknown_patient_is_404(client):
    r = client.get(f"/Patient/no-such-{uuid.uuid4().hex[:8]}/$eligibility")
    assert r.status_code == 404
    assert r.json()["resourceType"] == "OperationOutcome"


def _full_prefetch(base: str, pid: str) -> dict:
    """What an EHR would prefetch: every template, all pages merged into one Bundle."""
    out = {}
    with httpx.Client(timeout=30) as http:
        for key, template in prefetch_templates(default_protocol()).items():
            url = f"{base}/{template.replace('{{context.patientId}}', pid)}"
            first = http.get(url).json()
            if first["resourceType"] != "Bundle":
                out[key] = first
                continue
            entries = list(first.get("entry", []))
            nxt = [link["url"] for link in first.get("link", []) if link["relation"] == "next"]
            while nxt:
                page = http.get(nxt[0]).json()
                entries += page.get("entry", [])
                nxt = [link["url"] for link in page.get("link", []) if link["relation"] == "next"]
            out[key] = {"resourceType": "Bundle", "type": "searchset", "entry": entries}
    return out


def test_cds_hooks_fetching_from_the_server_equals_full_prefetch(server, client):
    _, base, data = server
    for pid in (k for k in data if k.endswith(("demo-potential", "demo-eligible"))):
        call = {
            "hook": "patient-view",
            "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/dr-1", "patientId": pid},
        }
        fetched = client.post(f"/cds-services/{SID}", json={**call, "fhirServer": base})
        prefetched = client.post(
            f"/cds-services/{SID}", json={**call, "prefetch": _full_prefetch(base, pid)}
        )
        assert fetched.status_code == prefetched.status_code == 200
        [a], [b] = fetched.json()["cards"], prefetched.json()["cards"]
        for field in ("summary", "detail", "indicator"):
            assert a[field] == b[field], (pid, field)


# -- failure paths that only a real server shows (local HAPI only; they stop it) ------------


def _hapi_pid() -> int:
    pid_file = Path(os.environ["HAPI_PID_FILE"])
    return int(pid_file.read_text().strip())


@pytest.mark.skipif(not os.environ.get("HAPI_PID_FILE"), reason="needs the local HAPI's pid")
def test_frozen_server_gives_504_not_a_partial_answer(server):
    kind, base, data = server
    if kind != "hapi":
        pytest.skip("local HAPI only")
    settings = Settings(
        fhir_base_url=base, deadline_seconds=2, read_timeout=1, cds_auth_enabled=False
    )
    pid = _hapi_pid()
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        os.kill(pid, signal.SIGSTOP)
        try:
            r = c.get(f"/Patient/{next(iter(data))}/$eligibility")
        finally:
            os.kill(pid, signal.SIGCONT)
    assert r.status_code == 504
    assert r.json()["resourceType"] == "OperationOutcome"


@pytest.mark.stops_hapi
@pytest.mark.skipif(not os.environ.get("HAPI_PID_FILE"), reason="needs the local HAPI's pid")
def test_stopped_server_gives_502_and_no_partial_answer(server, client):
    """Runs last (``stops_hapi``): it stops HAPI (run-tests' clean-up copes with that)."""
    kind, _, data = server
    if kind != "hapi":
        pytest.skip("local HAPI only")
    subprocess.run([str(ROOT / "deploy" / "hapi" / "stop")], check=True, capture_output=True)
    r = client.get(f"/Patient/{next(iter(data))}/$eligibility")
    assert r.status_code in (502, 504)
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    assert "ResearchSubject" not in r.text
