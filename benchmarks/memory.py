"""Peak RSS of one evaluation, or of json.loads alone, in a fresh interpreter.

``python -m benchmarks.memory {engine|json|orjson} FILE YYYY-MM-DD`` imports the same modules
in both modes (so both start from the same baseline), records the RSS as the baseline,
reads the Bundle, does the work once and prints the numbers as JSON (KiB).

The peak is the kernel's high-water mark of this process (``VmHWM``), reset after the
imports. ``ru_maxrss`` is reported as well but not used: after ``exec`` Linux carries the
parent's high-water mark into it, so a child of a large benchmark process would report the
parent's size instead of its own.
"""

from __future__ import annotations

import json
import resource
import sys
from datetime import date
from pathlib import Path

import orjson

from service import units
from service.pipeline import evaluate_body
from service.protocol import load_protocol


def _maxrss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_peak() -> bool:
    """Start the high-water mark from the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def main(argv: list[str]) -> None:
    mode, path, day = argv[0], Path(argv[1]), date.fromisoformat(argv[2])
    protocol = load_protocol()
    units.warm_up()
    import_peak = _status_kb("VmHWM")
    reset = _reset_peak()
    baseline = _status_kb("VmRSS") or _maxrss_kb()
    body = path.read_bytes()
    if mode == "engine":
        _, result = evaluate_body(body, protocol, as_of=day)
        orjson.dumps(result)
    elif mode == "json":
        json.loads(body)
    elif mode == "orjson":
        orjson.loads(body)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    peak = _status_kb("VmHWM") or _maxrss_kb()
    out = {
        "peak_kb": peak,
        "baseline_kb": baseline,
        "net_kb": peak - baseline,
        "import_peak_kb": import_peak,
        "ru_maxrss_kb": _maxrss_kb(),
        "peak_reset": reset,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
