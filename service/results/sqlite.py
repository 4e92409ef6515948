"""SQLite ResultStore: one table in the service's private state dir, shared by the workers.

``record`` reads the stored row and writes the new one inside one ``BEGIN IMMEDIATE``
transaction, so two workers recording the same patient and study never both see the old
status (a change is detected once). WAL lets the worklist read while a worker writes; the
worklist's filters and sorts are indexed columns, so a page of thousands of rows is one query.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from service.results import codec
from service.results.model import StudyResult, with_change
from service.results.store import SORT_KEYS, ResultStore
from service.state.base import StoreError
from service.state.sqlite import connect_wal

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS study_results ("
    "patient_id TEXT NOT NULL, study_id TEXT NOT NULL, status TEXT NOT NULL, "
    "evaluated_ts REAL NOT NULL, open_count INTEGER NOT NULL, data TEXT NOT NULL, "
    "PRIMARY KEY (patient_id, study_id)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS study_results_study_status "
    "ON study_results (study_id, status, evaluated_ts)",
    "CREATE INDEX IF NOT EXISTS study_results_evaluated ON study_results (evaluated_ts)",
)
_UPSERT = (
    "INSERT INTO study_results (patient_id, study_id, status, evaluated_ts, open_count, data) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (patient_id, study_id) DO UPDATE SET "
    "status = excluded.status, evaluated_ts = excluded.evaluated_ts, "
    "open_count = excluded.open_count, data = excluded.data"
)
_COLUMNS = {
    "evaluated_at": "evaluated_ts",
    "status": "status",
    "patient_id": "patient_id",
    "open": "open_count",
}
assert set(_COLUMNS) == set(SORT_KEYS)


class SQLiteResultStore(ResultStore):
    backend = "sqlite"

    def __init__(self, path: Path, *, busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        self._timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # one connection per process, one statement at a time

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = connect_wal(self.path, self._timeout, _SCHEMA)
        return self._conn

    def _run(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._lock:
            try:
                return fn(self._connection())
            except sqlite3.Error as exc:
                raise StoreError(f"sqlite result store: {type(exc).__name__}") from None

    async def _call(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        return await asyncio.to_thread(self._run, fn)

    @staticmethod
    def _record_one(conn: sqlite3.Connection, result: StudyResult) -> StudyResult:
        """Inside a transaction: keep the newer of stored and given, marking a change."""
        row = conn.execute(
            "SELECT data FROM study_results WHERE patient_id = ? AND study_id = ?", result.key
        ).fetchone()
        old = None if row is None else codec.loads(row[0])
        if old is not None and old.evaluated_at > result.evaluated_at:
            return old
        stored = with_change(result, old)
        conn.execute(
            _UPSERT,
            (
                stored.patient_id,
                stored.study_id,
                stored.status,
                codec.timestamp(stored),
                len(stored.open_criteria),
                codec.dumps(stored),
            ),
        )
        return stored

    def _transaction(self, conn: sqlite3.Connection, results: Sequence[StudyResult]) -> list:
        conn.execute("BEGIN IMMEDIATE")
        try:
            stored = [self._record_one(conn, r) for r in results]
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return stored

    async def record(self, result: StudyResult) -> StudyResult:
        (stored,) = await self._call(lambda conn: self._transaction(conn, [result]))
        return stored

    async def record_many(self, results: Sequence[StudyResult]) -> int:
        await self._call(lambda conn: self._transaction(conn, list(results)))
        return len(results)

    async def latest(self, patient_id: str, study_id: str) -> StudyResult | None:
        def op(conn: sqlite3.Connection) -> StudyResult | None:
            row = conn.execute(
                "SELECT data FROM study_results WHERE patient_id = ? AND study_id = ?",
                (patient_id, study_id),
            ).fetchone()
            return None if row is None else codec.loads(row[0])

        return await self._call(op)

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
        if sort not in _COLUMNS:
            raise ValueError(f"unknown sort key {sort!r}")
        where: list[str] = []
        args: list[Any] = []
        for column, values in (("study_id", study_ids), ("status", statuses)):
            if values is not None:
                where.append(f"{column} IN ({', '.join('?' * len(values)) or 'NULL'})")
                args.extend(values)
        if patient_id is not None:
            where.append("patient_id = ?")
            args.append(patient_id)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        way = "DESC" if descending else "ASC"
        order = f"{_COLUMNS[sort]} {way}, patient_id {way}, study_id {way}"

        def op(conn: sqlite3.Connection) -> tuple[list[StudyResult], int]:
            (total,) = conn.execute(f"SELECT COUNT(*) FROM study_results{clause}", args).fetchone()
            rows = conn.execute(
                f"SELECT data FROM study_results{clause} ORDER BY {order} LIMIT ? OFFSET ?",
                [*args, limit, offset],
            ).fetchall()
            return [codec.loads(r[0]) for r in rows], int(total)

        return await self._call(op)

    async def clear(self) -> None:
        await self._call(lambda conn: conn.execute("DELETE FROM study_results"))

    async def aclose(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
