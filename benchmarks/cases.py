"""The benchmark cases. Each measures the service next to its floor in the same run and
returns plain data (the JSON report is built from it; the table is rendered from that).

1. engine vs json.loads and orjson.loads (and fhir.resources as the naive baseline), per
   Bundle size; orjson.loads with the GC paused is the issue-14 floor (the decoder the engine
   itself uses); the
   floor is json.loads with the GC as normal (the issue's), shown next to json.loads with the
   GC paused as the engine pauses it (service/gc_pause.py), so neither ratio misleads alone
2. growth of engine time from the second-largest to the largest size, next to both floors'
3. pull mode against a loopback FHIR server with fixed latency, vs its slowest query/request
4. HTTP throughput of POST /$eligibility vs a bare JSON route in the same uvicorn process
5. CDS Hooks patient-view with full prefetch, in-process (httpx.ASGITransport)
6. peak RSS of one evaluation vs json.loads and vs orjson.loads alone, each in a fresh
   interpreter
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import orjson

from benchmarks import child_env
from benchmarks.app_server import BARE_PATH, bench_settings, build_app
from benchmarks.fhir_server import store_for
from benchmarks.procs import spawned_server
from benchmarks.stats import interleaved, summary
from benchmarks.synthetic import BASE_URL, make_patient
from service.fhir.demo_store import DemoStore
from service.gc_pause import gc_paused
from service.pipeline import evaluate_body, evaluate_fetched
from service.protocol import Protocol

FHIR_JSON_HEADERS = {"content-type": "application/fhir+json", "accept": "application/fhir+json"}
Progress = Callable[[str], None]


@dataclass(frozen=True)
class BenchConfig:
    """How much to measure. ``full()`` for `eligibility bench`, ``smoke()`` for CI (< 60 s)."""

    smoke: bool
    sizes: tuple[int, ...]
    reps: dict[int, int]  # timed runs per size (engine and json.loads)
    warmup: int
    naive_reps: int
    naive_single_above: int  # larger sizes: one naive run, no warm-up (it takes seconds)
    pull_sizes: tuple[int, ...]
    pull_reps: int
    pull_warmup: int
    latency_ms: float
    http_obs: int
    http_concurrency: tuple[int, ...]
    http_max_requests: int
    http_max_seconds: float
    http_warmup: int  # requests per connection before measuring
    http_rounds: int  # bare and $eligibility alternate this many times (drift hits both)
    cds_obs: int
    cds_calls: int
    cds_warmup: int
    memory_n: int
    memory_reps: int
    seed: int = 1
    portfolio_obs: int = 5_000  # portfolio_3/10 and new_protocols_engine
    portfolio_reps: int = 12

    @classmethod
    def full(cls) -> BenchConfig:
        return cls(
            smoke=False,
            sizes=(100, 1_000, 5_000, 20_000),
            reps={100: 40, 1_000: 25, 5_000: 12, 20_000: 7},
            warmup=2,
            naive_reps=3,
            naive_single_above=5_000,
            pull_sizes=(5_000, 20_000),
            pull_reps=15,
            pull_warmup=3,
            latency_ms=50.0,
            http_obs=500,
            http_concurrency=(1, 8, 32),
            http_max_requests=1_500,
            http_max_seconds=10.0,
            http_warmup=3,
            http_rounds=3,
            cds_obs=500,
            cds_calls=300,
            cds_warmup=20,
            memory_n=20_000,
            memory_reps=3,
        )

    @classmethod
    def quick(cls) -> BenchConfig:
        """Every case at small sizes with few repetitions: CI and the test suite."""
        return cls(
            smoke=True,
            sizes=(50, 200),
            reps={50: 3, 200: 3},
            warmup=1,
            naive_reps=1,
            naive_single_above=200,
            pull_sizes=(200,),
            pull_reps=2,
            pull_warmup=1,
            latency_ms=5.0,
            http_obs=100,
            http_concurrency=(1, 8, 32),
            http_max_requests=32,
            http_max_seconds=5.0,
            http_warmup=1,
            http_rounds=1,
            cds_obs=100,
            cds_calls=10,
            cds_warmup=2,
            memory_n=200,
            memory_reps=1,
            portfolio_obs=200,
            portfolio_reps=3,
        )

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["reps"] = {str(k): v for k, v in self.reps.items()}
        return out


class Workspace:
    """Synthetic Bundles on disk (servers and subprocesses read them), generated once."""

    def __init__(self, root: Path, seed: int) -> None:
        self.root = root
        self.seed = seed
        self.anchor = date.today()
        self._files: dict[int, Path] = {}

    def file(self, n: int) -> Path:
        if n not in self._files:
            path = self.root / f"bench-{n}.json"
            path.write_bytes(make_patient(n, anchor=self.anchor, seed=self.seed).body)
            self._files[n] = path
        return self._files[n]

    def body(self, n: int) -> bytes:
        return self.file(n).read_bytes()

    @staticmethod
    def patient_id(n: int) -> str:
        return f"bench-{n}"


@contextmanager
def workspace(seed: int) -> Iterator[Workspace]:
    with tempfile.TemporaryDirectory(prefix="eligibility-bench-") as tmp:
        yield Workspace(Path(tmp), seed)


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


# -- 1 and 2: engine vs json.loads vs fhir.resources -------------------------------------


def engine_vs_json(
    cfg: BenchConfig, protocol: Protocol, ws: Workspace, progress: Progress
) -> dict[str, Any]:
    from fhir.resources.R4B.bundle import Bundle

    rows = []
    for n in cfg.sizes:
        body = ws.body(n)
        evaluation, _ = evaluate_body(body, protocol, as_of=ws.anchor)

        def engine(body: bytes = body) -> bytes:
            return orjson.dumps(evaluate_body(body, protocol, as_of=ws.anchor)[1])

        def floor(body: bytes = body) -> Any:
            return json.loads(body)

        def floor_gc_paused(body: bytes = body) -> None:
            with gc_paused():  # decoded and freed inside the pause, as in evaluate_body
                json.loads(body)

        def orjson_floor(body: bytes = body) -> None:
            with gc_paused():  # the decoder the engine uses, the issue-14 floor
                orjson.loads(body)

        def naive(body: bytes = body) -> Any:
            return Bundle.model_validate_json(body)

        reps = cfg.reps.get(n, 5)
        single = n > cfg.naive_single_above
        progress(f"engine vs json.loads (GC on, paused), orjson.loads, N={n}: {reps} runs each")
        timed: dict[str, Callable[[], Any]] = {
            "engine": engine,
            "json_loads": floor,
            "json_loads_gc_paused": floor_gc_paused,
            "orjson_loads": orjson_floor,
        }
        samples = interleaved(
            timed,
            reps=dict.fromkeys(timed, reps),
            warmup=dict.fromkeys(timed, cfg.warmup),
        )
        naive_reps = 1 if single else cfg.naive_reps
        progress(f"fhir.resources Bundle.model_validate_json, N={n}: {naive_reps} run(s)")
        samples |= interleaved(
            {"naive": naive}, reps={"naive": naive_reps}, warmup={"naive": 0 if single else 1}
        )
        row: dict[str, Any] = {
            "n": n,
            "body_bytes": len(body),
            "status": evaluation.status.value,
            "engine": summary(samples["engine"]),
            "json_loads": summary(samples["json_loads"]),
            "json_loads_gc_paused": summary(samples["json_loads_gc_paused"]),
            "orjson_loads": summary(samples["orjson_loads"]),
            "naive": summary(samples["naive"]),
            "naive_note": "one run, no warm-up" if single else f"{naive_reps} runs after warm-up",
        }
        row["engine_over_json"] = _ratio(row["engine"]["median"], row["json_loads"]["median"])
        row["engine_over_json_gc_paused"] = _ratio(
            row["engine"]["median"], row["json_loads_gc_paused"]["median"]
        )
        row["engine_over_orjson"] = _ratio(row["engine"]["median"], row["orjson_loads"]["median"])
        row["naive_over_engine"] = _ratio(row["naive"]["median"], row["engine"]["median"])
        rows.append(row)
        del body
        gc.collect()
    return {"rows": rows}


def growth(case1: dict[str, Any]) -> dict[str, Any]:
    """Time at the largest size over time at the next size down (5,000 -> 20,000)."""
    small, large = case1["rows"][-2], case1["rows"][-1]
    return {
        "from_n": small["n"],
        "to_n": large["n"],
        "size_factor": round(large["n"] / small["n"], 3),
        "engine_from_ms": small["engine"]["median"],
        "engine_to_ms": large["engine"]["median"],
        "engine_growth": _ratio(large["engine"]["median"], small["engine"]["median"]),
        "json_loads_growth": _ratio(large["json_loads"]["median"], small["json_loads"]["median"]),
        "json_loads_gc_paused_growth": _ratio(
            large["json_loads_gc_paused"]["median"], small["json_loads_gc_paused"]["median"]
        ),
    }


# -- 3: pull mode -----------------------------------------------------------------------


class _RequestTimes(logging.Handler):
    """Collects what the FHIR client logs per HTTP request: method and ``elapsed_ms``."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.elapsed: list[float] = []
        self.methods: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        value = getattr(record, "elapsed_ms", None)
        if isinstance(value, int | float):
            self.elapsed.append(float(value))
            args = record.args if isinstance(record.args, tuple) else ()
            self.methods.append(str(args[0]) if args else "?")

    def clear(self) -> None:
        self.elapsed.clear()
        self.methods.clear()


