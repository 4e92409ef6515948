"""Where StudyResults live: one small interface, several backends (like service.state).

The memory backend is for one process and the tests; SQLite (one host) and Redis (several
replicas) follow the choice ``service.state.choose_backend`` makes for the state store.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Sequence

from service.results.model import StudyResult, with_change
from service.settings import Settings

SORT_KEYS = ("evaluated_at", "status", "patient_id", "open")


class ResultStore(ABC):
    """The latest StudyResult per (patient, study)."""

    @abstractmethod
    async def record(self, result: StudyResult) -> StudyResult:
        """Store ``result`` as the latest for its key unless a newer one is stored; return it
        as stored, with ``previous_status`` / ``change`` set when its status changed."""

    @abstractmethod
    async def latest(self, patient_id: str, study_id: str) -> StudyResult | None: ...

    @abstractmethod
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
        """One page of results and the total that match."""

    async def aclose(self) -> None:  # noqa: B027 - optional for backends without resources
        pass


def _sort_value(result: StudyResult, sort: str) -> object:
    if sort == "open":
        return len(result.open_criteria)
    return getattr(result, sort)


class MemoryResultStore(ResultStore):
    """One process (tests, the demo)."""

    def __init__(self) -> None:
        self._results: dict[tuple[str, str], StudyResult] = {}
        self._lock = asyncio.Lock()

    async def record(self, result: StudyResult) -> StudyResult:
        async with self._lock:
            old = self._results.get(result.key)
            if old is not None and old.evaluated_at > result.evaluated_at:
                return old
            stored = with_change(result, old)
            self._results[result.key] = stored
            return stored

    async def latest(self, patient_id: str, study_id: str) -> StudyResult | None:
        return self._results.get((patient_id, study_id))

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
        if sort not in SORT_KEYS:
            raise ValueError(f"unknown sort key {sort!r}")
        found = [
            r
            for r in self._results.values()
            if (study_ids is None or r.study_id in study_ids)
            and (statuses is None or r.status in statuses)
            and (patient_id is None or r.patient_id == patient_id)
        ]
        found.sort(key=lambda r: (_sort_value(r, sort), r.patient_id), reverse=descending)
        return found[offset : offset + limit], len(found)


def open_result_store(settings: Settings) -> ResultStore:
    """The backend for these settings (memory until the SQLite and Redis backends land)."""
    return MemoryResultStore()
