"""terminology-report, its ConceptMap skeleton, the Usagi importer, and the CLI options."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from service.cli import app
from service.protocol import default_protocol
from service.terminology import runtime
from service.terminology.conceptmaps import load_site_mappings
from service.terminology.report import build_report, read_local, skeleton
from service.terminology.usagi import UsagiError, usagi_to_conceptmap
from tests.terminology.support import EXAMPLE_DIR, demo_bundle, recode_bundle

LAB = "https://lab.example-hospital.org/CodeSystem/lab-test-codes"
runner = CliRunner()


def _local_bundle(tmp_path):
    bundle = recode_bundle(demo_bundle("demo-us-units"))
    for entry in bundle["entry"]:
        quantity = entry["resource"].get("valueQuantity") or {}
        if quantity.get("unit") == "K/uL":
            quantity["unit"] = "thou/cmm"
            quantity.pop("code", None)
            quantity.pop("system", None)
    path = tmp_path / "local.json"
    path.write_bytes(orjson.dumps(bundle))
    return path


def test_report_lists_uncovered_codes_labs_first_and_unknown_units(tmp_path):
    report = build_report(read_local([_local_bundle(tmp_path)]), default_protocol())
    codes = [r.code for r in report.codes]
    assert (LAB, "PLT") in codes and (LAB, "ECOG") in codes
    assert codes.index((LAB, "PLT")) < codes.index((LAB, "DZSTAT"))  # numeric lab first
    plt = next(r for r in report.codes if r.code == (LAB, "PLT"))
    assert plt.count == 2 and "Platelets, automated" in plt.displays
    assert [u.unit for u in report.units] == ["thou/cmm"]
    assert all(r.code[0] != "http://loinc.org" for r in report.codes)


def test_report_with_the_example_mappings_has_nothing_left(tmp_path):
    runtime.configure(EXAMPLE_DIR)
    report = build_report(read_local([_local_bundle(tmp_path)]), default_protocol())
    assert report.codes == [] and report.units == []
    assert report.covered == report.resources


def test_report_reads_an_ndjson_folder(tmp_path):
    bundle = recode_bundle(demo_bundle("demo-eligible"))
    folder = tmp_path / "export"
    folder.mkdir()
    lines = [orjson.dumps(e["resource"]) for e in bundle["entry"]]
    (folder / "Observation.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    report = build_report(read_local([folder]), default_protocol())
    assert any(r.code == (LAB, "HGB") for r in report.codes)


def test_report_lists_inexact_mappings_as_evidence_only(tmp_path):
    bundle = demo_bundle("demo-eligible")
    obs = next(
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "Observation"
        and e["resource"]["code"]["coding"][0]["code"] == "777-3"
    )
    obs["code"] = {"coding": [{"system": LAB, "code": "PLT-EST"}]}
    path = tmp_path / "b.json"
    path.write_bytes(orjson.dumps(bundle))
    runtime.configure(EXAMPLE_DIR)
    report = build_report(read_local([path]), default_protocol())
    (row,) = [r for r in report.codes if r.code == (LAB, "PLT-EST")]
    assert row.status == "mapped inexact (evidence only)"


def test_skeleton_is_a_valid_conceptmap_the_loader_accepts_without_effect(tmp_path):
    report = build_report(read_local([_local_bundle(tmp_path)]), default_protocol())
    draft = skeleton(report, default_protocol())
    from fhir.resources.R4B.conceptmap import ConceptMap

    ConceptMap.model_validate(draft)
    sources = {g["source"] for g in draft["group"]}
    assert LAB in sources and "urn:site:unit-strings" in sources
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "draft.json").write_bytes(orjson.dumps(draft))
    site = load_site_mappings(folder)
    assert not any(m.exact for ms in site.codes.values() for m in ms)
    assert site.unit_aliases() == {}


def test_cli_report_writes_the_skeleton(tmp_path):
    out = tmp_path / "draft.json"
    result = runner.invoke(
        app,
        ["terminology-report", "--bundle", str(_local_bundle(tmp_path)), "--json",
         "--conceptmap-skeleton", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert orjson.loads(out.read_bytes())["resourceType"] == "ConceptMap"


def test_cli_bad_site_mappings_is_one_error_line(tmp_path):
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "x.json").write_text("{broken")
    bundle = _local_bundle(tmp_path)
    commands = (
        ["evaluate", "--bundle", str(bundle)],
        ["terminology-report", "--bundle", str(bundle)],
    )
    for command in commands:
        result = runner.invoke(app, [*command, "--site-mappings", str(folder)])
        assert result.exit_code == 2
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and "x.json" in lines[0]


def test_cli_evaluate_with_site_mappings_is_eligible(tmp_path):
    bundle = _local_bundle(tmp_path)
    args = ["evaluate", "--bundle", str(bundle), "--as-of", "2026-11-20", "--format", "fhir"]
    plain = orjson.loads(runner.invoke(app, args).stdout)
    mapped = orjson.loads(runner.invoke(app, [*args, "--site-mappings", str(EXAMPLE_DIR)]).stdout)
    status = [e["resource"]["status"] for e in mapped["entry"][:1]]
    assert status == ["eligible"]
    assert plain["entry"][0]["resource"]["status"] == "potential-candidate"


DATA = Path(__file__).parent / "data"
USAGI = (DATA / "lab.usagi.csv").read_text()  # Usagi's save format, one row per code + concept
CONCEPTS = (DATA / "CONCEPT.csv").read_text()  # an Athena CONCEPT.csv excerpt (tab-separated)


def test_usagi_import_only_approved_rows_map(tmp_path):
    csv_path = tmp_path / "lab.usagi.csv"
    csv_path.write_text(USAGI)
    concepts = tmp_path / "CONCEPT.csv"
    concepts.write_text(CONCEPTS)
    cm, summary = usagi_to_conceptmap(
        csv_path, source_system=LAB, url="https://site/ConceptMap/lab", concepts=concepts
    )
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "cm.json").write_bytes(orjson.dumps(cm))
    site = load_site_mappings(folder)
    plt = site.codes[(LAB, "PLT")]
    assert [(m.target, m.equivalence) for m in plt] == [(("http://loinc.org", "777-3"), "equal")]
    assert site.codes[(LAB, "HGB")][0].equivalence == "equivalent"
    assert site.codes[(LAB, "PLT-EST")][0].equivalence == "inexact"
    assert site.codes[(LAB, "ANC")][0].target is None  # UNCHECKED: unmatched
    assert site.codes[(LAB, "XYZ")][0].target is None
    assert "5 rows" in summary


def test_usagi_without_concept_codes_never_guesses(tmp_path):
    csv_path = tmp_path / "lab.usagi.csv"
    csv_path.write_text(USAGI)
    cm, _ = usagi_to_conceptmap(csv_path, source_system=LAB)
    targets = [t for g in cm["group"] for e in g["element"] for t in e["target"]]
    assert all(t["equivalence"] == "unmatched" for t in targets)
    assert any("CONCEPT" in t["comment"] for t in targets)


def test_usagi_refuses_a_file_without_its_columns(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(UsagiError, match="not a Usagi mapping file"):
        usagi_to_conceptmap(path, source_system=LAB)


def test_cli_usagi_import(tmp_path):
    csv_path = tmp_path / "lab.usagi.csv"
    csv_path.write_text(USAGI)
    (tmp_path / "CONCEPT.csv").write_text(CONCEPTS)
    out = tmp_path / "cm.json"
    result = runner.invoke(
        app,
        ["terminology-import-usagi", str(csv_path), "--out", str(out), "--source-system", LAB,
         "--concepts", str(tmp_path / "CONCEPT.csv")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert orjson.loads(out.read_bytes())["resourceType"] == "ConceptMap"
