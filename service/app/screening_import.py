"""The latest screening run's output folder as StudyResults (source "screening").

``eligibility screen --out DIR`` writes ``worklist.csv`` (one row per patient, or per patient
and study when it has a ``study`` column), ``run.json`` (the protocol and date) and
``summary.json``. A row becomes the StudyResult the worklist lists: its status, the top-level
criteria left undetermined (open) and not met (failed). The run's time is the worklist file's
modification time: a result recorded later (API, CDS, app, subscription) is newer and wins in
the ResultStore. Error rows are counted, not listed: they have no status to show.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson

from service.clinical.model import Outcome
from service.portfolio import Portfolio
from service.protocol import Protocol
from service.results import ResultStore, StudyResult

WORKLIST = "worklist.csv"
RUN = "run.json"
STATUSES = ("eligible", "potential-candidate", "ineligible")


@dataclass
class ScreeningRun:
    """What one output folder holds, read once."""

    folder: Path
    evaluated_at: datetime
    as_of: str
    results: list[StudyResult] = field(default_factory=list)
    errors: int = 0  # rows that could not be evaluated
    unknown_studies: set[str] = field(default_factory=set)  # not loaded here: left out


def fingerprint(folder: Path) -> tuple[int, int] | None:
    """(mtime_ns, size) of the worklist: a new run gives a new fingerprint."""
    try:
        info = (folder / WORKLIST).stat()
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size


def _cell(row: dict[str, str], protocol: Protocol, code: str) -> str:
    """A criterion's outcome: column ``code`` (one study per file) or ``<study>:<code>``."""
    for name in (code, f"{protocol.id}:{code}", f"{protocol.id}.{code}"):
        if name in row:
            return row[name]
    return ""


def read_run(folder: Path, portfolio: Portfolio, default: Protocol) -> ScreeningRun:
    """Read ``folder``; a run without a ``study`` column is the study run.json names (else
    ``default``). Raises OSError / ValueError when the folder is unreadable."""
    path = folder / WORKLIST
    evaluated_at = datetime.fromtimestamp(path.stat().st_mtime, UTC)
    run = {}
    if (folder / RUN).is_file():
        run = orjson.loads((folder / RUN).read_bytes())
    as_of = str(run.get("asOf") or evaluated_at.date().isoformat())
    run_study = str(run.get("protocol") or default.id)
    found = ScreeningRun(folder, evaluated_at, as_of)
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            pid, status = (row.get("patient") or "").strip(), (row.get("status") or "").strip()
            if not pid:
                continue
            if status not in STATUSES:
                found.errors += 1
                continue
            name = (row.get("study") or "").strip() or run_study
            try:
                protocol = portfolio.get(name)
            except KeyError:
                found.unknown_studies.add(name)
                continue
            codes = [c.code for c in protocol.top_level]
            found.results.append(
                StudyResult(
                    patient_id=pid,
                    study_id=protocol.id,
                    status=status,
                    evaluated_at=evaluated_at,
                    as_of=as_of,
                    source="screening",
                    open_criteria=tuple(
                        c for c in codes if _cell(row, protocol, c) == Outcome.UNDETERMINED
                    ),
                    failed_criteria=tuple(
                        c for c in codes if _cell(row, protocol, c) == Outcome.NOT_MET
                    ),
                )
            )
    return found


async def import_run(store: ResultStore, run: ScreeningRun) -> int:
    """Record the run's results (older ones than those stored are ignored by the store)."""
    return await store.record_many(run.results)
