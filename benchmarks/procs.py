"""Start a benchmark server in its own process and stop it again, whatever happens.

Servers run in subprocesses (not threads) so the load generator and the server do not
share one GIL: on a 2-core machine each gets a core, as client and server would in reality.
"""

from __future__ import annotations

import selectors
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from benchmarks import child_env


class ServerStartError(RuntimeError):
    """The server process exited or did not announce its port in time."""


def _read_port(proc: subprocess.Popen[str], timeout: float) -> int:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if not sel.select(left):
                break
            line = proc.stdout.readline()
            if not line:
                raise ServerStartError(f"server process exited with code {proc.wait()}")
            if line.startswith("PORT "):
                return int(line.split()[1])
    raise ServerStartError(f"server did not announce its port within {timeout:g} s")


def _wait_ready(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=2.0).status_code < 500:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise ServerStartError(f"server at {url} not ready within {timeout:g} s")
        time.sleep(0.05)


@contextmanager
def spawned_server(
    module: str,
    args: list[str],
    *,
    ready_path: str,
    log_file: Path | None = None,
    timeout: float = 60.0,
) -> Iterator[str]:
    """Run ``python -m module args``; yield ``http://127.0.0.1:<port>`` once ``ready_path``
    answers; terminate the process (and only it) on exit."""
    log = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115
    env = child_env(PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", module, *args]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    try:
        port = _read_port(proc, timeout)
        origin = f"http://127.0.0.1:{port}"
        _wait_ready(origin + ready_path, timeout)
        yield origin
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()
        if not isinstance(log, int):  # a file we opened, not subprocess.DEVNULL
            log.close()
