"""The benchmark in smoke mode: every case runs and the JSON report has numbers for each.

No timing assertions: CI machines are too noisy for that; `make bench` is for measuring.
Also checks the benchmark's own inputs: the synthetic patient is valid FHIR and eligible,
and the loopback FHIR server pages and filters the way our client expects.
"""

from __future__ import annotations

import io
import json
import math
import time
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from rich.console import Console

from benchmarks import report
from benchmarks.cases import BenchConfig
from benchmarks.cli import run_bench
from benchmarks.fhir_server import create_fhir_app, store_for
from benchmarks.synthetic import OTHER, make_patient
from service.pipeline import evaluate_body
from service.protocol import load_protocol

AS_OF = date(2026, 11, 20)
CASES = (
    "engine_vs_json",
    "growth",
    "pull",
    "http",
    "cds",
    "memory",
    "screening",
    "portfolio_engine",
    "new_protocols_engine",
    "cds_portfolio",
    "screen_portfolio",
)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _medians(node: Any) -> list[Any]:
    """Every ``median`` in a nested structure."""
    if isinstance(node, dict):
        found = [node["median"]] if "median" in node else []
        for value in node.values():
            found.extend(_medians(value))
        return found
    if isinstance(node, list):
        return [m for item in node for m in _medians(item)]
    return []


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("bench")
    results, path = run_bench(BenchConfig.quick(), out, Console(width=200, quiet=True))
    return results, path


def test_smoke_writes_a_json_report_with_every_case(smoke_report: tuple[dict, Path]) -> None:
    results, path = smoke_report
    on_disk = json.loads(path.read_text())
    assert on_disk == json.loads(json.dumps(results))
    assert on_disk["meta"]["smoke"] is True
    assert on_disk["meta"]["lean_decoder"] is True  # the compiled scanner was built
    assert set(CASES) <= set(on_disk["cases"])
    for case in CASES:
        if case == "growth":
            continue  # derived ratios, checked below
        medians = _medians(on_disk["cases"][case])
        assert medians, f"{case} has no median"
        assert all(_number(m) for m in medians), f"{case} has a non-numeric median"


def test_smoke_case_fields_are_numeric(smoke_report: tuple[dict, Path]) -> None:
    cases = smoke_report[0]["cases"]
    for row in cases["engine_vs_json"]["rows"]:
        assert row["status"] == "eligible"  # the synthetic patient evaluates as intended
        for key in ("engine", "json_loads", "json_loads_gc_paused", "orjson_loads", "naive"):
            assert _number(row[key]["median"])
        assert _number(row["engine_over_json"]) and _number(row["engine_over_json_gc_paused"])
        assert _number(row["engine_over_orjson"])
    assert _number(cases["growth"]["engine_growth"])
    assert _number(cases["growth"]["json_loads_growth"])
    assert _number(cases["growth"]["json_loads_gc_paused_growth"])
    assert {r["search"] for r in cases["pull"]["rows"]} == {"GET", "POST"}
    for row in cases["pull"]["rows"]:
        assert row["status"] == "eligible"
        assert row["http_requests"] >= 2
        assert row["http_methods"].get(row["search"], 0) >= 1  # the client really used it
        assert _number(row["wall"]["median"]) and _number(row["slowest_query"]["median"])
    assert [r["concurrency"] for r in cases["http"]["rows"]] == [1, 8, 32]
    for row in cases["http"]["rows"]:
        for name in ("eligibility", "bare"):
            assert row[name]["errors"] == 0
            assert _number(row[name]["rps"]) and _number(row[name]["latency"]["p95"])
    assert cases["cds"]["cards"] >= 1
    assert _number(cases["cds"]["latency"]["p95"])
    for name in ("engine", "json_loads", "orjson_loads"):
        assert _number(cases["memory"][name]["net_kb"]["median"])


