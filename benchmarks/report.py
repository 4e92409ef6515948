"""Targets, the printed table and the JSON file, all derived from one results dict."""

from __future__ import annotations

import io
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks import portfolio, screening
from benchmarks.targets import judged

Results = dict[str, Any]


def targets(results: Results) -> list[dict[str, Any]]:
    """The issue's targets, evaluated on this run.

    A smoke run's sizes are far too small for the targets to mean anything, so its verdicts are
    ``None`` (not judged) rather than a PASS or FAIL it cannot honestly give.
    """
    out = _all_targets(results)
    if results["meta"]["smoke"]:
        for t in out:
            t["pass"] = None
    return out


def _all_targets(results: Results) -> list[dict[str, Any]]:
    """Every target of the cases this run measured (``--only`` runs a few)."""
    cases = results["cases"]
    out = _engine_targets(cases) if "engine_vs_json" in cases else []
    for row in cases.get("pull", {}).get("rows", []):
        out.append(
            judged(
                _pull_id(row),
                f"pull wall at N={row['n']:,} ({row['search']}) <= 1.3 x slowest query + 20 ms",
                row["wall"]["median"],
                family="pull_{n}_{search}",
                limit=row["bound_ms"],
            )
        )
    if "http" in cases:
        http_rows = {r["concurrency"]: r for r in cases["http"]["rows"]}
        c8 = http_rows.get(8) or cases["http"]["rows"][-1]
        out.append(
            judged(
                "http_c8",
                f"$eligibility / bare req/s at concurrency {c8['concurrency']}",
                c8["rps_ratio"],
            )
        )
    if "cds" in cases:
        out.append(
            judged(
                "cds_p95",
                f"CDS patient-view p95 ({cases['cds']['observations']} obs)",
                cases["cds"]["latency"]["p95"],
            )
        )
    if "memory" in cases:
        out.append(
            judged(
                "memory",
                f"peak RSS (net) engine / json.loads at N={cases['memory']['n']:,}",
                cases["memory"]["net_ratio"],
            )
        )
        out.append(
            judged(
                "memory_orjson",
                f"peak RSS (net) engine / orjson.loads at N={cases['memory']['n']:,}",
                cases["memory"]["net_ratio_orjson"],
            )
        )
    if "screening" in cases:
        out.extend(screening.targets(cases["screening"]))
    out.extend(portfolio.targets(cases))
    return out


def _engine_targets(cases: dict[str, Any]) -> list[dict[str, Any]]:
    rows = cases["engine_vs_json"]["rows"]
    mid, large = rows[-2], rows[-1]
    return [
        judged(
            "engine_json_mid",
            f"engine / json.loads at N={mid['n']:,}",
            mid["engine_over_json"],
        ),
        judged(
            "engine_json_large",
            f"engine / json.loads at N={large['n']:,}",
            large["engine_over_json"],
        ),
        judged(
            "engine_orjson_mid",
            f"engine / orjson.loads (GC paused) at N={mid['n']:,}",
            mid["engine_over_orjson"],
        ),
        judged(
            "engine_orjson_large",
            f"engine / orjson.loads (GC paused) at N={large['n']:,}",
            large["engine_over_orjson"],
        ),
        judged(
            "naive_engine_mid",
            f"fhir.resources / engine at N={mid['n']:,}",
            mid["naive_over_engine"],
        ),
        judged(
            "growth",
            f"engine time N={cases['growth']['to_n']:,} / N={cases['growth']['from_n']:,}",
            cases["growth"]["engine_growth"],
        ),
    ]


def _pull_id(row: dict[str, Any]) -> str:
    return f"pull_{row['n']}_{row['search'].lower()}"


# -- table --------------------------------------------------------------------------------


def _ms(value: float) -> str:
    return f"{value:,.1f} ms" if value < 10_000 else f"{value / 1000:,.2f} s"


def _spread(s: dict[str, Any]) -> str:
    if s["n"] == 1:
        return "1 run"
    return f"{_ms(s['min'])} – {_ms(s['max'])} (n={s['n']})"


