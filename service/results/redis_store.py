"""Redis ResultStore: a hash per patient and study, a sorted-set index per study.

``record`` is an optimistic transaction (WATCH the hash, read, MULTI/EXEC the write): when
another replica records the same patient and study in between, it reads again, so a change
of status is detected exactly once. The index scores are ``evaluated_at`` timestamps; a
page is cut after filtering the indexed studies' hashes (thousands of rows, one pipeline).
"""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError, WatchError

from service.results import codec
from service.results.model import StudyResult, with_change
from service.results.store import ResultStore, select_page
from service.state.base import StoreError
from service.state.redis_store import reply_text


class RedisResultStore(ResultStore):
    backend = "redis"

    def __init__(self, url: str, *, prefix: str = "cart-eligibility:", timeout: float = 2.0):
        self._url = url
        self._prefix = prefix + "results:"
        self._timeout = timeout
        self._client: aioredis.Redis | None = None

    def _redis(self) -> aioredis.Redis:
        if self._client is None:  # created inside the event loop that uses it
            self._client = aioredis.Redis.from_url(
                self._url,
                decode_responses=True,
                socket_timeout=self._timeout,
                socket_connect_timeout=self._timeout,
            )
        return self._client

    def _hash(self, patient_id: str, study_id: str) -> str:
        return f"{self._prefix}r:{study_id}:{patient_id}"

    def _index(self, study_id: str) -> str:
        return f"{self._prefix}study:{study_id}"

    @property
    def _studies(self) -> str:
        return f"{self._prefix}studies"

    async def record(self, result: StudyResult) -> StudyResult:
        key = self._hash(*result.key)
        try:
            async with self._redis().pipeline(transaction=True) as pipe:
                while True:
                    try:
                        await pipe.watch(key)
                        text = await pipe.hget(key, "data")
                        old = None if text is None else codec.loads(text)
                        if old is not None and old.evaluated_at > result.evaluated_at:
                            await pipe.unwatch()
                            return old
                        stored = with_change(result, old)
                        pipe.multi()
                        pipe.hset(
                            key,
                            mapping={
                                "data": codec.dumps(stored),
                                "status": stored.status,
                                "evaluated_ts": codec.timestamp(stored),
                            },
                        )
                        pipe.zadd(
                            self._index(stored.study_id),
                            {stored.patient_id: codec.timestamp(stored)},
                        )
                        pipe.sadd(self._studies, stored.study_id)
                        await pipe.execute()
                        return stored
                    except WatchError:
                        continue
        except RedisError as exc:
            raise StoreError(f"redis result store: {type(exc).__name__}") from None

    async def latest(self, patient_id: str, study_id: str) -> StudyResult | None:
        try:
            text = await self._redis().hget(self._hash(patient_id, study_id), "data")
        except RedisError as exc:
            raise StoreError(f"redis result store: {type(exc).__name__}") from None
        return None if text is None else codec.loads(text)

    async def query(
        self,
        *,
        study_ids: Sequence[str] | None = None,
        statuses: Sequence[str] | None = None,
        patient_id: str | None = None,
        sort: str = "evaluated_at",
        descending: bool = True,
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[list[StudyResult], int]:
        try:
            client = self._redis()
            studies = (
                list(study_ids)
                if study_ids is not None
                else sorted(reply_text(s) for s in await client.smembers(self._studies))
            )
            keys: list[str] = []
            for study in studies:
                if patient_id is not None:
                    keys.append(self._hash(patient_id, study))
                else:
                    members = await client.zrange(self._index(study), 0, -1)
                    keys.extend(self._hash(reply_text(p), study) for p in members)
            texts: list[str | None] = []
            if keys:
                async with client.pipeline(transaction=False) as pipe:
                    for key in keys:
                        pipe.hget(key, "data")
                    texts = await pipe.execute()
        except RedisError as exc:
            raise StoreError(f"redis result store: {type(exc).__name__}") from None
        return select_page(
            (codec.loads(t) for t in texts if t is not None),
            study_ids=study_ids,
            statuses=statuses,
            patient_id=patient_id,
            sort=sort,
            descending=descending,
            offset=offset,
            limit=limit,
        )

    async def clear(self) -> None:
        """This store's keys only (under its prefix), never the whole database."""
        try:
            client = self._redis()
            async for key in client.scan_iter(match=self._prefix + "*", count=500):
                await client.delete(key)
        except RedisError as exc:
            raise StoreError(f"redis result store: {type(exc).__name__}") from None

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
