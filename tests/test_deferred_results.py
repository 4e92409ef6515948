"""The API's and CDS Hooks' rows are written after the answer has gone (service.results.
deferred), and every reader still sees every answer given before it read."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime

import orjson
from fastapi.testclient import TestClient

from service.api import create_app
from service.results import MemoryResultStore, StudyResult
from service.results.deferred import MAX_WAITING, DeferredResultStore
from service.settings import Settings

T0 = datetime(2026, 12, 8, 9, 0, tzinfo=UTC)


def row(pid: str, status: str = "eligible") -> StudyResult:
    return StudyResult(
        patient_id=pid,
        study_id="s1",
        status=status,
        evaluated_at=T0,
        as_of="2026-12-08",
        source="api",
    )


class Held(MemoryResultStore):
    """A store whose writes wait until the test opens the gate (a slow database)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.batches: list[int] = []

    async def record_many(self, results):
        await self.gate.wait()
        self.batches.append(len(results))
        return await super().record_many(results)


async def test_defer_returns_before_the_write_and_a_reader_waits_for_it() -> None:
    inner = Held()
    store = DeferredResultStore(inner)
    await store.defer([row("p1"), row("p2")])  # returns at once: the gate is shut
    await asyncio.sleep(0)
    assert await inner.latest("p1", "s1") is None  # not written yet
    reader = asyncio.create_task(store.latest("p1", "s1"))
    await asyncio.sleep(0.01)
    assert not reader.done()  # the reader waits for the deferred rows...
    inner.gate.set()
    assert (await reader).status == "eligible"  # ...and then sees them
    assert inner.batches == [2]  # one batch, one transaction


async def test_a_store_failure_loses_only_that_batch_and_raises_nothing(caplog) -> None:
    class Failing(MemoryResultStore):
        calls = 0

        async def record_many(self, results):
            Failing.calls += 1
            if Failing.calls == 1:
                raise OSError("disk full")
            return await super().record_many(results)

    store = DeferredResultStore(Failing())
    await store.defer([row("p1")])
    await store.flush()
    await store.defer([row("p2")])
    assert await store.latest("p1", "s1") is None  # lost, and logged
    assert (await store.latest("p2", "s1")).status == "eligible"
    assert "result store failed" in caplog.text and "p1" not in caplog.text


async def test_a_reader_in_another_threads_event_loop_sees_the_deferred_rows() -> None:
    store = DeferredResultStore(MemoryResultStore())
    await store.defer([row("p1")])
    seen: list = []
    thread = threading.Thread(target=lambda: seen.append(asyncio.run(store.query())))
    thread.start()
    thread.join(10)
    ((rows, total),) = seen
    assert total == 1 and rows[0].patient_id == "p1"


async def test_a_backlog_past_the_bound_is_written_by_the_caller() -> None:
    inner = MemoryResultStore()
    store = DeferredResultStore(inner)
    await store.defer([row(f"p{n}") for n in range(MAX_WAITING + 1)])
    # written before defer returned: memory stays bounded when the store lags
    assert (await inner.query(limit=1))[1] == MAX_WAITING + 1


def test_an_answer_is_in_the_worklist_store_as_soon_as_anyone_reads_it() -> None:
    app = create_app(Settings(_env_file=None, results_backend="sqlite"))
    with TestClient(app) as client:
        body = orjson.dumps(
            {"resourceType": "Bundle", "type": "collection",
             "entry": [{"resource": {"resourceType": "Patient", "id": "px"}}]}
        )  # fmt: skip
        r = client.post(
            "/$eligibility", content=body, headers={"Content-Type": "application/fhir+json"}
        )
        assert r.status_code == 200
        store = app.state.result_store
        assert isinstance(store, DeferredResultStore)
        found = asyncio.run(store.latest("px", "cd19-cart-rr-ball"))
        assert found is not None and found.source == "api"