@contextmanager
def _capture_fhir_requests() -> Iterator[_RequestTimes]:
    logger = logging.getLogger("service.fhir")
    handler = _RequestTimes()
    saved = (logger.level, logger.propagate)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


async def _pull_once(settings: Any, protocol: Protocol, pid: str, day: date) -> tuple[Any, Any]:
    from service.fhir import client_for
    from service.fhir.fetch import fetch_patient

    # What pipeline.evaluate_from_server does, keeping the FetchResult for its timings.
    async with client_for(settings) as client:
        fetched = await fetch_patient(client, protocol, pid, day)
    evaluation, result = evaluate_fetched(fetched, protocol, day)
    orjson.dumps(result)
    return fetched, evaluation


async def _pull_row(
    cfg: BenchConfig,
    protocol: Protocol,
    settings: Any,
    pid: str,
    day: date,
    requests: _RequestTimes,
) -> dict[str, Any]:
    walls, slow_query, slow_request, counts = [], [], [], []
    methods: dict[str, int] = {}
    fetched = evaluation = None
    for i in range(cfg.pull_warmup + cfg.pull_reps):
        gc.collect()
        requests.clear()
        started = time.perf_counter()
        fetched, evaluation = await _pull_once(settings, protocol, pid, day)
        wall = (time.perf_counter() - started) * 1000
        if i < cfg.pull_warmup:
            continue
        timings = getattr(fetched, "timings", None) or {}
        walls.append(wall)
        slow_request.append(max(requests.elapsed, default=0.0))
        slow_query.append(max(timings.values(), default=slow_request[-1]))
        counts.append(len(requests.elapsed))
        methods = {m: requests.methods.count(m) for m in sorted(set(requests.methods))}
    assert fetched is not None and evaluation is not None
    row: dict[str, Any] = {
        "status": evaluation.status.value,
        "resources_fetched": len(fetched.resources),
        "http_requests": statistics.median(counts),
        "http_methods": methods,
        "wall": summary(walls),
        "slowest_query": summary(slow_query),
        "slowest_request": summary(slow_request),
        "query_ms": dict(getattr(fetched, "timings", {}) or {}),
    }
    # The queries run in parallel; the slowest one (all its pages) is the floor.
    row["wall_over_slowest_query"] = _ratio(row["wall"]["median"], row["slowest_query"]["median"])
    row["bound_ms"] = round(1.3 * row["slowest_query"]["median"] + 20, 3)
    return row


