"""The CDS JWT replay cache on the shared state store: one acceptance across authenticators
(workers) sharing a store, and fail-closed when the store cannot answer."""

from __future__ import annotations

import asyncio

from service.cds.jwt_auth import CdsAuthError, CdsClientAuthenticator
from service.state.redis_store import RedisStore
from service.state.sqlite import SQLiteStore
from tests.ops_support import free_port
from tests.test_cds_jwt import AUD, settings, token


async def _reason(auth: CdsClientAuthenticator, bearer: str) -> str | None:
    try:
        await auth.verify(bearer, AUD)
    except CdsAuthError as exc:
        return exc.reason
    return None


async def test_two_authenticators_sharing_a_sqlite_file_accept_a_token_once(tmp_path):
    path = tmp_path / "state.sqlite3"
    workers = [CdsClientAuthenticator(settings(), store=SQLiteStore(path)) for _ in range(2)]
    bearer = f"Bearer {token()}"
    reasons = await asyncio.gather(*(_reason(workers[i % 2], bearer) for i in range(10)))
    assert reasons.count(None) == 1
    assert reasons.count("replayed jti") == 9


async def test_store_down_refuses_the_token():
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
    auth = CdsClientAuthenticator(settings(), store=store)
    assert await _reason(auth, f"Bearer {token()}") == "replay store unavailable"
    await store.aclose()
