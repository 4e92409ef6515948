"""A real service process under the amplification of issue 19, 6: peak memory stays bounded.

Four 19.5 MB bodies of 6.5 million empty entries each, sent at once, raised the service's
peak RSS by 8.6 GB before each got its 400. Now each is refused (413, the entry cap) before
anything per entry is built, and the byte budget bounds how many are read at once: the peak
may grow by the bodies themselves (each is held about twice while it is joined), far below
the bound asserted here, and the service keeps answering.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import orjson
import pytest

from tests.builders import bundle, lab, patient
from tests.ops_support import ServiceProcess

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/<pid>/status")

BOUND_MB = 600  # peak RSS growth allowed for the four bodies together
FHIR = {"Content-Type": "application/fhir+json"}
GOOD = orjson.dumps(bundle(patient(), lab("777-3", 12, "10*9/L")))
ENTRIES = 6_500_000  # 19.5 MB: under the default 20 MiB body limit


def _peak_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def _amplification(generic: bool) -> bytes:
    """Empty entries; ``generic``: a duplicate key first, so the scanner gives up and the
    generic path (which decoded everything: 0.58 GB) has to decide."""
    head = (
        b'{"resourceType":"Bundle","id":"a","id":"b",' if generic else b'{"resourceType":"Bundle",'
    )
    return head + b'"entry":[' + b",".join([b"{}"] * ENTRIES) + b"]}"


def test_parallel_amplification_bodies_keep_peak_memory_bounded(tmp_path):
    service = ServiceProcess({"TMPDIR": str(tmp_path)}, workers=1, log=tmp_path / "serve.log")
    try:
        service.wait_ready()
        url = f"{service.base}/$eligibility"
        assert httpx.post(url, content=GOOD, headers=FHIR, timeout=30).status_code == 200
        before = _peak_mb(service.proc.pid)
        bodies = [_amplification(generic=k % 2 == 1) for k in range(4)]
        assert all(len(b) < 20 * 1024 * 1024 for b in bodies)

        def send(body: bytes) -> httpx.Response:
            return httpx.post(url, content=body, headers=FHIR, timeout=60)

        with ThreadPoolExecutor(len(bodies)) as pool:
            answers = list(pool.map(send, bodies))
        grown = _peak_mb(service.proc.pid) - before

        statuses = [a.status_code for a in answers]
        assert set(statuses) <= {413, 503}, statuses  # refused, or told to retry
        assert 413 in statuses
        for answer in answers:
            assert answer.json()["resourceType"] == "OperationOutcome"
        assert grown < BOUND_MB, f"peak RSS grew by {grown:.0f} MB"
        assert httpx.get(f"{service.base}/healthz", timeout=10).status_code == 200
        assert httpx.post(url, content=GOOD, headers=FHIR, timeout=30).status_code == 200
    finally:
        service.stop()
