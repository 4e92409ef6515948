"""The output folder: results.ndjson, worklist.csv, summary.json, report.html (and run.json).

Results are appended and flushed as patients finish, so an interrupted run keeps what is
done. ``--resume`` keeps every patient present in both results.ndjson and worklist.csv without
an error, drops the rest (a half-written last line, failed patients) and evaluates them again.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from datetime import date
from pathlib import Path
from typing import IO, Any

import orjson

from service.protocol import Protocol
from service.record import InputError
from service.screening.report import summarise, write_report
from service.screening.rows import ERROR_STATUS, header

RESULTS = "results.ndjson"
WORKLIST = "worklist.csv"
SUMMARY = "summary.json"
REPORT = "report.html"
RUN = "run.json"


def _subject_id(line: bytes) -> str | None:
    """The patient id of one result Bundle line (its ResearchSubject.individual)."""
    try:
        bundle = orjson.loads(line)
        ref = bundle["entry"][0]["resource"]["individual"]["reference"]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return None
    return ref.removeprefix("Patient/") if isinstance(ref, str) else None


def _has_rows(path: Path, header_lines: int) -> bool:
    """Whether a file holds more than its header (a run that stopped before any patient
    left only the header: starting again there is not a resume)."""
    if not path.exists():
        return False
    with path.open("rb") as f:
        for n, _ in enumerate(f, 1):
            if n > header_lines:
                return True
    return False


class OutputFolder:
    def __init__(self, path: Path, protocol: Protocol, as_of: date | None, *, resume: bool):
        self.path = path
        self.protocol = protocol
        self.resume = resume
        self.as_of = as_of
        self.header = header(protocol)
        self.counts: Counter[str] = Counter()
        self.done: set[str] = set()
        self._results: IO[bytes] | None = None
        self._worklist: IO[str] | None = None
        self._writer: Any = None

    # -- start -----------------------------------------------------------------------------
    def open(self, source: str, default_as_of: date) -> set[str]:
        """Prepare the folder; returns the patients already done (resume)."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create the output folder: {exc.strerror}") from None
        run_file = self.path / RUN
        results, worklist = self.path / RESULTS, self.path / WORKLIST
        started = _has_rows(results, 0) or _has_rows(worklist, 1)
        if started and not self.resume:
            raise InputError(
                f"{self.path} already holds a screening: pass --resume, or another --out folder"
            )
        previous = orjson.loads(run_file.read_bytes()) if run_file.exists() else {}
        if self.resume and previous.get("asOf"):
            stored = date.fromisoformat(previous["asOf"])
            if self.as_of is not None and self.as_of != stored:
                raise InputError(
                    f"--as-of {self.as_of} differs from the run being resumed ({stored})"
                )
            self.as_of = stored
        if self.as_of is None:
            self.as_of = default_as_of
        if self.resume and started:
            self._keep_done(results, worklist)
        run = {
            "protocol": self.protocol.id,
            "protocolVersion": self.protocol.version,
            "asOf": self.as_of.isoformat(),
            "source": source,
        }
        run_file.write_bytes(orjson.dumps(run, option=orjson.OPT_INDENT_2))
        carry_on = self.resume and started  # else start afresh (nothing was done yet)
        self._results = results.open("ab" if carry_on else "wb")
        self._worklist = worklist.open("a" if carry_on else "w", newline="", encoding="utf-8")
        self._writer = csv.writer(self._worklist)
        if not carry_on:
            self._writer.writerow(self.header)
        return set(self.done)

    def _keep_done(self, results: Path, worklist: Path) -> None:
        rows: dict[str, list[str]] = {}
        if worklist.exists():
            with worklist.open(newline="", encoding="utf-8") as f:
                reader = csv.reader(f)
                first = next(reader, None)
                if first is not None and first != self.header:
                    raise InputError(
                        f"{worklist} was written for another protocol (columns differ)"
                    )
                for row in reader:
                    complete = len(row) == len(self.header)
                    if complete and row[1] != ERROR_STATUS and not row[-1]:
                        rows[row[0]] = row
        kept_lines: list[bytes] = []
        if results.exists():
            with results.open("rb") as f:
                for line in f:
                    pid = _subject_id(line) if line.endswith(b"\n") else None
                    if pid in rows and pid not in self.done:
                        self.done.add(pid)
                        kept_lines.append(line)
        tmp_results, tmp_worklist = results.with_suffix(".tmp"), worklist.with_suffix(".tmp")
        tmp_results.write_bytes(b"".join(kept_lines))
        with tmp_worklist.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(self.header)
            for pid, row in rows.items():
                if pid in self.done:
                    writer.writerow(row)
                    self.counts[row[1]] += 1
        os.replace(tmp_results, results)
        os.replace(tmp_worklist, worklist)

    # -- during ----------------------------------------------------------------------------
    def add(self, row: list[str], bundle: bytes | None) -> None:
        """Results first, then the row: a row without its result is redone on resume."""
        assert self._results is not None and self._writer is not None
        if bundle is not None:
            self._results.write(bundle + b"\n")
        self._writer.writerow(row)
        self.counts[row[1]] += 1
        self.done.add(row[0])

    def flush(self) -> None:
        for f in (self._results, self._worklist):
            if f is not None:
                f.flush()

    def close(self) -> None:
        for f in (self._results, self._worklist):
            if f is not None:
                f.close()
        self._results = self._worklist = None

    @property
    def failed(self) -> int:
        return self.counts[ERROR_STATUS]

    # -- end -------------------------------------------------------------------------------
    def finish(self, extra: dict[str, Any]) -> dict[str, Any]:
        """Write summary.json and report.html from the worklist as it stands."""
        self.close()
        summary = summarise(self.path / WORKLIST, self.protocol)
        summary.update(
            {
                "protocol": self.protocol.id,
                "protocolVersion": self.protocol.version,
                "asOf": self.as_of.isoformat() if self.as_of else None,
                **extra,
                "files": {"results": RESULTS, "worklist": WORKLIST, "report": REPORT},
            }
        )
        self.write_summary(summary)
        return summary

    def write_summary(self, summary: dict[str, Any]) -> None:
        (self.path / SUMMARY).write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
        write_report(self.path / REPORT, summary, self.protocol)
