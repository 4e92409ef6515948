"""The product's real default: every protocol folder under fhir_mappings/ (the seed, ZUMA-3
and DAPA-CKD), each passing ``protocol check``; the demo prints a patient x trial matrix, and
one study asked for prints exactly that study's demo output."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from service.cli import app
from service.portfolio import load_portfolio
from tests.trial_paths import DAPA_DIR, ZUMA3_DIR

runner = CliRunner()


@pytest.fixture(autouse=True)
def _own_results(monkeypatch):
    """The demo records its answers; keep them out of the default (shared) result store."""
    from service.settings import get_settings

    monkeypatch.setenv("ELIGIBILITY_RESULTS_BACKEND", "memory")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


IDS = ["cd19-cart-rr-ball", "dapa-ckd", "zuma3-brexu-cel-rr-ball"]


def test_default_loads_every_protocol_folder(every_protocol):
    portfolio = load_portfolio()
    assert sorted(p.id for p in portfolio) == IDS
    assert portfolio.get("NCT02614066").id == "zuma3-brexu-cel-rr-ball"
    assert portfolio.get("NCT03036150").id == "dapa-ckd"


@pytest.mark.parametrize("folder", [ZUMA3_DIR, DAPA_DIR], ids=lambda p: p.name)
def test_protocol_check_passes(folder):
    result = runner.invoke(app, ["protocol", "check", str(folder)])
    assert result.exit_code == 0, result.output
    assert "ok (0 warnings)" in result.output


def test_demo_prints_a_patient_by_trial_matrix(every_protocol, monkeypatch):
    monkeypatch.delenv("ELIGIBILITY_PROTOCOL_DIRS", raising=False)
    monkeypatch.setenv("COLUMNS", "250")
    result = runner.invoke(app, ["demo"])
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines()
            if line.startswith("│ demo-")}  # fmt: skip
    assert len(rows) == 10
    header = next(line for line in result.output.splitlines() if "dapa-ckd" in line)
    assert [h.strip() for h in header.split("┃")[2:5]] == IDS
    cells = {pid: [c.strip() for c in line.split("│")[2:5]] for pid, line in rows.items()}
    assert cells["demo-ckd-eligible"][1] == "eligible"
    assert cells["demo-ckd-potential"][1].startswith("potential-candidate")
    assert cells["demo-zuma3-eligible"][2] == "eligible"
    assert cells["demo-zuma3-potential"][2].startswith("potential-candidate")
    assert cells["demo-eligible"][0] == "eligible"  # the seed's answers are unchanged
    assert cells["demo-ineligible"][0] == "ineligible: I7 not met; I10 not met"


def test_demo_for_one_study_is_the_single_trial_output(every_protocol, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    chosen = runner.invoke(app, ["demo", "--study", "cd19-cart-rr-ball"])
    with monkeypatch.context() as mp:
        mp.setattr("service.portfolio.protocol_files", lambda base=None: [])  # not consulted
        from tests.protocol_copies import SEED_DIR

        mp.setenv("ELIGIBILITY_PROTOCOL_DIRS", f'["{SEED_DIR}"]')
        from service.settings import get_settings

        get_settings.cache_clear()
        alone = runner.invoke(app, ["demo"])
    get_settings.cache_clear()
    assert chosen.exit_code == alone.exit_code == 0
    assert chosen.output == alone.output and "demo-eligible" in chosen.output
