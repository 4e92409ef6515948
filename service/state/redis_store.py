"""Redis store (redis-py's asyncio client): shared by every replica that names the same URL.

``SET NX PX`` is Redis's own atomic set-if-absent with expiry; counters use ``SET NX EX`` and
``INCRBY`` in one MULTI/EXEC transaction, so the first increment of a window also sets its
expiry and no counter is ever left without one.
"""

from __future__ import annotations

import math
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from service.state.base import StateStore, StoreError


def reply_text(value: object) -> str:
    """A Redis reply as text. The clients here decode replies (``decode_responses=True``), but
    redis-py types them as bytes or str: this proves it, and names a reply that is neither."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode()
    raise StoreError(f"redis: unexpected reply type {type(value).__name__}")


class RedisStore(StateStore):
    backend = "redis"

    def __init__(self, url: str, *, prefix: str = "cart-eligibility:", timeout: float = 2.0):
        self._url = url
        self._prefix = prefix
        self._timeout = timeout
        self._client: aioredis.Redis | None = None

    def _redis(self) -> aioredis.Redis:
        # Created on first use, inside the event loop that will use its connections.
        if self._client is None:
            self._client = aioredis.Redis.from_url(
                self._url,
                decode_responses=True,
                socket_timeout=self._timeout,
                socket_connect_timeout=self._timeout,
            )
        return self._client

    def _k(self, key: str) -> str:
        return self._prefix + key

    async def set_if_absent(self, key: str, value: str, ttl: float) -> bool:
        try:
            stored = await self._redis().set(
                self._k(key), value, px=max(1, math.ceil(ttl * 1000)), nx=True
            )
        except RedisError as exc:
            raise StoreError(f"redis state store: {type(exc).__name__}") from None
        return bool(stored)

    async def get(self, key: str) -> str | None:
        try:
            value = await self._redis().get(self._k(key))
        except RedisError as exc:
            raise StoreError(f"redis state store: {type(exc).__name__}") from None
        return None if value is None else reply_text(value)

    async def put(self, key: str, value: str, ttl: float) -> None:
        try:
            await self._redis().set(self._k(key), value, px=max(1, math.ceil(ttl * 1000)))
        except RedisError as exc:
            raise StoreError(f"redis state store: {type(exc).__name__}") from None

    async def delete(self, key: str) -> None:
        try:
            await self._redis().delete(self._k(key))
        except RedisError as exc:
            raise StoreError(f"redis state store: {type(exc).__name__}") from None

    async def incr(self, key: str, ttl: float, amount: int = 1) -> int:
        k = self._k(key)
        try:
            async with self._redis().pipeline(transaction=True) as pipe:
                pipe.set(k, 0, px=max(1, math.ceil(ttl * 1000)), nx=True)
                pipe.incrby(k, amount)
                _, value = await pipe.execute()
        except RedisError as exc:
            raise StoreError(f"redis state store: {type(exc).__name__}") from None
        return int(value)

    async def expires_at(self, key: str) -> float | None:
        try:
            pttl = await self._redis().pttl(self._k(key))
        except RedisError as exc:
            raise StoreError(f"redis state store: {type(exc).__name__}") from None
        return None if pttl is None or pttl < 0 else time.time() + pttl / 1000

    async def ping(self) -> bool:
        try:
            return bool(await self._redis().ping())
        except RedisError:
            return False

    async def clear(self) -> None:
        """Delete this store's keys only (those under its prefix), never the whole database."""
        try:
            client = self._redis()
            async for key in client.scan_iter(match=self._prefix + "*", count=500):
                await client.delete(key)
        except RedisError as exc:
            raise StoreError(f"redis state store: {type(exc).__name__}") from None

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
