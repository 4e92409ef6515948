"""SQLite store: one file shared by every worker process on one host.

Each operation is a single SQL statement (an upsert with a condition), which SQLite runs
atomically across processes; WAL mode lets readers and one writer proceed together and the busy
timeout makes a second writer wait instead of failing. Calls run in a worker thread so a
waiting writer never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from service.state.base import StateStore, StoreError

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS state "
    "(key TEXT PRIMARY KEY, value, expires_at REAL NOT NULL) WITHOUT ROWID"
)
_SET_IF_ABSENT = (
    "INSERT INTO state (key, value, expires_at) VALUES (?1, ?2, ?3) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at "
    "WHERE state.expires_at <= ?4"
)
_PUT = (
    "INSERT INTO state (key, value, expires_at) VALUES (?1, ?2, ?3) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at"
)
_INCR = (
    "INSERT INTO state (key, value, expires_at) VALUES (?1, ?2, ?3) "
    "ON CONFLICT (key) DO UPDATE SET "
    "value = CASE WHEN state.expires_at <= ?4 THEN ?2 ELSE state.value + ?2 END, "
    "expires_at = CASE WHEN state.expires_at <= ?4 THEN ?3 ELSE state.expires_at END "
    "RETURNING value"
)
_PURGE_EVERY = 500  # writes between sweeps of expired rows


def connect_wal(path: Path, timeout: float, schema: Sequence[str]) -> sqlite3.Connection:
    """One autocommit connection to ``path`` in WAL mode with ``schema`` applied (every
    SQLite store of the service opens its file this way)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    try:
        _enable_wal(conn, timeout)
        conn.execute("PRAGMA synchronous=NORMAL")
        for statement in schema:
            conn.execute(statement)
    except sqlite3.Error:
        conn.close()
        raise
    return conn


def _enable_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """Switch to WAL. On a new file, two processes doing this at once get "database is
    locked" at once: SQLite does not call the busy handler here, so wait as it would."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.005)


class SQLiteStore(StateStore):
    backend = "sqlite"

    def __init__(
        self, path: Path, *, busy_timeout: float = 5.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = Path(path)
        self._timeout = busy_timeout
        self._clock = clock
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # one connection per process, one statement at a time
        self._writes = 0

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = connect_wal(self.path, self._timeout, (_SCHEMA,))
        return self._conn

    def _run(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._lock:
            try:
                return fn(self._connection())
            except sqlite3.Error as exc:
                raise StoreError(f"sqlite state store: {type(exc).__name__}") from None

    async def _call(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        return await asyncio.to_thread(self._run, fn)

    def _after_write(self, conn: sqlite3.Connection, now: float) -> None:
        self._writes += 1
        if self._writes % _PURGE_EVERY == 0:
            conn.execute("DELETE FROM state WHERE expires_at <= ?", (now,))

    async def set_if_absent(self, key: str, value: str, ttl: float) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            now = self._clock()
            stored = conn.execute(_SET_IF_ABSENT, (key, value, now + ttl, now)).rowcount == 1
            self._after_write(conn, now)
            return stored

        return await self._call(op)

    async def get(self, key: str) -> str | None:
        def op(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT value FROM state WHERE key = ? AND expires_at > ?", (key, self._clock())
            ).fetchone()
            return None if row is None else str(row[0])

        return await self._call(op)

    async def put(self, key: str, value: str, ttl: float) -> None:
        def op(conn: sqlite3.Connection) -> None:
            now = self._clock()
            conn.execute(_PUT, (key, value, now + ttl))
            self._after_write(conn, now)

        await self._call(op)

    async def delete(self, key: str) -> None:
        await self._call(lambda conn: conn.execute("DELETE FROM state WHERE key = ?", (key,)))

    async def incr(self, key: str, ttl: float, amount: int = 1) -> int:
        def op(conn: sqlite3.Connection) -> int:
            now = self._clock()
            (value,) = conn.execute(_INCR, (key, amount, now + ttl, now)).fetchone()
            self._after_write(conn, now)
            return int(value)

        return await self._call(op)

    async def expires_at(self, key: str) -> float | None:
        def op(conn: sqlite3.Connection) -> float | None:
            row = conn.execute(
                "SELECT expires_at FROM state WHERE key = ? AND expires_at > ?",
                (key, self._clock()),
            ).fetchone()
            return None if row is None else float(row[0])

        return await self._call(op)

    async def ping(self) -> bool:
        try:
            await self._call(lambda conn: conn.execute("SELECT 1").fetchone())
        except StoreError:
            return False
        return True

    async def clear(self) -> None:
        await self._call(lambda conn: conn.execute("DELETE FROM state"))

    async def aclose(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
