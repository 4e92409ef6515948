"""POST /getClinicalTrial (issue 21, 5): the CodeX/mCODE matching wire format, with request
bodies shaped as the reference service's own tests send them, answered from every loaded
study with a score in [0, 1] and each criterion's result, agreeing with ``$eligibility``."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.bundle import Bundle

from service.api import create_app
from service.clinical.dates import today
from service.demo import load_demo_bundles
from service.matching.answer import CRITERION_RESULT, STATUS
from service.pipeline import evaluate_resource
from service.protocol import default_protocol, load_protocol
from service.settings import Settings, get_settings
from tests.protocol_copies import SECOND_ID, SEED_DIR, edit_json, edit_toml, second_protocol

SEED_ID = "cd19-cart-rr-ball"
SAMPLES = Path("/work/shared/fhir-samples/mcode-clinical-trial-matching")


@pytest.fixture(scope="module")
def second_dir(tmp_path_factory) -> Path:
    """The seed's criteria as a phase 2 study closed to accrual, platelets >= 400."""
    folder = second_protocol(tmp_path_factory.mktemp("matching") / "second")
    edit_toml(
        folder,
        'threshold = { value = 30, unit = "10*9/L" }',
        'threshold = { value = 400, unit = "10*9/L" }',
    )

    def phase_2(study: dict) -> None:
        study["status"] = "closed-to-accrual"
        study["phase"] = {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/research-study-phase",
                    "code": "phase-2",
                }
            ]
        }

    edit_json(folder / "ResearchStudy-cd19-cart-rr-ball.json", phase_2)
    return folder


@pytest.fixture(scope="module")
def client(second_dir):
    with pytest.MonkeyPatch.context() as mp:
        dirs = orjson.dumps([str(SEED_DIR), str(second_dir)]).decode()
        mp.setenv("ELIGIBILITY_PROTOCOL_DIRS", dirs)
        get_settings.cache_clear()
        app = create_app(Settings(fhir_base_url=None))
        with TestClient(app) as c:
            yield c
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def protocols(second_dir):
    return {SEED_ID: default_protocol(), SECOND_ID: load_protocol(second_dir / "protocol.toml")}


@pytest.fixture(scope="module")
def demo():
    return load_demo_bundles(today())


def _with_parameters(bundle: dict, **params: str) -> dict:
    """The reference tests' shape: a Parameters resource as one more entry of the Bundle."""
    parameters = {
        "resourceType": "Parameters",
        "parameter": [{"name": k, "valueString": v} for k, v in params.items()],
    }
    return {**bundle, "entry": [*bundle["entry"], {"resource": parameters}]}


def _post(client, body) -> dict:
    resp = client.post("/getClinicalTrial", content=orjson.dumps(body))
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    Bundle.model_validate(answer)  # valid R4, extensions and all
    assert answer["type"] == "searchset"
    return answer


def _studies(answer: dict) -> dict[str, dict]:
    return {
        e["resource"]["id"]: e
        for e in answer["entry"]
        if e["search"]["mode"] in ("match", "include")
    }


def _criteria(study: dict) -> dict[str, tuple[str, str]]:
    """code -> (outcome, reason) from the criterion-result extensions."""
    found = {}
    for ext in study["extension"]:
        if ext["url"] == CRITERION_RESULT:
            parts = {p["url"]: p for p in ext["extension"]}
            found[parts["code"]["valueCoding"]["code"]] = (
                parts["outcome"]["valueCode"],
                parts.get("reason", {}).get("valueString", ""),
            )
    return found


def _walk(results):
    for r in results:
        yield r
        yield from _walk(r.members)


def test_a_bare_bundle_gets_scored_studies_with_every_criterion_result(client, demo, protocols):
    answer = _post(client, demo["demo-eligible"])
    studies = _studies(answer)
    assert set(studies) == {SEED_ID}  # platelets fail the second study's 400: left out
    seed = studies[SEED_ID]
    assert seed["search"] == {"mode": "match", "score": 1.0}
    assert seed["fullUrl"] == protocols[SEED_ID].canonical
    evaluation, _ = evaluate_resource(demo["demo-eligible"], protocols[SEED_ID])
    expected = {r.code: (str(r.outcome), r.reason) for r in _walk(evaluation.results)}
    assert _criteria(seed["resource"]) == expected
    assert answer["total"] == 1


def test_the_documented_patient_data_form_gives_the_same_answer(client, demo):
    bare = _post(client, demo["demo-potential"])
    wrapped = _post(client, {"patientData": demo["demo-potential"]})
    as_string = _post(client, {"patientData": json.dumps(demo["demo-potential"])})
    assert bare == wrapped == as_string
    assert bare["entry"]


@pytest.mark.parametrize(
    "body",
    [{}, {"patientData": {}}, [], {"resourceType": "Patient", "id": "x"}, "a string"],
    ids=["empty", "empty-patientData", "array", "patient", "string"],
)
def test_a_body_that_is_not_a_bundle_is_400_with_the_reference_error_shape(client, body):
    resp = client.post("/getClinicalTrial", content=orjson.dumps(body))
    assert resp.status_code == 400
    assert set(resp.json()) == {"error"} and "patientBundle" in resp.json()["error"]


