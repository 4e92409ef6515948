"""Several trials at once (issue 21): each measured next to the seed trial alone, same run.

* ``portfolio_engine``: one patient's Bundle through ``evaluate_body_portfolio_json`` (decoded
  once, Observations grouped once, one record and evaluation per study, the answer encoded)
  for 3 and 10 protocols, against ``evaluate_body_json`` with the seed alone (each is what
  ``POST /$eligibility`` runs); rotating rounds (``stats.interleaved``);
* ``new_protocols_engine``: each non-seed protocol of the three alone against the seed alone;
* ``cds_portfolio``: the portfolio CDS service (one card per study) with the three protocols;
* ``screen_portfolio``: NDJSON screening of the three protocols in one pass against the seed
  alone, rounds alternating.

The protocols are found at run time (every folder under ``fhir_mappings/`` with a
``protocol.toml``); while fewer than three exist, and for the seven more of ``portfolio_10``,
copies of the seed with another id, registry number and thresholds are generated in a temp
folder, so every case always runs. The JSON says which protocols were used and which were
generated.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import uuid
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import orjson

from benchmarks.stats import interleaved, summary
from fhir_mappings import DEFAULT_PROTOCOL, MAPPINGS_DIR, protocol_files
from service.portfolio_eval import evaluate_body_portfolio, evaluate_body_portfolio_json
from service.protocol import Protocol, load_protocol

CASES = ("portfolio_engine", "new_protocols_engine", "cds_portfolio", "screen_portfolio")
SEED_DIR = DEFAULT_PROTOCOL.parent
SEED_ID = "cd19-cart-rr-ball"
SEED_STUDY_FILE = "ResearchStudy-cd19-cart-rr-ball.json"
# (old, new) pairs in the seed's protocol.toml: variant k lowers the platelet and hemoglobin
# thresholds and shortens one look-back, so no two variants are the same protocol.
_PLATELETS = 'threshold = { value = 30, unit = "10*9/L" }'
_HEMOGLOBIN = 'threshold = { value = 60, unit = "g/L" }'


@dataclass(frozen=True)
class Used:
    """The protocols of one run: the real folders found, then generated variants."""

    three: list[Protocol]
    ten: list[Protocol]
    generated: set[str]  # ids of generated variants

    def describe(self, protocols: list[Protocol]) -> list[dict[str, str]]:
        return [
            {
                "id": p.id,
                "source": "generated" if p.id in self.generated else "fhir_mappings",
                "folder": p.directory.name,
            }
            for p in protocols
        ]


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    if old not in text:
        raise RuntimeError(f"{path}: {old!r} not found; the seed changed, update the bench")
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def seed_variant(dest: Path, k: int) -> Path:
    """A copy of the seed under id ``bench-variant-k``, its own canonical and registry
    number, with platelets >= 30-k, hemoglobin >= 60-k g/L and a 14-day window of 14-k%7."""
    study_id = f"bench-variant-{k}"
    shutil.copytree(SEED_DIR, dest)
    toml = dest / "protocol.toml"
    _edit(toml, f'id = "{SEED_ID}"', f'id = "{study_id}"')
    _edit(toml, _PLATELETS, _PLATELETS.replace("30", str(30 - k)))
    _edit(toml, _HEMOGLOBIN, _HEMOGLOBIN.replace("60", str(60 - k)))
    _edit(toml, "window_days = 14", f"window_days = {14 - k % 7}")
    canonical = f"https://example.org/fhir/ResearchStudy/{study_id}"
    path = dest / SEED_STUDY_FILE
    study = orjson.loads(path.read_bytes())
    study["id"] = study_id
    study["identifier"] = [
        {"use": "official", "system": "urn:ietf:rfc:3986", "value": canonical},
        {"system": "https://clinicaltrials.gov", "value": f"NCT9{k:07d}"},
    ]
    for ext in study.get("extension", []):
        if ext["url"].endswith("ResearchStudy.url"):
            ext["valueUri"] = canonical
    path.write_bytes(orjson.dumps(study, option=orjson.OPT_INDENT_2))
    return dest


def protocols_for(root: Path, base: Path = MAPPINGS_DIR) -> Used:
    """The seed first, then the other folders under ``base``; generated variants in ``root``
    fill up to three, and seven more make ten."""
    found = [load_protocol(f) for f in protocol_files(base)]
    found.sort(key=lambda p: (p.id != SEED_ID, p.id))
    three = found[:3]
    generated: set[str] = set()
    ten_extra: list[Protocol] = []
    k = 0
    while len(three) + len(ten_extra) < 10:
        k += 1
        variant = load_protocol(seed_variant(root / f"variant-{k}", k) / "protocol.toml")
        generated.add(variant.id)
        (three if len(three) < 3 else ten_extra).append(variant)
    return Used(three, three + ten_extra, generated)


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


# -- engine: the seed alone, 3 and 10 protocols -------------------------------------------


def portfolio_engine(
    body: bytes, n: int, used: Used, day: date, reps: int, warmup: int
) -> dict[str, Any]:
    from service.pipeline import evaluate_body_json

    seed = used.three[0]

    # Each side as ``POST /$eligibility`` runs it: the answer encoded inside the pause.
    def alone() -> bytes:
        return evaluate_body_json(body, seed, as_of=day)[1]

    def several(protocols: list[Protocol]) -> Any:
        def run() -> bytes:
            return evaluate_body_portfolio_json(body, protocols, as_of=day)[1]

        return run

    timed = {"seed": alone, "portfolio_3": several(used.three), "portfolio_10": several(used.ten)}
    samples = interleaved(
        timed, reps=dict.fromkeys(timed, reps), warmup=dict.fromkeys(timed, warmup)
    )
    statuses = {
        a.protocol.id: a.evaluation.status.value
        for a in evaluate_body_portfolio(body, used.ten, as_of=day)
    }
    out: dict[str, Any] = {
        "observations": n,
        "body_bytes": len(body),
        "protocols_3": used.describe(used.three),
        "protocols_10": used.describe(used.ten),
        "statuses": statuses,
    }
    for name in timed:
        out[name] = summary(samples[name])
    out["ratio_3"] = _ratio(out["portfolio_3"]["median"], out["seed"]["median"])
    out["ratio_10"] = _ratio(out["portfolio_10"]["median"], out["seed"]["median"])
    return out


def new_protocols_engine(
    body: bytes, n: int, used: Used, day: date, reps: int, warmup: int
) -> dict[str, Any]:
    """Each of the three but the seed, alone, against the seed alone (same body, same rounds)."""
    from service.pipeline import evaluate_body

    def engine(protocol: Protocol) -> Any:
        def run() -> bytes:
            return orjson.dumps(evaluate_body(body, protocol, as_of=day)[1])

        return run

    timed = {p.id: engine(p) for p in used.three}
    samples = interleaved(
        timed, reps=dict.fromkeys(timed, reps), warmup=dict.fromkeys(timed, warmup)
    )
    seed = used.three[0]
    seed_ms = statistics.median(samples[seed.id])
    rows: list[dict[str, Any]] = []
    ratios: list[float] = []
    for p, meta in zip(used.three[1:], used.describe(used.three)[1:], strict=True):
        engine_ms = summary(samples[p.id])
        ratio = _ratio(engine_ms["median"], seed_ms)
        rows.append({**meta, "engine": engine_ms, "ratio": ratio})
        if ratio is not None:
            ratios.append(ratio)
    return {
        "observations": n,
        "seed": summary(samples[seed.id]),
        "rows": rows,
        "worst_ratio": max(ratios) if ratios else None,
    }


# -- CDS Hooks: the portfolio service with the three ----------------------------------------


def cds_portfolio(cfg: Any, used: Used, ws: Any) -> dict[str, Any]:
    from benchmarks.app_server import bench_settings
    from benchmarks.cases import time_cds_calls
    from benchmarks.fhir_server import store_for
    from benchmarks.synthetic import BASE_URL
    from service.cds.portfolio import PORTFOLIO_SERVICE_ID, prefetch_plan
    from service.portfolio_eval import contexts_for

    n = cfg.cds_obs
    pid = ws.patient_id(n)
    store = store_for([orjson.loads(ws.body(n))], BASE_URL)
    plan = prefetch_plan([c.relevance for c in contexts_for(used.three)])
    request = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/bench-user", "patientId": pid},
        "prefetch": store.prefetch(plan.templates, pid),
    }
    body = orjson.dumps(request)
    settings = bench_settings().model_copy(
        update={"protocol_dirs": [p.directory for p in used.three]}
    )
    path = f"/cds-services/{PORTFOLIO_SERVICE_ID}"
    latencies, answer = asyncio.run(time_cds_calls(cfg, body, path, settings))
    return {
        "transport": "in-process httpx.ASGITransport (service cost, no network)",
        "observations": n,
        "protocols": used.describe(used.three),
        "prefetch_keys": len(plan.templates),
        "request_bytes": len(body),
        "cards": len(answer.get("cards") or []),
        "latency": summary(latencies),
    }


# -- screening: three studies in one pass vs the seed alone --------------------------------


def _screen(src: Path, out: Path, protocols: list[Protocol], day: date) -> dict[str, float]:
    import time

    from service.screening.outdir import OutputFolder
    from service.screening.runner import screen_ndjson

    shutil.rmtree(out, ignore_errors=True)
    chosen: Protocol | list[Protocol] = protocols[0] if len(protocols) == 1 else protocols
    folder = OutputFolder(out, chosen, day, resume=False)
    started = time.perf_counter()
    result = screen_ndjson(
        src, folder, protocols[0], protocols[0].directory / "protocol.toml", workers=1
    )
    wall = time.perf_counter() - started
    return {"wall": wall, "rows": sum(result.counts.values()), **result.summary.get("timings", {})}


def screen_portfolio(smoke: bool, used: Used, work: Path, progress: Any) -> dict[str, Any]:
    from benchmarks.screening import OBSERVATIONS, write_population

    patients = 40 if smoke else 1000
    rounds = 1 if smoke else 3
    day = date.today()
    progress(f"screening 1 and 3 studies, {patients} patients: {rounds} alternating rounds")
    write_population(work / "pop", patients, day)
    one, three = [], []
    for r in range(rounds):
        order = ("one", "three") if r % 2 == 0 else ("three", "one")
        for name in order:
            if name == "one":
                one.append(_screen(work / "pop", work / "o1", used.three[:1], day))
            else:
                three.append(_screen(work / "pop", work / "o3", used.three, day))
    ratios = [_ratio(t["wall"], o["wall"]) for o, t in zip(one, three, strict=True)]
    # What one pass cannot share: each study's own criteria. Screened alone, the other
    # studies' evaluation time added to the seed's is the floor of any one-pass ratio.
    progress("screening each other study alone once (the criteria's own cost)")
    each = {p.id: _screen(work / "pop", work / "oe", [p], day) for p in used.three[1:]}
    seed_eval = statistics.median(x["evaluateSeconds"] for x in one)
    seed_wall = statistics.median(x["wall"] for x in one)
    criteria = seed_eval + sum(x["evaluateSeconds"] for x in each.values())
    return {
        "patients": patients,
        "observationsPerPatient": OBSERVATIONS,
        "workers": 1,
        "rounds": rounds,
        "protocols": used.describe(used.three),
        "wall_one": summary([x["wall"] for x in one], "s"),
        "wall_three": summary([x["wall"] for x in three], "s"),
        "one": {k: statistics.median(x[k] for x in one) for k in one[0]},
        "three": {k: statistics.median(x[k] for x in three) for k in three[0]},
        "round_ratios": ratios,
        "ratio": statistics.median(x for x in ratios if x is not None),
        "each_alone": each,
        # the three screened one after the other, and their criteria alone, over the seed
        "separately_ratio": _ratio(seed_wall + sum(x["wall"] for x in each.values()), seed_wall),
        "criteria_floor_ratio": _ratio(criteria - seed_eval + seed_wall, seed_wall),
    }


# -- report: targets and table rows -------------------------------------------------------


def targets(cases: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue-21 targets of this run, for the cases it measured."""
    from benchmarks.targets import judged

    out = []
    if "portfolio_engine" in cases:
        e = cases["portfolio_engine"]
        n = e["observations"]
        out.append(judged("portfolio_3", f"3 protocols / seed alone at N={n:,}", e["ratio_3"]))
        out.append(judged("portfolio_10", f"10 protocols / seed alone at N={n:,}", e["ratio_10"]))
    if "new_protocols_engine" in cases:
        e = cases["new_protocols_engine"]
        names = ", ".join(r["id"] for r in e["rows"])
        out.append(
            judged(
                "new_protocols_engine",
                f"worst engine time / seed's at N={e['observations']:,} ({names})",
                e["worst_ratio"],
            )
        )
    if "cds_portfolio" in cases:
        c = cases["cds_portfolio"]
        out.append(
            judged(
                "cds_p95_portfolio",
                f"CDS patient-view p95, 3 protocols ({c['observations']} obs)",
                c["latency"]["p95"],
            )
        )
    if "screen_portfolio" in cases:
        s = cases["screen_portfolio"]
        out.append(
            judged(
                "screen_portfolio",
                f"screening 3 studies / 1, {s['patients']:,} patients",
                s["ratio"],
            )
        )
    return out