async def _pull_rows(
    cfg: BenchConfig, protocol: Protocol, ws: Workspace, fhir_base: str, progress: Progress
) -> list[dict[str, Any]]:
    from service.fhir.pool import close_clients

    settings = bench_settings().model_copy(update={"fhir_base_url": fhir_base})
    # A query-length limit below any of our searches: every search goes as POST _search.
    post = settings.model_copy(update={"max_query_length": 10})
    plan = [(n, "GET", settings) for n in cfg.pull_sizes]
    plan.append((cfg.pull_sizes[0], "POST", post))
    rows = []
    try:
        with _capture_fhir_requests() as requests:
            for n, search, variant in plan:
                progress(f"pull mode, N={n}, {search} searches: {cfg.pull_reps} evaluations")
                row = {"n": n, "search": search, "latency_ms": cfg.latency_ms}
                row |= await _pull_row(
                    cfg, protocol, variant, ws.patient_id(n), ws.anchor, requests
                )
                rows.append(row)
    finally:
        await close_clients()
    return rows


def pull(
    cfg: BenchConfig, protocol: Protocol, ws: Workspace, progress: Progress, log_dir: Path
) -> dict[str, Any]:
    args = ["--latency-ms", str(cfg.latency_ms)]
    for n in cfg.pull_sizes:
        args += ["--data", str(ws.file(n))]
    progress("starting the loopback FHIR server")
    with spawned_server(
        "benchmarks.fhir_server",
        args,
        ready_path="/fhir/metadata",
        log_file=log_dir / "fhir-server.log",
    ) as origin:
        rows = asyncio.run(_pull_rows(cfg, protocol, ws, origin + "/fhir", progress))
    return {"server": "uvicorn subprocess, 127.0.0.1", "rows": rows}


