"""Bundle mode end to end for the computed / range / history / event rule kinds: the CLI
evaluates a seed copy with C1, C2, R1, H1, T1, E3 and E4 and writes a valid result Bundle
whose criterion Observations carry each outcome, kind and note. Pull mode and the other
sources select these inputs through the one Relevance (checked here on its queries)."""

from __future__ import annotations

import orjson
import pytest
from fhir.resources.R4B.bundle import Bundle
from typer.testing import CliRunner

from service.cli import app
from service.protocol import load_protocol
from service.settings import get_settings
from tests.builders import AS_OF, bundle, patient, procedure
from tests.builders import questionnaire_response as qr
from tests.measure_cases import ago, creatinine, egfr, uacr, weight
from tests.protocol_copies import SNOMED, measures_protocol
from tests.test_rule_events import mi

runner = CliRunner()
CODES = ("C1", "C2", "R1", "H1", "T1", "E3", "E4")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return measures_protocol(tmp_path_factory.mktemp("p") / "measures")


@pytest.fixture
def evaluate(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("ELIGIBILITY_PROTOCOL_DIRS", orjson.dumps([str(folder)]).decode())
    get_settings.cache_clear()

    def go(*resources: dict) -> dict[str, tuple[str, str, str]]:
        f = tmp_path / "in.json"
        data = bundle(patient("1966-06-01", gender="female"), *resources)
        Bundle.model_validate(data)
        f.write_bytes(orjson.dumps(data))
        out = runner.invoke(app, ["evaluate", "--bundle", str(f), "--as-of", str(AS_OF)])
        assert out.exit_code == 0, out.output
        result = orjson.loads(out.stdout)
        Bundle.model_validate(result)  # the answer is valid R4
        found = {}
        for entry in result["entry"]:
            r = entry["resource"]
            if r["resourceType"] != "Observation":
                continue
            code = r["code"]["coding"][0]["code"]
            if code in CODES:
                value = r.get("valueCodeableConcept") or {"coding": [{"code": "undetermined"}]}
                assert ("valueCodeableConcept" in r) != ("dataAbsentReason" in r)
                outcome = value["coding"][0]["code"]
                kind = r["category"][0]["coding"][0]["code"]
                found[code] = (outcome, kind, r["note"][0]["text"])
        return found

    yield go
    get_settings.cache_clear()


def test_every_new_criterion_met_through_bundle_mode(evaluate):
    found = evaluate(
        creatinine(1.0),  # eGFR 64.5; CrCl 80 × 70 / 72 × 0.85 = 66.1
        weight(70),
        egfr(66),
        uacr(45, "mg/mmol"),  # 398 mg/g
        uacr(100, day=ago(120)),
        procedure(SNOMED, "425843001", performed=str(ago(200))),
        mi(str(ago(400))),
        qr({"E3": True}),
    )
    assert {c: o for c, (o, _, _) in found.items()} == dict.fromkeys(CODES, "met")
    assert found["E3"][1] == found["E4"][1] == "exclusion" and found["C1"][1] == "inclusion"
    assert "CKD-EPI 2021" in found["C1"][2] and "reported eGFR 66" in found["C1"][2]
    assert "66.1" in found["C2"][2] and "Cockcroft-Gault" in found["C2"][2]
    assert "398 mg/g" in found["R1"][2]


def test_unsafe_directions_through_bundle_mode(evaluate):
    found = evaluate(
        creatinine(1.0),
        egfr(80),  # reported outside, computed inside
        uacr(100, day="2026-08"),  # may be too recent to count
        procedure(SNOMED, "425843001", performed=str(ago(50))),
        mi(str(ago(30))),
        qr({"E3": True}),  # the record shows the event: the attestation does not clear it
    )
    outcomes = {c: o for c, (o, _, _) in found.items()}
    assert outcomes == {
        "C1": "undetermined",
        "C2": "undetermined",  # no weight
        "R1": "undetermined",  # no UACR in the window
        "H1": "undetermined",
        "T1": "not-met",
        "E3": "not-met",
        "E4": "not-met",
    }
    assert "different sides" in found["C1"][2]


def test_every_source_selects_the_new_inputs(folder):
    relevance = load_protocol(folder).relevance
    for obs in (weight(70), egfr(60), uacr(300), uacr(30, "mg/mmol")):
        assert relevance.matches(obs)
    assert relevance.reads("Procedure") and relevance.reads("Condition")
    queries = relevance.queries("p1", AS_OF)
    searched = " ".join(v for q in queries for k, v in q.params if k == "combo-code")
    for code in ("29463-7", "3141-9", "98979-8", "9318-7", "14958-3", "2160-0"):
        assert f"http://loinc.org|{code}" in searched
    labs = next(q for q in queries if "uacr" in q.feeds)
    assert ("date", "ge2024-11-19") in labs.params  # H1 looks back 730 days
