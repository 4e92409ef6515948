"""The work behind the receiver: claim each change once, debounce per patient, evaluate every
study, store the result, act on a status change; and the catch-up that misses nothing.

Bounded everywhere: the notification queue has a size (a full queue drops the notification:
the catch-up finds the change by ``_lastUpdated``), at most ``max_pending_patients`` patients
wait for their evaluation (the consumer then waits, so the queue fills instead of memory),
and at most ``concurrency`` patients are evaluated at once.

The watermark only moves over changes that are done: it is set to the newest change the
catch-up saw, but never past the oldest change still waiting or whose evaluation failed
(their claims are released, so the next catch-up evaluates them again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from service.fhir.errors import PatientNotFound
from service.ops import metrics
from service.ops.audit import AuditSink
from service.protocol import Protocol
from service.results import ResultStore, summarise
from service.settings import Settings
from service.subscriptions.actions import changed_now, on_change
from service.subscriptions.changes import Change, change_of, deletion_of
from service.subscriptions.evaluate import EvaluatePatient, evaluate_patient
from service.subscriptions.ledger import Ledger
from service.subscriptions.server import FhirServer, ServerError

log = logging.getLogger("service.subscriptions")
_EPSILON = timedelta(milliseconds=1)


@dataclass
class Stats:
    accepted: int = 0
    dropped: int = 0
    duplicates: int = 0
    evaluations: int = 0
    failures: int = 0
    status_changes: int = 0
    catchup_runs: int = 0
    last_catchup: str | None = None
    last_catchup_error: str | None = None


class SubscriptionWorker:
    def __init__(
        self,
        settings: Settings,
        protocols: Sequence[Protocol],
        ledger: Ledger,
        results: ResultStore,
        *,
        types: Sequence[str] = (),
        server: FhirServer | None = None,
        audit: AuditSink | None = None,
        evaluate: EvaluatePatient = evaluate_patient,
    ) -> None:
        self.settings = settings
        self.protocols = list(protocols)
        self.ledger = ledger
        self.results = results
        self.types = list(types)
        self.server = server
        self.audit = audit
        self.evaluate = evaluate
        self.debounce = settings.subscription_debounce_seconds
        self.queue: asyncio.Queue[Change] = asyncio.Queue(settings.subscription_queue_size)
        self.stats = Stats()
        self._batches: dict[str, list[Change]] = {}
        self._runs: dict[str, asyncio.Task[None]] = {}
        self._hold: dict[str, datetime] = {}  # patient -> oldest change not yet done
        self._room = asyncio.Condition()
        self._sem = asyncio.Semaphore(settings.subscription_concurrency)
        self._wake = asyncio.Event()  # a ping or a dropped notification: catch up now
        self._tasks: list[asyncio.Task[None]] = []
        self._deletions: set[asyncio.Task[None]] = set()  # whose a deleted resource was
        self._catchup_lock = asyncio.Lock()
        # cleared while a catch-up is still reading: a patient's changes from several types
        # (pages) wait for the whole read, so they make one evaluation, not one per type
        self._read_done = asyncio.Event()
        self._read_done.set()

    # -- intake --------------------------------------------------------------------------
    def offer(self, change: Change) -> bool:
        """From the receiver: never waits. A full queue drops it to the catch-up."""
        try:
            self.queue.put_nowait(change)
        except asyncio.QueueFull:
            self.stats.dropped += 1
            metrics.SUBSCRIPTION_NOTIFICATIONS.labels(outcome="dropped").inc()
            self._wake.set()
            return False
        return True

    def ping(self) -> None:
        """An empty-body notification: something matched; the catch-up finds what."""
        self._wake.set()

    def deleted(self, rtype: str, rid: str) -> None:
        """A deletion: a search no longer finds the resource, so the catch-up cannot tell
        whose it was. Its history can: the patient of its last version is re-evaluated (its
        answer may rest on what was deleted). Unknown whose: a catch-up, as for a ping."""
        if self.server is None:
            self.ping()
            return
        task = asyncio.get_running_loop().create_task(self._whose_deleted(rtype, rid))
        self._deletions.add(task)
        task.add_done_callback(self._deletions.discard)

    async def _whose_deleted(self, rtype: str, rid: str) -> None:
        assert self.server is not None
        try:
            entries = await self.server.history(rtype, rid)
        except ServerError as exc:
            log.warning("deleted resource history unread", extra={"error_type": type(exc).__name__})
            self.ping()
            return
        change = deletion_of(rtype, rid, entries)
        if change is None:
            self.ping()
        else:
            self.offer(change)

    async def admit(self, change: Change) -> None:
        """From the catch-up: waits for room (backpressure) instead of dropping."""
        await self.queue.put(change)

    # -- life cycle ----------------------------------------------------------------------
    def start(self, catch_up: bool = True) -> None:
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._consume()))
        if catch_up and self.server is not None:
            self._tasks.append(loop.create_task(self._catchup_loop()))

    async def stop(self) -> None:
        for task in [*self._tasks, *self._deletions, *self._runs.values()]:
            task.cancel()
        for task in [*self._tasks, *self._runs.values()]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()

    async def idle(self, timeout: float = 30.0) -> None:
        """Wait until every queued change is evaluated (tests, the catch-up, shutdown)."""
        async with asyncio.timeout(timeout):
            if self._deletions:
                await asyncio.gather(*list(self._deletions), return_exceptions=True)
            await self.queue.join()
            while self._runs:
                await asyncio.gather(*list(self._runs.values()), return_exceptions=True)

    # -- claim, debounce, evaluate -------------------------------------------------------
    async def _consume(self) -> None:
        while True:
            change = await self.queue.get()
            try:
                await self._accept(change)
            except Exception as exc:  # noqa: BLE001 - one bad change never stops the worker
                log.warning("change not accepted", extra={"error_type": type(exc).__name__})
            finally:
                self.queue.task_done()

    async def _accept(self, change: Change) -> None:
        if change.patient_id is None:
            return  # nobody's data (or a reference we cannot follow): nothing to evaluate
        if not await self.ledger.claim(change):
            self.stats.duplicates += 1
            metrics.SUBSCRIPTION_DUPLICATES.inc()
            return
        pid = change.patient_id
        async with self._room:
            limit = self.settings.subscription_max_pending_patients
            await self._room.wait_for(lambda: pid in self._runs or len(self._runs) < limit)
        self.stats.accepted += 1
        self._batches.setdefault(pid, []).append(change)
        if change.changed_at is not None:
            held = self._hold.get(pid)
            self._hold[pid] = change.changed_at if held is None else min(held, change.changed_at)
        if pid not in self._runs:
            self._runs[pid] = asyncio.get_running_loop().create_task(self._run(pid))

    async def _run(self, pid: str) -> None:
        """One patient: wait out the burst, evaluate, again while changes keep coming."""
        try:
            while True:
                await asyncio.sleep(self.debounce)
                await self._catch_up_read()
                changes = self._batches.pop(pid, [])
                async with self._sem:
                    ok = await self._evaluate(pid, changes)
                if pid not in self._batches:
                    if ok:
                        self._hold.pop(pid, None)
                    return
        finally:
            self._runs.pop(pid, None)
            async with self._room:
                self._room.notify_all()

    async def _catch_up_read(self) -> None:
        """Wait while a catch-up is reading, unless the pending patients fill the room (the
        catch-up then waits for room itself: evaluating is how room is made)."""
        limit = self.settings.subscription_max_pending_patients
        while not self._read_done.is_set() and len(self._runs) < limit:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await self._read_done.wait()

    async def _evaluate(self, pid: str, changes: list[Change]) -> bool:
        try:
            done = await self.evaluate(self.settings, self.protocols, pid)
        except PatientNotFound:
            done = []  # deleted or never there: nothing to screen
        except Exception as exc:  # noqa: BLE001 - the catch-up retries; never raised
            self.stats.failures += 1
            metrics.SUBSCRIPTION_EVALUATIONS.labels(outcome="failed").inc()
            log.warning("re-evaluation failed", extra={"error_type": type(exc).__name__})
            await self.ledger.release(changes)
            return False
        self.stats.evaluations += 1
        metrics.SUBSCRIPTION_EVALUATIONS.labels(outcome="done").inc()
        for item in done:
            result = summarise(item.evaluation, item.protocol.id, "subscription", item.versions)
            stored = await self.results.record(result)
            if changed_now(stored, result):
                self.stats.status_changes += 1
                await on_change(
                    stored,
                    item.protocol,
                    audit=self.audit,
                    server=self.server if self.settings.subscription_tasks_enabled else None,
                    role=self.settings.subscription_task_role,
                )
        now = datetime.now(UTC)
        for change in changes:
            if change.changed_at is not None:
                metrics.SUBSCRIPTION_LAG.observe(
                    max(0.0, (now - change.changed_at).total_seconds())
                )
        return True

    # -- catch-up ------------------------------------------------------------------------
    async def _catchup_loop(self) -> None:
        period = self.settings.subscription_catchup_seconds
        while True:
            await self.catch_up()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(period):
                    await self._wake.wait()

    async def catch_up(self) -> int:
        """Search ``_lastUpdated`` > watermark (less the overlap) over the subscribed types,
        page by page; admit every change (claims skip the ones already done); move the
        watermark over what is done. Returns the number of resources seen."""
        if self.server is None:
            return 0
        async with self._catchup_lock:
            try:
                seen = await self._catch_up()
            except Exception as exc:  # noqa: BLE001 - retried next period
                metrics.SUBSCRIPTION_CATCHUPS.labels(outcome="failed").inc()
                self.stats.last_catchup_error = type(exc).__name__
                log.warning("catch-up failed", extra={"error_type": type(exc).__name__})
                return 0
            metrics.SUBSCRIPTION_CATCHUPS.labels(outcome="done").inc()
            self.stats.catchup_runs += 1
            self.stats.last_catchup = datetime.now(UTC).isoformat(timespec="seconds")
            self.stats.last_catchup_error = None
            return seen

    async def _catch_up(self) -> int:
        assert self.server is not None
        mark = await self.ledger.watermark()
        if mark is None:  # first start: from now on (the server's history is screening's)
            await self.ledger.set_watermark(datetime.now(UTC))
            return 0
        since = mark - timedelta(seconds=self.settings.subscription_catchup_overlap_seconds)
        self._read_done.clear()
        try:
            newest, seen = await self._read(since, mark)
            await self.queue.join()  # every change admitted is now claimed and held (or done)
        finally:
            self._read_done.set()
        if self._hold:
            newest = min(newest, min(self._hold.values()) - _EPSILON)
        await self.ledger.set_watermark(newest)
        return seen

    async def _read(self, since: datetime, newest: datetime) -> tuple[datetime, int]:
        assert self.server is not None
        seen = 0
        for rtype in self.types:
            params: dict[str, Any] = {
                "_lastUpdated": f"gt{since.isoformat(timespec='milliseconds')}",
                "_sort": "_lastUpdated",
                "_count": str(self.settings.page_size),
            }
            async for page in self.server.pages(rtype, params):
                for resource in page:
                    change = change_of(resource)
                    if change is None:
                        continue
                    seen += 1
                    await self.admit(change)
                    if change.changed_at is not None and change.changed_at > newest:
                        newest = change.changed_at
        return newest, seen

    def status(self) -> dict[str, Any]:
        return {
            "queued": self.queue.qsize(),
            "pending_patients": len(self._runs),
            "oldest_pending_change": min(self._hold.values()).isoformat() if self._hold else None,
            "accepted": self.stats.accepted,
            "dropped": self.stats.dropped,
            "duplicates": self.stats.duplicates,
            "evaluations": self.stats.evaluations,
            "failures": self.stats.failures,
            "status_changes": self.stats.status_changes,
            "catchup_runs": self.stats.catchup_runs,
            "last_catchup": self.stats.last_catchup,
            "last_catchup_error": self.stats.last_catchup_error,
        }
