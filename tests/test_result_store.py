"""The ResultStore contract, run against each backend: memory, SQLite, and a real
redis-server (marker ``multiprocess``, REDIS_TEST_URL: deploy/redis/run-tests; skipped with a
reason without one)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from service.results import StudyResult, open_result_store
from service.results.codec import dumps, loads
from service.results.redis_store import RedisResultStore
from service.results.sqlite import SQLiteResultStore
from service.results.store import MemoryResultStore, choose_results_backend
from service.settings import Settings
from tests.ops_support import redis_url

T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def result(pid: str, study: str, status: str, minutes: int = 0, **kw) -> StudyResult:
    return StudyResult(
        patient_id=pid,
        study_id=study,
        status=status,
        evaluated_at=T0 + timedelta(minutes=minutes),
        as_of="2026-11-20",
        source=kw.pop("source", "api"),
        **kw,
    )


@pytest.fixture(params=["memory", "sqlite", pytest.param("redis", marks=pytest.mark.multiprocess)])
async def store(request, tmp_path):
    if request.param == "memory":
        s = MemoryResultStore()
    elif request.param == "sqlite":
        s = SQLiteResultStore(tmp_path / "results.sqlite3")
    else:
        s = RedisResultStore(redis_url(), prefix=f"test-{uuid.uuid4().hex}:")
    yield s
    await s.clear()
    await s.aclose()


async def test_first_answer_is_stored_and_is_not_a_change(store) -> None:
    stored = await store.record(result("p1", "s1", "potential-candidate", open_criteria=("I5",)))
    assert stored.change is None and stored.previous_status is None
    assert await store.latest("p1", "s1") == stored
    assert await store.latest("p1", "s2") is None


async def test_a_new_status_is_a_change_with_words_and_is_kept_while_unchanged(store) -> None:
    await store.record(result("p1", "s1", "potential-candidate", open_criteria=("I5", "I9")))
    changed = await store.record(result("p1", "s1", "eligible", 5))
    assert changed.previous_status == "potential-candidate"
    assert changed.changed_at == T0 + timedelta(minutes=5)
    assert changed.change == "potential-candidate -> eligible; resolved: I5, I9"
    again = await store.record(result("p1", "s1", "eligible", 9))
    assert again.change == changed.change and again.evaluated_at == T0 + timedelta(minutes=9)
    assert await store.latest("p1", "s1") == again


async def test_an_older_answer_never_replaces_a_newer_one(store) -> None:
    newer = await store.record(result("p1", "s1", "eligible", 10, source="cds"))
    kept = await store.record(result("p1", "s1", "ineligible", 1, source="screening"))
    assert kept == newer
    assert (await store.latest("p1", "s1")).status == "eligible"


async def test_one_study_never_touches_another(store) -> None:
    await store.record(result("p1", "s1", "potential-candidate"))
    await store.record(result("p1", "s2", "potential-candidate"))
    await store.record(result("p1", "s1", "eligible", 3))
    other = await store.latest("p1", "s2")
    assert other.status == "potential-candidate" and other.change is None


async def _fill(store) -> None:
    rows = [
        ("p1", "s1", "eligible", 1, ()),
        ("p2", "s1", "potential-candidate", 2, ("I5", "I9", "I11")),
        ("p3", "s1", "ineligible", 3, ()),
        ("p4", "s1", "potential-candidate", 4, ("I5",)),
        ("p1", "s2", "potential-candidate", 5, ("I2", "I3")),
        ("p2", "s2", "eligible", 6, ()),
    ]
    for pid, study, status, minutes, open_ in rows:
        await store.record(result(pid, study, status, minutes, open_criteria=open_))


async def test_query_filters_by_study_status_and_patient(store) -> None:
    await _fill(store)
    page, total = await store.query(study_ids=["s1"])
    assert total == 4 and {r.patient_id for r in page} == {"p1", "p2", "p3", "p4"}
    page, total = await store.query(statuses=["potential-candidate"])
    assert total == 3
    assert {r.key for r in page} == {("p2", "s1"), ("p4", "s1"), ("p1", "s2")}
    page, total = await store.query(study_ids=["s2"], statuses=["eligible"])
    assert [r.key for r in page] == [("p2", "s2")] and total == 1
    page, total = await store.query(patient_id="p1")
    assert {r.key for r in page} == {("p1", "s1"), ("p1", "s2")} and total == 2
    assert await store.query(study_ids=[]) == ([], 0)


@pytest.mark.parametrize(
    ("sort", "descending", "expected"),
    [
        ("evaluated_at", True, ["p2/s2", "p1/s2", "p4/s1", "p3/s1", "p2/s1", "p1/s1"]),
        ("evaluated_at", False, ["p1/s1", "p2/s1", "p3/s1", "p4/s1", "p1/s2", "p2/s2"]),
        ("patient_id", False, ["p1/s1", "p1/s2", "p2/s1", "p2/s2", "p3/s1", "p4/s1"]),
        ("open", True, ["p2/s1", "p1/s2", "p4/s1", "p3/s1", "p2/s2", "p1/s1"]),
        ("status", False, ["p1/s1", "p2/s2", "p3/s1", "p1/s2", "p2/s1", "p4/s1"]),
    ],
)
async def test_query_sorts_with_ties_broken_by_patient_then_study(
    store, sort, descending, expected
) -> None:
    await _fill(store)
    page, _ = await store.query(sort=sort, descending=descending, limit=100)
    assert [f"{r.patient_id}/{r.study_id}" for r in page] == expected


async def test_pages_cover_every_row_once(store) -> None:
    await _fill(store)
    seen = []
    for offset in range(0, 6, 4):
        page, total = await store.query(sort="patient_id", offset=offset, limit=4)
        assert total == 6
        seen.extend(r.key for r in page)
    assert len(seen) == 6 == len(set(seen))


async def test_unknown_sort_key_is_refused(store) -> None:
    with pytest.raises(ValueError, match="unknown sort key"):
        await store.query(sort="evaluated_at; DROP TABLE study_results")


def test_codec_round_trips_every_field() -> None:
    r = result(
        "p1",
        "s1",
        "eligible",
        open_criteria=("I5",),
        failed_criteria=("I2",),
        versions={"Observation/1": "3"},
        previous_status="potential-candidate",
        changed_at=T0,
        change="potential-candidate -> eligible",
    )
    assert loads(dumps(r)) == r


async def test_sqlite_results_outlive_the_process_and_are_shared_by_workers(tmp_path) -> None:
    path = tmp_path / "results.sqlite3"
    first, second = SQLiteResultStore(path), SQLiteResultStore(path)
    await first.record(result("p1", "s1", "potential-candidate"))
    changed = await second.record(result("p1", "s1", "eligible", 1))
    assert changed.previous_status == "potential-candidate"
    await first.aclose()
    reopened = SQLiteResultStore(path)
    assert (await reopened.latest("p1", "s1")).status == "eligible"
    await second.aclose()
    await reopened.aclose()


async def test_concurrent_records_detect_the_change_once(tmp_path) -> None:
    """Two workers record the same new status at once: one of them sees the change."""
    path = tmp_path / "results.sqlite3"
    seed = SQLiteResultStore(path)
    await seed.record(result("p1", "s1", "potential-candidate"))
    workers = [SQLiteResultStore(path) for _ in range(4)]
    stored = await asyncio.gather(
        *(w.record(result("p1", "s1", "eligible", 1 + i)) for i, w in enumerate(workers))
    )
    assert {s.changed_at for s in stored} == {min(s.changed_at for s in stored)}
    assert {s.previous_status for s in stored} == {"potential-candidate"}
    for s in [seed, *workers]:
        await s.aclose()


def test_backend_choice_follows_the_state_store(tmp_path: Path) -> None:
    base = {"_env_file": None}
    assert choose_results_backend(Settings(**base)) == "sqlite"  # durable by default
    assert choose_results_backend(Settings(**base, redis_url="redis://x:6379/0")) == "redis"
    assert choose_results_backend(Settings(**base, results_backend="memory")) == "memory"
    store = open_result_store(Settings(**base, results_sqlite_path=tmp_path / "r.sqlite3"))
    assert isinstance(store, SQLiteResultStore) and store.path == tmp_path / "r.sqlite3"
    assert isinstance(
        open_result_store(Settings(**base, results_backend="memory")), MemoryResultStore
    )
    redis_store = open_result_store(Settings(**base, redis_url="redis://x:6379/0"))
    assert isinstance(redis_store, RedisResultStore)


async def test_record_many_is_record_for_each(store) -> None:
    await store.record(result("p1", "s1", "potential-candidate", 5, open_criteria=("I5",)))
    batch = [
        result("p1", "s1", "eligible", 9),  # newer: a change
        result("p2", "s1", "ineligible", 1),  # first answer
        result("p3", "s1", "eligible", 1),
    ]
    assert await store.record_many(batch) == 3
    changed = await store.latest("p1", "s1")
    assert changed.change == "potential-candidate -> eligible; resolved: I5"
    await store.record_many([result("p1", "s1", "ineligible", 2)])  # older: ignored
    assert (await store.latest("p1", "s1")).status == "eligible"
    assert (await store.query(study_ids=["s1"]))[1] == 3