def test_smoke_reports_every_target(smoke_report: tuple[dict, Path]) -> None:
    targets = smoke_report[0]["targets"]
    ids = {t["id"] for t in targets}
    assert {"engine_json_mid", "engine_json_large", "naive_engine_mid", "growth"} <= ids
    assert {"http_c8", "cds_p95", "memory"} <= ids
    assert {"engine_orjson_mid", "engine_orjson_large", "memory_orjson"} <= ids
    assert {"portfolio_3", "portfolio_10", "new_protocols_engine"} <= ids
    assert {"cds_p95_portfolio", "screen_portfolio"} <= ids
    assert any(i.startswith("pull_") for i in ids)
    # Smoke sizes cannot reach the targets: no verdict is printed or stored, only "n/a".
    assert all(t["pass"] is None for t in targets)
    text = smoke_report[1].with_suffix(".txt").read_text()
    assert "PASS" not in text and "FAIL" not in text
    assert text.count("n/a (smoke)") == len(targets)
    assert text.count("json.loads, GC paused") == len(
        smoke_report[0]["cases"]["engine_vs_json"]["rows"]
    )


def test_a_full_run_judges_every_target(smoke_report: tuple[dict, Path]) -> None:
    """The same numbers outside smoke mode get a PASS or FAIL each, in the JSON and the table."""
    results = json.loads(json.dumps(smoke_report[0]))
    results["meta"]["smoke"] = False
    results["targets"] = report.targets(results)
    assert all(isinstance(t["pass"], bool) for t in results["targets"])
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(report.table(results))
    text = console.export_text()
    assert text.count("PASS") + text.count("FAIL") == len(results["targets"])
    assert "n/a (smoke)" not in text


def test_synthetic_patient_is_eligible_with_mostly_unused_codes() -> None:
    protocol = load_protocol()
    data = make_patient(300, anchor=AS_OF)
    observations = [r for r in data.resources if r["resourceType"] == "Observation"]
    assert len(observations) == 300
    wanted = protocol.observation_codes()
    unused = [
        o
        for o in observations
        if ("http://loinc.org", o["code"]["coding"][0]["code"]) not in wanted
    ]
    assert len(unused) > len(observations) / 2
    assert not any(("http://loinc.org", a.code) in wanted for a in OTHER)
    evaluation, _ = evaluate_body(data.body, protocol, as_of=AS_OF)
    assert evaluation.status.value == "eligible"
    assert make_patient(300, anchor=AS_OF).body == data.body  # deterministic


def test_synthetic_bundle_is_valid_fhir_r4b() -> None:
    from fhir.resources.R4B.bundle import Bundle

    bundle = Bundle.model_validate_json(make_patient(60, anchor=AS_OF).body)
    assert len(bundle.entry) == 60 + 10  # Observations + Patient, Practitioner, story resources


async def test_loopback_fhir_server_serves_the_demo_store_over_http() -> None:
    """GET and POST searches, paging and errors through the bench's ASGI wrapper."""
    data = make_patient(400, anchor=AS_OF, patient_id="p1")
    base = "http://127.0.0.1:1/fhir"
    store = store_for([data.bundle], base)
    app = create_fhir_app(store, latency_ms=20)
    params = [
        ("patient", "p1"),
        ("code", "http://loinc.org|777-3,http://loinc.org|718-7"),
        ("date", "ge2026-06-01"),
        ("_sort", "-date"),
    ]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as http:
        started = time.perf_counter()
        assert (await http.get(f"{base}/Patient/p1")).json()["id"] == "p1"
        assert time.perf_counter() - started >= 0.02  # the added latency
        found, url = [], f"{base}/Observation?{urlencode([*params, ('_count', '2')])}"
        while url:
            page = (await http.get(url)).json()
            found += [e["resource"] for e in page["entry"]]
            url = next((x["url"] for x in page["link"] if x["relation"] == "next"), None)
        posted = await http.post(
            f"{base}/Observation/_search",
            content=urlencode([*params, ("_count", "500")]).encode(),
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        unknown = await http.get(f"{base}/Observation", params={"patient": "p1", "x": "1"})
        metadata = await http.get(f"{base}/metadata")
    assert found and all(o["code"]["coding"][0]["code"] in ("777-3", "718-7") for o in found)
    days = [o["effectiveDateTime"] for o in found]
    assert days == sorted(days, reverse=True) and days[-1] >= "2026-06-01"
    assert page["total"] == len(found) > 2  # really paged
    assert [e["resource"] for e in posted.json()["entry"]] == found
    assert posted.headers["content-type"] == "application/fhir+json"
    assert unknown.status_code == 400 and unknown.json()["resourceType"] == "OperationOutcome"
    assert metadata.json()["resourceType"] == "CapabilityStatement"
