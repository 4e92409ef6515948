"""Replay refused everywhere, with real processes on loopback ports: the same CDS client JWT
sent concurrently to two uvicorn workers (``eligibility serve --workers 2``, SQLite by default)
and to two service processes sharing a real redis-server is accepted exactly once. The same
runs check rate limits and /metrics across workers."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path

import httpx
import pytest

from tests.ops_support import ISSUER, JWK, ServiceProcess, jwt_for, redis_url

PUBLIC = "https://cds.example.org"  # both processes sit behind one URL (the JWT aud)
API_KEY = "multi-process-test-key-0123456789"
pytestmark = pytest.mark.multiprocess


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        "TMPDIR": str(tmp_path),  # the default SQLite file and the metrics dir land here
        "ELIGIBILITY_CDS_AUTH_ENABLED": "true",
        "ELIGIBILITY_CDS_ISSUERS": json.dumps([{"iss": ISSUER, "jwks": {"keys": [JWK]}}]),
        "ELIGIBILITY_PUBLIC_BASE_URL": PUBLIC,
        "ELIGIBILITY_API_KEYS": json.dumps([API_KEY]),
        "ELIGIBILITY_RATE_LIMIT_ELIGIBILITY": "5/minute",
        "ELIGIBILITY_RATE_LIMIT_CDS": "1000/minute",
    }
    return env | extra


async def _same_token(bases: list[str], copies: int) -> list[int]:
    """``copies`` concurrent requests per base, every one carrying the same JWT."""
    token = jwt_for(f"{PUBLIC}/cds-services")
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(timeout=20) as client:
        requests = [
            client.get(f"{base}/cds-services", headers=headers)
            for _ in range(copies)
            for base in bases
        ]
        return [r.status_code for r in await asyncio.gather(*requests)]


@pytest.fixture()
def two_workers(tmp_path):
    service = ServiceProcess(_env(tmp_path), workers=2, log=tmp_path / "serve.log")
    try:
        service.wait_ready()
        yield service, tmp_path
    finally:
        service.stop()


def test_two_workers_accept_a_jwt_once_and_share_limits_and_metrics(two_workers):
    service, tmp_path = two_workers
    rounds = [asyncio.run(_same_token([service.base], 12)) for _ in range(4)]
    for codes in rounds:
        assert sorted(codes) == [200] + [401] * 11, codes

    # One rate-limit budget across the workers: 5 per minute for this API key.
    async def burst() -> list[int]:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(timeout=20) as client:
            calls = [
                client.get(f"{service.base}/Patient/demo-eligible/$eligibility", headers=headers)
                for _ in range(10)
            ]
            return [r.status_code for r in await asyncio.gather(*calls)]

    codes = asyncio.run(burst())
    assert codes.count(200) == 5 and codes.count(429) == 5, codes

    # /metrics (answered by either worker) adds up both workers' counts.
    text = httpx.get(f"{service.base}/metrics", timeout=10).text
    assert 'route="/cds-services",status="401"} 44.0' in text
    assert 'route="/cds-services",status="200"} 4.0' in text
    assert 'eligibility_evaluations_total{status="eligible"} 5.0' in text

    # More than one worker process answered (each writes its own metrics file; the supervisor
    # may also have replaced one), and the workers shared one private SQLite file.
    metric_files = list(tmp_path.glob("prom-*/counter_*.db"))
    assert len({f.stem.split("_")[-1] for f in metric_files}) >= 2, metric_files
    state = tmp_path / f"cart-eligibility-{os.getuid()}"
    assert (state / f"cart-eligibility-state-{service.port}.sqlite3").exists()
    assert state.stat().st_mode & 0o777 == 0o700


def test_two_services_sharing_redis_accept_a_jwt_once(tmp_path):
    url = redis_url()
    env = _env(
        tmp_path,
        ELIGIBILITY_REDIS_URL=url,
        ELIGIBILITY_STATE_KEY_PREFIX=f"test-{uuid.uuid4().hex}:",
    )
    services = [ServiceProcess(env, workers=1, log=tmp_path / f"svc{i}.log") for i in range(2)]
    try:
        for service in services:
            service.wait_ready()
        for _ in range(3):
            codes = asyncio.run(_same_token([s.base for s in services], 6))
            assert sorted(codes) == [200] + [401] * 11, codes
        assert not list(tmp_path.glob("cart-eligibility-*/*.sqlite3"))  # redis, not sqlite
    finally:
        for service in services:
            service.stop()
