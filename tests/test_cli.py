"""The ``eligibility`` command: output formats, exit codes, messages."""

from __future__ import annotations

import orjson
from fhir.resources.R4B.bundle import Bundle
from typer.testing import CliRunner

from service.cli import app
from service.demo import load_demo_bundles
from tests.builders import bundle, lab, patient

runner = CliRunner()


def _write(tmp_path, data: bytes, name: str = "in.json"):
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_evaluate_prints_a_valid_r4b_bundle(tmp_path):
    f = _write(tmp_path, orjson.dumps(load_demo_bundles()["demo-eligible"]))
    result = runner.invoke(app, ["evaluate", "--bundle", f])
    assert result.exit_code == 0, result.output
    out = orjson.loads(result.stdout)
    Bundle.model_validate(out)
    assert out["entry"][0]["resource"]["status"] == "eligible"


def test_summary_format_is_a_readable_table(tmp_path):
    f = _write(tmp_path, orjson.dumps(bundle(patient(), lab("777-3", 12, "10*9/L"))))
    result = runner.invoke(
        app, ["evaluate", "--bundle", f, "--as-of", "2026-11-20", "--format", "summary"]
    )
    assert result.exit_code == 0
    assert "ineligible" in result.stdout
    assert "I7-platelets" in result.stdout and "not-met" in result.stdout


def test_patient_option_picks_one_of_several(tmp_path):
    data = bundle(patient(pid="a"), patient(pid="b", birthDate="2015-01-01"))
    f = _write(tmp_path, orjson.dumps(data))
    result = runner.invoke(
        app, ["evaluate", "--bundle", f, "--patient", "b", "--format", "summary"]
    )
    assert result.exit_code == 0
    assert "Patient/b" in result.stdout


def test_bad_json_exits_2_with_one_line_message(tmp_path):
    f = _write(tmp_path, b"not json at all")
    result = runner.invoke(app, ["evaluate", "--bundle", f])
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "JSON" in lines[0]


def test_several_patients_without_choice_exits_2(tmp_path):
    f = _write(tmp_path, orjson.dumps(bundle(patient(pid="a"), patient(pid="b"))))
    result = runner.invoke(app, ["evaluate", "--bundle", f])
    assert result.exit_code == 2
    assert "2 Patient resources" in result.stderr


def test_missing_file_exits_2(tmp_path):
    result = runner.invoke(app, ["evaluate", "--bundle", str(tmp_path / "nope.json")])
    assert result.exit_code == 2
    assert "cannot read" in result.stderr


def test_bad_as_of_exits_2(tmp_path):
    f = _write(tmp_path, orjson.dumps(bundle(patient())))
    result = runner.invoke(app, ["evaluate", "--bundle", f, "--as-of", "27/11/2026"])
    assert result.exit_code == 2
    assert "asOf" in result.stderr


def test_demo_prints_every_demo_patient():
    result = runner.invoke(app, ["demo"])
    assert result.exit_code == 0
    for pid in load_demo_bundles():
        assert f"Patient/{pid}" in result.stdout
    assert "eligible (12 of 12 criteria met)" in result.stdout


def test_option_error_is_one_error_line_and_exit_2():
    result = runner.invoke(app, ["evaluate", "--format", "xml"])
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--format" in lines[0]
    assert "╭" not in result.stderr


def test_unknown_option_and_command_are_one_error_line():
    for args in (["evaluate", "--bogus"], ["no-such-command"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2
        assert result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1


def test_summary_table_fits_the_terminal_width():
    result = runner.invoke(app, ["demo"], env={"COLUMNS": "100"})
    assert result.exit_code == 0
    widths = [len(line) for line in result.stdout.splitlines()]
    assert max(widths) <= 100
    assert "Reason" in result.stdout  # the reason column survives a narrow terminal


def test_demo_export_writes_bundles_dated_as_of_today(tmp_path):
    from service.clinical.dates import today

    result = runner.invoke(app, ["demo", "--export", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert f"dated as of {today().isoformat()}" in result.stdout
    written = sorted(p.stem for p in (tmp_path / "out").iterdir())
    assert written == sorted(load_demo_bundles())
    exported = orjson.loads((tmp_path / "out" / "demo-stale-labs.json").read_bytes())
    assert exported == load_demo_bundles(today())["demo-stale-labs"]
    # posting an exported file today gives the result in the manual's demo table (Getting started)
    check = runner.invoke(
        app,
        [
            "evaluate",
            "--bundle",
            str(tmp_path / "out" / "demo-eligible.json"),
            "--format",
            "summary",
        ],
    )
    assert "eligible (12 of 12 criteria met)" in check.stdout
