"""Input handling: Bundle shapes, patient identity, other patients, malformed resources."""

from __future__ import annotations

import orjson
import pytest

from service.pipeline import evaluate_body
from service.protocol import default_protocol
from service.record import InputError, record_from_bundle
from tests.builders import PATIENT_ID, bundle, lab, patient


def test_not_json_is_a_clear_error():
    with pytest.raises(InputError, match="not valid JSON"):
        evaluate_body(b"{not json", default_protocol())


def test_not_a_bundle_is_a_clear_error():
    with pytest.raises(InputError, match="expected a FHIR Bundle"):
        evaluate_body(orjson.dumps(patient()), default_protocol())


def test_no_patient_is_a_clear_error():
    with pytest.raises(InputError, match="no Patient"):
        record_from_bundle(bundle(lab("777-3", 100, "10*9/L")), default_protocol())


def test_several_patients_need_a_choice():
    data = bundle(patient(pid="a"), patient(pid="b"))
    with pytest.raises(InputError, match="2 Patient resources"):
        record_from_bundle(data, default_protocol())
    assert record_from_bundle(data, default_protocol(), "b").patient_id == "b"


def test_unknown_patient_choice_is_an_error():
    with pytest.raises(InputError, match="no Patient with id"):
        record_from_bundle(bundle(patient()), default_protocol(), "zzz")


@pytest.mark.parametrize(
    ("reference", "ours"),
    [
        (f"Patient/{PATIENT_ID}", True),
        (f"Patient/{PATIENT_ID}/_history/3", True),
        # The Patient's fullUrl is a urn: it names no server, so an absolute reference to
        # the same id may be another server's patient (issue 12 §2): not used.
        (f"https://ehr.example.org/fhir/Patient/{PATIENT_ID}", False),
    ],
)
def test_patient_reference_forms(reference, ours):
    record = record_from_bundle(
        bundle(patient(), lab("777-3", 100, "10*9/L", subject=reference)), default_protocol()
    )
    assert sum(len(v) for v in record.observations.values()) == (1 if ours else 0)


def test_absolute_reference_counts_on_the_patients_own_server():
    data = bundle(
        patient(),
        lab("777-3", 100, "10*9/L", subject=f"https://ehr.example.org/fhir/Patient/{PATIENT_ID}"),
    )
    data["entry"][0]["fullUrl"] = f"https://ehr.example.org/fhir/Patient/{PATIENT_ID}"
    record = record_from_bundle(data, default_protocol())
    assert sum(len(v) for v in record.observations.values()) == 1


def test_synthea_style_urn_uuid_without_ids():
    obs = lab("777-3", 100, "10*9/L", subject="urn:uuid:abc")
    del obs["id"]
    pat = patient()
    del pat["id"]
    data = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:abc", "resource": pat},
            {"fullUrl": "urn:uuid:obs-1", "resource": obs},
        ],
    }
    record = record_from_bundle(data, default_protocol())
    assert record.patient_reference == "urn:uuid:abc"
    [found] = [o for v in record.observations.values() for o in v]
    assert record.ref(found).reference == "urn:uuid:obs-1"


def test_other_patients_resources_are_ignored_with_warning():
    data = bundle(patient(), lab("777-3", 5, "10*9/L", subject="Patient/someone-else"))
    record = record_from_bundle(data, default_protocol())
    assert record.observations == {}
    assert any("another patient" in i.message for i in record.issues)


def test_resource_without_subject_is_ignored_with_warning():
    obs = lab("777-3", 5, "10*9/L")
    del obs["subject"]
    record = record_from_bundle(bundle(patient(), obs), default_protocol())
    assert record.observations == {}
    assert any("without a patient reference" in i.message for i in record.issues)


def test_malformed_resource_is_skipped_not_fatal():
    broken = lab("777-3", 5, "10*9/L")
    broken["code"]["coding"] = 7  # not a list
    good = lab("751-8", 1.0, "10*9/L")
    _, result = evaluate_body(orjson.dumps(bundle(patient(), broken, good)), default_protocol())
    issues = [
        i["diagnostics"]
        for e in result["entry"]
        if e["resource"]["resourceType"] == "OperationOutcome"
        for i in e["resource"]["issue"]
    ]
    assert any("malformed Observation" in d for d in issues)


def test_entry_without_resource_warns():
    data = bundle(patient())
    data["entry"].append({"fullUrl": "urn:uuid:x"})
    record = record_from_bundle(data, default_protocol())
    assert any("has no resource" in i.message for i in record.issues)


def test_batch_response_with_nested_searchsets():
    inner = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": lab("777-3", 100, "10*9/L")}],
    }
    data = {
        "resourceType": "Bundle",
        "type": "batch-response",
        "entry": [
            {"resource": patient(), "response": {"status": "200"}},
            {"resource": inner, "response": {"status": "200"}},
            {"response": {"status": "404"}},
        ],
    }
    record = record_from_bundle(data, default_protocol())
    assert sum(len(v) for v in record.observations.values()) == 1
    assert record.issues == []


def test_tolerates_what_real_servers_send():
    obs = lab("777-3", 100, "10*9/L")
    obs["extension"] = [{"valueString": "no url here"}]
    obs["someUnknownElement"] = {"x": 1}
    text_only = {
        "resourceType": "Condition",
        "id": "c1",
        "code": {"text": "pre-B ALL"},
        "subject": {"reference": f"Patient/{PATIENT_ID}"},
    }
    record = record_from_bundle(bundle(patient(), obs, text_only), default_protocol())
    assert len(record.conditions) == 1
    assert sum(len(v) for v in record.observations.values()) == 1


def test_irrelevant_observations_are_dropped_before_any_other_work():
    unrelated = lab("4548-4", 6.1, "%")  # HbA1c: not a protocol input
    record = record_from_bundle(bundle(patient(), unrelated), default_protocol())
    assert record.observations == {}


def test_a_rule_that_cannot_read_its_input_gives_undetermined_not_a_crash(monkeypatch):
    from service.clinical import rules
    from tests.builders import result, run

    def broken(criterion, ctx):
        raise TypeError("boom")

    monkeypatch.setitem(rules.RULES, "minimum_age", rules.Rule(broken, frozenset()))
    r = result(run(), "I1")
    assert r.outcome.value == "undetermined"
    assert any(i.severity.value == "error" for i in r.issues)
