"""Where StudyResults live: one small interface, several backends (like service.state).

The memory backend is for one process and the tests; SQLite (the default: one host, survives
a restart) and Redis (several replicas) are chosen as ``service.state.choose_backend`` does.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from service.results.codec import timestamp
from service.results.model import StudyResult, with_change
from service.settings import Settings

SORT_KEYS = ("evaluated_at", "status", "patient_id", "open")
DEFAULT_SQLITE_NAME = "cart-eligibility-results.sqlite3"


class ResultStore(ABC):
    """The latest StudyResult per (patient, study)."""

    @abstractmethod
    async def record(self, result: StudyResult) -> StudyResult:
        """Store ``result`` as the latest for its key unless a newer one is stored; return it
        as stored, with ``previous_status`` / ``change`` set when its status changed."""

    async def record_many(self, results: Sequence[StudyResult]) -> int:
        """Record each of ``results`` as ``record`` does (a screening run's thousands of rows:
        backends may do it in one transaction); returns how many were given."""
        for result in results:
            await self.record(result)
        return len(results)

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

    async def clear(self) -> None:
        """Forget every result (tests, a reset of the demo)."""
        raise NotImplementedError

    async def aclose(self) -> None:  # noqa: B027 - optional for backends without resources
        pass


def _sort_value(result: StudyResult, sort: str) -> object:
    if sort == "open":
        return len(result.open_criteria)
    if sort == "evaluated_at":
        return timestamp(result)
    return getattr(result, sort)


def select_page(
    results: Iterable[StudyResult],
    *,
    study_ids: Sequence[str] | None,
    statuses: Sequence[str] | None,
    patient_id: str | None,
    sort: str,
    descending: bool,
    offset: int,
    limit: int,
) -> tuple[list[StudyResult], int]:
    """Filter, sort (ties by patient, then study: pages never overlap) and cut one page."""
    if sort not in SORT_KEYS:
        raise ValueError(f"unknown sort key {sort!r}")
    found = [
        r
        for r in results
        if (study_ids is None or r.study_id in study_ids)
        and (statuses is None or r.status in statuses)
        and (patient_id is None or r.patient_id == patient_id)
    ]
    found.sort(key=lambda r: (_sort_value(r, sort), r.patient_id, r.study_id), reverse=descending)
    return found[offset : offset + limit], len(found)


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

    async def clear(self) -> None:
        self._results.clear()

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
        return select_page(
            self._results.values(),
            study_ids=study_ids,
            statuses=statuses,
            patient_id=patient_id,
            sort=sort,
            descending=descending,
            offset=offset,
            limit=limit,
        )


def choose_results_backend(settings: Settings) -> str:
    """Redis when a URL is set (several replicas), else SQLite: results outlive a restart and
    are shared by the workers of one host; memory only when asked for."""
    if settings.results_backend != "auto":
        return settings.results_backend
    return "redis" if settings.redis_url is not None else "sqlite"


def results_sqlite_path(settings: Settings) -> Path:
    from service.state.factory import private_state_dir

    return settings.results_sqlite_path or private_state_dir() / DEFAULT_SQLITE_NAME


def open_result_store(settings: Settings) -> ResultStore:
    """The configured backend; connections open on first use (inside the event loop)."""
    backend = choose_results_backend(settings)
    if backend == "redis":
        from service.results.redis_store import RedisResultStore

        if settings.redis_url is None:
            raise ValueError("results_backend=redis needs ELIGIBILITY_REDIS_URL")
        return RedisResultStore(
            settings.redis_url.get_secret_value(), prefix=settings.state_key_prefix
        )
    if backend == "sqlite":
        from service.results.sqlite import SQLiteResultStore

        return SQLiteResultStore(results_sqlite_path(settings))
    return MemoryResultStore()


def app_result_store(app: Any) -> ResultStore:
    """The one ResultStore of an app (``app.state.result_store``: the API opens it at start;
    opened from the app's settings on first use when nothing did yet)."""
    store = getattr(app.state, "result_store", None)
    if store is None:
        store = app.state.result_store = open_result_store(app.state.settings)
    return store