def test_a_body_that_is_not_json_is_400_error(client):
    resp = client.post("/getClinicalTrial", content=b"{not json")
    assert resp.status_code == 400 and set(resp.json()) == {"error"}


def test_scores_are_in_0_1_and_follow_the_documented_formula(client, demo, protocols):
    seen = set()
    for pid, bundle in demo.items():
        answer = _post(client, _with_parameters(bundle, includeIneligible="true"))
        studies = _studies(answer)
        assert set(studies) == {SEED_ID, SECOND_ID}, pid  # all asked for: ineligible too
        for study_id, entry in studies.items():
            value, mode = entry["search"]["score"], entry["search"]["mode"]
            assert 0.0 <= value <= 1.0
            status = next(e for e in entry["resource"]["extension"] if e["url"] == STATUS)
            status = status["valueCode"]
            seen.add(status)
            criteria = _criteria(entry["resource"])
            top = [c.code for c in protocols[study_id].top_level]
            met = sum(criteria[c][0] == "met" for c in top)
            if status == "eligible":
                assert value == 1.0 and mode == "match"
            elif status == "potential-candidate":
                assert value == max(0.01, round(0.5 * met / len(top), 3)) and mode == "match"
                assert 0 < value < 0.5
            else:
                assert value == 0.0 and mode == "include"
    assert seen == {"eligible", "potential-candidate", "ineligible"}


def test_results_agree_with_eligibility_for_each_study(client, demo, protocols):
    for pid, bundle in demo.items():
        answer = _post(client, _with_parameters(bundle, includeIneligible="true"))
        studies = _studies(answer)
        # the seed through the HTTP $eligibility, the second through its single-study call
        resp = client.post(
            "/$eligibility",
            content=orjson.dumps(bundle),
            headers={"Content-Type": "application/fhir+json"},
        )
        assert resp.status_code == 200
        subject = resp.json()["entry"][0]["resource"]
        seed_status = next(
            e["valueCode"] for e in studies[SEED_ID]["resource"]["extension"] if e["url"] == STATUS
        )
        assert seed_status == subject["status"], pid
        evaluation, _ = evaluate_resource(bundle, protocols[SECOND_ID])
        second = studies[SECOND_ID]["resource"]
        expected = {r.code: (str(r.outcome), r.reason) for r in _walk(evaluation.results)}
        assert _criteria(second) == expected, pid


def test_recruitment_status_and_phase_filter_from_the_research_study(client, demo):
    bundle = demo["demo-eligible"]
    active = _post(
        client, _with_parameters(bundle, recruitmentStatus="active", includeIneligible="true")
    )
    assert set(_studies(active)) == {SEED_ID}
    closed = _post(
        client,
        _with_parameters(bundle, recruitmentStatus="closed-to-accrual", includeIneligible="true"),
    )
    assert set(_studies(closed)) == {SECOND_ID}
    phase = _post(client, _with_parameters(bundle, phase="phase-2", includeIneligible="true"))
    assert set(_studies(phase)) == {SECOND_ID}  # the seed names no phase: not phase 2
    both = _post(
        client, _with_parameters(bundle, phase="phase-1,phase-2", includeIneligible="true")
    )
    assert set(_studies(both)) == {SECOND_ID}


def test_zip_code_and_travel_radius_are_reported_as_not_applied(client, demo):
    answer = _post(
        client, _with_parameters(demo["demo-eligible"], zipCode="01730", travelRadius="25")
    )
    outcomes = [e for e in answer["entry"] if e["search"]["mode"] == "outcome"]
    assert len(outcomes) == 1
    issue = outcomes[0]["resource"]["issue"][0]
    assert "zipCode" in issue["diagnostics"] and "travelRadius" in issue["diagnostics"]
    assert set(_studies(answer)) == {SEED_ID}  # matching itself is unchanged
    plain = _post(client, demo["demo-eligible"])
    assert not [e for e in plain["entry"] if e["search"]["mode"] == "outcome"]


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="shared matching samples not present")
@pytest.mark.parametrize("name", ["TrialMatching_Patient01.json", "patient_data.json"])
def test_the_reference_services_sample_patients_are_answered(client, name):
    bundle = orjson.loads((SAMPLES / name).read_bytes())
    answer = _post(client, _with_parameters(bundle, zipCode="01730", includeIneligible="true"))
    studies = _studies(answer)
    assert set(studies) == {SEED_ID, SECOND_ID}
    for entry in studies.values():  # solid-tumour patients: no B-ALL, never a CAR-T match
        assert entry["search"] == {"mode": "include", "score": 0.0}
        assert _criteria(entry["resource"])["I3"][0] == "not-met"  # no B-ALL diagnosis
    assert answer["total"] == 0
