"""Site terminology (issue 10): local codes through ConceptMaps give the LOINC twin's results;
anything but an exact mapping never decides; bad files stop the start."""

from __future__ import annotations

import asyncio
import copy

import orjson
import pytest

from service.clinical.model import Outcome
from service.pipeline import evaluate_from_server, evaluate_resource
from service.protocol import default_protocol
from service.settings import Settings
from service.terminology import runtime
from service.terminology.conceptmaps import SiteMappingError, load_site_mappings
from tests.faultserver import FaultServer
from tests.terminology.support import (
    AS_OF,
    DEMO_PATIENTS,
    EXAMPLE_DIR,
    demo_bundle,
    example_conceptmap,
    outcomes,
    recode_bundle,
)

LAB = "https://lab.example-hospital.org/CodeSystem/lab-test-codes"
CM_LABEL = "https://example-hospital.org/fhir/ConceptMap/example-hospital-lab|2026-11-30"
LAB_CRITERIA = ("I6", "I7", "I8")


def _evaluate(bundle):
    return evaluate_resource(bundle, default_protocol(), as_of=AS_OF)


def _write(tmp_path, resource, name="ConceptMap-site.json"):
    folder = tmp_path / "site"
    folder.mkdir(exist_ok=True)
    (folder / name).write_bytes(orjson.dumps(resource))
    return folder


@pytest.mark.parametrize("patient", DEMO_PATIENTS)
def test_local_codes_with_conceptmap_match_the_loinc_twin(patient):
    original, _ = _evaluate(demo_bundle(patient))
    runtime.configure(EXAMPLE_DIR)
    recoded, bundle = _evaluate(recode_bundle(demo_bundle(patient)))
    assert outcomes(recoded) == outcomes(original)
    assert recoded.status == original.status


def test_local_codes_without_mappings_leave_the_labs_undetermined():
    bundle = recode_bundle(demo_bundle("demo-eligible"))
    evaluation, _ = _evaluate(bundle)
    found = outcomes(evaluation)
    assert all(found[c] == "undetermined" for c in LAB_CRITERIA)
    runtime.configure(EXAMPLE_DIR)
    evaluation, _ = _evaluate(bundle)
    assert evaluation.status.value == "eligible"


