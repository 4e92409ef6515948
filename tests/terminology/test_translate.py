"""ConceptMap/$translate against a loopback FHIR terminology server stub: same results as the
folder; a failed call makes the affected criteria undetermined, never met; answers cached."""

from __future__ import annotations

import asyncio

import pytest

from service.pipeline import evaluate_from_server, evaluate_resource
from service.protocol import default_protocol
from service.settings import Settings
from service.terminology import runtime
from service.terminology.translate import TranslateError, parse_translate
from tests.faultserver import FaultServer
from tests.terminology.support import (
    AS_OF,
    EXAMPLE_DIR,
    TranslateStub,
    demo_bundle,
    example_conceptmap,
    outcomes,
    recode_bundle,
)

CM_URL = "https://example-hospital.org/fhir/ConceptMap/example-hospital-lab"


def _evaluate(bundle):
    return evaluate_resource(bundle, default_protocol(), as_of=AS_OF)


@pytest.mark.parametrize("patient", ["demo-eligible", "demo-ineligible", "demo-us-units"])
def test_translate_gives_the_same_results_as_the_folder(patient):
    bundle = recode_bundle(demo_bundle(patient))
    runtime.configure(EXAMPLE_DIR)
    by_folder, _ = _evaluate(bundle)
    runtime.reset()
    with TranslateStub([example_conceptmap()]) as stub:
        runtime.configure(None, stub.base_url)
        by_server, _ = _evaluate(bundle)
        assert stub.calls, "the server was asked"
        assert all(system.startswith("https://") for system, _ in stub.calls)  # no LOINC
    assert outcomes(by_server) == outcomes(by_folder)
    assert outcomes(by_server) == outcomes(_evaluate_plain(patient))
    platelets = next(m for r in by_server.results for m in r.members if m.code == "I7-platelets")
    assert f"by ConceptMap {CM_URL} (equivalent)" in platelets.reason


def _evaluate_plain(patient):
    saved = runtime.active()
    runtime._ACTIVE.clear()
    try:
        return _evaluate(demo_bundle(patient))[0]
    finally:
        if saved is not None:
            runtime._ACTIVE.append(saved)


def test_answers_are_cached():
    bundle = recode_bundle(demo_bundle("demo-eligible"))
    with TranslateStub([example_conceptmap()]) as stub:
        runtime.configure(None, stub.base_url)
        _evaluate(bundle)
        first = len(stub.calls)
        _evaluate(bundle)
        assert len(stub.calls) == first


@pytest.mark.parametrize("mode", ["500", "hang"])
def test_a_failed_translation_is_undetermined_never_met(mode):
    bundle = recode_bundle(demo_bundle("demo-eligible"))
    with TranslateStub([example_conceptmap()], mode=mode) as stub:
        stub.hang_seconds = 2.0
        runtime.configure(None, stub.base_url, timeout=0.3)
        evaluation, _ = _evaluate(bundle)
    found = outcomes(evaluation)
    for code in ("I6", "I7", "I8", "I7-platelets", "I6-bilirubin"):
        assert found[code] == "undetermined"
    assert evaluation.status.value != "eligible"
    assert found["I3"] != "met"  # the Condition's local code could not be translated either


def test_a_failed_translation_holds_even_a_loinc_coded_result_open():
    """A local result the server could not translate may be a newer platelet count."""
    bundle = recode_bundle(demo_bundle("demo-eligible"), only={"718-7"})  # hemoglobin only
    with TranslateStub([example_conceptmap()], mode="500") as stub:
        runtime.configure(None, stub.base_url, timeout=0.5)
        evaluation, _ = _evaluate(bundle)
    platelets = next(m for r in evaluation.results for m in r.members if m.code == "I7-platelets")
    assert platelets.outcome.value == "undetermined"
    assert "could not be translated" in platelets.reason


def test_pull_mode_with_a_terminology_server_agrees_with_bundle_mode():
    patient = "demo-eligible"
    bundle = recode_bundle(demo_bundle(patient))
    with (
        TranslateStub([example_conceptmap()]) as stub,
        FaultServer(bundles={patient: bundle}) as server,
    ):
        runtime.configure(None, stub.base_url)
        in_bundle, _ = _evaluate(bundle)
        settings = Settings(fhir_base_url=server.base_url, retry_attempts=1)
        pulled, _ = asyncio.run(evaluate_from_server(settings, default_protocol(), patient, AS_OF))
    assert outcomes(pulled) == outcomes(in_bundle)
    assert pulled.status.value == "eligible"


def test_parse_translate_reads_r4_and_refuses_garbage():
    code = ("urn:x", "1")
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "result", "valueBoolean": True},
            {
                "name": "match",
                "part": [
                    {"name": "equivalence", "valueCode": "narrower"},
                    {"name": "concept", "valueCoding": {"system": "http://loinc.org", "code": "1"}},
                    {"name": "source", "valueUri": "http://x/ConceptMap/a|3"},
                ],
            },
        ],
    }
    (m,) = parse_translate(body, code, "http://t")
    assert (m.target, m.equivalence, m.by.url, m.by.version, m.exact) == (
        ("http://loinc.org", "1"),
        "narrower",
        "http://x/ConceptMap/a",
        "3",
        False,
    )
    with pytest.raises(TranslateError):
        parse_translate({"resourceType": "OperationOutcome"}, code, "http://t")
    with pytest.raises(TranslateError):
        parse_translate({"resourceType": "Parameters", "parameter": []}, code, "http://t")
