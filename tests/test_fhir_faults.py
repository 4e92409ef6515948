"""The FHIR client and pull mode against a real, misbehaving FHIR server on loopback.

``tests/faultserver.py`` serves the demo patients over real sockets and fails on demand, so
retries, connection reuse, cut-off bodies, timing and the connection pool behave as they do
in production (respx would hide all of them).
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time

import httpx
import pytest
from fastapi.testclient import TestClient

import service.fhir.pool as fhir_pool
from service.api import create_app
from service.fhir.client import ClientConfig, FhirClient
from service.fhir.errors import DeadlineExceeded, UpstreamError
from service.fhir.pool import client_for, close_clients
from service.fhir.queries import Query
from service.settings import Settings
from tests.faultserver import FaultServer

PID = "demo-eligible"
EVALUATE = f"/Patient/{PID}/$eligibility"
CONSENTS = Query("consents", "Consent", (("patient", PID),), frozenset({"Consent"}))
LABS = Query("labs", "Observation", (("patient", PID),), frozenset({"x"}))
FAST = ClientConfig(deadline_seconds=3.0, wait_initial=0.01, wait_max=0.02, wait_jitter=0.0)


@pytest.fixture
def server():
    with FaultServer(hang_seconds=10, page_size=5) as srv:
        yield srv


def fhir_client(server: FaultServer, config: ClientConfig = FAST, read_timeout: float = 2.0):
    http = httpx.AsyncClient(timeout=httpx.Timeout(read_timeout, connect=1.0))
    return FhirClient(http, server.base_url, config=config, owns_http=True)


# -- retries ------------------------------------------------------------------------------


async def test_one_transient_500_on_a_search_is_retried(server):
    server.set_faults("500")
    async with fhir_client(server) as client:
        result = await client.search(CONSENTS)
    assert result.entries and server.count("/Consent") == 2


async def test_one_transient_500_on_a_read_is_retried(server):
    server.set_faults("500")
    async with fhir_client(server) as client:
        patient = await client.read("Patient", PID)
    assert patient["id"] == PID and server.count("/Patient/") == 2


async def test_a_500_is_retried_once_only(server):
    server.set_faults("500", "500", "500")
    async with fhir_client(server) as client:
        with pytest.raises(UpstreamError, match=r"HTTP 500 to the 'consents' Consent search"):
            await client.search(CONSENTS)
    assert server.count("/Consent") == 2


async def test_a_500_on_a_long_post_search_is_retried_once(server):
    config = ClientConfig(deadline_seconds=3.0, max_query_length=10, wait_initial=0.01)
    server.set_faults("500")
    async with fhir_client(server, config) as client:
        result = await client.search(CONSENTS)
    assert result.entries
    assert [m for m, p, _ in server.requests] == ["POST", "POST"]
    assert all(p.endswith("/Consent/_search") for _, p, _ in server.requests)


async def test_429_with_retry_after_is_waited_for_then_succeeds(server):
    server.retry_after = 1
    server.set_faults("429")
    started = time.perf_counter()
    async with fhir_client(server) as client:
        result = await client.search(CONSENTS)
    assert result.entries and server.count("/Consent") == 2
    assert time.perf_counter() - started >= 1.0  # the server's Retry-After, not our backoff


# -- what broke ---------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["reset", "truncated-chunked"])
async def test_an_answer_cut_off_midway_says_so(server, fault):
    server.set_faults(fault, cycle=True)
    async with fhir_client(server) as client:
        with pytest.raises(UpstreamError) as err:
            await client.search(CONSENTS)
    message = err.value.message
    assert message.startswith("the FHIR server's answer was cut off partway (HTTP 200, ")
    assert message.endswith("for the 'consents' Consent search; parameters: patient, _count")
    assert "could not reach" not in message
    assert server.count("/Consent") == FAST.retry_attempts  # a GET: retried, then given up


async def test_a_connection_closed_without_an_answer_says_so(server):
    server.set_faults("close", cycle=True)
    async with fhir_client(server) as client:
        with pytest.raises(UpstreamError, match="closed the connection before answering"):
            await client.search(CONSENTS)


async def test_a_server_that_is_down_cannot_be_reached(server):
    base = server.base_url
    server.stop()
    async with FhirClient(httpx.AsyncClient(), base, config=FAST, owns_http=True) as client:
        with pytest.raises(UpstreamError, match=r"could not reach .* \(ConnectError\)"):
            await client.search(CONSENTS)


async def test_a_cut_off_answer_then_a_good_one_succeeds(server):
    server.set_faults("reset")
    async with fhir_client(server) as client:
        result = await client.search(CONSENTS)
    assert result.entries and server.count("/Consent") == 2


async def test_a_slow_drip_within_the_deadline_is_read_in_full(server):
    server.drip_seconds = 0.01
    server.set_faults("drip")
    async with fhir_client(server) as client:
        dripped = await client.search(LABS)
        server.set_faults()
        whole = await client.search(LABS)
    assert [r["id"] for r in dripped.entries] == [r["id"] for r in whole.entries]


async def test_a_slow_drip_beyond_the_deadline_is_a_deadline_error(server):
    server.drip_seconds = 0.2  # 20 pieces: 4 s; every piece within the read timeout
    server.set_faults("drip", cycle=True)
    config = ClientConfig(deadline_seconds=0.6)
    started = time.perf_counter()
    async with fhir_client(server, config) as client:
        with pytest.raises(DeadlineExceeded):
            await client.search(CONSENTS)
    assert time.perf_counter() - started < 3.0  # not the 4 s the whole drip takes


async def test_a_hanging_server_hits_the_deadline(server):
    server.set_faults("hang", cycle=True)
    started = time.perf_counter()
    async with fhir_client(server, ClientConfig(deadline_seconds=0.5)) as client:
        with pytest.raises(DeadlineExceeded, match="during the 'consents' Consent search"):
            await client.search(CONSENTS)
    assert time.perf_counter() - started < 3.0  # not the server's 10 s hang


async def test_an_error_outcome_with_200_is_a_failure(server):
    server.set_faults("outcome-200")
    async with fhir_client(server) as client:
        with pytest.raises(UpstreamError, match=r"with an error \(OperationOutcome: exception\)"):
            await client.search(CONSENTS)
    assert server.count("/Consent") == 1  # an answer, not a transient failure: not retried


async def test_a_wrong_patient_is_a_failure(server):
    server.set_faults("wrong-patient")
    async with fhir_client(server) as client:
        with pytest.raises(UpstreamError, match="different resource"):
            await client.read("Patient", PID)


async def test_paging_over_real_http_collects_every_page(server):
    async with fhir_client(server) as client:
        result = await client.search(LABS)
    expected = server.store.search("Observation", [("patient", PID)])
    assert result.pages > 2  # page size 5
    assert sorted(r["id"] for r in result.entries) == sorted(r["id"] for r in expected)
    assert not result.truncated


# -- the outage under load ----------------------------------------------------------------


def outage_settings(server: FaultServer, **extra) -> Settings:
    values = {
        "fhir_base_url": server.base_url,
        "cds_auth_enabled": False,
        "allow_anonymous_pull": True,
        "deadline_seconds": 1.0,
        "connect_timeout": 0.5,
        "read_timeout": 1.0,
        "retry_attempts": 2,
    }
    return Settings(**(values | extra))


def leaked_connections(settings: Settings) -> list[str]:
    """Connections of the shared pool that are neither idle nor closed: with no request in
    flight, each is a slot no one will ever release (``connections``, ``is_idle`` and
    ``is_closed`` are httpcore's public pool API; reaching the pool is not)."""
    transport = client_for(settings)._http._transport
    transport = getattr(transport, "_inner", transport)  # our gate, if any, wraps httpx's
    return [c.info() for c in transport._pool.connections if not (c.is_idle() or c.is_closed())]


async def test_the_service_recovers_after_an_outage_under_load():
    """Issue 12: eight rounds of eight concurrent pull evaluations against a failing server
    (500s, error outcomes, wrong Patient, hangs) leaked connections of the shared pool
    (cancelled requests, httpcore); once the pool was full every later evaluation answered 504
    with no request reaching the healthy server again. The old code left 20-48 of its 50
    connections leaked after this outage; here none may be, and the service must work."""
    with FaultServer(hang_seconds=5) as server:
        settings = outage_settings(server, deadline_seconds=3.0)
        app = create_app(settings)
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://svc") as api:
                assert (await api.get(EVALUATE)).status_code == 200  # warm: units, pool

                # A short deadline keeps the outage quick (each hang costs one deadline).
                app.state.settings = settings.model_copy(update={"deadline_seconds": 0.4})
                server.set_faults("500", "outcome-200", "wrong-patient", "hang", cycle=True)
                for _ in range(8):
                    answers = await asyncio.gather(*(api.get(EVALUATE) for _ in range(8)))
                    assert {r.status_code for r in answers} <= {502, 504}

                server.set_faults()  # the server is healthy again
                for _ in range(20):  # abandoned exchanges finish on their own, promptly
                    leaked = leaked_connections(settings)
                    if not leaked:
                        break
                    await asyncio.sleep(0.1)
                assert leaked == []

                # Back to headroom for 72 cold connects to a threaded server in this process.
                app.state.settings = settings
                before = len(server.requests)
                for _ in range(2):
                    answers = await asyncio.gather(*(api.get(EVALUATE) for _ in range(8)))
                    assert [r.status_code for r in answers] == [200] * 8, [
                        r.json().get("issue") for r in answers if r.status_code != 200
                    ]
                assert len(server.requests) - before >= 2 * 8 * 9  # every query reached it
        finally:
            await close_clients()


async def test_a_stuck_pool_is_replaced_on_a_pool_timeout():
    """If the pool ever has no free connection (it never should), the next client gets a new
    one instead of every later evaluation failing."""
    with FaultServer() as server:
        settings = outage_settings(server, retry_attempts=1)
        try:
            async with client_for(settings) as client:
                stuck = client._http
                pool = stuck._transport._inner._pool  # what the leak leaves behind
                pool._max_connections = 0
                with pytest.raises(UpstreamError, match=r"no connection .* \(PoolTimeout\)"):
                    await client.read("Patient", PID)
            async with client_for(settings) as client:
                assert client._http is not stuck
                assert (await client.read("Patient", PID))["id"] == PID
        finally:
            await close_clients()


# -- readiness and liveness ---------------------------------------------------------------


@pytest.fixture
def quick_probes(monkeypatch):
    monkeypatch.setattr(fhir_pool, "READY_CACHE_SECONDS", 0.3)
    monkeypatch.setattr(fhir_pool, "PROBE_TIMEOUT_SECONDS", 0.5)


def test_healthz_follows_the_fhir_server_and_livez_does_not(server, quick_probes):
    with TestClient(create_app(outage_settings(server))) as api:
        ok = api.get("/healthz")
        assert ok.status_code == 200
        assert ok.json()["status"] == "ok" and ok.json()["fhir"] == "reachable"
        assert server.count("/metadata") == 1

        server.set_faults("hang", cycle=True)
        time.sleep(0.35)  # past the cache
        started = time.perf_counter()
        down = api.get("/healthz")
        assert time.perf_counter() - started < 2.0  # the probe's own short timeout
        assert down.status_code == 503
        assert down.json() == {
            "status": "unavailable",
            "protocol": ok.json()["protocol"],
            "fhir": "unreachable",
        }
        assert str(server.port) not in down.text and "127.0.0.1" not in down.text
        assert api.get("/livez").json() == {"status": "ok"}

        server.set_faults()
        time.sleep(0.35)
        assert api.get("/healthz").status_code == 200


def test_healthz_is_not_ready_when_the_server_is_down(server, quick_probes):
    settings = outage_settings(server)
    server.stop()
    with TestClient(create_app(settings)) as api:
        assert api.get("/healthz").status_code == 503
        assert api.get("/livez").status_code == 200


def test_healthz_probes_once_per_cache_period(server, monkeypatch):
    monkeypatch.setattr(fhir_pool, "READY_CACHE_SECONDS", 60.0)
    with TestClient(create_app(outage_settings(server))) as api:
        assert [api.get("/healthz").status_code for _ in range(5)] == [200] * 5
    assert server.count("/metadata") == 1


def test_healthz_in_demo_mode_is_ready():
    with TestClient(create_app(Settings(cds_auth_enabled=False))) as api:
        assert api.get("/healthz").json()["fhir"] == "reachable"


def test_healthz_reports_a_stuck_pool_and_the_pool_is_replaced(server, quick_probes):
    settings = outage_settings(server)
    with TestClient(create_app(settings)) as api:
        assert api.get("/healthz").status_code == 200

        async def stick() -> None:  # what leaked connections did to the old pool
            pool = client_for(settings)._http._transport._inner._pool
            pool._max_connections = 0
            pool._connections.clear()  # not even the idle keep-alive connection

        api.portal.call(stick)
        time.sleep(0.35)
        assert api.get("/healthz").status_code == 503  # the server is fine; our pool is not
        time.sleep(0.35)
        assert api.get("/healthz").status_code == 200  # a new pool
        assert api.get(EVALUATE).status_code == 200


# -- the CLI ------------------------------------------------------------------------------


def test_cli_against_a_failing_server_prints_one_error_line_naming_the_query(server):
    """Issue 15: the CLI printed a stamina warning per retry (27) before its error line."""
    server.set_faults("503", cycle=True)
    env = {
        **os.environ,
        "ELIGIBILITY_RETRY_ATTEMPTS": "3",
        "ELIGIBILITY_DEADLINE_SECONDS": "5",
        "ELIGIBILITY_FHIR_AUTH": "none",
    }
    command = [sys.executable, "-m", "service.cli", "evaluate"]
    command += ["--fhir-base", server.base_url, "--patient", PID]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 3
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert re.fullmatch(r"error: the FHIR server answered HTTP 503 to the '\w+' \w+ .*", lines[0])
    assert server.count() > 9  # 9 queries, and retries did happen (quietly)
