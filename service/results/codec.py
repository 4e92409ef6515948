"""StudyResult <-> JSON text, for the durable backends (SQLite rows, Redis hashes)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime
from typing import Any

import orjson

from service.results.model import StudyResult


def dumps(result: StudyResult) -> str:
    data: dict[str, Any] = asdict(result)
    for key in ("evaluated_at", "changed_at"):
        if data[key] is not None:
            data[key] = data[key].isoformat()
    return orjson.dumps(data).decode()


def loads(text: str | bytes) -> StudyResult:
    data = orjson.loads(text)
    for key in ("evaluated_at", "changed_at"):
        if data.get(key) is not None:
            data[key] = datetime.fromisoformat(data[key])
    data["open_criteria"] = tuple(data.get("open_criteria") or ())
    data["failed_criteria"] = tuple(data.get("failed_criteria") or ())
    data["versions"] = dict(data.get("versions") or {})
    return StudyResult(**data)


def timestamp(result: StudyResult) -> float:
    """The sort key of ``evaluated_at`` every backend uses (naive times read as local)."""
    return result.evaluated_at.timestamp()
