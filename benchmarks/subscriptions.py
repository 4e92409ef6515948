"""Continuous-screening figures against a real FHIR server with Subscriptions (HAPI):

* ``subscription_lag_p95``: from the server accepting a change (its POST answered) to our
  stored result, p95 over ``--changes`` changes, with the server's own delivery delay (to the
  notification's arrival at our receiver) measured apart in the same run;
* ``catchup_rate``: evaluations per second while catching up ``--missed`` changes for
  ``--patients`` patients, against the screening rate (``evaluate_from_server`` per patient,
  the same concurrency) for the same patients.

    python -m benchmarks.subscriptions --fhir-base http://127.0.0.1:8090/fhir

Writes synthetic Patients and platelet Observations (ids ``bench-sub-*``) into the server.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import uvicorn

from service.results import MemoryResultStore
from service.settings import Settings


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _observation(pid: str, value: float, when: datetime) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
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


def _transaction(http: httpx.Client, base: str, resources: list[dict[str, Any]]) -> list[str]:
    entries = []
    for r in resources:
        if "id" in r:
            entries.append(
                {"resource": r, "request": {"method": "PUT", "url": f"Patient/{r['id']}"}}
            )
        else:
            entries.append({"resource": r, "request": {"method": "POST", "url": r["resourceType"]}})
    answer = http.post(
        base, json={"resourceType": "Bundle", "type": "transaction", "entry": entries}
    )
    answer.raise_for_status()
    return [e["response"]["location"].split("/")[1] for e in answer.json()["entry"]]


def _patients(http: httpx.Client, base: str, n: int) -> list[str]:
    tag = uuid.uuid4().hex[:6]
    pids = [f"bench-sub-{tag}-{i}" for i in range(n)]
    for i in range(0, n, 100):
        _transaction(
            http,
            base,
            [
                {"resourceType": "Patient", "id": p, "birthDate": "1980-01-01"}
                for p in pids[i : i + 100]
            ],
        )
    return pids


class _Timed(MemoryResultStore):
    """Notes when each Observation first appears in a stored result."""

    def __init__(self) -> None:
        super().__init__()
        self.stored_at: dict[str, float] = {}

    async def record(self, result):  # type: ignore[no-untyped-def]
        stored = await super().record(result)
        now = time.monotonic()
        for ref in result.versions:
            self.stored_at.setdefault(ref, now)
        return stored


def _settings(base: str, port: int, **extra: Any) -> Settings:
    return Settings(
        _env_file=None,
        fhir_base_url=base,
        allow_anonymous_pull=True,
        audit_sink="none",
        rate_limit_enabled=False,
        log_level="WARNING",
        state_backend="memory",
        subscription_endpoint=f"http://127.0.0.1:{port}/subscription/notify",
        subscription_secret=uuid.uuid4().hex,
        **extra,
    )


def _settle(worker: Any, quiet: float = 3.0, timeout: float = 300) -> None:
    """Until nothing has been queued or pending for ``quiet`` seconds."""
    deadline, calm_since = time.monotonic() + timeout, time.monotonic()
    while time.monotonic() < deadline:
        st = worker.status()
        if st["queued"] or st["pending_patients"]:
            calm_since = time.monotonic()
        elif time.monotonic() - calm_since >= quiet:
            return
        time.sleep(0.2)


def measure_lag(base: str, changes: int) -> dict[str, float]:
    from service.api import create_app
    from service.subscriptions import subscribe
    from service.subscriptions.server import FhirServer

    port = _port()
    app = create_app(_settings(base, port))
    results = _Timed()
    app.state.result_store = results
    arrived: dict[str, float] = {}
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    runtime = app.state.subscriptions
    while runtime.task is None or not runtime.task.done():
        time.sleep(0.1)
    offer = runtime.worker.offer

    def noting(change):  # type: ignore[no-untyped-def]
        arrived.setdefault(f"{change.rtype}/{change.rid}", time.monotonic())
        return offer(change)

    runtime.worker.offer = noting
    accepted: dict[str, float] = {}
    with httpx.Client(timeout=30, headers={"Content-Type": "application/fhir+json"}) as http:
        pids = _patients(http, base, changes)
        _settle(runtime.worker)  # the Patients' own notifications pass first
        for pid in pids:
            answer = http.post(
                f"{base}/Observation", json=_observation(pid, 150, datetime.now(UTC))
            )
            answer.raise_for_status()
            accepted[f"Observation/{answer.json()['id']}"] = time.monotonic()
            time.sleep(0.1)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not all(r in results.stored_at for r in accepted):
        time.sleep(0.2)
    server.should_exit = True
    thread.join(30)

    async def cleanup() -> None:
        fhir = FhirServer(base, httpx.AsyncClient(timeout=30))
        await subscribe.remove(fhir, runtime.endpoint)
        await fhir.aclose()

    asyncio.run(cleanup())
    lags = [results.stored_at[r] - t for r, t in accepted.items() if r in results.stored_at]
    delays = [arrived[r] - t for r, t in accepted.items() if r in arrived]
    ours = [
        results.stored_at[r] - arrived[r]
        for r in accepted
        if r in arrived and r in results.stored_at
    ]

    def p95(xs: list[float]) -> float:
        return statistics.quantiles(xs, n=20)[-1] if len(xs) >= 2 else float("nan")

    return {
        "changes": len(accepted),
        "stored": len(lags),
        "subscription_lag_p95_s": round(p95(lags), 3),
        "server_delivery_delay_p95_s": round(p95(delays), 3),
        "ours_p95_s": round(p95(ours), 3),
    }


def measure_catchup(base: str, missed: int, patients: int) -> dict[str, float]:
    from service.clinical.dates import today
    from service.pipeline import evaluate_from_server
    from service.portfolio import load_portfolio
    from service.state.memory import MemoryStore
    from service.subscriptions.criteria import criteria_for, subscribed_types
    from service.subscriptions.ledger import Ledger
    from service.subscriptions.server import FhirServer
    from service.subscriptions.worker import SubscriptionWorker

    settings = _settings(base, 9)
    protocols = load_portfolio().protocols
    with httpx.Client(timeout=60, headers={"Content-Type": "application/fhir+json"}) as http:
        pids = _patients(http, base, patients)
        mark = datetime.now(UTC)
        time.sleep(1)
        now = datetime.now(UTC)
        obs = [
            _observation(pids[i % patients], 100 + i % 50, now - timedelta(hours=i // patients))
            for i in range(missed)
        ]
        for i in range(0, missed, 200):
            _transaction(http, base, obs[i : i + 200])

    async def catch_up() -> tuple[float, int]:
        ledger = Ledger(MemoryStore(), 1)
        await ledger.set_watermark(mark)
        worker = SubscriptionWorker(
            settings.model_copy(update={"subscription_catchup_overlap_seconds": 0.0}),
            protocols,
            ledger,
            MemoryResultStore(),
            types=subscribed_types(criteria_for(protocols)),
            server=FhirServer(base, httpx.AsyncClient(timeout=60)),
        )
        worker.start(catch_up=False)
        started = time.monotonic()
        await worker.catch_up()
        await worker.idle(timeout=600)
        elapsed = time.monotonic() - started
        await worker.stop()
        return elapsed, worker.stats.evaluations

    async def screen() -> float:
        sem = asyncio.Semaphore(settings.subscription_concurrency)
        day = today()

        async def one(pid: str) -> None:
            async with sem:
                for protocol in protocols:
                    await evaluate_from_server(settings, protocol, pid, day)

        started = time.monotonic()
        await asyncio.gather(*(one(p) for p in pids))
        return time.monotonic() - started

    elapsed, evaluations = asyncio.run(catch_up())
    screening = asyncio.run(screen())
    rate, screen_rate = evaluations / elapsed, patients / screening
    return {
        "missed_changes": missed,
        "patients": patients,
        "evaluations": evaluations,
        "catchup_seconds": round(elapsed, 1),
        "catchup_rate_per_s": round(rate, 1),
        "screening_rate_per_s": round(screen_rate, 1),
        "ratio": round(rate / screen_rate, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fhir-base", required=True)
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--missed", type=int, default=1000)
    parser.add_argument("--patients", type=int, default=200)
    args = parser.parse_args()
    base = args.fhir_base.rstrip("/")
    figures = {"lag": measure_lag(base, args.changes)}
    figures["catchup"] = measure_catchup(base, args.missed, args.patients)
    print(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
