"""The issue-21 benchmark cases (benchmarks/portfolio.py) and the one shared walk of a
Bundle's entries that the multi-study core uses (service.record.prepare_bundle).

No timing assertions (CI machines are too noisy): what is checked is that the cases run,
say which protocols they used, generate seed variants when fewer than three protocols exist,
and that the shared walk leaves every study's answer exactly as it was without it.
"""

from __future__ import annotations

import json
import shutil
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest
import typer
from rich.console import Console

from benchmarks import portfolio
from benchmarks.cases import BenchConfig
from benchmarks.cli import CASES, chosen_cases, run_bench
from benchmarks.synthetic import make_patient
from service import portfolio_eval, record
from service.portfolio import load_portfolio
from service.protocol import default_protocol
from tests.screening_population import normalise

AS_OF = date(2026, 11, 20)
NEW_TARGETS = {
    "portfolio_3",
    "portfolio_10",
    "new_protocols_engine",
    "cds_p95_portfolio",
    "screen_portfolio",
}


def _mappings_with(tmp_path: Path, *folders: Path) -> Path:
    base = tmp_path / "mappings"
    base.mkdir()
    for folder in folders:
        shutil.copytree(folder, base / folder.name)
    return base


def test_fewer_than_three_protocols_are_filled_up_with_seed_variants(tmp_path):
    base = _mappings_with(tmp_path, portfolio.SEED_DIR)
    used = portfolio.protocols_for(tmp_path / "generated", base)
    assert [p.id for p in used.three][0] == portfolio.SEED_ID
    assert len(used.three) == 3 and len(used.ten) == 10
    assert used.generated == {p.id for p in used.ten[1:]}  # only the seed is real
    # every protocol is its own study: one portfolio can hold them all (ids, NCTs unique)
    assert len(load_portfolio([p.directory for p in used.ten])) == 10
    thresholds = {
        str(sorted((code, str(c.params.get("threshold"))) for code, c in p.criteria.items()))
        for p in used.ten
    }
    assert len(thresholds) == 10  # "other thresholds": no variant is a plain copy
    described = used.describe(used.three)
    assert [d["source"] for d in described] == ["fhir_mappings", "generated", "generated"]


def test_real_protocol_folders_come_before_generated_ones(tmp_path):
    other = portfolio.seed_variant(tmp_path / "real-other", 77)  # stands for ZUMA-3 etc.
    base = _mappings_with(tmp_path, other, portfolio.SEED_DIR)
    used = portfolio.protocols_for(tmp_path / "generated", base)
    assert [p.id for p in used.three][:2] == [portfolio.SEED_ID, "bench-variant-77"]
    assert "bench-variant-77" not in used.generated
    assert len(used.generated) == 8  # one to make three, seven more to make ten


def test_only_names_cases_and_the_portfolio_alias():
    assert chosen_cases(None) == CASES
    assert chosen_cases(["portfolio"]) == portfolio.CASES
    assert chosen_cases(["cds_portfolio,cds", "pull"]) == ("pull", "cds", "cds_portfolio")
    with pytest.raises(typer.BadParameter, match="no case 'nope'"):
        chosen_cases(["nope"])


@pytest.fixture(scope="module")
def portfolio_smoke(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench-portfolio")
    results, path = run_bench(
        BenchConfig.quick(), out, Console(width=200, quiet=True), only=portfolio.CASES
    )
    assert json.loads(path.read_text()) == json.loads(json.dumps(results))
    return results | {"text": path.with_suffix(".txt").read_text()}


def test_only_the_portfolio_cases_run_and_are_reported(portfolio_smoke):
    assert set(portfolio_smoke["cases"]) == set(portfolio.CASES)
    assert portfolio_smoke["meta"]["cases_run"] == list(portfolio.CASES)
    assert {t["id"] for t in portfolio_smoke["targets"]} == NEW_TARGETS
    assert all(t["pass"] is None for t in portfolio_smoke["targets"])
    assert portfolio_smoke["text"].count("n/a (smoke)") == len(NEW_TARGETS)


def test_each_case_says_which_protocols_it_used(portfolio_smoke):
    cases = portfolio_smoke["cases"]
    engine = cases["portfolio_engine"]
    assert len(engine["protocols_3"]) == 3 and len(engine["protocols_10"]) == 10
    assert engine["protocols_3"][0]["id"] == portfolio.SEED_ID
    assert set(engine["statuses"]) == {p["id"] for p in engine["protocols_10"]}
    assert engine["ratio_3"] > 0 and engine["ratio_10"] > 0
    assert [r["id"] for r in cases["new_protocols_engine"]["rows"]] == [
        p["id"] for p in engine["protocols_3"][1:]
    ]
    cds = cases["cds_portfolio"]
    assert cds["protocols"] == engine["protocols_3"] and cds["cards"] >= 1
    screen = cases["screen_portfolio"]
    assert screen["protocols"] == engine["protocols_3"]
    assert screen["three"]["rows"] == 3 * screen["one"]["rows"] == 3 * screen["patients"]


# -- the shared walk: answers unchanged ------------------------------------------------------


def _normal(bundle: dict) -> Any:
    """A result Bundle without what differs between two runs (fresh urn:uuids, run times)."""
    return normalise(bundle)


def test_the_shared_walk_changes_no_answer_and_copies_the_walks_warnings(tmp_path, monkeypatch):
    used = portfolio.protocols_for(
        tmp_path / "generated", _mappings_with(tmp_path, portfolio.SEED_DIR)
    )
    data = make_patient(300, anchor=AS_OF).bundle
    data["entry"].append({"fullUrl": "urn:uuid:5c0a35e6-0000-4000-8000-000000000001"})
    body = orjson.dumps(data)
    walks: list[int] = []
    real = record.prepare_bundle

    def counting(bundle):
        walks.append(1)
        return real(bundle)

    monkeypatch.setattr(portfolio_eval, "prepare_bundle", counting)
    shared = portfolio_eval.evaluate_body_portfolio(body, used.three, as_of=AS_OF)
    assert len(walks) == 1
    monkeypatch.setattr(portfolio_eval, "shared_walk", lambda bundle: None)
    walked_each = portfolio_eval.evaluate_body_portfolio(body, used.three, as_of=AS_OF)
    assert len(walks) == 1  # the old path: each study walks the entries itself
    for a, b in zip(shared, walked_each, strict=True):
        assert _normal(a.bundle) == _normal(b.bundle)
        assert a.evaluation.status == b.evaluation.status
        warnings = [i for i in a.evaluation.issues if "has no resource" in i.message]
        assert len(warnings) == 1  # each study its own copy, not one list shared and grown
    alone = portfolio_eval.evaluate_body_portfolio(body, [default_protocol()], as_of=AS_OF)
    assert _normal(alone[0].bundle) == _normal(shared[0].bundle)


def test_a_bundle_the_walk_cannot_read_is_left_to_each_studys_record_builder():
    """No shared walk then: the first study's record builder raises what it raises alone."""
    not_a_bundle = {"resourceType": "Parameters"}
    assert portfolio_eval.shared_walk(not_a_bundle) is None
    with pytest.raises(record.InputError, match="expected a FHIR Bundle"):
        record.record_from_bundle(not_a_bundle, default_protocol())
