"""The bundled demo patients, with their dates moved so that they stay current.

The files are written as of an anchor date; loading them shifts every full date by
(today - anchor), so "labs from 3 days ago" stay 3 days old whenever the demo runs.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from functools import lru_cache
from importlib import resources
from typing import Any

import orjson

from service.clinical.dates import today

ANCHOR = date(2026, 11, 20)
_FULL_DATE = re.compile(r"^(\d{4}-\d{2}-\d{2})(.*)$")
_DATE_KEYS = {
    "birthDate",
    "deceasedDateTime",
    "effectiveDateTime",
    "effectiveInstant",
    "issued",
    "authored",
    "onsetDateTime",
    "abatementDateTime",
    "recordedDate",
    "performedDateTime",
    "dateTime",
    "start",
    "end",
    "date",
}


def shift_dates(node: Any, days: int) -> Any:
    """A copy of ``node`` with every full date in a known date element moved by ``days``."""
    if isinstance(node, dict):
        return {
            k: _shift_value(v, days) if k in _DATE_KEYS else shift_dates(v, days)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [shift_dates(v, days) for v in node]
    return node


def _shift_value(value: Any, days: int) -> Any:
    if not isinstance(value, str):
        return shift_dates(value, days)
    m = _FULL_DATE.match(value)
    if not m:
        return value  # partial dates (year, year-month) stay as written
    moved = datetime.strptime(m.group(1), "%Y-%m-%d").date() + timedelta(days=days)
    return moved.isoformat() + m.group(2)


def demo_files() -> dict[str, bytes]:
    folder = resources.files("service") / "demo_patients"
    return {
        f.name.removesuffix(".json"): f.read_bytes()
        for f in sorted(folder.iterdir(), key=lambda f: f.name)
        if f.name.endswith(".json")
    }


@lru_cache(maxsize=2)
def _load(on: date) -> dict[str, dict[str, Any]]:
    days = (on - ANCHOR).days
    return {name: shift_dates(orjson.loads(raw), days) for name, raw in demo_files().items()}


def load_demo_bundles(on: date | None = None) -> dict[str, dict[str, Any]]:
    """Patient id -> collection Bundle, dated as if written ``on`` (default today)."""
    return _load(on or today())
