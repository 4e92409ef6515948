"""Screening from a FHIR server on loopback: search-driven, Group, id file, Bulk, write-back."""

from __future__ import annotations

import time

import orjson
import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from service.cli import app
from service.protocol import default_protocol
from service.screening.outdir import OutputFolder
from service.screening.server import screen_server
from service.screening.writeback import subject_identifier_system
from service.settings import Settings, get_settings
from tests.screening_population import AS_OF, population, worklist
from tests.screening_server import LoopbackFhir, serving

runner = CliRunner()


@pytest.fixture(scope="module")
def bundles():
    return population()


def _settings(fhir: LoopbackFhir, **extra) -> Settings:
    return get_settings().model_copy(update={"fhir_base_url": fhir.base, **extra})


def _screen(fhir, out, **kwargs):
    protocol = default_protocol()
    folder = OutputFolder(out, protocol, AS_OF, resume=False)
    settings = kwargs.pop("settings", None) or _settings(fhir)
    return screen_server(settings, folder, protocol, **kwargs)


def test_condition_search_screens_only_patients_with_leukemia(tmp_path, bundles):
    with serving(LoopbackFhir(bundles)) as fhir:
        result = _screen(fhir, tmp_path / "out", concurrency=3)
    assert result.failed == 0
    rows = worklist(tmp_path / "out" / "worklist.csv")
    assert set(rows) == set(bundles) - {"no-leukemia"}
    assert not fhir.asked_about("no-leukemia")
    assert fhir.asked_about("demo-eligible")
    assert rows["demo-eligible"]["status"] == "eligible"
    assert rows["demo-pediatric"]["blocking"] == "I1"
    assert result.summary["candidates"]["patients"] == len(bundles) - 1


def test_search_driven_and_ndjson_give_the_same_worklist(tmp_path, bundles):
    from service.screening.runner import screen_ndjson
    from tests.screening_population import write_ndjson

    leukemia = {k: v for k, v in bundles.items() if k != "no-leukemia"}
    with serving(LoopbackFhir(leukemia)) as fhir:
        _screen(fhir, tmp_path / "search")
    protocol = default_protocol()
    folder = OutputFolder(tmp_path / "local", protocol, AS_OF, resume=False)
    src = write_ndjson(leukemia, tmp_path / "export")
    screen_ndjson(src, folder, protocol, get_settings().protocol_path)
    assert worklist(tmp_path / "search" / "worklist.csv") == worklist(
        tmp_path / "local" / "worklist.csv"
    )


def test_group_members_are_the_candidates(tmp_path, bundles):
    group = {
        "resourceType": "Group",
        "id": "cohort",
        "type": "person",
        "actual": True,
        "member": [
            {"entity": {"reference": "Patient/demo-eligible"}},
            {"entity": {"reference": "Patient/no-leukemia"}},
            {"entity": {"reference": "Patient/demo-potential"}, "inactive": True},
            {"entity": {"reference": "Practitioner/dr-1"}},
        ],
    }
    with serving(LoopbackFhir(bundles, extra=[group])) as fhir:
        result = _screen(fhir, tmp_path / "out", group="cohort")
    rows = worklist(tmp_path / "out" / "worklist.csv")
    assert set(rows) == {"demo-eligible", "no-leukemia"}
    assert rows["no-leukemia"]["I3"] == "not-met"
    assert result.summary["candidates"]["notAPatient"] == 1


def test_a_file_of_patient_ids(tmp_path, bundles):
    ids = tmp_path / "ids.txt"
    ids.write_text("# cohort\ndemo-eligible\n\nPatient/demo-ineligible\ndemo-eligible\n")
    with serving(LoopbackFhir(bundles)) as fhir:
        _screen(fhir, tmp_path / "out", patients_file=ids)
    rows = worklist(tmp_path / "out" / "worklist.csv")
    assert {p: r["status"] for p, r in rows.items()} == {
        "demo-eligible": "eligible",
        "demo-ineligible": "ineligible",
    }


