"""Shared by the operations tests: a real redis-server (REDIS_TEST_URL), real service processes
on loopback ports, CDS client JWTs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import redis
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

REDIS_URL = os.environ.get("REDIS_TEST_URL")
ISSUER = "https://ehr.example.org"
KID = "ops-test-key"
PRIVATE_KEY = ec.generate_private_key(ec.SECP384R1())
JWK = {**ECAlgorithm.to_jwk(PRIVATE_KEY.public_key(), as_dict=True), "kid": KID, "alg": "ES384"}
REPO = Path(__file__).resolve().parents[1]


def redis_url() -> str:
    """The test redis-server's URL, or skip (CI starts one: see docs-ops.md)."""
    if not REDIS_URL:
        pytest.skip("REDIS_TEST_URL is not set: no redis-server to test against")
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        pytest.skip(f"redis-server at REDIS_TEST_URL does not answer ({type(exc).__name__})")
    return REDIS_URL


def jwt_for(aud: str, *, iss: str = ISSUER, key: Any = PRIVATE_KEY, **claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": iss, "aud": aud, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4())}
    return jwt.encode(payload | claims, key, algorithm="ES384", headers={"kid": KID, "typ": "JWT"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServiceProcess:
    """``eligibility serve`` in a subprocess on a loopback port; stopped by :meth:`stop`."""

    def __init__(self, env: dict[str, str], workers: int, log: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        command = [
            sys.executable, "-m", "service.cli", "serve",
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(workers),
        ]  # fmt: skip
        # Only the settings given here: none inherited from the test run's environment.
        inherited = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("ELIGIBILITY_")
            and k not in ("PROMETHEUS_MULTIPROC_DIR", "WEB_CONCURRENCY")
        }
        full_env = {**inherited, "PYTHONUNBUFFERED": "1", **env}
        self._log = log.open("wb")
        # stdout carries the audit stream: to the log file, never an unread pipe.
        self.proc = subprocess.Popen(
            command, cwd=REPO, env=full_env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("service did not become ready")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()
