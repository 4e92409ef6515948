"""Continuous screening against the real HAPI server (issue 22): HAPI notifies our receiver
(rest-hook, full resource), the worker re-evaluates, stores, and writes a Task on a change;
an outage is caught up exactly once; a wrong secret is refused; a burst is debounced.

``-m hapi``: the local HAPI FHIR server that ``deploy/hapi/run-tests`` starts (HAPI_BASE_URL,
subscriptions enabled in deploy/hapi/application.yaml), demo patients loaded. Our service runs
in this process (uvicorn in a thread) so the test can look at its stores.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import uvicorn

from service.api import create_app
from service.results import MemoryResultStore
from service.settings import Settings
from service.subscriptions import subscribe
from service.subscriptions.evaluate import evaluate_patient
from service.subscriptions.server import FhirServer

HAPI = (os.environ.get("HAPI_BASE_URL") or "").rstrip("/")
pytestmark = [
    pytest.mark.hapi,
    pytest.mark.skipif(not HAPI, reason="needs the local HAPI server (HAPI_BASE_URL)"),
]
SECRET = "s3cret-" + uuid.uuid4().hex
HEADER = "X-Eligibility-Subscription-Secret"
STUDY = "cd19-cart-rr-ball"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """Our service with continuous screening on, in a background thread."""

    def __init__(
        self, port: int, state: Path, results: MemoryResultStore, keep: bool = False, **extra
    ) -> None:
        self.port = port
        self.keep = keep  # leave our Subscriptions on HAPI (an outage: HAPI keeps trying)
        self.url = f"http://127.0.0.1:{port}"
        options = {
            "subscription_debounce_seconds": 1.0,
            "subscription_catchup_seconds": 5.0,
            "subscription_tasks_enabled": True,
            **extra,
        }
        settings = Settings(
            _env_file=None,
            fhir_base_url=HAPI,
            allow_anonymous_pull=True,
            audit_sink="none",
            rate_limit_enabled=False,
            log_level="WARNING",
            state_backend="sqlite",
            state_sqlite_path=state,
            subscription_endpoint=f"{self.url}/subscription/notify",
            subscription_secret=SECRET,
            **options,
        )
        self.app = create_app(settings)
        self.app.state.result_store = results
        self.evaluated: Counter[str] = Counter()  # patient -> evaluations by this service

        async def counting(settings, protocols, patient_id):
            self.evaluated[patient_id] += 1
            return await evaluate_patient(settings, protocols, patient_id)

        self.app.state.subscription_evaluate = counting
        config = uvicorn.Config(self.app, host="127.0.0.1", port=port, log_config=None)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Service:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "our service did not start"
            time.sleep(0.1)
        self.wait_active()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        if not self.keep:  # no Subscription to a closed port is left for other tests
            asyncio.run(self._unsubscribe())

    async def _unsubscribe(self) -> None:
        server = FhirServer(HAPI, httpx.AsyncClient(timeout=30))
        try:
            await subscribe.remove(server, f"{self.url}/subscription/notify")
        finally:
            await server.aclose()

    @property
    def worker(self):
        return self.app.state.subscriptions.worker

    def wait_active(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runtime = self.app.state.subscriptions
            if runtime.task is not None and runtime.task.done():
                states = [s.status for s in runtime.subscriptions]
                assert states and all(s == "active" for s in states), states
                return
            time.sleep(0.2)
        raise AssertionError("subscriptions not active")


def _http() -> httpx.Client:
    return httpx.Client(timeout=30, headers={"Content-Type": "application/fhir+json"})


def platelets(pid: str, value: float, when: datetime) -> dict:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": "777-3"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": when.isoformat(timespec="seconds"),
        "valueQuantity": {
            "value": value,
            "unit": "10*9/L",
            "system": "http://unitsofmeasure.org",
            "code": "10*9/L",
        },
    }


def _post(http: httpx.Client, resource: dict) -> dict:
    answer = http.post(f"{HAPI}/{resource['resourceType']}", json=resource)
    assert answer.status_code == 201, answer.text
    return answer.json()


def _wait(predicate, timeout: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(f"timed out: {what}")


def _latest(results: MemoryResultStore, pid: str):
    return asyncio.run(results.latest(pid, STUDY))


def _tasks(http: httpx.Client, pid: str) -> list[dict]:
    found = http.get(f"{HAPI}/Task", params={"patient": f"Patient/{pid}", "_count": "50"})
    assert found.status_code == 200, found.text
    return [e["resource"] for e in found.json().get("entry") or []]


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "state.sqlite3"


@pytest.fixture
def fresh_patient() -> Iterator[str]:
    """A copy of demo-potential under a new id (demo data is shared by other tests)."""
    pid = "subs-" + uuid.uuid4().hex[:10]
    with _http() as http:
        everything = http.get(
            f"{HAPI}/Patient/demo-potential/$everything", params={"_count": "200"}
        )
        assert everything.status_code == 200, everything.text
        entries = []
        for e in everything.json().get("entry") or []:
            res = dict(e["resource"])
            if res["resourceType"] not in (
                "Patient",
                "Observation",
                "Condition",
                "Procedure",
                "DiagnosticReport",
            ):
                continue
            old = res["id"]
            res["id"] = pid if res["resourceType"] == "Patient" else f"{pid}-{old}"[:64]
            res.pop("meta", None)
            for field in ("subject", "patient"):
                if isinstance(res.get(field), dict):
                    res[field] = {"reference": f"Patient/{pid}"}
            entries.append(
                {
                    "resource": res,
                    "request": {"method": "PUT", "url": f"{res['resourceType']}/{res['id']}"},
                }
            )
        answer = http.post(
            HAPI, json={"resourceType": "Bundle", "type": "transaction", "entry": entries}
        )
        assert answer.status_code == 200, answer.text
    yield pid


def test_a_failing_platelet_count_changes_the_status_and_writes_a_task(state, fresh_patient):
    pid, results = fresh_patient, MemoryResultStore()
    with Service(_free_port(), state, results) as svc, _http() as http:
        # first answer (a change notification for the copied data, or the first evaluation)
        _post(http, platelets(pid, 150, datetime.now(UTC) - timedelta(days=1)))
        _wait(lambda: _latest(results, pid) is not None, 30, "first stored result")
        first = _latest(results, pid)
        assert first.status == "potential-candidate", first
        written = _post(http, platelets(pid, 12, datetime.now(UTC)))
        lag = _wait(
            lambda: _latest(results, pid).status == "ineligible", 30, "status change stored"
        )
        stored = _latest(results, pid)
        assert stored.previous_status == "potential-candidate"
        assert "I7" in stored.change
        assert stored.versions.get(f"Observation/{written['id']}") == written["meta"]["versionId"]
        _wait(lambda: len(_tasks(http, pid)) == 1, 20, "Task on HAPI")
        task = _tasks(http, pid)[0]
        assert task["status"] == "requested" and task["intent"] == "order"
        assert task["focus"]["reference"] == f"Patient/{pid}"
        assert "potential-candidate -> ineligible" in task["reasonCode"]["text"]
        print(f"change -> stored result: {lag:.2f} s")
        # an unchanged status makes no noise: a second passing count, no second Task
        evaluations = svc.worker.stats.evaluations
        _post(http, platelets(pid, 14, datetime.now(UTC)))
        _wait(lambda: svc.worker.stats.evaluations > evaluations, 30, "re-evaluation")
        time.sleep(1)
        assert len(_tasks(http, pid)) == 1


def test_a_deleted_result_is_noticed_and_the_patient_evaluated_again(state, fresh_patient):
    """R4 Subscriptions say nothing on a deletion; HAPI does with its channel extension, and
    the deleted result's history names whose it was: the answer that rested on it goes."""
    pid, results = fresh_patient, MemoryResultStore()
    with Service(_free_port(), state, results), _http() as http:
        _post(http, platelets(pid, 150, datetime.now(UTC) - timedelta(days=1)))
        failing = _post(http, platelets(pid, 12, datetime.now(UTC)))
        _wait(
            lambda: (r := _latest(results, pid)) is not None and r.status == "ineligible",
            30,
            "the failing count's answer",
        )
        gone = http.delete(f"{HAPI}/Observation/{failing['id']}")
        assert gone.status_code in (200, 204), gone.text
        lag = _wait(
            lambda: _latest(results, pid).status == "potential-candidate",
            30,
            "the answer without the deleted count",
        )
        assert _latest(results, pid).previous_status == "ineligible"
        print(f"deletion -> stored result: {lag:.2f} s")


