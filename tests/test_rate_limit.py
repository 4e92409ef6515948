"""Per-caller rate limits on $eligibility and CDS Hooks: 429, Retry-After, OperationOutcome."""

from __future__ import annotations

import asyncio
import uuid

import orjson
import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.ops.ratelimit import RateLimits
from service.settings import Settings, TrustedIssuer
from service.state.sqlite import SQLiteStore
from tests.builders import bundle, patient
from tests.ops_support import ISSUER, JWK, free_port, jwt_for, redis_url

FHIR = {"Content-Type": "application/fhir+json"}
KEY_A, KEY_B = "key-a-" + "x" * 24, "key-b-" + "y" * 24
SID = "cd19-cart-rr-ball-screening"


def _settings(**values) -> Settings:
    base = {
        "cds_auth_enabled": False,
        "api_keys": [KEY_A, KEY_B],
        "rate_limit_eligibility": "3/minute",
        "audit_sink": "none",
    }
    return Settings(_env_file=None, **(base | values))


def _post(client: TestClient, key: str):
    return client.post(
        "/$eligibility",
        content=orjson.dumps(bundle(patient())),
        headers={**FHIR, "Authorization": f"Bearer {key}"},
    )


def test_fourth_request_in_a_minute_is_429_with_retry_after_and_outcome():
    with TestClient(create_app(_settings())) as client:
        assert [_post(client, KEY_A).status_code for _ in range(3)] == [200, 200, 200]
        refused = _post(client, KEY_A)
        assert refused.status_code == 429
        retry_after = int(refused.headers["Retry-After"])
        assert 1 <= retry_after <= 60
        issue = refused.json()["issue"][0]
        assert refused.json()["resourceType"] == "OperationOutcome"
        assert issue["code"] == "throttled" and "3 per 1 minute" in issue["diagnostics"]
        # Another caller has its own budget; pull mode shares the $eligibility budget.
        assert _post(client, KEY_B).status_code == 200
        pulled = client.get(
            "/Patient/demo-eligible/$eligibility", headers={"Authorization": f"Bearer {KEY_A}"}
        )
        assert pulled.status_code == 429


def test_refused_credentials_are_401_not_counted():
    with TestClient(create_app(_settings())) as client:
        for _ in range(5):
            assert _post(client, "wrong-key").status_code == 401
        assert _post(client, KEY_A).status_code == 200


def test_rate_limit_can_be_switched_off():
    with TestClient(create_app(_settings(rate_limit_enabled=False))) as client:
        assert {_post(client, KEY_A).status_code for _ in range(5)} == {200}


def test_cds_hooks_limit_is_per_jwt_issuer_and_subject():
    settings = Settings(
        _env_file=None,
        cds_auth_enabled=True,
        cds_issuers=[TrustedIssuer(iss=ISSUER, jwks={"keys": [JWK]})],
        rate_limit_cds="2/minute",
        audit_sink="none",
    )
    url = "http://testserver/cds-services/" + SID + "/feedback"
    body = {"feedback": []}
    with TestClient(create_app(settings)) as client:

        def send(sub: str):
            token = jwt_for(url, sub=sub)
            return client.post(url, json=body, headers={"Authorization": f"Bearer {token}"})

        assert [send("client-1").status_code for _ in range(3)] == [200, 200, 429]
        assert send("client-2").status_code == 200


def test_limit_shared_by_two_workers_through_sqlite(tmp_path):
    """Two limiters (as two workers would have) over one SQLite file share one budget."""

    async def run() -> list[bool]:
        settings = _settings(rate_limit_eligibility="5/minute")
        workers = [RateLimits(SQLiteStore(tmp_path / "s.sqlite3"), settings) for _ in range(2)]
        hits = [workers[i % 2].hit("eligibility", "key-1") for i in range(10)]
        return [wait is None for wait in await asyncio.gather(*hits)]

    assert asyncio.run(run()).count(True) == 5


def test_store_down_lets_requests_through_and_counts_the_error():
    settings = _settings(
        redis_url=f"redis://127.0.0.1:{free_port()}/0", rate_limit_eligibility="1/minute"
    )
    with TestClient(create_app(settings)) as client:
        assert [_post(client, KEY_A).status_code for _ in range(3)] == [200, 200, 200]
        text = client.get("/metrics").text
        assert 'eligibility_store_errors_total{backend="redis",operation="rate_limit"}' in text


def test_limit_shared_by_two_services_through_redis():
    url = redis_url()
    prefix = f"test-{uuid.uuid4().hex}:"
    settings = _settings(redis_url=url, state_key_prefix=prefix, rate_limit_eligibility="4/minute")
    with (
        TestClient(create_app(settings)) as one,
        TestClient(create_app(settings)) as two,
    ):
        codes = [_post(one if i % 2 else two, KEY_A).status_code for i in range(6)]
    assert codes.count(200) == 4 and codes.count(429) == 2


def test_malformed_limit_fails_at_start():
    with pytest.raises(ValueError, match="rate_limit_eligibility"):
        create_app(_settings(rate_limit_eligibility="lots"))