def test_the_note_names_local_code_target_and_conceptmap_and_provenance_lists_it():
    runtime.configure(EXAMPLE_DIR)
    evaluation, bundle = _evaluate(recode_bundle(demo_bundle("demo-eligible")))
    platelets = next(m for r in evaluation.results for m in r.members if m.code == "I7-platelets")
    assert f"local code {LAB}|PLT mapped to http://loinc.org|777-3" in platelets.reason
    assert f"by ConceptMap {CM_LABEL} (equivalent)" in platelets.reason
    note = next(
        e["resource"]["note"][0]["text"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "Observation"
        and e["resource"]["code"]["coding"][0]["code"] == "I7-platelets"
    )
    assert "PLT" in note and "777-3" in note and CM_LABEL in note
    provenance = next(
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Provenance"
    )
    maps = [x for x in provenance["entity"] if x["what"].get("type") == "ConceptMap"]
    assert [m["what"]["identifier"]["value"] for m in maps] == [CM_LABEL.split("|")[0]]
    assert "2026-11-30" in maps[0]["what"]["display"]
    from fhir.resources.R4B.provenance import Provenance

    Provenance.model_validate(provenance)


def test_without_site_mappings_the_result_carries_no_mapping_trace():
    evaluation, bundle = _evaluate(demo_bundle("demo-eligible"))
    assert evaluation.conceptmaps == []
    assert "site terminology" not in orjson.dumps(bundle).decode()


def _platelets_cm(equivalence: str) -> dict:
    cm = example_conceptmap()
    for element in cm["group"][0]["element"]:
        if element["code"] == "PLT":
            element["target"][0]["equivalence"] = equivalence
            if equivalence == "unmatched":
                del element["target"][0]["code"]
    return cm


@pytest.mark.parametrize("equivalence", ["narrower", "wider", "inexact", "relatedto", "unmatched"])
def test_a_mapping_that_is_not_equivalent_never_gives_met(tmp_path, equivalence):
    runtime.configure(_write(tmp_path, _platelets_cm(equivalence)))
    evaluation, _ = _evaluate(recode_bundle(demo_bundle("demo-eligible"), only={"777-3"}))
    found = outcomes(evaluation)
    assert found["I7-platelets"] == "undetermined"
    assert found["I7"] == "undetermined"
    assert evaluation.status.value != "eligible"
    if equivalence != "unmatched":
        platelets = next(
            m for r in evaluation.results for m in r.members if m.code == "I7-platelets"
        )
        assert "not equivalent never decides" in platelets.reason
        assert f"({equivalence})" in platelets.reason


def test_a_newer_inexact_result_blocks_an_older_loinc_one():
    """The newest result decides: an inexactly mapped newer count keeps I7 open."""
    bundle = demo_bundle("demo-eligible")
    plt = next(
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "Observation"
        and e["resource"]["code"]["coding"][0]["code"] == "777-3"
    )
    newer = copy.deepcopy(plt)
    newer["id"] = "plt-smear"
    newer["code"] = {"coding": [{"system": LAB, "code": "PLT-EST", "display": "smear"}]}
    newer["effectiveDateTime"] = AS_OF.isoformat()
    plt["effectiveDateTime"] = "2026-11-18"
    bundle["entry"].append({"fullUrl": "Observation/plt-smear", "resource": newer})
    runtime.configure(EXAMPLE_DIR)
    evaluation, _ = _evaluate(bundle)
    assert outcomes(evaluation)["I7-platelets"] == "undetermined"


def test_an_inexactly_mapped_condition_holds_the_diagnosis_open(tmp_path):
    cm = example_conceptmap()
    cm["group"][1]["element"][0]["target"][0]["equivalence"] = "narrower"
    runtime.configure(_write(tmp_path, cm))
    evaluation, _ = _evaluate(recode_bundle(demo_bundle("demo-eligible"), only={"277571004"}))
    found = outcomes(evaluation)
    assert found["I3"] == "undetermined"
    assert Outcome.MET.value not in (found["I3"], found["I4"])


def test_site_unit_strings_are_read_through_the_unit_mapping():
    bundle = demo_bundle("demo-us-units")
    for entry in bundle["entry"]:
        quantity = entry["resource"].get("valueQuantity") or {}
        if quantity.get("unit") in ("10^3/uL", "K/uL"):
            quantity["unit"] = "thou/cmm"
            quantity.pop("code", None)
            quantity.pop("system", None)
    evaluation, _ = _evaluate(bundle)
    assert outcomes(evaluation)["I7-platelets"] == "undetermined"  # unknown unit
    runtime.configure(EXAMPLE_DIR)
    evaluation, _ = _evaluate(bundle)
    assert outcomes(evaluation)["I7-platelets"] == "met"
    assert outcomes(evaluation)["I7-anc"] == "met"
    platelets = next(m for r in evaluation.results for m in r.members if m.code == "I7-platelets")
    assert f"unit 'thou/cmm' read as UCUM 10*3/uL by ConceptMap {CM_LABEL}" in platelets.reason
    assert [cm.label for cm in evaluation.conceptmaps] == [CM_LABEL]


@pytest.mark.parametrize("patient", ["demo-eligible", "demo-ineligible", "demo-us-units"])
def test_pull_mode_and_bundle_mode_agree_with_mappings(patient):
    runtime.configure(EXAMPLE_DIR)
    bundle = recode_bundle(demo_bundle(patient))
    in_bundle, _ = _evaluate(bundle)
    with FaultServer(bundles={patient: bundle}) as server:
        settings = Settings(fhir_base_url=server.base_url, retry_attempts=1)
        pulled, _ = asyncio.run(evaluate_from_server(settings, default_protocol(), patient, AS_OF))
    assert outcomes(pulled) == outcomes(in_bundle)
    assert outcomes(pulled) == outcomes(_evaluate_plain(patient))
    assert any("777-3" in r for r in _reasons(pulled))


def _evaluate_plain(patient):
    saved = runtime.active()
    runtime.reset()
    try:
        return _evaluate(demo_bundle(patient))[0]
    finally:
        if saved is not None:
            runtime.configure(EXAMPLE_DIR)


def _reasons(evaluation):
    return [m.reason for r in evaluation.results for m in [r, *r.members]]


# -- loading: a bad file is a clear start-up error ---------------------------------------


def test_the_example_folder_loads():
    site = load_site_mappings(EXAMPLE_DIR)
    assert site.codes[(LAB, "PLT")][0].exact
    assert not site.codes[(LAB, "PLT-EST")][0].exact
    assert site.unit_aliases()["thou/cmm"] == "10*3/uL"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "cannot read JSON"),
        (orjson.dumps({"resourceType": "ValueSet", "url": "x"}), "expected a ConceptMap"),
        (orjson.dumps({**example_conceptmap(), "group": "bogus"}), "not a valid R4 ConceptMap"),
        (orjson.dumps({k: v for k, v in example_conceptmap().items() if k != "url"}), "url"),
    ],
)
def test_a_bad_file_is_a_startup_error(tmp_path, content, message):
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "bad.json").write_bytes(content)
    with pytest.raises(SiteMappingError, match=message):
        runtime.configure(folder)


