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


def private_state_dir() -> Path:
    """``<tmp>/cart-eligibility-<uid>``, mode 0700: in a world-writable temp dir, a file another
    user could create first would let them delete remembered JWT ids (replays) or forge
    overrides; a directory only we own cannot be planted."""
    path = Path(tempfile.gettempdir()) / f"cart-eligibility-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    info = path.lstat()
    if not path.is_dir() or path.is_symlink() or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise ValueError(f"{path} is not a private directory of this user: set STATE_SQLITE_PATH")
    return path


def default_sqlite_path(port: int | None = None) -> Path:
    """The shared file for the workers of one service (per port when ``eligibility serve``
    names it, so two services on one host never share rate limits or card overrides)."""
    name = DEFAULT_SQLITE_NAME if port is None else f"cart-eligibility-state-{port}.sqlite3"
    return private_state_dir() / name


def sqlite_path(settings: Settings) -> Path:
    return settings.state_sqlite_path or default_sqlite_path()


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