def test_a_wrong_secret_is_refused_and_changes_nothing(state):
    results = MemoryResultStore()
    with Service(_free_port(), state, results) as svc:
        body = platelets("demo-potential", 5, datetime.now(UTC))
        body |= {"id": "forged-1", "meta": {"versionId": "1"}}
        for headers in ({HEADER: "wrong"}, {}):
            answer = httpx.put(
                f"{svc.url}/subscription/notify/Observation/forged-1", json=body, headers=headers
            )
            assert answer.status_code == 401
            assert SECRET not in answer.text
        time.sleep(1.5)
        assert svc.worker.stats.accepted == 0
        assert svc.worker.queue.qsize() == 0
        assert _latest(results, "demo-potential") is None


def test_an_outage_is_caught_up_exactly_once(state, tmp_path):
    results = MemoryResultStore()
    port = _free_port()
    pids = [f"outage-{uuid.uuid4().hex[:8]}" for _ in range(3)]
    with _http() as http:
        for pid in pids:
            http.put(
                f"{HAPI}/Patient/{pid}",
                json={"resourceType": "Patient", "id": pid, "birthDate": "1980-01-01"},
            ).raise_for_status()
    with Service(port, state, results, keep=True):
        time.sleep(2)  # the watermark is set at the first start
    written = {}
    with _http() as http:  # our service is down: HAPI cannot deliver these
        for pid in pids:
            written[pid] = _post(http, platelets(pid, 100, datetime.now(UTC)))
    time.sleep(2)
    with Service(port, state, results) as svc:
        _wait(lambda: all(_latest(results, p) is not None for p in pids), 60, "caught up")
        time.sleep(4)  # HAPI's retries and the next catch-up see the same versions again
        for pid in pids:
            stored = _latest(results, pid)
            obs = written[pid]
            assert stored.versions.get(f"Observation/{obs['id']}") == obs["meta"]["versionId"]
        assert [svc.evaluated[p] for p in pids] == [1, 1, 1], svc.worker.status()
        assert svc.worker.stats.catchup_runs >= 1