def rows(cases: dict[str, Any], by_id: dict[str, Any], check: Any, x: Any, ms: Any) -> list:
    """The portfolio lines of the bench table (same columns as report.table)."""
    out: list[list[str]] = []
    if "portfolio_engine" in cases:
        e = cases["portfolio_engine"]
        for name, tid, ratio in (
            ("3", "portfolio_3", "ratio_3"),
            ("10", "portfolio_10", "ratio_10"),
        ):
            s = e[f"portfolio_{name}"]
            generated = sum(p["source"] == "generated" for p in e[f"protocols_{name}"])
            out.append(
                [
                    "8 portfolio" if name == "3" else "",
                    f"{name} protocols, N={e['observations']:,} ({generated} generated)",
                    ms(s["median"]),
                    f"{ms(s['min'])} – {ms(s['max'])} (n={s['n']})",
                    f"seed alone {ms(e['seed']['median'])}",
                    x(e[ratio]),
                    *check(by_id.get(tid)),
                ]
            )
    if "new_protocols_engine" in cases:
        e = cases["new_protocols_engine"]
        worst = next((r for r in e["rows"] if r["ratio"] == e["worst_ratio"]), None)
        for r in e["rows"]:
            last = r is worst  # the judged row
            out.append(
                [
                    "9 new alone" if r is e["rows"][0] else "",
                    f"{r['id']} alone ({r['source']}), N={e['observations']:,}",
                    ms(r["engine"]["median"]),
                    "",
                    f"seed alone {ms(e['seed']['median'])}",
                    x(r["ratio"]),
                    *(check(by_id.get("new_protocols_engine")) if last else ("(worst judged)", "")),
                ]
            )
    if "cds_portfolio" in cases:
        c = cases["cds_portfolio"]
        out.append(
            [
                "10 CDS x3",
                f"patient-view, 3 protocols, {c['observations']} obs, {c['cards']} cards",
                f"p50 {ms(c['latency']['median'])}",
                f"p95 {ms(c['latency']['p95'])}, max {ms(c['latency']['max'])}",
                f"{c['prefetch_keys']} prefetch keys",
                "",
                *check(by_id.get("cds_p95_portfolio")),
            ]
        )
    if "screen_portfolio" in cases:
        s = cases["screen_portfolio"]
        out.append(
            [
                "11 screen x3",
                f"NDJSON screening, 3 studies, {s['patients']:,} patients, 1 worker",
                f"{s['three']['wall']:.2f} s",
                f"rounds {', '.join(f'{r:.2f}' for r in s['round_ratios'] if r is not None)}",
                f"seed alone {s['one']['wall']:.2f} s",
                x(s["ratio"]),
                *check(by_id.get("screen_portfolio")),
            ]
        )
        if "criteria_floor_ratio" in s:
            out.append(
                [
                    "",
                    "floor: the seed's run plus the others' criteria alone",
                    f"separately {x(s['separately_ratio'])}",
                    "each study screened alone once",
                    f"seed alone {s['one']['wall']:.2f} s",
                    x(s["criteria_floor_ratio"]),
                    "(reference)",
                    "",
                ]
            )
    return out
