"""The protocol's FHIR resources and the demo patients: valid R4, and consistent with protocol.toml.

The protocol is data; a typo in a code, a ValueSet id or a criterion code would only show up as a
silently wrong eligibility answer, so these checks fail loudly at test time instead.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from fhir.resources.R4B import get_fhir_model_class

from fhir_mappings import DEFAULT_PROTOCOL, MAPPINGS_DIR
from service.protocol import load_protocol

ROOT = Path(__file__).parents[1]
STUDY_DIR = DEFAULT_PROTOCOL.parent
DEMO_DIR = ROOT / "service" / "demo_patients"
BASE = "https://fhir.cart-eligibility.example.org"
STUDY_URL = f"{BASE}/ResearchStudy/cd19-cart-rr-ball"
QUESTIONNAIRE_URL = f"{BASE}/Questionnaire/cd19-cart-rr-ball-attestation"
XVER = "http://hl7.org/fhir/5.0/StructureDefinition/extension-ResearchStudy."
ANCHOR = date(2026, 11, 20)  # demo data are written relative to this evaluation date

KNOWN_SYSTEMS = {
    "http://loinc.org",
    "http://snomed.info/sct",
    "http://hl7.org/fhir/sid/icd-10-cm",
    "http://terminology.hl7.org/CodeSystem/icd-o-3",
    "http://www.ama-assn.org/go/cpt",
    "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
    "http://terminology.hl7.org/CodeSystem/consentscope",
    "http://terminology.hl7.org/CodeSystem/referencerange-meaning",
    "http://terminology.hl7.org/CodeSystem/v3-AdministrativeGender",
    "http://hl7.org/fhir/administrative-gender",
}

FHIR_FILES = sorted(MAPPINGS_DIR.rglob("*.json"))
DEMO_FILES = sorted(DEMO_DIR.glob("*.json"))
PROTOCOL_TOML = tomllib.loads(DEFAULT_PROTOCOL.read_text(encoding="utf-8"))

Code = tuple[str, str]


def _load(path: Path) -> dict[str, Any]:
    return orjson.loads(path.read_bytes())


def _valuesets() -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in map(_load, STUDY_DIR.glob("ValueSet-*.json"))}


def _vs_codes(valueset: dict[str, Any]) -> set[Code]:
    return {
        (inc["system"], c["code"])
        for inc in valueset["compose"]["include"]
        for c in inc.get("concept", [])
    }


def _all_valueset_codes() -> set[Code]:
    """Every protocol's ValueSets: the demo patients are written for all three trials."""
    every = map(_load, MAPPINGS_DIR.glob("*/ValueSet-*.json"))
    return set().union(*(_vs_codes(v) for v in every))


