"""Per-caller rate limits with the ``limits`` library over the service's state store.

``limits`` ships memory and Redis storages but none for SQLite, and the store already has the
one primitive a fixed window needs (an atomic increment whose expiry is set by the first
increment), so :class:`StateStoreStorage` adapts the store to ``limits``' storage interface and
all three backends count the same way. The strategy is ``limits``' fixed window: simple, one
round trip per request, at worst 2x the limit across a window boundary.

A store that cannot answer lets the request through (counted in
``eligibility_store_errors_total``): a rate limit must not take the clinical service down.
"""

import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from limits import RateLimitItem, parse
from limits.aio.storage import Storage
from limits.aio.strategies import FixedWindowRateLimiter

from service.ops import metrics
from service.ops.caller import Caller
from service.settings import Settings
from service.state import StateStore, StoreError

log = logging.getLogger("service.ops.ratelimit")


class StateStoreStorage(Storage):
    """``limits`` storage backed by a :class:`StateStore` (memory, SQLite or Redis)."""

    STORAGE_SCHEME = None  # not constructed from a URI

    def __init__(self, store: StateStore) -> None:
        super().__init__(wrap_exceptions=False)
        self.store = store

    @property
    def base_exceptions(self) -> type[Exception]:
        return StoreError

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        return await self.store.incr("rl:" + key, expiry, amount)

    async def get(self, key: str) -> int:
        value = await self.store.get("rl:" + key)
        return int(value) if value is not None else 0

    async def get_expiry(self, key: str) -> float:
        return await self.store.expires_at("rl:" + key) or time.time()

    async def check(self) -> bool:
        return await self.store.ping()

    async def reset(self) -> int | None:
        await self.store.clear()
        return None

    async def clear(self, key: str) -> None:
        await self.store.delete("rl:" + key)


class RateLimits:
    """The configured limit per scope (``eligibility``, ``cds``, ``screen``...)."""

    def __init__(self, store: StateStore, settings: Settings) -> None:
        self.enabled = settings.rate_limit_enabled
        self._store = store
        self._limiter = FixedWindowRateLimiter(StateStoreStorage(store))
        self._settings = settings
        self._items: dict[str, RateLimitItem] = {}
        for scope in ("eligibility", "cds"):
            self.item(scope)  # a malformed limit fails at start, not at the first request

    def item(self, scope: str) -> RateLimitItem:
        if scope not in self._items:
            # A scope with no setting of its own (e.g. a new operation) shares the
            # $eligibility limit until it gets one.
            text = getattr(self._settings, f"rate_limit_{scope}", None)
            text = text or self._settings.rate_limit_eligibility
            try:
                self._items[scope] = parse(text)
            except ValueError:
                raise ValueError(f"rate_limit_{scope}: not a rate limit: {text!r}") from None
        return self._items[scope]

    async def hit(self, scope: str, caller_id: str) -> float | None:
        """None when allowed, else the seconds until the caller's window resets."""
        if not self.enabled:
            return None
        item = self.item(scope)
        who = hashlib.sha256(caller_id.encode()).hexdigest()[:24]  # short, no raw issuer URLs
        try:
            if await self._limiter.hit(item, scope, who):
                return None
            reset_at, _ = await self._limiter.get_window_stats(item, scope, who)
        except StoreError:
            metrics.store_error(self._store.backend, "rate_limit")
            log.warning("rate limit store unavailable: request allowed")
            return None
        return max(1.0, reset_at - time.time())


def rate_limited(
    scope: str, caller_dependency: Callable[..., Awaitable[Caller]]
) -> Callable[..., Awaitable[None]]:
    """A FastAPI dependency: 429 with ``Retry-After`` and an OperationOutcome over the limit.

    Reusable per operation: ``Depends(rate_limited("screen", api_caller))``.
    """

    async def dependency(
        request: Request, caller: Annotated[Caller, Depends(caller_dependency)]
    ) -> None:
        limits: RateLimits = request.app.state.rate_limits
        wait = await limits.hit(scope, caller.id)
        if wait is None:
            return
        metrics.RATE_LIMITED.labels(scope=scope).inc()
        seconds = math.ceil(wait)
        raise HTTPException(
            429,
            f"rate limit exceeded ({limits.item(scope)}); retry after {seconds} s",
            headers={"Retry-After": str(seconds)},
        )

    return dependency
