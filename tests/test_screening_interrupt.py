"""Ctrl-C on a real ``eligibility screen`` process with a worker pool: exit 130, keep what is
done, and ``--resume`` finishes the rest with each patient once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

from benchmarks.synthetic import make_patient
from tests.protocol_copies import SEED_DIR
from tests.screening_population import AS_OF, worklist

PATIENTS = 300


def _export(folder: Path) -> None:
    folder.mkdir()
    with (folder / "all.ndjson").open("wb") as f:
        for n in range(PATIENTS):
            data = make_patient(100, anchor=AS_OF, seed=n, patient_id=f"p{n:04d}")
            for resource in data.resources:
                f.write(orjson.dumps(resource) + b"\n")


# The child process does not see tests/conftest.py: name the seed trial, as written for it.
SEED_ONLY = {**os.environ, "ELIGIBILITY_PROTOCOL_DIRS": orjson.dumps([str(SEED_DIR)]).decode()}


def _command(src: Path, out: Path, *extra: str) -> list[str]:
    args = ["-m", "service.cli", "screen", "--ndjson", str(src), "--out", str(out)]
    return [sys.executable, *args, "--as-of", str(AS_OF), "--workers", "2", *extra]


def _rows(path: Path) -> int:
    try:
        return max(0, len(path.read_text().splitlines()) - 1)
    except OSError:
        return 0


def test_ctrl_c_keeps_finished_patients_and_resume_completes(tmp_path):
    src, out = tmp_path / "export", tmp_path / "out"
    _export(src)
    # Its own process group, so the signal reaches the pool's workers too, as Ctrl-C would.
    proc = subprocess.Popen(
        _command(src, out),
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=SEED_ONLY,
    )
    deadline = time.monotonic() + 120
    while _rows(out / "worklist.csv") < 2 and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    done = worklist(out / "worklist.csv")
    assert 0 < len(done) < PATIENTS

    resumed = subprocess.run(
        _command(src, out, "--resume"), capture_output=True, text=True, env=SEED_ONLY
    )
    assert resumed.returncode == 0, resumed.stderr
    rows = worklist(out / "worklist.csv")
    assert len(rows) == PATIENTS
    assert {p: r for p, r in rows.items() if p in done} == done
    lines = (out / "results.ndjson").read_bytes().splitlines()
    assert len(lines) == PATIENTS
