"""What continuous screening remembers across restarts, in the shared state store
(SQLite on one host, Redis across replicas): the watermark and the versions processed.

``claim`` is the state store's atomic ``set_if_absent``: of a notification and a catch-up
(or two workers) that see the same version, exactly one gets to evaluate it.
"""

from __future__ import annotations

import contextlib
from datetime import datetime

from service.state.base import StateStore, StoreError
from service.subscriptions.changes import Change, parse_instant

WATERMARK_KEY = "subscription:watermark"
SEEN_PREFIX = "subscription:seen:"
WATERMARK_TTL = 400 * 86400.0  # every state entry expires; a year of silence resets it


class Ledger:
    def __init__(self, store: StateStore, seen_days: float) -> None:
        self.store = store
        self.seen_ttl = seen_days * 86400.0

    async def watermark(self) -> datetime | None:
        return parse_instant(await self.store.get(WATERMARK_KEY))

    async def set_watermark(self, moment: datetime) -> None:
        await self.store.put(WATERMARK_KEY, moment.isoformat(), WATERMARK_TTL)

    async def claim(self, change: Change) -> bool:
        """True for the first to see this version (a store that does not answer: True, so a
        change is evaluated twice rather than never)."""
        try:
            return await self.store.set_if_absent(SEEN_PREFIX + change.key, "1", self.seen_ttl)
        except StoreError:
            return True

    async def release(self, changes: list[Change]) -> None:
        """Forget claims whose evaluation failed, so the catch-up evaluates them again."""
        for change in changes:
            with contextlib.suppress(StoreError):
                await self.store.delete(SEEN_PREFIX + change.key)
