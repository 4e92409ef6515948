"""Screening a Bulk NDJSON export: same results as Bundle mode, worklist, resume, errors."""

from __future__ import annotations

import csv

import orjson
import pytest
from typer.testing import CliRunner

from service.cli import app
from service.protocol import default_protocol
from service.screening.outdir import OutputFolder
from service.screening.runner import screen_ndjson
from service.settings import get_settings
from tests.screening_population import (
    AS_OF,
    bundle_mode,
    population,
    results_by_patient,
    worklist,
    write_ndjson,
)

runner = CliRunner()


@pytest.fixture(scope="module")
def bundles():
    return population()


def _screen(src, out, *extra):
    args = ["screen", "--ndjson", str(src), "--out", str(out), "--as-of", str(AS_OF)]
    return runner.invoke(app, [*args, "--no-progress", *extra])


def test_each_patient_gets_exactly_the_bundle_mode_result(tmp_path, bundles):
    src = write_ndjson(bundles, tmp_path / "export")
    result = _screen(src, tmp_path / "out", "--workers", "2")
    assert result.exit_code == 0, result.output
    found = results_by_patient(tmp_path / "out" / "results.ndjson")
    assert set(found) == set(bundles)
    for pid, bundle in bundles.items():
        assert found[pid] == bundle_mode(bundle), pid
    rows = worklist(tmp_path / "out" / "worklist.csv")
    assert rows["demo-eligible"]["status"] == "eligible"
    assert rows["demo-ineligible"]["blocking"] == "I7 I10 I7-platelets"
    assert rows["demo-pediatric"]["I1"] == "not-met"
    assert "attestation item I5" in rows["demo-potential"]["needed"]
    assert rows["demo-potential"]["I12"] == "undetermined"
    assert all(r["error"] == "" for r in rows.values())


def test_worklist_columns_are_the_protocol_codes_in_order(tmp_path, bundles):
    src = write_ndjson({"demo-eligible": bundles["demo-eligible"]}, tmp_path / "export")
    assert _screen(src, tmp_path / "out").exit_code == 0
    with (tmp_path / "out" / "worklist.csv").open(newline="") as f:
        head = next(csv.reader(f))
    top = [f"I{n}" for n in range(1, 13)]
    members = ["I6-bilirubin", "I6-alt", "I6-ast", "I6-creatinine"]
    members += ["I7-anc", "I7-platelets", "I7-hemoglobin"]
    assert head == ["patient", "status", *top, *members, "blocking", "needed", "error"]


def test_summary_and_report_count_statuses_and_draw_the_funnel(tmp_path, bundles):
    src = write_ndjson(bundles, tmp_path / "export")
    assert _screen(src, tmp_path / "out").exit_code == 0
    summary = orjson.loads((tmp_path / "out" / "summary.json").read_bytes())
    assert summary["byStatus"]["eligible"] == 2 + 3  # demo-eligible, demo-us-units, synthetic
    assert summary["byStatus"]["ineligible"] == 3  # ineligible, pediatric, no-leukemia
    assert summary["byStatus"]["potential-candidate"] == 2
    first = summary["funnel"][0]
    assert first == {
        "criterion": "I1",
        "title": "Age >= 18 years",
        "before": 10,
        "excluded": 1,
        "open": 0,
        "after": 9,
    }
    page = (tmp_path / "out" / "report.html").read_text()
    assert "<svg" in page and "<script" not in page and "src=" not in page
    assert "I1 Age &gt;= 18 years" in page