def _round_ratios(ratios: list[float | None] | None) -> str:
    """The ratio of each bare/$eligibility round, when there were several."""
    shown = [f"{x:.2f}" for x in ratios or () if x is not None]
    return f"; rounds {', '.join(shown)}" if len(shown) > 1 else ""


def _x(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def _check(t: dict[str, Any] | None) -> tuple[str, str]:
    if t is None:
        return "", ""
    limit = f"{t['limit']:g}{' ' + t['unit'] if t['unit'] else ''}"
    if t["pass"] is None:
        verdict = "[dim]n/a (smoke)[/]"
    else:
        verdict = "[green]PASS[/]" if t["pass"] else "[red]FAIL[/]"
    return f"{'≤' if t['op'] == '<=' else '≥'} {limit}", verdict


def _rows(results: Results) -> list[list[str]]:
    """The table's lines for the cases this run measured (``--only`` runs a few)."""
    cases = results["cases"]
    by_id = {t["id"]: t for t in results["targets"]}
    rows: list[list[str]] = []
    if "engine_vs_json" in cases:
        rows.extend(_engine_rows(cases, by_id))
    for r in cases.get("pull", {}).get("rows", []):
        rows.append(
            [
                "3 pull",
                f"N={r['n']:,}, {r['latency_ms']:g} ms/request, "
                f"{r['http_requests']:g} requests ({r['search']})",
                _ms(r["wall"]["median"]),
                _spread(r["wall"]),
                f"slowest query {_ms(r['slowest_query']['median'])}"
                f" (request {_ms(r['slowest_request']['median'])})",
                _x(r["wall_over_slowest_query"]),
                *_check(by_id[_pull_id(r)]),
            ]
        )
    for r in cases.get("http", {}).get("rows", []):
        e, b = r["eligibility"], r["bare"]
        t = by_id["http_c8"] if r["concurrency"] == 8 else None
        rows.append(
            [
                "4 HTTP",
                f"$eligibility c={r['concurrency']} ({e['requests']} req, {e['errors']} err)",
                f"{e['rps']:,.1f} req/s",
                f"p50 {_ms(e['latency']['median'])}, p95 {_ms(e['latency']['p95'])}",
                f"bare {b['rps']:,.1f} req/s (p95 {_ms(b['latency']['p95'])})"
                + _round_ratios(r.get("round_ratios")),
                _x(r["rps_ratio"]),
                *_check(t),
            ]
        )
    if "cds" in cases:
        c = cases["cds"]
        rows.append(
            [
                "5 CDS",
                f"patient-view, {c['observations']} obs, {c['latency']['n']} calls",
                f"p50 {_ms(c['latency']['median'])}",
                f"p95 {_ms(c['latency']['p95'])}, max {_ms(c['latency']['max'])}",
                "in-process ASGI",
                "",
                *_check(by_id["cds_p95"]),
            ]
        )
    if "memory" in cases:
        m = cases["memory"]
        mib = 1024
        rows.append(
            [
                "6 memory",
                f"peak RSS N={m['n']:,}, net (raw)",
                f"{m['engine']['net_kb']['median'] / mib:,.1f} MiB "
                f"({m['engine']['peak_kb']['median'] / mib:,.1f})",
                f"baseline {m['engine']['baseline_kb']['median'] / mib:,.1f} MiB",
                f"json.loads {m['json_loads']['net_kb']['median'] / mib:,.1f} MiB "
                f"({m['json_loads']['peak_kb']['median'] / mib:,.1f})",
                f"{_x(m['net_ratio'])} ({_x(m['raw_ratio'])})",
                *_check(by_id["memory"]),
            ]
        )
        rows.append(
            [
                "",
                "  same engine peak vs orjson.loads, net",
                "",
                "",
                f"orjson.loads {m['orjson_loads']['net_kb']['median'] / mib:,.1f} MiB "
                f"({m['orjson_loads']['peak_kb']['median'] / mib:,.1f})",
                _x(m["net_ratio_orjson"]),
                *_check(by_id["memory_orjson"]),
            ]
        )
    if "screening" in cases:
        rows.extend(screening.rows(cases["screening"], by_id, _check, _x))
    rows.extend(portfolio.rows(cases, by_id, _check, _x, _ms))
    return rows


def _engine_rows(cases: dict[str, Any], by_id: dict[str, Any]) -> list[list[str]]:
    e_rows = cases["engine_vs_json"]["rows"]
    mid_n, large_n = e_rows[-2]["n"], e_rows[-1]["n"]
    rows: list[list[str]] = []

    for r in e_rows:
        t = by_id["engine_json_mid"] if r["n"] == mid_n else None
        t = by_id["engine_json_large"] if r["n"] == large_n else t
        paused = r["json_loads_gc_paused"]
        rows.append(
            [
                "1 engine",
                f"N={r['n']:,} ({r['body_bytes'] / 1e6:.1f} MB, {r['status']})",
                _ms(r["engine"]["median"]),
                _spread(r["engine"]),
                f"json.loads, GC on {_ms(r['json_loads']['median'])}",
                _x(r["engine_over_json"]),
                *_check(t),
            ]
        )
        rows.append(
            [
                "",
                "  same engine time vs the GC-paused floor",
                "",
                f"floor {_spread(paused)}",
                f"json.loads, GC paused {_ms(paused['median'])}",
                _x(r["engine_over_json_gc_paused"]),
                "(no target)",
                "",
            ]
        )
        t = by_id["engine_orjson_mid"] if r["n"] == mid_n else None
        t = by_id["engine_orjson_large"] if r["n"] == large_n else t
        floor = r["orjson_loads"]
        rows.append(
            [
                "",
                "  same engine time vs orjson.loads (GC paused)",
                "",
                f"floor {_spread(floor)}",
                f"orjson.loads (GC paused) {_ms(floor['median'])}",
                _x(r["engine_over_orjson"]),
                *(_check(t) if t is not None else ("(no target)", "")),
            ]
        )
    for r in e_rows:
        t = by_id["naive_engine_mid"] if r["n"] == mid_n else None
        rows.append(
            [
                "1 naive",
                f"fhir.resources N={r['n']:,}",
                _ms(r["naive"]["median"]),
                _spread(r["naive"]),
                f"engine {_ms(r['engine']['median'])}",
                _x(r["naive_over_engine"]),
                *_check(t),
            ]
        )
    g = cases["growth"]
    rows.append(
        [
            "2 growth",
            f"engine N={g['to_n']:,} / N={g['from_n']:,}",
            _x(g["engine_growth"]),
            f"{_ms(g['engine_from_ms'])} → {_ms(g['engine_to_ms'])}",
            f"json.loads: GC on {_x(g['json_loads_growth'])}, "
            f"GC paused {_x(g['json_loads_gc_paused_growth'])}",
            f"size {_x(g['size_factor'])}",
            *_check(by_id["growth"]),
        ]
    )
    return rows


def table(results: Results) -> Table:
    title = "eligibility bench" + (
        " (smoke: sizes too small for the targets)" if results["meta"]["smoke"] else ""
    )  # noqa: E501
    out = Table(title=title, show_lines=False)
    for name, justify in (
        ("case", "left"),
        ("measure", "left"),
        ("median", "right"),
        ("spread", "left"),
        ("floor / reference", "left"),
        ("ratio", "right"),
        ("target", "left"),
        ("result", "left"),
    ):
        out.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in _rows(results):
        out.add_row(*row)
    return out


def write(results: Results, out_dir: Path, console: Console) -> tuple[Path, Path]:
    """``bench-<time>[-smoke].json`` and the table as text, side by side in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.fromisoformat(results["meta"]["started"]).strftime("%Y%m%d-%H%M%S")
    stem = f"bench-{stamp}{'-smoke' if results['meta']['smoke'] else ''}"
    json_path = out_dir / f"{stem}.json"
    json_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    text = Console(width=200, record=True, file=io.StringIO())
    text.print(table(results))
    text_path = out_dir / f"{stem}.txt"
    text_path.write_text(text.export_text(), encoding="utf-8")
    console.print(table(results))
    return json_path, text_path
