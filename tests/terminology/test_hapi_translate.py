"""ConceptMap/$translate against a real HAPI FHIR server (``-m hapi``; HAPI_BASE_URL is set by
deploy/hapi/run-tests): the example ConceptMap loaded into HAPI gives the folder's results,
in bundle mode and in pull mode."""

from __future__ import annotations

import asyncio
import os

import httpx
import orjson
import pytest

from service.fhir.loader import load_bundles
from service.pipeline import evaluate_from_server, evaluate_resource
from service.protocol import default_protocol
from service.settings import Settings
from service.terminology import runtime
from tests.terminology.support import (
    AS_OF,
    EXAMPLE_DIR,
    demo_bundle,
    example_conceptmap,
    outcomes,
    recode_bundle,
)

HAPI = os.environ.get("HAPI_BASE_URL")
pytestmark = [
    pytest.mark.hapi,
    pytest.mark.skipif(not HAPI, reason="no HAPI server: HAPI_BASE_URL is set by run-tests"),
]
PATIENTS = ["demo-eligible", "demo-ineligible", "demo-us-units"]


@pytest.fixture(scope="module")
def hapi_with_conceptmap():
    cm = example_conceptmap()
    response = httpx.put(
        f"{HAPI}/ConceptMap/{cm['id']}",
        content=orjson.dumps(cm),
        headers={"Content-Type": "application/fhir+json"},
        timeout=30,
    )
    assert response.status_code in (200, 201), response.text[:300]
    yield HAPI


def _by_folder(bundle):
    runtime.configure(EXAMPLE_DIR)
    try:
        return evaluate_resource(bundle, default_protocol(), as_of=AS_OF)[0]
    finally:
        runtime.reset()


@pytest.mark.parametrize("patient", PATIENTS)
def test_hapi_translate_gives_the_folder_results(hapi_with_conceptmap, patient):
    bundle = recode_bundle(demo_bundle(patient))
    expected = outcomes(_by_folder(bundle))
    runtime.configure(None, hapi_with_conceptmap, timeout=10)
    evaluation, _ = evaluate_resource(bundle, default_protocol(), as_of=AS_OF)
    assert outcomes(evaluation) == expected
    platelets = next(m for r in evaluation.results for m in r.members if m.code == "I7-platelets")
    assert "777-3" in platelets.reason and "ConceptMap" in platelets.reason


def test_hapi_pull_mode_with_translate_agrees_with_the_folder(hapi_with_conceptmap):
    patient = "demo-eligible"
    raw = orjson.dumps(recode_bundle(demo_bundle(patient)))
    bundle = orjson.loads(raw.replace(b"demo-", b"termmap-demo-"))
    expected = outcomes(_by_folder(bundle))
    list(load_bundles(hapi_with_conceptmap, [("termmap", bundle)]))
    runtime.configure(None, hapi_with_conceptmap, timeout=10)
    settings = Settings(fhir_base_url=hapi_with_conceptmap)
    pulled, _ = asyncio.run(
        evaluate_from_server(settings, default_protocol(), f"termmap-{patient}", AS_OF)
    )
    assert outcomes(pulled) == expected
    assert pulled.status.value == "eligible"


def test_hapi_inexact_translation_never_gives_met(hapi_with_conceptmap):
    bundle = demo_bundle("demo-eligible")
    for entry in bundle["entry"]:
        code = entry["resource"].get("code", {}).get("coding", [{}])[0]
        if code.get("code") == "777-3":
            code.update(system="https://lab.example-hospital.org/CodeSystem/lab-test-codes")
            code.update(code="PLT-EST")
    runtime.configure(None, hapi_with_conceptmap, timeout=10)
    evaluation, _ = evaluate_resource(bundle, default_protocol(), as_of=AS_OF)
    found = outcomes(evaluation)
    assert found["I7-platelets"] == "undetermined" and found["I7"] == "undetermined"
    platelets = next(m for r in evaluation.results for m in r.members if m.code == "I7-platelets")
    assert "(inexact)" in platelets.reason