def test_unattributable_resources_are_reported_not_guessed(tmp_path, bundles):
    src = write_ndjson({"demo-eligible": bundles["demo-eligible"]}, tmp_path / "export")
    platelets = {"coding": [{"system": "http://loinc.org", "code": "777-3"}]}
    odd = [
        {"resourceType": "Observation", "id": "o1", "status": "final", "code": platelets},
        {
            "resourceType": "Observation",
            "id": "o2",
            "status": "final",
            "code": platelets,
            "subject": {"reference": "Group/g1"},
        },
        {
            "resourceType": "Observation",
            "id": "o3",
            "status": "final",
            "code": platelets,
            "subject": {"reference": "Patient/not-exported"},
        },
    ]
    lines = b"".join(orjson.dumps(r) + b"\n" for r in odd) + b"{not json\n"
    (src / "Extra.ndjson").write_bytes(lines)
    result = _screen(src, tmp_path / "out")
    assert result.exit_code == 0, result.output
    found = orjson.loads((tmp_path / "out" / "summary.json").read_bytes())["input"]
    assert found["noPatientReference"] == {"Observation": 1}
    assert found["severalPatients"] == {"Observation": 1}
    assert found["patientNotInExport"] == 1
    assert found["unreadableLines"] == {"Extra.ndjson": 1}
    assert set(worklist(tmp_path / "out" / "worklist.csv")) == {"demo-eligible"}


def test_a_patient_that_cannot_be_evaluated_is_an_error_row_and_exit_3(tmp_path, bundles):
    src = write_ndjson(bundles, tmp_path / "export")
    other = {"resourceType": "Patient", "id": "demo-eligible", "birthDate": "2015-01-01"}
    with (src / "Patient.ndjson").open("ab") as f:
        f.write(orjson.dumps(other) + b"\n")  # a second, different version, no lastUpdated
    result = _screen(src, tmp_path / "out")
    assert result.exit_code == 3, result.output
    rows = worklist(tmp_path / "out" / "worklist.csv")
    assert rows["demo-eligible"]["status"] == "error"
    assert "different versions of this Patient" in rows["demo-eligible"]["error"]
    assert [p for p, r in rows.items() if r["error"]] == ["demo-eligible"]
    assert "demo-eligible" not in results_by_patient(tmp_path / "out" / "results.ndjson")


def test_a_second_run_into_the_same_folder_needs_resume(tmp_path, bundles):
    src = write_ndjson({"demo-eligible": bundles["demo-eligible"]}, tmp_path / "export")
    assert _screen(src, tmp_path / "out").exit_code == 0
    again = _screen(src, tmp_path / "out")
    assert again.exit_code == 2
    assert "--resume" in again.stderr


def test_resume_after_an_interrupted_run_finishes_each_patient_once(tmp_path, bundles):
    src = write_ndjson(bundles, tmp_path / "export")
    protocol = default_protocol()
    seen: list[str] = []

    def interrupt_after_three(outcome):
        seen.append(outcome[0])
        if len(seen) == 3:
            raise KeyboardInterrupt

    folder = OutputFolder(tmp_path / "out", protocol, AS_OF, resume=False)
    first = screen_ndjson(
        src, folder, protocol, get_settings().protocol_path, on_outcome=interrupt_after_three
    )
    assert first.interrupted
    assert set(worklist(tmp_path / "out" / "worklist.csv")) == set(seen)
    summary = orjson.loads((tmp_path / "out" / "summary.json").read_bytes())
    assert summary["interrupted"] is True and summary["patients"] == 3
    # A crash mid-write leaves half a line: it must not count as done.
    with (tmp_path / "out" / "results.ndjson").open("ab") as f:
        f.write(b'{"resourceType": "Bundle", "entry": [')

    result = _screen(src, tmp_path / "out", "--resume", "--workers", "2")
    assert result.exit_code == 0, result.output
    found = results_by_patient(tmp_path / "out" / "results.ndjson")
    assert set(found) == set(bundles)
    assert set(worklist(tmp_path / "out" / "worklist.csv")) == set(bundles)
    for pid, bundle in bundles.items():
        assert found[pid] == bundle_mode(bundle), pid


