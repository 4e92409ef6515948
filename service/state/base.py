"""The state store interface every backend implements.

Keys are strings; values are short strings (or integers for counters). Every entry expires:
nothing the service remembers (a JWT ``jti``, a rate-limit window, a clinician's override)
is meant to live for ever, so every write names its time to live.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from service.errors import UpstreamError


class StoreError(UpstreamError):
    """The store could not answer (unreachable, locked, full). Callers decide to fail open
    (rate limits, card suppression) or closed (JWT replay)."""


class StoreFull(StoreError):
    """A bounded in-memory store is full of unexpired entries: it refuses new ones rather than
    forgetting old ones (forgetting would re-open the replay window)."""


class StateStore(ABC):
    """Atomic operations shared by every worker and replica that uses the same backend."""

    backend: str = "abstract"

    @abstractmethod
    async def set_if_absent(self, key: str, value: str, ttl: float) -> bool:
        """Store ``value`` unless an unexpired entry exists; True when stored. Atomic: of two
        concurrent callers with the same key, across processes, exactly one gets True."""

    @abstractmethod
    async def get(self, key: str) -> str | None:
        """The unexpired value, or None."""

    @abstractmethod
    async def put(self, key: str, value: str, ttl: float) -> None:
        """Store (or replace) ``value`` for ``ttl`` seconds."""

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Forget ``key`` (no error when absent)."""

    @abstractmethod
    async def incr(self, key: str, ttl: float, amount: int = 1) -> int:
        """Add ``amount`` to a counter and return the new value. A missing or expired counter
        starts at 0 and expires ``ttl`` seconds after its first increment (a fixed window)."""

    @abstractmethod
    async def expires_at(self, key: str) -> float | None:
        """When the unexpired ``key`` expires (Unix seconds), or None when absent."""

    @abstractmethod
    async def ping(self) -> bool:
        """True when the backend answers."""

    @abstractmethod
    async def clear(self) -> None:
        """Forget everything this store holds (tests, ``limits`` reset)."""

    @abstractmethod
    async def aclose(self) -> None:
        """Release connections."""
