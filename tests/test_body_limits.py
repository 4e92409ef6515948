"""Bounded work per request over HTTP (issue 19, 6): the entry cap answers 413, the byte
budget 503 with Retry-After, both as OperationOutcomes, counted, and the budget is always
given back (after answers, errors, refusals and cancelled requests)."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from service.api import create_app
from service.body_budget import BodyBudgetMiddleware, BudgetExhausted, ByteBudget
from service.inputs import ConfigurationError
from service.settings import Settings
from tests.builders import bundle, lab, patient

FHIR = {"Content-Type": "application/fhir+json"}
GOOD = orjson.dumps(bundle(patient(), lab("777-3", 12, "10*9/L")))


def _refused(reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "eligibility_request_bodies_refused_total", {"reason": reason}
    )
    return value or 0.0


def _empties(n: int) -> bytes:
    return b'{"resourceType":"Bundle","entry":[' + b",".join([b"{}"] * n) + b"]}"


@pytest.fixture(scope="module")
def app():
    return create_app(
        Settings(
            cds_auth_enabled=False,
            max_body_bytes=200_000,
            max_decoding_bytes=400_000,
            max_bundle_entries=10,
            body_budget_wait_seconds=0.2,
        )
    )


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as c:
        yield c


def _outcome(response) -> str:
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    return body["issue"][0]["diagnostics"]


@pytest.mark.parametrize(
    "body",
    [
        _empties(11),  # the lean path's scan stops at the cap
        _empties(11).replace(b"{", b'{"id":"a","id":"b",', 1),  # the generic path counts first
        orjson.dumps(  # nested in a Parameters: counted too
            {"resourceType": "Parameters", "parameter": [{"name": "patientData", "resource": {
                "resourceType": "Bundle", "entry": [{}] * 11}}]}
        ),
    ],
)  # fmt: skip
def test_too_many_entries_is_413_with_an_operation_outcome(app, client, body):
    before = _refused("too_many_entries")
    r = client.post("/$eligibility", content=body, headers=FHIR)
    assert r.status_code == 413
    assert "more than 10 Bundle entries" in _outcome(r)
    assert r.json()["issue"][0]["code"] == "too-long"
    assert _refused("too_many_entries") == before + 1
    assert app.state.body_budget.used == 0


def test_at_the_cap_the_evaluation_runs(client):
    labs = [lab("777-3", 100 + i, "10*9/L") for i in range(9)]
    r = client.post("/$eligibility", content=orjson.dumps(bundle(patient(), *labs)), headers=FHIR)
    assert r.status_code == 200, r.text


def test_cds_prefetch_with_too_many_entries_is_413(client):
    prefetch = {"observations": {"resourceType": "Bundle", "type": "searchset", "entry": [{}] * 11}}
    call = {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/1", "patientId": "p1"},
        "prefetch": prefetch,
    }
    sid = client.get("/cds-services").json()["services"][0]["id"]
    r = client.post(f"/cds-services/{sid}", content=orjson.dumps(call), headers={
        "Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 413
    assert "more than 10 Bundle entries" in _outcome(r)


def test_an_exhausted_budget_is_503_with_retry_after_then_answers_again(app, client):
    budget: ByteBudget = app.state.body_budget
    assert budget.try_acquire(budget.capacity)  # as if other requests were decoding
    try:
        before = _refused("decode_budget")
        r = client.post("/$eligibility", content=GOOD, headers=FHIR)
        assert r.status_code == 503
        assert r.headers["Retry-After"] == "1"
        assert "retry" in _outcome(r)
        assert _refused("decode_budget") == before + 1
        assert client.get("/livez").status_code == 200  # requests without a body still run
    finally:
        budget.release(budget.capacity)
    assert budget.used == 0
    assert client.post("/$eligibility", content=GOOD, headers=FHIR).status_code == 200
    assert budget.used == 0


def test_the_budget_is_given_back_after_errors_and_chunked_bodies(app, client):
    budget: ByteBudget = app.state.body_budget
    assert client.post("/$eligibility", content=b"{oops", headers=FHIR).status_code == 400
    too_big = b" " * 300_000  # past max_body_bytes: 413 from read_body
    assert client.post("/$eligibility", content=too_big, headers=FHIR).status_code == 413
    chunked = client.post("/$eligibility", content=iter([GOOD[:50], GOOD[50:]]), headers=FHIR)
    assert chunked.status_code == 200
    assert budget.used == 0


def test_the_budget_must_hold_the_largest_body():
    with pytest.raises(ConfigurationError, match="MAX_DECODING_BYTES"):
        create_app(Settings(max_body_bytes=1000, max_decoding_bytes=999))


# -- ByteBudget and the middleware on their own ---------------------------------------


def test_a_waiter_runs_when_bytes_are_given_back():
    async def scenario() -> None:
        budget = ByteBudget(100)
        await budget.acquire(80, wait=0)
        waiting = asyncio.create_task(budget.acquire(50, wait=5))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        budget.release(80)
        await asyncio.wait_for(waiting, 1)
        assert budget.used == 50

    asyncio.run(scenario())


def test_a_waiter_gives_up_after_its_wait_and_takes_nothing():
    async def scenario() -> None:
        budget = ByteBudget(100)
        await budget.acquire(80, wait=0)
        with pytest.raises(BudgetExhausted):
            await budget.acquire(50, wait=0.05)
        assert budget.used == 80
        await budget.acquire(20, wait=0)  # what fits still fits
        assert budget.used == 100

    asyncio.run(scenario())


def test_a_body_larger_than_the_budget_runs_alone():
    async def scenario() -> None:
        budget = ByteBudget(100)
        await budget.acquire(500, wait=0)  # nothing else held: never starved
        with pytest.raises(BudgetExhausted):
            await budget.acquire(1, wait=0.01)
        budget.release(500)
        assert budget.used == 0

    asyncio.run(scenario())


def test_a_cancelled_request_gives_its_bytes_back():
    """A client that disconnects mid-evaluation cancels the request: nothing stays held,
    neither by the request that held bytes nor by one that was waiting."""

    async def scenario() -> None:
        budget = ByteBudget(100)
        started = asyncio.Event()

        async def slow_app(scope, receive, send) -> None:
            started.set()
            await asyncio.sleep(60)

        middleware = BodyBudgetMiddleware(slow_app, budget, max_body=100, wait=5)
        scope = {"type": "http", "headers": [(b"content-length", b"90")]}

        async def receive():
            return {"type": "http.request", "body": b"x" * 90}

        async def send(message) -> None:
            pass

        holding = asyncio.create_task(middleware(scope, receive, send))
        await started.wait()
        assert budget.used == 90
        started.clear()
        waiting = asyncio.create_task(middleware(scope, receive, send))
        await asyncio.sleep(0.05)
        waiting.cancel()
        holding.cancel()
        for task in (holding, waiting):
            with pytest.raises(asyncio.CancelledError):
                await task
        assert budget.used == 0

    asyncio.run(scenario())
