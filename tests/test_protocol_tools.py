"""``eligibility protocol check`` and ``protocol show`` on the seed folder and broken copies."""

from __future__ import annotations

from typer.testing import CliRunner

from service.cli import app
from service.protocol import load_protocol
from tests.protocol_copies import SEED_DIR, copy_seed, edit_json, edit_toml

runner = CliRunner()


def _check(folder):
    return runner.invoke(app, ["protocol", "check", str(folder)])


def test_check_passes_the_seed_folder():
    result = _check(SEED_DIR)
    assert result.exit_code == 0, result.output
    assert "ok (0 warnings)" in result.stdout


def test_check_names_a_misspelt_key(tmp_path):
    folder = copy_seed(tmp_path / "p")
    edit_toml(folder, 'attestation_item = "I5"', 'attestation_itme = "I5"')
    result = _check(folder)
    assert result.exit_code == 1
    assert "[criteria.I5]" in result.stderr and "attestation_itme" in result.stderr


def test_check_refuses_a_unit_that_is_not_ucum(tmp_path):
    folder = copy_seed(tmp_path / "p")
    edit_toml(
        folder,
        'threshold = { value = 60, unit = "g/L" }',
        'threshold = { value = 60, unit = "gram per litre" }',
    )
    result = _check(folder)
    assert result.exit_code == 1
    assert "I7-hemoglobin" in result.stderr and "'threshold'" in result.stderr
    assert "not UCUM" in result.stderr


def test_check_refuses_invalid_fhir(tmp_path):
    folder = copy_seed(tmp_path / "p")
    edit_json(
        folder / "ValueSet-anc.json", lambda vs: vs.update(experimental="perhaps", statuss="active")
    )
    result = _check(folder)
    assert result.exit_code == 1
    assert "ValueSet-anc.json" in result.stderr
    assert "experimental" in result.stderr and "statuss" in result.stderr


def test_check_refuses_an_unknown_code_system(tmp_path):
    folder = copy_seed(tmp_path / "p")

    def misspell(vs):
        vs["compose"]["include"][0]["system"] = "http://loinc.org/"

    edit_json(folder / "ValueSet-platelets.json", misspell)
    result = _check(folder)
    assert result.exit_code == 1
    assert "ValueSet-platelets.json" in result.stderr
    assert "unknown code system 'http://loinc.org/'" in result.stderr


def test_check_warns_of_an_unused_valueset_but_passes(tmp_path):
    folder = copy_seed(tmp_path / "p")
    edit_json(
        folder / "ValueSet-anc.json",
        lambda vs: vs.update(id="anc-unused", url=vs["url"] + "-unused"),
    )
    (folder / "ValueSet-anc.json").rename(folder / "ValueSet-anc-unused.json")
    (folder / "ValueSet-anc.json").write_bytes((SEED_DIR / "ValueSet-anc.json").read_bytes())
    result = _check(folder)
    assert result.exit_code == 0, result.output
    assert "warning: ValueSet 'anc-unused' is used by no criterion" in result.stderr


def test_check_without_a_protocol_file_exits_non_zero(tmp_path):
    result = _check(tmp_path)
    assert result.exit_code == 2 and "no protocol.toml" in result.stderr


def test_show_prints_every_criterion_with_kind_rule_and_thresholds():
    result = runner.invoke(app, ["protocol", "show", str(SEED_DIR)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for code in load_protocol(SEED_DIR).criteria:
        assert code in result.stdout, code
    assert "inclusion" in result.stdout and "lab_threshold" in result.stdout
    assert "<= 51 umol/L" in result.stdout and "14 days" in result.stdout
    assert "bilirubin-total" in result.stdout


def test_show_on_a_broken_folder_names_the_problem(tmp_path):
    folder = copy_seed(tmp_path / "p")
    edit_toml(folder, 'observation_valueset = "anc"', 'observation_valueset = "anc-x"')
    result = runner.invoke(app, ["protocol", "show", str(folder)])
    assert result.exit_code == 1 and "'anc-x'" in result.stderr