def test_a_burst_is_debounced_and_nothing_is_lost(state):
    results = MemoryResultStore()
    pids = [f"burst-{uuid.uuid4().hex[:8]}" for _ in range(20)]
    with _http() as http:
        for pid in pids:
            http.put(
                f"{HAPI}/Patient/{pid}",
                json={"resourceType": "Patient", "id": pid, "birthDate": "1980-01-01"},
            ).raise_for_status()
    with Service(_free_port(), state, results, subscription_debounce_seconds=3.0) as svc:
        now = datetime.now(UTC)
        entries = [
            {
                "resource": platelets(pid, 100 + i, now - timedelta(minutes=i)),
                "request": {"method": "POST", "url": "Observation"},
            }
            for pid in pids
            for i in range(10)
        ]
        with _http() as http:
            answer = http.post(
                HAPI, json={"resourceType": "Bundle", "type": "transaction", "entry": entries}
            )
            assert answer.status_code == 200, answer.text
        ids = {pid: set() for pid in pids}
        for entry, made in zip(entries, answer.json()["entry"], strict=True):
            pid = entry["resource"]["subject"]["reference"].split("/")[1]
            ids[pid].add(made["response"]["location"].split("/")[1])

        def all_seen() -> bool:
            for pid in pids:
                stored = _latest(results, pid)
                if stored is None or not all(
                    f"Observation/{i}" in stored.versions for i in ids[pid]
                ):
                    return False
            return True

        _wait(all_seen, 90, "every change of the burst in a stored result")
        per_patient = [svc.evaluated[p] for p in pids]
        assert max(per_patient) <= 3, per_patient
        print(f"burst: 200 changes, {sum(per_patient)} evaluations for 20 patients")
