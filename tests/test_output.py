"""The result Bundle follows the output contract and validates with fhir.resources R4B."""

from __future__ import annotations

from datetime import date

import pytest
from fhir.resources.R4B.bundle import Bundle

from service.demo import load_demo_bundles
from service.pipeline import evaluate_resource
from service.protocol import default_protocol

AS_OF = date(2026, 11, 20)  # the demo anchor: demo files are read unshifted
CRITERIA = 12
MEMBERS = 7


def _demo(name: str):
    return evaluate_resource(load_demo_bundles(AS_OF)[name], default_protocol(), as_of=AS_OF)


def _by_type(bundle: dict, rtype: str) -> list[dict]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype]


@pytest.fixture(scope="module", params=sorted(load_demo_bundles(AS_OF)))
def demo(request):
    return _demo(request.param)


def test_validates_as_r4b_bundle(demo):
    _, bundle = demo
    Bundle.model_validate(bundle)


def test_contract_shape(demo):
    evaluation, bundle = demo
    protocol = default_protocol()
    assert bundle["type"] == "collection"
    assert all(e["fullUrl"].startswith("urn:uuid:") for e in bundle["entry"])
    subject = bundle["entry"][0]["resource"]
    assert subject["resourceType"] == "ResearchSubject"
    assert subject["status"] == evaluation.status.value
    assert subject["individual"]["reference"] == evaluation.patient_reference
    assert protocol.version in subject["study"]["display"]
    assert subject["text"]["div"].startswith("<div")

    observations = _by_type(bundle, "Observation")
    assert len(observations) == CRITERIA + MEMBERS
    codes = {o["code"]["coding"][0]["code"] for o in observations}
    assert {f"I{i}" for i in range(1, 13)} <= codes
    for obs in observations:
        assert obs["status"] == "final"
        assert obs["effectiveDateTime"] == AS_OF.isoformat()
        assert obs["focus"][0]["reference"] == protocol.canonical
        assert obs["note"][0]["text"]
        has_value = "valueCodeableConcept" in obs
        assert has_value != ("dataAbsentReason" in obs)  # obs-6
        if has_value:
            assert obs["valueCodeableConcept"]["coding"][0]["code"] in {"met", "not-met"}
        for ref in obs.get("derivedFrom", []):
            assert ref["reference"].split("/")[0] in {"Observation", "QuestionnaireResponse"}

    panels = [o for o in observations if "hasMember" in o]
    assert sorted(len(p["hasMember"]) for p in panels) == [3, 4]
    member_urls = {m["reference"] for p in panels for m in p["hasMember"]}
    full_urls = {e["fullUrl"] for e in bundle["entry"]}
    assert member_urls <= full_urls

    [guidance] = _by_type(bundle, "GuidanceResponse")
    assert guidance["moduleUri"] == protocol.versioned_canonical
    undetermined = any("dataAbsentReason" in o for o in observations)
    assert guidance["status"] == ("data-required" if undetermined else "success")
    if undetermined:
        assert guidance["dataRequirement"]

    [provenance] = _by_type(bundle, "Provenance")
    obs_urls = {
        e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"
    }
    assert {t["reference"] for t in provenance["target"]} == obs_urls
    assert any(e["what"]["reference"] == evaluation.patient_reference for e in provenance["entity"])

    outcomes = _by_type(bundle, "OperationOutcome")
    assert len(outcomes) == (1 if evaluation.issues else 0)


def test_demo_statuses():
    expected = {
        "demo-eligible": "eligible",
        "demo-ineligible": "ineligible",
        "demo-potential": "potential-candidate",
        "demo-us-units": "eligible",
        "demo-stale-labs": "potential-candidate",
        "demo-pediatric": "ineligible",
    }
    got = {name: _demo(name)[0].status.value for name in expected}
    assert got == expected


def test_eligible_demo_cites_its_sources():
    evaluation, bundle = _demo("demo-eligible")
    [provenance] = _by_type(bundle, "Provenance")
    kinds = {e["what"]["type"] for e in provenance["entity"]}
    assert {"Patient", "Observation", "Condition", "Consent", "QuestionnaireResponse"} <= kinds


def test_every_open_attestation_is_named_in_the_guidance():
    _, bundle = _demo("demo-potential")
    [guidance] = _by_type(bundle, "GuidanceResponse")
    notes = " ".join(n["text"] for n in guidance["note"])
    for item in ("I5", "I9", "I11", "I12"):
        assert f"attestation item {item} in" in notes
    consent = [d for d in guidance["dataRequirement"] if d["type"] == "Consent"]
    assert consent and consent[0]["codeFilter"][0]["path"] == "scope"


# -- urn:uuid ids: drawn from a pool, still random version-4 UUIDs ------------------------


def test_result_ids_are_distinct_version_4_uuids():
    import uuid

    from service.output import _urn

    ids = [_urn() for _ in range(1_000)]  # several refills of the pool
    assert len(set(ids)) == len(ids)
    for urn in ids:
        value = uuid.UUID(urn.removeprefix("urn:uuid:"))
        assert urn == f"urn:uuid:{value}"
        assert value.version == 4 and value.variant == uuid.RFC_4122


def test_a_forked_worker_never_repeats_its_parents_ids():
    import os

    from service.output import _urn

    _urn()  # the parent's pool now holds ids a careless child would inherit
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next 10 ids
        os.write(write, " ".join(_urn() for _ in range(10)).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = set(os.read(read, 10_000).decode().split())
    parent = {_urn() for _ in range(10)}
    assert len(child) == 10 and not child & parent
