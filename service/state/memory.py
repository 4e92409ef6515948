"""In-process store: right for one worker, wrong for several (each would have its own)."""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable

from service.state.base import StateStore, StoreFull


class MemoryStore(StateStore):
    """A dict with expiries. Bounded: when full of unexpired entries it raises StoreFull."""

    backend = "memory"

    def __init__(self, max_entries: int = 100_000, clock: Callable[[], float] = time.time) -> None:
        self._max = max_entries
        self._clock = clock
        self._data: dict[str, tuple[str | int, float]] = {}
        self._expiries: list[tuple[float, str]] = []  # min-heap; stale items are skipped

    def __len__(self) -> int:
        self._prune()
        return len(self._data)

    def _prune(self) -> float:
        now = self._clock()
        while self._expiries and self._expiries[0][0] <= now:
            expiry, key = heapq.heappop(self._expiries)
            entry = self._data.get(key)
            if entry is not None and entry[1] == expiry:
                del self._data[key]
        return now

    def _live(self, key: str) -> tuple[str | int, float] | None:
        entry = self._data.get(key)
        if entry is not None and entry[1] <= self._clock():
            del self._data[key]
            return None
        return entry

    def _write(self, key: str, value: str | int, expiry: float) -> None:
        if key not in self._data and len(self._data) >= self._max:
            raise StoreFull("the in-memory state store is full")
        self._data[key] = (value, expiry)
        heapq.heappush(self._expiries, (expiry, key))

    # No awaits inside these methods: each runs to completion on the event loop, so each is
    # atomic with respect to every other coroutine of this process.
    async def set_if_absent(self, key: str, value: str, ttl: float) -> bool:
        now = self._prune()
        if self._live(key) is not None:
            return False
        self._write(key, value, now + ttl)
        return True

    async def get(self, key: str) -> str | None:
        entry = self._live(key)
        return None if entry is None else str(entry[0])

    async def put(self, key: str, value: str, ttl: float) -> None:
        now = self._prune()
        self._write(key, value, now + ttl)

    async def delete(self, key: str) -> None:
        self._data.pop(key, None)

    async def incr(self, key: str, ttl: float, amount: int = 1) -> int:
        now = self._prune()
        entry = self._live(key)
        if entry is None:
            self._write(key, amount, now + ttl)
            return amount
        value = int(entry[0]) + amount
        self._data[key] = (value, entry[1])
        return value

    async def expires_at(self, key: str) -> float | None:
        entry = self._live(key)
        return None if entry is None else entry[1]

    async def ping(self) -> bool:
        return True

    async def clear(self) -> None:
        self._data.clear()
        self._expiries.clear()

    async def aclose(self) -> None:
        """Nothing to release."""
