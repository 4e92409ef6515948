"""The ZUMA-3 and DAPA-CKD demo patients through pull mode against the real HAPI server: the
same answers as their posted Bundles, and the statuses the demo promises (``-m hapi``;
``deploy/hapi/run-tests`` starts the server and sets HAPI_BASE_URL)."""

from __future__ import annotations

import asyncio
import os

import httpx
import orjson
import pytest

from service.clinical.dates import today
from service.demo import load_demo_bundles
from service.fhir.client import FhirClient
from service.fhir.loader import load_bundles
from service.pipeline import evaluate_body_generic, evaluate_fetched, evaluate_from_server
from service.portfolio_eval import contexts_for, fetch_portfolio
from service.settings import Settings
from tests.trial_paths import DAPA_DIR, SEED_DIR, ZUMA3_DIR, load, outcomes, status

HAPI = os.environ.get("HAPI_BASE_URL")
pytestmark = [
    pytest.mark.hapi,
    pytest.mark.skipif(not HAPI, reason="no HAPI server: set HAPI_BASE_URL"),
]

EXPECTED = {  # (patient, protocol folder) -> status
    ("demo-ckd-eligible", DAPA_DIR): "eligible",
    ("demo-ckd-potential", DAPA_DIR): "potential-candidate",
    ("demo-zuma3-eligible", ZUMA3_DIR): "eligible",
    ("demo-zuma3-potential", ZUMA3_DIR): "potential-candidate",
    ("demo-ckd-eligible", SEED_DIR): "ineligible",
    ("demo-zuma3-eligible", SEED_DIR): "eligible",
}


@pytest.fixture(scope="module")
def server():
    data = {pid: b for pid, b in load_demo_bundles().items() if pid in {p for p, _ in EXPECTED}}
    load_bundles(HAPI, data.items())
    return HAPI.rstrip("/"), data


@pytest.mark.parametrize(("pid", "folder"), list(EXPECTED), ids=lambda v: getattr(v, "name", v))
def test_pull_mode_on_hapi_agrees_with_the_bundle(server, pid, folder):
    base, data = server
    protocol = load(folder)
    _, posted = evaluate_body_generic(orjson.dumps(data[pid]), protocol)
    settings = Settings(fhir_base_url=base, cds_auth_enabled=False)
    _, pulled = asyncio.run(evaluate_from_server(settings, protocol, pid, None))
    system = protocol.criteria_system
    assert outcomes(pulled, system) == outcomes(posted, system)
    assert status(pulled) == status(posted) == EXPECTED[(pid, folder)]


class _Counting(httpx.AsyncBaseTransport):
    """The wire to the HAPI server, every request counted as sent."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.sent: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(f"{request.method} {request.url}")
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.parametrize("pid", ["demo-zuma3-eligible", "demo-ckd-eligible"])
def test_three_trials_pulled_from_hapi_send_each_distinct_query_once(server, pid):
    """Issue 21: the union of the three trials' queries reaches HAPI, none twice, and each
    trial's answer from that one fetch equals its answer pulled alone."""
    base, _ = server
    protocols = [load(SEED_DIR), load(ZUMA3_DIR), load(DAPA_DIR)]
    contexts = contexts_for(protocols)
    day = today()
    plans = [c.relevance.queries(pid, day) for c in contexts]
    distinct = {(q.resource_type, q.params) for plan in plans for q in plan}
    assert len(distinct) < sum(map(len, plans))  # the trials share queries

    wire = _Counting()

    async def fetch():
        async with FhirClient(httpx.AsyncClient(transport=wire), base) as client:
            return await fetch_portfolio(client, contexts, pid, day)

    fetched = asyncio.run(fetch())
    first_pages = [s for s in wire.sent if "_getpages" not in s]
    assert len(wire.sent) == len(set(wire.sent))  # no request twice, pages included
    assert len(first_pages) == len(distinct)  # one search (or read) per distinct query

    settings = Settings(fhir_base_url=base, cds_auth_enabled=False)
    for protocol, data in zip(protocols, fetched, strict=True):
        _, together = evaluate_fetched(data, protocol, day)
        _, alone = asyncio.run(evaluate_from_server(settings, protocol, pid, day))
        system = protocol.criteria_system
        assert outcomes(together, system) == outcomes(alone, system), protocol.id
        assert status(together) == status(alone)