def test_resume_refuses_another_as_of(tmp_path, bundles):
    src = write_ndjson({"demo-eligible": bundles["demo-eligible"]}, tmp_path / "export")
    assert _screen(src, tmp_path / "out").exit_code == 0
    args = ["screen", "--ndjson", str(src), "--out", str(tmp_path / "out"), "--resume"]
    result = runner.invoke(app, [*args, "--as-of", "2026-11-21", "--no-progress"])
    assert result.exit_code == 2
    assert "differs from the run being resumed" in result.stderr


def test_a_folder_without_ndjson_is_bad_input(tmp_path):
    (tmp_path / "empty").mkdir()
    result = _screen(tmp_path / "empty", tmp_path / "out")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and "no .ndjson" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--ndjson", "x", "--fhir-base", "http://127.0.0.1:1/fhir"],
        ["--ndjson", "x", "--group", "g"],
        ["--ndjson", "x", "--write-results"],
        ["--fhir-base", "http://127.0.0.1:1/fhir", "--group", "g", "--patients", "f"],
    ],
)
def test_contradictory_sources_are_bad_input(tmp_path, args):
    result = runner.invoke(app, ["screen", "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ")
    assert not (tmp_path / "out").exists()


def test_only_observations_certainly_outside_the_protocol_skip_decoding():
    from service.screening.ndjson import _ObservationSkipper

    skip = _ObservationSkipper(default_protocol().observation_codes())

    def obs(code: str, **extra) -> bytes:
        coding = {"coding": [{"system": "http://loinc.org", "code": code}]}
        return orjson.dumps({"resourceType": "Observation", "code": coding, **extra})

    assert skip(obs("8867-4"))  # heart rate: no criterion reads it
    assert not skip(obs("777-3"))  # platelets
    escaped = b'{"resourceType": "Observation", "code": {"coding": [{"code": "\\u0037'
    assert not skip(escaped + b'\\u0037\\u0037-3"}]}}')  # "777-3" written with escapes
    assert not skip(obs("8867-4", contained=[{"resourceType": "Observation"}]))
    spaced = b'{ "resourceType" : "Observation", "code": {"coding": [{"code" :  "777-3"}]}}'
    assert not skip(spaced)
    assert skip(spaced.replace(b"777-3", b"8867-4"))
    condition = orjson.dumps({"resourceType": "Condition", "code": {"text": "x"}})
    assert not skip(condition)


def test_a_patient_id_that_is_no_fhir_id_is_an_error_row_never_a_formula(tmp_path):
    src = tmp_path / "export"
    src.mkdir()
    bad = {"resourceType": "Patient", "id": "=HYPERLINK(1)", "birthDate": "1980-01-01"}
    (src / "Patient.ndjson").write_bytes(orjson.dumps(bad) + b"\n")
    result = _screen(src, tmp_path / "out")
    assert result.exit_code == 3
    with (tmp_path / "out" / "worklist.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["patient"] for r in rows] == ["'=HYPERLINK(1)"]
    assert rows[0]["status"] == "error" and "not a valid FHIR id" in rows[0]["error"]


def test_an_unreachable_dask_scheduler_is_one_error_line(tmp_path, bundles, monkeypatch):
    from service.screening import executors

    monkeypatch.setattr(executors, "DASK_CONNECT_TIMEOUT", "1s")
    src = write_ndjson({"demo-eligible": bundles["demo-eligible"]}, tmp_path / "export")
    result = _screen(src, tmp_path / "out", "--cluster", "tcp://127.0.0.1:9")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: cannot reach the Dask scheduler")


def test_a_run_that_stopped_before_any_patient_can_start_again(tmp_path, bundles):
    src = write_ndjson({"demo-eligible": bundles["demo-eligible"]}, tmp_path / "export")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "worklist.csv").write_text("patient,status\n")  # a header, no patient
    result = _screen(src, tmp_path / "out")
    assert result.exit_code == 0, result.output
    with (tmp_path / "out" / "worklist.csv").open(newline="") as f:
        lines = list(csv.reader(f))
    assert lines[0][:3] == ["patient", "status", "I1"] and len(lines) == 2