# -- 4: HTTP throughput -----------------------------------------------------------------


async def _load(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    concurrency: int,
    max_requests: int,
    max_seconds: float,
) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    issued = 0
    stop_at = time.perf_counter() + max_seconds

    async def worker() -> None:
        nonlocal issued, errors
        while issued < max_requests and time.perf_counter() < stop_at:
            issued += 1
            started = time.perf_counter()
            resp = await client.post(url, content=body, headers=FHIR_JSON_HEADERS)
            latencies.append((time.perf_counter() - started) * 1000)
            if resp.status_code != 200:
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {
        "requests": len(latencies),
        "errors": errors,
        "seconds": round(elapsed, 3),
        "rps": round(len(latencies) / elapsed, 2),
        "latency": summary(latencies, keep=False),
        "latencies": latencies,
    }


def _pooled(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One route's rounds as one row: req/s is the median round's, latencies are pooled."""
    latencies = [x for r in rounds for x in r.pop("latencies")]
    return {
        "requests": sum(r["requests"] for r in rounds),
        "errors": sum(r["errors"] for r in rounds),
        "seconds": round(sum(r["seconds"] for r in rounds), 3),
        "rps": statistics.median(r["rps"] for r in rounds),
        "latency": summary(latencies, keep=False),
        "rounds": rounds,
    }


async def _http_rows(cfg: BenchConfig, origin: str, body: bytes, progress: Progress) -> list[dict]:
    """Per concurrency: bare and $eligibility alternate ``http_rounds`` times (order swapped
    each round), so a slow spell of the machine lands on both; the ratio is the median of the
    rounds' ratios. Each round has its own client, warmed first: a connection left idle
    through the other route's round could be closed by the server's keep-alive timeout just
    as it is reused."""
    rows = []
    routes = {"bare": BARE_PATH, "eligibility": "/$eligibility"}
    per_round = max(1, cfg.http_max_requests // cfg.http_rounds)
    seconds = cfg.http_max_seconds / cfg.http_rounds
    for concurrency in cfg.http_concurrency:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in routes}
        for n in range(cfg.http_rounds):
            order = list(routes) if n % 2 == 0 else list(reversed(routes))
            for name in order:
                path = routes[name]
                progress(
                    f"HTTP {path} at concurrency {concurrency}, round {n + 1}/{cfg.http_rounds}"
                )
                async with httpx.AsyncClient(
                    base_url=origin, limits=limits, timeout=60.0
                ) as client:
                    first = await client.post(path, content=body, headers=FHIR_JSON_HEADERS)
                    if first.status_code != 200:
                        raise RuntimeError(f"{path} answered HTTP {first.status_code}")
                    warm = concurrency * cfg.http_warmup
                    await _load(client, path, body, concurrency, warm, cfg.http_max_seconds)
                    rounds[name].append(
                        await _load(client, path, body, concurrency, per_round, seconds)
                    )
        ratios = [
            _ratio(e["rps"], b["rps"])
            for e, b in zip(rounds["eligibility"], rounds["bare"], strict=True)
        ]
        row: dict[str, Any] = {"concurrency": concurrency}
        row["bare"] = _pooled(rounds["bare"])
        row["eligibility"] = _pooled(rounds["eligibility"])
        row["round_ratios"] = ratios
        row["rps_ratio"] = statistics.median(r for r in ratios if r is not None)
        rows.append(row)
    return rows


def http_throughput(
    cfg: BenchConfig, ws: Workspace, progress: Progress, log_dir: Path
) -> dict[str, Any]:
    body = ws.body(cfg.http_obs)
    progress("starting the service under uvicorn")
    with spawned_server(
        "benchmarks.app_server", [], ready_path="/healthz", log_file=log_dir / "app-server.log"
    ) as origin:
        rows = asyncio.run(_http_rows(cfg, origin, body, progress))
    return {
        "server": "uvicorn subprocess (1 worker), 127.0.0.1; load from httpx.AsyncClient",
        "rounds": cfg.http_rounds,
        "observations": cfg.http_obs,
        "body_bytes": len(body),
        "rows": rows,
    }


# -- 5: CDS Hooks -----------------------------------------------------------------------


def prefetch_for(store: DemoStore, protocol: Protocol, patient_id: str) -> dict[str, Any]:
    """What a CDS client would prefetch with our templates: every key, complete searchsets."""
    from service.fhir.queries import prefetch_templates

    return store.prefetch(prefetch_templates(protocol), patient_id)


@contextmanager
def _logs_to_null() -> Iterator[None]:
    """The in-process service's log lines still formatted and written (their cost is the
    service's), to the null device instead of the terminal; this process's logging restored
    afterwards (the app's lifespan reconfigures the root logger)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    with open(os.devnull, "w") as null, contextlib.redirect_stderr(null):
        try:
            yield
        finally:
            root.handlers[:] = handlers
            root.setLevel(level)


async def time_cds_calls(
    cfg: BenchConfig, body: bytes, path: str, settings: Any = None
) -> tuple[list[float], dict]:
    app = build_app(settings)
    transport = httpx.ASGITransport(app=app)
    latencies: list[float] = []
    headers = {"content-type": "application/json"}
    # ASGITransport does not run the lifespan; run it as uvicorn would (UCUM registry warmed,
    # start-up objects frozen out of the collector), or every full collection would walk this
    # process's benchmark data too.
    client = httpx.AsyncClient(transport=transport, base_url="http://bench.local")
    with _logs_to_null():
        async with app.router.lifespan_context(app), client:
            first = await client.post(path, content=body, headers=headers)
            if first.status_code != 200:
                raise RuntimeError(f"CDS service answered HTTP {first.status_code}")
            for i in range(cfg.cds_warmup + cfg.cds_calls):
                started = time.perf_counter()
                resp = await client.post(path, content=body, headers=headers)
                if i >= cfg.cds_warmup:
                    latencies.append((time.perf_counter() - started) * 1000)
                if resp.status_code != 200:
                    raise RuntimeError(f"CDS service answered HTTP {resp.status_code}")
    return latencies, first.json()


def cds_hooks(cfg: BenchConfig, protocol: Protocol, ws: Workspace) -> dict[str, Any]:
    from service.cds.router import service_id

    n = cfg.cds_obs
    pid = ws.patient_id(n)
    store = store_for([orjson.loads(ws.body(n))], BASE_URL)
    request = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/bench-user", "patientId": pid},
        "prefetch": prefetch_for(store, protocol, pid),
    }
    body = orjson.dumps(request)
    path = f"/cds-services/{service_id(protocol)}"
    latencies, answer = asyncio.run(time_cds_calls(cfg, body, path))
    return {
        "transport": "in-process httpx.ASGITransport (service cost, no network)",
        "observations": n,
        "request_bytes": len(body),
        "cards": len(answer.get("cards") or []),
        "latency": summary(latencies),
    }


# -- 6: memory --------------------------------------------------------------------------


def _rss(mode: str, path: Path, day: date) -> dict[str, int]:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", mode, str(path), day.isoformat()],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
        env=child_env(),
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory(cfg: BenchConfig, ws: Workspace, progress: Progress) -> dict[str, Any]:
    path = ws.file(cfg.memory_n)
    out: dict[str, Any] = {"n": cfg.memory_n, "body_bytes": path.stat().st_size}
    for mode, name in (("engine", "engine"), ("json", "json_loads"), ("orjson", "orjson_loads")):
        progress(f"peak RSS, {name}, N={cfg.memory_n}: {cfg.memory_reps} fresh interpreter(s)")
        runs = [_rss(mode, path, ws.anchor) for _ in range(cfg.memory_reps)]
        out[name] = {
            key: summary([r[key] for r in runs], "KiB")
            for key in ("peak_kb", "baseline_kb", "net_kb", "ru_maxrss_kb")
        }
        out[name]["peak_reset"] = all(r["peak_reset"] for r in runs)
    out["net_ratio"] = _ratio(
        out["engine"]["net_kb"]["median"], out["json_loads"]["net_kb"]["median"]
    )
    out["raw_ratio"] = _ratio(
        out["engine"]["peak_kb"]["median"], out["json_loads"]["peak_kb"]["median"]
    )
    out["net_ratio_orjson"] = _ratio(
        out["engine"]["net_kb"]["median"], out["orjson_loads"]["net_kb"]["median"]
    )
    return out
