"""NDJSON screening reads a medication that names its drug by ``medicationReference``: the
Medication has no patient of its own (an export puts it in ``Medication.ndjson``), so the
patients whose medication resources name it get it, as pull mode's ``_include`` does and as a
Bundle carries it. The DAPA-CKD renin-angiotensin criterion then answers as in bundle mode."""

from __future__ import annotations

import copy

import orjson

from service.pipeline import evaluate_body
from service.screening.ndjson import PatientStore
from service.screening.work import evaluate_one
from tests.builders import AS_OF
from tests.screening_population import write_ndjson
from tests.trial_paths import DAPA_DIR, SEED_DIR, demo, load

PID = "demo-ckd-eligible"


def by_reference(bundle: dict, reference: str) -> dict:
    """The patient's MedicationStatement naming its drug through a Medication resource."""
    data = copy.deepcopy(bundle)
    for entry in list(data["entry"]):
        statement = entry["resource"]
        if statement["resourceType"] != "MedicationStatement":
            continue
        medication = {
            "resourceType": "Medication",
            "id": "lisinopril-10",
            "code": statement.pop("medicationCodeableConcept"),
        }
        statement["medicationReference"] = {"reference": reference}
        data["entry"].append({"resource": medication})
    return data


def outcomes(result: dict) -> dict[str, str]:
    found = {}
    for entry in result["entry"]:
        res = entry["resource"]
        if res["resourceType"] == "Observation" and "valueCodeableConcept" in res:
            found[res["code"]["coding"][0]["code"]] = res["valueCodeableConcept"]["coding"][0][
                "code"
            ]
    return found


def screened(bundle: dict, folder, protocol) -> dict:
    src = write_ndjson({PID: bundle}, folder / "export")
    with PatientStore(folder / "store.sqlite") as store:
        store.ingest(sorted(src.iterdir()), protocol)
        (item,) = list(store.patients())
        _, _, encoded = evaluate_one(item, protocol, AS_OF)
    assert encoded is not None
    return orjson.loads(encoded)


def test_a_referenced_medication_is_read_in_screening_as_in_the_bundle(tmp_path):
    protocol = load(DAPA_DIR)
    plain = outcomes(evaluate_body(orjson.dumps(demo(PID)), protocol, as_of=AS_OF)[1])
    for reference in (
        "Medication/lisinopril-10",
        "https://ehr.example/fhir/Medication/lisinopril-10",
    ):
        data = by_reference(demo(PID), reference)
        folder = tmp_path / reference.replace("/", "_").replace(":", "")
        in_bundle = outcomes(evaluate_body(orjson.dumps(data), protocol, as_of=AS_OF)[1])
        in_export = outcomes(screened(data, folder, protocol))
        assert in_export == in_bundle
        if reference.startswith("Medication/"):
            assert in_export == plain  # the drug is read through its Medication


def test_without_the_medication_the_criterion_is_not_decided_on_a_guess(tmp_path):
    """The feature is not vacuous: the same export without Medication.ndjson answers
    otherwise (the drug cannot be read, so its criterion is not met on it)."""
    protocol = load(DAPA_DIR)
    data = by_reference(demo(PID), "Medication/lisinopril-10")
    with_medication = outcomes(screened(data, tmp_path / "a", protocol))
    without = {
        **data,
        "entry": [e for e in data["entry"] if e["resource"]["resourceType"] != "Medication"],
    }
    assert outcomes(screened(without, tmp_path / "b", protocol)) != with_medication


def test_a_bulk_export_asks_for_medications_when_a_rule_reads_them():
    assert "Medication" in load(DAPA_DIR).relevance.export_types()
    assert "Medication" not in load(SEED_DIR).relevance.export_types()
