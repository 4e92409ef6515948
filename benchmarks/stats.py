"""Timing helpers: a clock around a call, and the summary every measurement is reported as."""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sample."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(values: Sequence[float], unit: str = "ms", *, keep: bool = True) -> dict[str, Any]:
    """Median and spread of a sample; ``keep`` also stores the rounded samples."""
    if not values:
        raise ValueError("no samples")
    out: dict[str, Any] = {
        "unit": unit,
        "n": len(values),
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "p95": round(percentile(values, 95), 3),
    }
    if keep:
        out["samples"] = [round(v, 3) for v in values]
    return out


def time_ms(fn: Callable[[], Any]) -> float:
    """Wall time of one call in ms, from a collected heap so earlier garbage is not billed.

    The collector stays enabled during the call: a real request pays its own GC too.
    """
    gc.collect()
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


def interleaved(
    fns: dict[str, Callable[[], Any]], reps: dict[str, int], warmup: dict[str, int]
) -> dict[str, list[float]]:
    """Time several callables side by side: warm-ups first, then rounds that rotate the order,
    so drift and heap state hit every callable alike."""
    for name, fn in fns.items():
        for _ in range(warmup.get(name, 0)):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for round_no in range(max(reps.values(), default=0)):
        shift = round_no % len(names)
        for name in names[shift:] + names[:shift]:
            if len(samples[name]) < reps.get(name, 0):
                samples[name].append(time_ms(fns[name]))
    return samples