def test_a_wrong_equivalence_code_is_refused(tmp_path):
    cm = example_conceptmap()
    cm["group"][0]["element"][0]["target"][0]["equivalence"] = "same-ish"
    with pytest.raises(SiteMappingError, match="not an R4 ConceptMapEquivalence"):
        runtime.configure(_write(tmp_path, cm))


@pytest.mark.parametrize("unit", ["mg/dL", "K/uL"])
def test_a_unit_mapping_may_not_reread_a_known_unit(tmp_path, unit):
    cm = example_conceptmap()
    cm["group"][2]["element"][0]["code"] = unit
    with pytest.raises(SiteMappingError, match="already read"):
        runtime.configure(_write(tmp_path, cm))


def test_a_unit_mapping_must_target_ucum(tmp_path):
    cm = example_conceptmap()
    cm["group"][2]["element"][0]["target"][0]["code"] = "thousands per what"
    with pytest.raises(SiteMappingError, match="unit mapping"):
        runtime.configure(_write(tmp_path, cm))


def test_missing_folder_is_an_error(tmp_path):
    with pytest.raises(SiteMappingError, match="does not exist"):
        runtime.configure(tmp_path / "nope")


def _cbc_panel(local: bool) -> dict:
    """A CBC sent as one Observation with the counts in components."""
    system = LAB if local else "http://loinc.org"
    codes = {"PLT": "777-3", "ANC": "751-8", "HGB": "718-7"}
    values = {"PLT": (45, "10*9/L"), "ANC": (1.2, "10*9/L"), "HGB": (95, "g/L")}
    return {
        "resourceType": "Observation",
        "id": "cbc-panel",
        "status": "final",
        "subject": {"reference": "Patient/demo-eligible"},
        "effectiveDateTime": AS_OF.isoformat(),
        "code": {"coding": [{"system": LAB, "code": "CBC-PANEL"}]},
        "component": [
            {
                "code": {"coding": [{"system": system, "code": k if local else codes[k]}]},
                "valueQuantity": {
                    "value": v,
                    "unit": u,
                    "system": "http://unitsofmeasure.org",
                    "code": u,
                },
            }
            for k, (v, u) in values.items()
        ],
    }


def test_local_codes_in_panel_components_are_mapped_like_loinc_ones():
    results = []
    for local in (False, True):
        bundle = demo_bundle("demo-eligible")
        bundle["entry"].append({"fullUrl": "Observation/cbc-panel", "resource": _cbc_panel(local)})
        runtime.configure(EXAMPLE_DIR)
        evaluation, _ = _evaluate(bundle)
        members = {m.code: m for r in evaluation.results for m in r.members}
        results.append({c: (members[c].outcome, members[c].reason.split(" [")[0]) for c in members})
        assert "cbc-panel" in members["I7-platelets"].reason
    assert results[0] == results[1]


def test_the_http_api_reads_site_mappings_from_the_settings(tmp_path):
    from fastapi.testclient import TestClient

    from service.api import create_app

    body = orjson.dumps(recode_bundle(demo_bundle("demo-eligible")))
    headers = {"Content-Type": "application/fhir+json"}
    with TestClient(create_app(Settings(site_mappings=EXAMPLE_DIR))) as client:
        answer = client.post("/$eligibility?asOf=2026-11-20", content=body, headers=headers)
    assert answer.status_code == 200
    assert answer.json()["entry"][0]["resource"]["status"] == "eligible"
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.json").write_text('{"resourceType": "ConceptMap"}')
    with pytest.raises(SiteMappingError, match="x.json"):
        create_app(Settings(site_mappings=bad))


def test_pull_mode_searches_for_the_sites_local_codes():
    from service.fhir.queries import plan_queries

    def codes():
        queries = plan_queries(default_protocol(), "p", AS_OF)
        return {q.key: dict(q.params).get("combo-code", "") for q in queries}

    plain = codes()
    runtime.configure(EXAMPLE_DIR)
    mapped = codes()
    assert f"{LAB}|PLT" in mapped["labs"] and f"{LAB}|PLT" not in plain["labs"]
    assert f"{LAB}|PLT-EST" in mapped["labs"]  # an inexact one too: it must be seen to block