def _walk_concepts(concepts: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for concept in concepts:
        yield concept
        yield from _walk_concepts(concept.get("concept", []))


def _referenced_valuesets() -> set[str]:
    ids: set[str] = set()
    for spec in PROTOCOL_TOML["criteria"].values():
        for key, value in spec.items():
            if key.endswith("valueset"):
                ids.add(value)
            elif key.endswith("valuesets"):
                ids.update(value)
    return ids


def _criteria_codesystem() -> dict[str, Any]:
    return _load(STUDY_DIR / PROTOCOL_TOML["study"]["criteria_codesystem"])


def _codings(concept: dict[str, Any] | None) -> set[Code]:
    return {(c.get("system", ""), c.get("code", "")) for c in (concept or {}).get("coding", [])}


def _resources(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"]]


def _when(resource: dict[str, Any]) -> date:
    return datetime.fromisoformat(resource["effectiveDateTime"]).date()


def _age(birth: str, on: date) -> int:
    b = date.fromisoformat(birth)
    return on.year - b.year - ((on.month, on.day) < (b.month, b.day))


def _references(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                yield value
            else:
                yield from _references(value)
    elif isinstance(node, list):
        for item in node:
            yield from _references(item)


# --------------------------------------------------------------------------- protocol resources


def test_expected_files_exist() -> None:
    study = PROTOCOL_TOML["study"]
    for key in ("research_study", "criteria_codesystem", "result_codesystem", "questionnaire"):
        assert (STUDY_DIR / study[key]).is_file(), study[key]
    assert len(DEMO_FILES) == 10  # six for the seed trial, two each for ZUMA-3 and DAPA-CKD


@pytest.mark.parametrize("path", FHIR_FILES, ids=lambda p: p.name)
def test_resource_validates_as_r4(path: Path) -> None:
    resource = _load(path)
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)


@pytest.mark.parametrize("path", FHIR_FILES, ids=lambda p: p.name)
def test_resource_metadata(path: Path) -> None:
    resource = _load(path)
    rtype = resource["resourceType"]
    assert path.name == f"{rtype}-{resource['id']}.json"
    if rtype == "ResearchStudy":  # the study's own status: ZUMA-3 and DAPA-CKD are completed
        assert resource["status"] in ("active", "completed")
        assert resource["status"] == "active" or "cd19" not in resource["id"]
    else:
        assert resource["status"] == "active"
    assert resource.get("title")
    canonical = f"{BASE}/{rtype}/{resource['id']}"
    if rtype == "ResearchStudy":
        # R4 ResearchStudy has no url/version elements: R5 cross-version extensions carry them.
        ext = {e["url"]: e for e in resource["extension"]}
        assert ext[XVER + "url"]["valueUri"] == canonical
        assert ext[XVER + "version"]["valueString"] == "1.0.0"
        assert resource["identifier"][0] == {
            "use": "official",
            "system": "urn:ietf:rfc:3986",
            "value": canonical,
        }
    else:
        assert resource["url"] == canonical
        assert resource["version"] == "1.0.0"
        assert resource.get("name")


def test_protocol_loads() -> None:
    """Panel members (I6-*, I7-*) are nested concepts; they must count as defined criteria."""
    protocol = load_protocol()
    assert set(protocol.valuesets) >= _referenced_valuesets()
    assert protocol.criteria_system == f"{BASE}/CodeSystem/cd19-cart-rr-ball-criteria"
    assert protocol.questionnaire_url == QUESTIONNAIRE_URL


def test_protocol_canonical_and_version() -> None:
    """R4 ResearchStudy has no url/version: the loader must read the cross-version extensions."""
    protocol = load_protocol()
    assert protocol.canonical == STUDY_URL
    assert protocol.versioned_canonical == f"{STUDY_URL}|1.0.0"


def test_every_referenced_valueset_exists() -> None:
    valuesets = _valuesets()
    missing = _referenced_valuesets() - set(valuesets)
    assert not missing
    assert "ecog-grade-5" in _referenced_valuesets()  # the walk really reaches list params


def test_valuesets_are_enumerated_with_known_systems() -> None:
    for vs_id, vs in _valuesets().items():
        assert vs["url"] == f"{BASE}/ValueSet/{vs_id}"
        systems = [inc["system"] for inc in vs["compose"]["include"]]
        assert len(systems) == len(set(systems)), f"{vs_id}: group includes by system"
        for inc in vs["compose"]["include"]:
            assert inc["system"] in KNOWN_SYSTEMS, (vs_id, inc["system"])
            assert inc["concept"], vs_id
            assert "filter" not in inc and "valueSet" not in inc, vs_id
        assert "(S" in vs["description"] or "terminology.md" in vs["description"], vs_id


def test_every_code_has_a_display() -> None:
    without: list[str] = []
    for path in FHIR_FILES:
        r = _load(path)
        if r["resourceType"] == "ValueSet":
            for inc in r["compose"]["include"]:
                without += [
                    f"{r['id']}:{c['code']}" for c in inc["concept"] if not c.get("display")
                ]
        elif r["resourceType"] == "CodeSystem":
            concepts = _walk_concepts(r["concept"])
            without += [f"{r['id']}:{c['code']}" for c in concepts if not c.get("display")]
        elif r["resourceType"] == "Questionnaire":
            for item in r["item"]:
                without += [f"{r['id']}:{c['code']}" for c in item["code"] if not c.get("display")]
    assert not without


def test_all_any_is_the_union_plus_t_all() -> None:
    vs = _valuesets()
    expected = _vs_codes(vs["b-all-diagnosis"]) | _vs_codes(vs["all-unstated-lineage"])
    expected.add(("http://terminology.hl7.org/CodeSystem/icd-o-3", "9837/3"))
    assert _vs_codes(vs["all-any"]) == expected


def test_criteria_codesystem_matches_protocol() -> None:
    cs = _criteria_codesystem()
    criteria = PROTOCOL_TOML["criteria"]
    flat = {c["code"]: c for c in _walk_concepts(cs["concept"])}
    assert set(flat) == set(criteria)
    assert cs["count"] == len(flat)
    assert [c["code"] for c in cs["concept"]] == [f"I{n}" for n in range(1, 13)]
    for code, concept in flat.items():
        assert concept["display"] == criteria[code]["title"]
        assert concept["definition"]
        children = [c["code"] for c in concept.get("concept", [])]
        assert children == criteria[code].get("members", [])


def test_questionnaire_items_are_the_attestation_items() -> None:
    questionnaire = _load(STUDY_DIR / PROTOCOL_TOML["study"]["questionnaire"])
    criteria_url = _criteria_codesystem()["url"]
    attested = {
        spec["attestation_item"]
        for spec in PROTOCOL_TOML["criteria"].values()
        if "attestation_item" in spec
    }
    items = questionnaire["item"]
    assert {i["linkId"] for i in items} == attested == {"I5", "I9", "I11", "I12"}
    for item in items:
        assert item["type"] == "boolean"
        assert _codings({"coding": item["code"]}) == {(criteria_url, item["linkId"])}


# --------------------------------------------------------------------------- demo patients

EXPECTED_AGE = {
    "demo-eligible": 34,
    "demo-ineligible": 47,
    "demo-potential": 58,
    "demo-us-units": 41,
    "demo-stale-labs": 29,
    "demo-pediatric": 12,
}
LAB_VALUESETS = ("bilirubin-total", "alt", "ast", "creatinine", "anc", "platelets", "hemoglobin")


def _demo(name: str) -> dict[str, Any]:
    return _load(DEMO_DIR / f"{name}.json")


def _labs(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    valuesets = _valuesets()
    codes = set().union(*(_vs_codes(valuesets[v]) for v in LAB_VALUESETS))
    return [
        r
        for r in _resources(bundle)
        if r["resourceType"] == "Observation" and _codings(r["code"]) & codes
    ]


def _latest_by_code(labs: list[dict[str, Any]]) -> dict[str, date]:
    latest: dict[str, date] = {}
    for r in labs:
        code = r["code"]["coding"][0]["code"]
        latest[code] = max(latest.get(code, date.min), _when(r))
    return latest


@pytest.mark.parametrize("path", DEMO_FILES, ids=lambda p: p.stem)
def test_demo_bundle_validates(path: Path) -> None:
    bundle = _load(path)
    get_fhir_model_class("Bundle").model_validate(bundle)
    assert bundle["type"] == "collection"
    assert bundle["id"] == path.stem
    for resource in _resources(bundle):  # each entry on its own, by its own model
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)


@pytest.mark.parametrize("path", DEMO_FILES, ids=lambda p: p.stem)
def test_demo_references_resolve_inside_the_bundle(path: Path) -> None:
    bundle = _load(path)
    present = {f"{r['resourceType']}/{r['id']}" for r in _resources(bundle)}
    refs = set(_references(bundle))
    assert f"Patient/{path.stem}" in refs
    assert refs <= present, refs - present
    for r in _resources(bundle):
        if "subject" in r:
            assert r["subject"] == {"reference": f"Patient/{path.stem}"}


@pytest.mark.parametrize("path", DEMO_FILES, ids=lambda p: p.stem)
def test_demo_clinical_codes_come_from_protocol_valuesets(path: Path) -> None:
    known = _all_valueset_codes()
    for r in _resources(_load(path)):
        if r["resourceType"] in ("Observation", "Condition", "Procedure"):
            assert _codings(r["code"]) & known, (r["id"], _codings(r["code"]))
        if r["resourceType"] == "Observation":
            assert r["status"] == "final"
            if "valueCodeableConcept" in r:
                assert _codings(r["valueCodeableConcept"]) & known, r["id"]


def test_demo_ids_are_unique_across_bundles() -> None:
    seen: dict[str, bytes] = {}
    for path in DEMO_FILES:
        for r in _resources(_load(path)):
            key = f"{r['resourceType']}/{r['id']}"
            body = orjson.dumps(r, option=orjson.OPT_SORT_KEYS)
            assert seen.setdefault(key, body) == body, f"{key} differs between bundles"


@pytest.mark.parametrize(("name", "age"), EXPECTED_AGE.items())
def test_demo_patient_age_at_anchor(name: str, age: int) -> None:
    patient = next(r for r in _resources(_demo(name)) if r["resourceType"] == "Patient")
    assert _age(patient["birthDate"], ANCHOR) == age


@pytest.mark.parametrize("name", sorted(set(EXPECTED_AGE) - {"demo-stale-labs"}))
def test_demo_labs_are_recent(name: str) -> None:
    latest = _latest_by_code(_labs(_demo(name)))
    assert len(latest) >= 7
    assert all(0 <= (ANCHOR - d).days <= 14 for d in latest.values()), latest


def test_demo_stale_labs_are_outside_the_window() -> None:
    labs = _labs(_demo("demo-stale-labs"))
    assert len(labs) == 7
    assert all((ANCHOR - _when(r)).days == 40 for r in labs)


def test_demo_ineligible_fails_platelets_and_ecog() -> None:
    resources = _resources(_demo("demo-ineligible"))
    by_code = {
        r["code"]["coding"][0]["code"]: r for r in resources if r["resourceType"] == "Observation"
    }
    assert by_code["777-3"]["valueQuantity"]["value"] < 30
    assert by_code["89247-1"]["valueInteger"] > 2


def test_demo_us_units() -> None:
    labs = _labs(_demo("demo-us-units"))
    units = {(r["code"]["coding"][0]["code"], r["valueQuantity"].get("code")) for r in labs}
    assert ("1975-2", "mg/dL") in units and ("2160-0", "mg/dL") in units
    assert ("718-7", "g/dL") in units and ("751-8", "10*3/uL") in units
    assert not any(code in {"umol/L", "10*9/L", "g/L"} for _, code in units)
    text_only = [r["valueQuantity"] for r in labs if "code" not in r["valueQuantity"]]
    assert text_only == [{"value": 104, "unit": "K/uL"}]


@pytest.mark.parametrize("name", sorted(EXPECTED_AGE))
def test_demo_attestation_and_consent(name: str) -> None:
    resources = _resources(_demo(name))
    responses = [r for r in resources if r["resourceType"] == "QuestionnaireResponse"]
    consents = [r for r in resources if r["resourceType"] == "Consent"]
    if name == "demo-potential":
        assert not responses and not consents
        return
    (qr,) = responses
    assert qr["questionnaire"] == QUESTIONNAIRE_URL and qr["status"] == "completed"
    assert qr["author"]["reference"].startswith("Practitioner/")
    assert 0 < (ANCHOR - datetime.fromisoformat(qr["authored"]).date()).days <= 30
    assert {i["linkId"]: i["answer"][0]["valueBoolean"] for i in qr["item"]} == dict.fromkeys(
        ("I5", "I9", "I11", "I12"), True
    )
    (consent,) = consents
    assert consent["status"] == "active"
    assert _codings(consent["scope"]) == {
        ("http://terminology.hl7.org/CodeSystem/consentscope", "research")
    }
    period = consent["provision"]["period"]
    start, end = (datetime.fromisoformat(period[k]).date() for k in ("start", "end"))
    assert start <= ANCHOR <= end


def test_demo_eligible_has_two_relapses() -> None:
    relapse = _vs_codes(_valuesets()["disease-status-relapse"])
    remission = _vs_codes(_valuesets()["disease-status-remission"])
    statuses = sorted(
        (_when(r), "relapse" if _codings(r["valueCodeableConcept"]) & relapse else "remission")
        for r in _resources(_demo("demo-eligible"))
        if r["resourceType"] == "Observation"
        and r["code"]["coding"][0]["code"] == "97509-4"
        and _codings(r["valueCodeableConcept"]) & (relapse | remission)
    )
    assert [s for _, s in statuses] == ["remission", "relapse", "remission", "relapse"]
    assert (ANCHOR - statuses[0][0]).days <= 3 * 366
