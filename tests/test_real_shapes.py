"""Real export shapes that used to give an error or a needless *undetermined* (issue 19 §5).

A ``batch-response`` whose Patient read has no ``fullUrl`` (only ``response.location``)
while its nested searchsets' entries all carry fullUrls on one server: that Patient is the
server's, so its resources are its own. A searchset that lists the same Patient twice (a
``match`` and an ``include`` entry): identical copies are one resource. Each shape is checked
against the plain collection Bundle of the same data, on the lean and the generic path.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from typing import Any

import orjson
import pytest
from fhir.resources.R4B.bundle import Bundle
from typer.testing import CliRunner

from service import lean
from service.cli import app
from service.demo import load_demo_bundles
from service.pipeline import evaluate_body, evaluate_body_generic
from service.protocol import default_protocol
from service.record import InputError, record_from_bundle
from service.references import ReferenceIndex
from tests.builders import AS_OF, PATIENT_ID, bundle, lab, patient
from tests.test_lean_equivalence import assert_same

PROTOCOL = default_protocol()
SERVER = "https://fhir.example.org/r4"
OTHER = "https://other.example.org/fhir"
PID = "demo-eligible"
runner = CliRunner()


def _demo() -> dict[str, Any]:
    return copy.deepcopy(load_demo_bundles()[PID])


def _outcomes(
    body: bytes, evaluate=evaluate_body, patient_id: str | None = None, as_of=None
) -> dict[str, str]:
    """Every criterion's outcome, group members included, by code."""
    evaluation, _ = evaluate(body, PROTOCOL, patient_id=patient_id, as_of=as_of)
    found: dict[str, str] = {}
    stack = list(evaluation.results)
    while stack:
        r = stack.pop()
        found[r.code] = r.outcome.value
        stack.extend(r.members)
    return found


def _searchset(resources: list[dict], base: str, mode: str = "match") -> dict:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [
            {
                "fullUrl": f"{base}/{r['resourceType']}/{r['id']}",
                "resource": r,
                "search": {"mode": mode},
            }
            for r in resources
        ],
    }


def batch_response(
    source: dict, *, location: str | None, bases: dict[str, str] | None = None
) -> dict:
    """``source`` as a client's batch answer: the Patient read first (no fullUrl), then one
    searchset per resource type, each entry's fullUrl on ``bases[type]`` (default SERVER);
    the Practitioner is ``_include``d by two of the searches (identical copies)."""
    by_type: defaultdict[str, list[dict]] = defaultdict(list)
    for entry in source["entry"]:
        by_type[entry["resource"]["resourceType"]].append(entry["resource"])
    [pat] = by_type.pop("Patient")
    included = by_type.pop("Practitioner", [])
    response: dict[str, Any] = {"status": "200 OK"}
    if location is not None:
        response["location"] = location
    entries: list[dict] = [{"resource": pat, "response": response}]
    for rtype, resources in by_type.items():
        base = (bases or {}).get(rtype, SERVER)
        inner = _searchset(resources, base)
        if rtype in ("QuestionnaireResponse", "Consent"):
            inner["entry"] += _searchset(copy.deepcopy(included), base, "include")["entry"]
        entries.append({"resource": inner, "response": {"status": "200 OK"}})
    entries.append({"response": {"status": "404 Not Found"}})
    data = {"resourceType": "Bundle", "type": "batch-response", "entry": entries}
    Bundle.model_validate(data)
    return data


# -- a batch-response Patient without fullUrl is the one server's Patient ------------------


@pytest.mark.parametrize(
    "location",
    [f"Patient/{PID}/_history/1", None, f"Patient/{PID}"],
    ids=["relative-history", "none", "relative"],
)
@pytest.mark.parametrize("evaluate", [evaluate_body, evaluate_body_generic])
def test_batch_response_patient_without_full_url_reads_its_searches(location, evaluate):
    expected = _outcomes(orjson.dumps(_demo()))
    assert set(expected.values()) == {"met"}  # the collection Bundle: all 12 met
    body = orjson.dumps(batch_response(_demo(), location=location))
    assert _outcomes(body, evaluate) == expected
    assert assert_same(body)[0] == "ok"  # lean and generic: the same bytes


def test_batch_response_names_the_inferred_patient_and_no_other_patient():
    record = record_from_bundle(batch_response(_demo(), location=None), PROTOCOL)
    assert record.patient_reference == f"Patient/{PID}"
    assert not any("another patient" in i.message for i in record.issues)
    [note] = [i for i in record.issues if "names no server" in i.message]
    assert note.expression == f"{SERVER}/Patient/{PID}"
    assert note.severity.value == "information"


def test_absolute_location_is_the_patients_identity():
    """An absolute location (with _history) gives the Patient its server directly."""
    data = batch_response(_demo(), location=f"{SERVER}/Patient/{PID}/_history/3")
    record = record_from_bundle(data, PROTOCOL)
    assert not any("names no server" in i.message for i in record.issues)
    assert record.index.home == SERVER
    assert set(_outcomes(orjson.dumps(data)).values()) == {"met"}


