"""Record the API's and CDS Hooks' answers after the answer has gone, never before it.

The worklist row of an answer is bookkeeping: the caller (an EHR waiting for its cards, a
script waiting for its Bundle) should not wait for a database write and a thread hop. So
``$eligibility`` and CDS Hooks hand their rows to :meth:`DeferredResultStore.defer`, which
returns at once; a task of the event loop writes them in batches (``record_many``: one
transaction however many rows are waiting).

Readers never see the difference: every other call (the worklist's ``query``, ``latest``, a
Subscription's ``record``, ``clear``, ``aclose``) first writes whatever is still waiting, so it
sees every answer given before it. Rows still waiting when the process is killed are lost, as
a row the store refuses is: logged, counted, and never a failed answer.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence

from service.results.model import StudyResult
from service.results.store import ResultStore

log = logging.getLogger("service.results")

MAX_WAITING = 10_000  # rows; past this, ``defer`` waits for a batch (a store that lags)


class DeferredResultStore(ResultStore):
    """``inner`` with ``defer`` (see the module); every ResultStore call is ``inner``'s."""

    def __init__(self, inner: ResultStore) -> None:
        self.inner = inner
        self.backend = getattr(inner, "backend", type(inner).__name__)
        self._waiting: list[StudyResult] = []
        self._writing = 0  # batches taken and not yet written
        self._lock = threading.Lock()  # readers may run in another thread's event loop
        self._idle = threading.Event()
        self._idle.set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def defer(self, results: Sequence[StudyResult]) -> None:
        """Queue ``results`` to be recorded after the caller's answer has gone."""
        if not results:
            return
        with self._lock:
            self._waiting.extend(results)
            self._idle.clear()
            backlog = len(self._waiting)
        if backlog > MAX_WAITING:
            await self._write_waiting()  # the store lags: the caller helps, bounded memory
            return
        task = asyncio.get_running_loop().create_task(self._write_waiting())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def flush(self) -> None:
        """Return once every row deferred before the call is stored (or refused and logged)."""
        await self._write_waiting()
        if not self._idle.is_set():  # a batch still being written by another task or thread
            await asyncio.to_thread(self._idle.wait, 30.0)

    async def _write_waiting(self) -> None:
        while True:
            with self._lock:
                batch, self._waiting = self._waiting, []
                if not batch:
                    if self._writing == 0:
                        self._idle.set()
                    return
                self._writing += 1
            try:
                await self.inner.record_many(batch)
            except Exception as exc:  # noqa: BLE001 - the answers went out; the rows are lost
                log.warning("result store failed", extra={"error_type": type(exc).__name__})
            finally:
                with self._lock:
                    self._writing -= 1
                    if not self._waiting and self._writing == 0:
                        self._idle.set()

    # -- every ResultStore call sees what was deferred before it ---------------------------
    async def record(self, result: StudyResult) -> StudyResult:
        await self.flush()
        return await self.inner.record(result)

    async def record_many(self, results: Sequence[StudyResult]) -> int:
        await self.flush()
        return await self.inner.record_many(results)

    async def latest(self, patient_id: str, study_id: str) -> StudyResult | None:
        await self.flush()
        return await self.inner.latest(patient_id, study_id)

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
        await self.flush()
        return await self.inner.query(
            study_ids=study_ids,
            statuses=statuses,
            patient_id=patient_id,
            sort=sort,
            descending=descending,
            offset=offset,
            limit=limit,
        )

    async def clear(self) -> None:
        await self.flush()
        await self.inner.clear()

    async def aclose(self) -> None:
        await self.flush()
        await self.inner.aclose()
