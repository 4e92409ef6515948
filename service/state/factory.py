"""Pick the backend: Redis when a URL is set, SQLite when several workers share a host,
memory for one process. Choosing memory under several workers would let each worker accept
the same JWT once, so any sign of several workers selects SQLite."""

from __future__ import annotations

import multiprocessing
import os
import tempfile
from pathlib import Path

from service.settings import Settings
from service.state.base import StateStore

DEFAULT_SQLITE_NAME = "cart-eligibility-state.sqlite3"


def _several_workers(settings: Settings) -> bool:
    try:
        web_concurrency = int(os.environ.get("WEB_CONCURRENCY", "1"))
    except ValueError:
        web_concurrency = 1
    # uvicorn --workers N runs each worker as a multiprocessing child of a supervisor.
    child = multiprocessing.parent_process() is not None
    return settings.workers > 1 or web_concurrency > 1 or child


def choose_backend(settings: Settings) -> str:
    if settings.state_backend != "auto":
        return settings.state_backend
    if settings.redis_url is not None:
        return "redis"
    if settings.state_sqlite_path is not None or _several_workers(settings):
        return "sqlite"
    return "memory"


def sqlite_path(settings: Settings) -> Path:
    return settings.state_sqlite_path or Path(tempfile.gettempdir()) / DEFAULT_SQLITE_NAME


def open_store(settings: Settings) -> StateStore:
    """The configured store; connections open on first use (inside the event loop)."""
    backend = choose_backend(settings)
    if backend == "redis":
        from service.state.redis_store import RedisStore

        if settings.redis_url is None:
            raise ValueError("state_backend=redis needs ELIGIBILITY_REDIS_URL")
        return RedisStore(settings.redis_url.get_secret_value(), prefix=settings.state_key_prefix)
    if backend == "sqlite":
        from service.state.sqlite import SQLiteStore

        return SQLiteStore(sqlite_path(settings))
    if _several_workers(settings):
        raise ValueError(
            "state_backend=memory with several workers would accept a replayed JWT once per "
            "worker: use sqlite (one host) or set ELIGIBILITY_REDIS_URL"
        )
    from service.state.memory import MemoryStore

    return MemoryStore(settings.state_memory_max_entries)
