"""``eligibility bench [--smoke] [--out DIR]``: run every case, print the table, write JSON.

Wire into the main CLI with ``app.command("bench")(bench)``; ``python -m benchmarks``
runs the same command on its own.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from benchmarks import cases, portfolio, report, screening
from benchmarks.cases import BenchConfig
from benchmarks.portfolio import CASES as PORTFOLIO_CASES

DEFAULT_OUT = Path("bench-results")
NOTES = [
    "Engine = evaluate_body(bytes) + orjson.dumps(result Bundle); floor = stdlib json.loads of "
    "the same bytes; both timed in this process with the garbage collector enabled, after "
    "gc.collect(), in rotating order.",
    "The engine pauses the cyclic GC for the length of one evaluation (service/gc_pause.py); "
    "the issue's floor runs with the GC as normal, so at large sizes its full collections make "
    "the floor grow faster than its input and the engine can look faster than json.loads. A "
    "second reference, json.loads with the GC paused the same way, is timed in the same "
    "rounds: the engine's ratio to it is the cost of the evaluation itself. Targets are judged "
    "on the issue's floor; both ratios and both floors' growth are shown.",
    "Issue 14's floor: orjson.loads of the same bytes with the GC paused (the decoder the "
    "engine itself uses for what it reads); targets engine_orjson_mid/large (<= 1.0) and "
    "memory_orjson (<= 0.6) are judged on it. The json.loads columns stay as references.",
    "Naive = fhir.resources R4B Bundle.model_validate_json of the same bytes; at the largest "
    "size it runs once without warm-up (it takes seconds).",
    "Pull: fetch_patient + evaluation against a uvicorn subprocess on 127.0.0.1 that adds a "
    "fixed latency per request; the queries run in parallel, so the floor is the slowest "
    "query (all its pages, FetchResult.timings); the slowest single HTTP request is shown too.",
    "HTTP: one uvicorn worker in a subprocess (as `eligibility serve`), load from "
    "httpx.AsyncClient in this process; bare = a route added to the same app that only "
    "decodes the body.",
    "CDS Hooks: in-process through httpx.ASGITransport (service cost without network), "
    "auth off, full prefetch built with the protocol's query plan.",
    "Memory: a fresh interpreter per run that imported the same modules in both modes; "
    "peak = its VmHWM (reset after the imports), net = peak - its RSS before reading the "
    "Bundle. ru_maxrss is recorded but not used: after exec it inherits the parent's "
    "high-water mark on Linux, so it reports the benchmark process instead.",
]


def _versions() -> dict[str, str]:
    out = {}
    names = ("orjson", "fastapi", "starlette", "uvicorn", "httpx", "pydantic", "fhir.resources")
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "?"
    return out


def _commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


CASES = (
    "engine_vs_json",
    "pull",
    "http",
    "cds",
    "memory",
    "screening",
    *PORTFOLIO_CASES,
)
ALIASES = {"portfolio": PORTFOLIO_CASES}  # --only portfolio: every issue-21 case


def chosen_cases(only: list[str] | None) -> tuple[str, ...]:
    """The cases ``--only`` names (aliases expanded), in run order; every case when none."""
    if not only:
        return CASES
    names: set[str] = set()
    for item in only:
        for name in filter(None, (n.strip() for n in item.split(","))):
            if name not in CASES and name not in ALIASES:
                known = ", ".join([*CASES, *ALIASES])
                raise typer.BadParameter(f"no case {name!r} (known: {known})", param_hint="--only")
            names.update(ALIASES.get(name, (name,)))
    return tuple(c for c in CASES if c in names)


def run_bench(
    config: BenchConfig,
    out_dir: Path = DEFAULT_OUT,
    console: Console | None = None,
    only: tuple[str, ...] = CASES,
) -> tuple[dict[str, Any], Path]:
    """Run the ``only`` cases (every case by default); return the results and the JSON path."""
    from service import units
    from service.lean import available as lean_available
    from service.protocol import load_protocol
    from service.settings import get_settings

    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=200)  # piped or in CI: do not squeeze the table
    started = datetime.now().astimezone()
    clock = time.perf_counter()

    def progress(message: str) -> None:
        console.print(f"[dim]{time.perf_counter() - clock:6.1f}s[/] {message}")

    protocol = load_protocol(get_settings().protocol_path)
    units.warm_up()
    log_dir = out_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    results_cases: dict[str, Any] = {}
    with cases.workspace(config.seed) as ws:
        progress(f"generating synthetic patients (anchor {ws.anchor})")
        if "engine_vs_json" in only:
            case1 = cases.engine_vs_json(config, protocol, ws, progress)
            results_cases["engine_vs_json"] = case1
            results_cases["growth"] = cases.growth(case1)
        if "pull" in only:
            results_cases["pull"] = cases.pull(config, protocol, ws, progress, log_dir)
        if "http" in only:
            results_cases["http"] = cases.http_throughput(config, ws, progress, log_dir)
        if "cds" in only:
            progress(f"CDS Hooks patient-view: {config.cds_calls} calls")
            results_cases["cds"] = cases.cds_hooks(config, protocol, ws)
        if "memory" in only:
            results_cases["memory"] = cases.memory(config, ws, progress)
        if "screening" in only:
            results_cases["screening"] = screening.measure(config.smoke, progress)
        results_cases |= portfolio_cases(config, ws, only, progress)
        anchor = ws.anchor.isoformat()

    results: dict[str, Any] = {
        "meta": {
            "smoke": config.smoke,
            "started": started.isoformat(timespec="seconds"),
            "duration_s": round(time.perf_counter() - clock, 1),
            "anchor_date": anchor,
            "commit": _commit(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "versions": _versions(),
            # False: service/_keyscan.c was not built, every body took the generic path
            "lean_decoder": lean_available(),
            "cases_run": list(only),
            "config": config.as_dict(),
            "notes": NOTES,
        },
        "cases": results_cases,
    }
    results["targets"] = report.targets(results)
    json_path, _ = report.write(results, out_dir, console)
    if config.smoke:
        verdict = "targets not judged (smoke sizes)"
    else:
        passed = sum(bool(t["pass"]) for t in results["targets"])
        verdict = f"targets: {passed}/{len(results['targets'])} pass"
    console.print(f"{verdict}; results in {json_path}")
    return results, json_path


def portfolio_cases(
    config: BenchConfig, ws: cases.Workspace, only: tuple[str, ...], progress: Any
) -> dict[str, Any]:
    """The issue-21 cases among ``only``: several trials against the seed alone."""
    wanted = [c for c in PORTFOLIO_CASES if c in only]
    if not wanted:
        return {}
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="eligibility-bench-portfolio-") as tmp:
        used = portfolio.protocols_for(Path(tmp) / "protocols")
        n, reps = config.portfolio_obs, config.portfolio_reps
        if "portfolio_engine" in wanted:
            progress(f"portfolio: seed alone, 3 and 10 protocols, N={n}: {reps} runs each")
            out["portfolio_engine"] = portfolio.portfolio_engine(
                ws.body(n), n, used, ws.anchor, reps, config.warmup
            )
        if "new_protocols_engine" in wanted:
            progress(f"portfolio: each of the three alone, N={n}: {reps} runs each")
            out["new_protocols_engine"] = portfolio.new_protocols_engine(
                ws.body(n), n, used, ws.anchor, reps, config.warmup
            )
        if "cds_portfolio" in wanted:
            progress(f"CDS Hooks patient-view, 3 protocols: {config.cds_calls} calls")
            out["cds_portfolio"] = portfolio.cds_portfolio(config, used, ws)
        if "screen_portfolio" in wanted:
            out["screen_portfolio"] = portfolio.screen_portfolio(
                config.smoke, used, Path(tmp) / "screen", progress
            )
    return out


def bench(
    smoke: Annotated[
        bool, typer.Option("--smoke", help="tiny sizes, few runs: exercises every case (CI)")
    ] = False,
    out: Annotated[Path, typer.Option(help="folder for the JSON and text results")] = DEFAULT_OUT,
    only: Annotated[
        list[str] | None,
        typer.Option(
            "--only",
            help="run only these cases (repeatable or comma-separated; 'portfolio' = the "
            f"issue-21 cases): {', '.join(CASES)}",
        ),
    ] = None,
) -> None:
    """Benchmark the engine, pull mode, HTTP API, CDS Hooks and memory against their floors."""
    config = BenchConfig.quick() if smoke else BenchConfig.full()
    run_bench(config, out, only=chosen_cases(only))


app = typer.Typer(add_completion=False)
app.command()(bench)
