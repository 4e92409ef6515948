"""The ZUMA-3 and DAPA-CKD demo patients through pull mode against the real HAPI server: the
same answers as their posted Bundles, and the statuses the demo promises (``-m hapi``;
``deploy/hapi/run-tests`` starts the server and sets HAPI_BASE_URL)."""

from __future__ import annotations

import asyncio
import os

import orjson
import pytest

from service.demo import load_demo_bundles
from service.fhir.loader import load_bundles
from service.pipeline import evaluate_body_generic, evaluate_from_server
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