def test_a_server_failing_for_one_patient_gives_one_error_row_and_exit_3(tmp_path, bundles):
    with serving(LoopbackFhir(bundles, fail_patients={"demo-ineligible"})) as fhir:
        args = ["screen", "--fhir-base", fhir.base, "--out", str(tmp_path / "out")]
        result = runner.invoke(app, [*args, "--as-of", str(AS_OF), "--no-progress"])
    assert result.exit_code == 3, result.output
    rows = worklist(tmp_path / "out" / "worklist.csv")
    failed = {p: r["error"] for p, r in rows.items() if r["error"]}
    assert list(failed) == ["demo-ineligible"]
    assert "HTTP 500" in failed["demo-ineligible"]
    assert rows["demo-ineligible"]["status"] == "error"
    assert len(rows) == len(bundles) - 1  # everyone else evaluated


def test_bulk_export_gives_the_search_driven_worklist(tmp_path, bundles):
    token = "bulk-secret-token"
    with serving(LoopbackFhir(bundles, token=token)) as fhir:
        settings = _settings(fhir, fhir_auth="static", fhir_token=SecretStr(token))
        _screen(fhir, tmp_path / "search", settings=settings)
        bulk = _screen(fhir, tmp_path / "bulk", settings=settings, bulk=True)
    params = dict(fhir.export_params)
    assert params["_type"].split(",") == [
        "Patient",
        "Observation",
        "Condition",
        "Procedure",
        "Consent",
        "QuestionnaireResponse",
        "DiagnosticReport",  # echo reports an LVEF result may take its method from (I8)
    ]
    filters = [value for key, value in fhir.export_params if key == "_typeFilter"]
    assert filters[0].startswith("Observation?combo-code=http://loinc.org|")
    assert filters[1].startswith("DiagnosticReport?code=")
    assert bulk.summary["bulk"]["typeFilter"] is True
    written = orjson.loads((tmp_path / "bulk" / "summary.json").read_bytes())
    assert written["bulk"]["files"] == 7 and written["source"] == "bulk:Patient"
    by_bulk = worklist(tmp_path / "bulk" / "worklist.csv")
    by_search = worklist(tmp_path / "search" / "worklist.csv")
    assert by_bulk.pop("no-leukemia")["status"] == "ineligible"  # all patients were exported
    assert by_bulk == by_search


def test_write_results_twice_leaves_one_research_subject_per_patient(tmp_path, bundles):
    with serving(LoopbackFhir(bundles)) as fhir:
        first = _screen(fhir, tmp_path / "one", write_results=True, write_group=True)
        creates = fhir.creates
        second = _screen(fhir, tmp_path / "two", write_results=True, write_group=True)
    evaluated = len(bundles) - 1
    assert first.summary["written"]["researchSubjects"] == {"created": evaluated, "updated": 0}
    assert second.summary["written"]["researchSubjects"] == {"created": 0, "updated": evaluated}
    assert fhir.creates == creates  # the second run created nothing
    subjects = [r for (t, _), r in fhir.written.items() if t == "ResearchSubject"]
    system = subject_identifier_system(default_protocol())
    per_patient = sorted(s["identifier"][0]["value"] for s in subjects)
    assert per_patient == sorted(set(bundles) - {"no-leukemia"})
    assert all(s["identifier"][0]["system"] == system for s in subjects)
    groups = [r for (t, _), r in fhir.written.items() if t == "Group"]
    assert len(groups) == 1 and groups[0]["actual"] is True
    members = {m["entity"]["reference"] for m in groups[0]["member"]}
    rows = worklist(tmp_path / "two" / "worklist.csv")
    assert members == {
        f"Patient/{p}"
        for p, r in rows.items()
        if r["status"] in ("eligible", "potential-candidate")
    }


def test_429_with_retry_after_is_waited_out_not_an_error(tmp_path, bundles):
    fhir = LoopbackFhir(bundles, throttle_once={"demo-eligible", "demo-potential"})
    with serving(fhir):
        started = time.monotonic()
        result = _screen(fhir, tmp_path / "out")
        elapsed = time.monotonic() - started
    assert fhir.throttled == 2
    assert result.failed == 0
    rows = worklist(tmp_path / "out" / "worklist.csv")
    assert rows["demo-eligible"]["status"] == "eligible"
    assert elapsed >= 1.0  # the Retry-After was honoured
