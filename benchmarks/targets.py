"""The benchmark's targets, declared once: id, case, what is measured, the limit, how.

The report judges each run against these (``judged``) and the manual's Performance page is
generated from them (``docs/gen_reference.py``), so the two cannot drift apart. A new case adds
its ``Target`` rows here. This module imports nothing else of ``benchmarks`` (a leaf), so the
report and the cases may both use it without an import circle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class Target:
    id: str  # as in the JSON report; ``{n}``/``{search}`` stand for a row's values
    case: str  # the key under ``cases`` in the JSON report
    measure: str  # what is measured, in words
    op: Literal["<=", ">="]
    limit: float | None  # None: set per row by the case (see ``limit_text``)
    unit: str = ""  # "" for a ratio
    how: str = ""  # how it is measured
    limit_text: str = ""  # the limit in words when it is set per row


TARGETS: tuple[Target, ...] = (
    Target(
        "engine_json_mid",
        "engine_vs_json",
        "engine / json.loads, second-largest size",
        "<=",
        2.0,
        how="evaluate_body + orjson.dumps of the answer vs stdlib json.loads of the same "
        "bytes, GC as normal, rotating order",
    ),
    Target(
        "engine_json_large",
        "engine_vs_json",
        "engine / json.loads, largest size",
        "<=",
        2.5,
        how="as engine_json_mid",
    ),
    Target(
        "engine_orjson_mid",
        "engine_vs_json",
        "engine / orjson.loads (GC paused), second-largest size",
        "<=",
        1.0,
        how="the floor is the decoder the engine itself uses",
    ),
    Target(
        "engine_orjson_large",
        "engine_vs_json",
        "engine / orjson.loads (GC paused), largest size",
        "<=",
        1.0,
        how="as engine_orjson_mid",
    ),
    Target(
        "naive_engine_mid",
        "engine_vs_json",
        "fhir.resources / engine, second-largest size",
        ">=",
        10.0,
        how="fhir.resources R4B Bundle.model_validate_json of the same bytes",
    ),
    Target(
        "growth",
        "growth",
        "engine time, largest / second-largest size",
        "<=",
        4.4,
        how="derived from engine_vs_json (4x the Observations)",
    ),
    Target(
        "pull_{n}_{search}",
        "pull",
        "pull-mode wall time at N Observations (GET or POST search)",
        "<=",
        None,
        "ms",
        how="fetch + evaluation against a loopback FHIR server with a fixed latency per request",
        limit_text="1.3 x slowest query + 20 ms",
    ),
    Target(
        "http_c8",
        "http",
        "$eligibility / bare route requests per second, concurrency 8",
        ">=",
        0.7,
        how="one uvicorn worker in a subprocess; rounds alternate both routes",
    ),
    Target(
        "cds_p95",
        "cds",
        "CDS Hooks patient-view p95 latency (500 Observations)",
        "<=",
        10.0,
        "ms",
        how="in-process through httpx.ASGITransport, full prefetch",
    ),
    Target(
        "memory",
        "memory",
        "peak RSS (net) engine / json.loads, largest size",
        "<=",
        2.0,
        how="a fresh interpreter per run; VmHWM reset after the imports",
    ),
    Target(
        "memory_orjson",
        "memory",
        "peak RSS (net) engine / orjson.loads, largest size",
        "<=",
        0.6,
        how="as memory",
    ),
    Target(
        "screen_throughput",
        "screening",
        "NDJSON screening (2 workers) / engine-only rate",
        ">=",
        0.8,
        how="eligibility screen --ndjson over a synthetic population",
    ),
    Target(
        "screen_scaling",
        "screening",
        "screening evaluation phase, 2 workers / 1",
        ">=",
        1.7,
        how="the evaluation phase of the same run, 1 and 2 workers",
    ),
    Target(
        "screen_memory",
        "screening",
        "screening peak RSS, 10x the patients",
        "<=",
        1.2,
        how="peak RSS of a child process at two population sizes",
    ),
    Target(
        "screen_search",
        "screening",
        "search-driven / replay wall time",
        "<=",
        1.3,
        how="search-driven screening vs the same pull-mode evaluations replayed directly",
    ),
    Target(
        "portfolio_3",
        "portfolio_engine",
        "one patient, three protocols / the seed alone (5,000 Observations)",
        "<=",
        1.5,
        how="evaluate_body_portfolio (decoded once, one record and evaluation per study) + "
        "orjson.dumps vs the seed alone, rotating rounds; protocols found under fhir_mappings/, "
        "generated seed variants while fewer than three",
    ),
    Target(
        "portfolio_10",
        "portfolio_engine",
        "one patient, ten protocols / the seed alone (5,000 Observations)",
        "<=",
        2.5,
        how="as portfolio_3; the three plus seven seed variants with other thresholds",
    ),
    Target(
        "new_protocols_engine",
        "new_protocols_engine",
        "engine time of each non-seed protocol of the three / the seed's (worst)",
        "<=",
        1.3,
        how="evaluate_body + orjson.dumps of the same 5,000-Observation Bundle, rotating rounds",
    ),
    Target(
        "cds_p95_portfolio",
        "cds_portfolio",
        "CDS Hooks patient-view p95, three protocols (500 Observations)",
        "<=",
        10.0,
        "ms",
        how="the portfolio service (one card per study) in-process, the union prefetch",
    ),
    Target(
        "screen_portfolio",
        "screen_portfolio",
        "NDJSON screening wall time, three studies in one pass / the seed alone",
        "<=",
        1.6,
        how="eligibility screen's core (1 worker, inline) over 1,000 synthetic patients, "
        "rounds alternating",
    ),
)

BY_ID = {t.id: t for t in TARGETS}


def judged(
    tid: str,
    description: str,
    measured: float | None,
    *,
    family: str | None = None,
    limit: float | None = None,
) -> dict[str, Any]:
    """One target of this run, as the JSON report holds it: the declared op, limit and unit."""
    spec = BY_ID[family or tid]
    bound = spec.limit if limit is None else limit
    if bound is None:
        raise ValueError(f"target {tid} needs a per-row limit")
    op = spec.op
    ok = measured is not None and (measured <= bound if op == "<=" else measured >= bound)
    return {
        "id": tid,
        "description": description,
        "measured": measured,
        "op": op,
        "limit": bound,
        "unit": spec.unit,
        "pass": ok,
    }