def test_location_naming_another_resource_is_not_an_identity():
    data = batch_response(_demo(), location=f"{OTHER}/Patient/someone-else/_history/1")
    record = record_from_bundle(data, PROTOCOL)
    # not OTHER's someone-else: the location is ignored and the one server rule applies
    assert record.index.home == SERVER
    assert set(_outcomes(orjson.dumps(data)).values()) == {"met"}


def test_two_servers_keep_the_patient_unplaced():
    """The data names two servers: which one the Patient is on is unknown, so the
    resources of both stay another patient's (as before), never guessed."""
    data = batch_response(_demo(), location=None, bases={"Observation": OTHER})
    body = orjson.dumps(data)
    outcomes = _outcomes(body)
    assert outcomes["I7-platelets"] == "undetermined"  # the platelets are on OTHER
    assert outcomes["I1"] == "met"  # age: the Patient itself
    assert [c for c, v in outcomes.items() if v == "met"] == ["I1"]  # as before this change
    assert assert_same(body)[0] == "ok"


def test_a_skipped_entry_on_another_server_counts_on_the_lean_path():
    """The lean decoder leaves out Observations no criterion reads; the servers they name
    still count, so the lean and the generic path agree on whether the data names one."""
    pat = patient()
    labs = [lab("777-3", 150, "10*9/L", id="plt"), lab("751-8", 2.0, "10*9/L", id="anc")]
    irrelevant = lab("4548-4", 6.1, "%", id="hba1c")  # HbA1c: no criterion reads it
    for other_base, placed in ((OTHER, False), (SERVER, True)):
        data = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [
                {"resource": pat},
                *({"fullUrl": f"{SERVER}/Observation/{o['id']}", "resource": o} for o in labs),
                {"fullUrl": f"{other_base}/Observation/hba1c", "resource": irrelevant},
            ],
        }
        Bundle.model_validate(data)
        body = orjson.dumps(data)
        skimmed = lean.lean_bundle(body, lean.protocol_codes(PROTOCOL))
        assert skimmed is not None and len(skimmed["entry"]) == 3  # HbA1c left undecoded
        assert assert_same(body)[0] == "ok"
        record = record_from_bundle(orjson.loads(body), PROTOCOL)
        assert (record.index.home == SERVER) is placed
        assert sum(map(len, record.observations.values())) == (2 if placed else 0)


def test_urn_patient_is_not_moved_to_the_server():
    """A urn:uuid fullUrl is an identity of its own: the Patient is not that server's."""
    data = batch_response(_demo(), location=None)
    data["entry"][0]["fullUrl"] = "urn:uuid:6f1c1a52-3f0e-4a47-9a8e-2f6d7c1b0a11"
    record = record_from_bundle(data, PROTOCOL)
    assert record.index.home is None
    assert any("another patient" in i.message for i in record.issues)


# -- identical copies are one resource ------------------------------------------------------


def _searchset_with_patient_twice(second: dict | None = None) -> dict:
    pat = patient()
    data = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {
                "fullUrl": f"{SERVER}/Observation/plt",
                "resource": lab("777-3", 150, "10*9/L", id="plt"),
                "search": {"mode": "match"},
            },
            {
                "fullUrl": f"{SERVER}/Patient/{PATIENT_ID}",
                "resource": pat,
                "search": {"mode": "match"},
            },
            {
                "fullUrl": f"{SERVER}/Patient/{PATIENT_ID}",
                "resource": second if second is not None else copy.deepcopy(pat),
                "search": {"mode": "include"},
            },
        ],
    }
    Bundle.model_validate(data)
    return data


def test_same_patient_twice_in_a_searchset_is_one_patient():
    body = orjson.dumps(_searchset_with_patient_twice())
    outcomes = _outcomes(body, as_of=AS_OF)
    assert outcomes["I7-platelets"] == "met"
    assert outcomes == _outcomes(body, evaluate_body_generic, as_of=AS_OF)
    assert _outcomes(body, patient_id=PATIENT_ID, as_of=AS_OF) == outcomes
    assert assert_same(body)[0] == "ok"


def test_same_patient_twice_without_full_urls_is_one_patient():
    data = _searchset_with_patient_twice()
    for entry in data["entry"]:
        del entry["fullUrl"]
    record = record_from_bundle(data, PROTOCOL)
    assert record.patient_id == PATIENT_ID


def test_same_patient_twice_with_different_content_stays_an_error():
    changed = patient(birth_date="1991-01-01")
    with pytest.raises(InputError, match="2 Patient resources"):
        record_from_bundle(_searchset_with_patient_twice(changed), PROTOCOL)


def test_same_content_on_two_servers_is_two_patients():
    data = _searchset_with_patient_twice()
    data["entry"][2]["fullUrl"] = f"{OTHER}/Patient/{PATIENT_ID}"
    with pytest.raises(InputError, match="2 Patient resources"):
        record_from_bundle(data, PROTOCOL)


def test_a_number_written_differently_is_not_a_copy():
    """1 and 1.0 are equal in Python, not in FHIR JSON (a decimal's precision): a guard,
    passing before this change too, that fails if copies are compared with ``==``."""
    url = "http://example.org/fhir/StructureDefinition/score"
    first = patient(extension=[{"url": url, "valueDecimal": 1}])
    second = patient(extension=[{"url": url, "valueDecimal": 1.0}])
    data = _searchset_with_patient_twice(second)
    data["entry"][1]["resource"] = first
    Bundle.model_validate(data)
    with pytest.raises(InputError, match="2 Patient resources"):
        record_from_bundle(data, PROTOCOL)


def test_cli_exit_code_for_a_duplicated_patient(tmp_path):
    path = tmp_path / "searchset.json"
    path.write_bytes(orjson.dumps(_searchset_with_patient_twice()))
    result = runner.invoke(app, ["evaluate", "--bundle", str(path), "--format", "summary"])
    assert result.exit_code == 0, result.output
    assert f"Patient/{PATIENT_ID}" in result.stdout
    changed = _searchset_with_patient_twice(patient(birth_date="1991-01-01"))
    path.write_bytes(orjson.dumps(changed))
    result = runner.invoke(app, ["evaluate", "--bundle", str(path)])
    assert result.exit_code == 2
    assert "2 Patient resources" in result.stderr


def test_cli_batch_response_without_patient_full_url(tmp_path):
    path = tmp_path / "batch.json"
    path.write_bytes(orjson.dumps(batch_response(_demo(), location=f"Patient/{PID}/_history/1")))
    result = runner.invoke(app, ["evaluate", "--bundle", str(path), "--format", "summary"])
    assert result.exit_code == 0, result.output
    assert "eligible (12 of 12 criteria met)" in result.stdout


def test_an_observation_listed_twice_is_one_result():
    obs = lab("777-3", 150, "10*9/L", id="plt")
    data = bundle(patient(), obs, copy.deepcopy(obs))
    Bundle.model_validate(data)
    record = record_from_bundle(data, PROTOCOL)
    assert sum(map(len, record.observations.values())) == 1
    assert not any(i.code == "duplicate" for i in record.issues)


def test_an_observation_twice_with_a_value_written_differently_is_held_open():
    """Copies whose JSON differs are two versions; with nothing to order them, the criterion
    they feed is undetermined (Python's 150 == 150.0 no longer hides the difference)."""
    obs = lab("777-3", 150, "10*9/L", id="plt")
    other = copy.deepcopy(obs)
    other["valueQuantity"]["value"] = 150.0
    data = bundle(patient(), obs, other)
    Bundle.model_validate(data)
    record = record_from_bundle(data, PROTOCOL)
    assert any(i.code == "duplicate" for i in record.issues)
    assert _outcomes(orjson.dumps(data), as_of=AS_OF)["I7-platelets"] == "undetermined"


def test_identical_copies_do_not_make_an_identifier_ambiguous():
    """A Practitioner two searches both included is one: its identifier still resolves."""
    prac = {
        "resourceType": "Practitioner",
        "id": "d1",
        "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "9999999999"}],
    }
    index = ReferenceIndex(SERVER)
    index.add(prac, f"{SERVER}/Practitioner/d1")
    index.add(copy.deepcopy(prac), f"{SERVER}/Practitioner/d1")
    conditional = "Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|9999999999"
    assert index.resolve(conditional) is prac
    # a different copy under the same identifier stays ambiguous
    index.add({**prac, "id": "d2", "active": True}, f"{SERVER}/Practitioner/d2")
    assert index.resolve(conditional) is None


def test_patient_read_and_searched_is_one_patient():
    """The batch reads the Patient (no fullUrl) and also searches it (``Patient?_id=``, with
    a fullUrl): identical content on the one server is one Patient, the located copy kept."""
    data = batch_response(_demo(), location=None)
    pat = copy.deepcopy(data["entry"][0]["resource"])
    searched = {"resource": _searchset([pat], SERVER), "response": {"status": "200 OK"}}
    data["entry"].insert(1, searched)
    Bundle.model_validate(data)
    record = record_from_bundle(data, PROTOCOL)
    assert record.index.home == SERVER
    assert not any("names no server" in i.message for i in record.issues)  # it names one
    assert set(_outcomes(orjson.dumps(data)).values()) == {"met"}
    pat["birthDate"] = "1991-02-03"  # a different copy: two Patients, as before
    with pytest.raises(InputError, match="2 Patient resources"):
        record_from_bundle(data, PROTOCOL)
