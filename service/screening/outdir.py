"""The output folder: results.ndjson, worklist.csv, summary.json, report.html (and run.json).

Results are appended and flushed as patients finish, so an interrupted run keeps what is
done. ``--resume`` keeps every patient present in both results.ndjson and worklist.csv without
an error, drops the rest (a half-written last line, failed patients) and evaluates them again.
With several studies (rows.Layout) a patient is done only when every study's row and result
are; the others are evaluated again for every study.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import IO, Any

import orjson

from service.protocol import Protocol
from service.record import InputError
from service.screening.report import summarise, write_report, write_studies_report
from service.screening.rows import ERROR_STATUS, Layout

RESULTS = "results.ndjson"
WORKLIST = "worklist.csv"
SUMMARY = "summary.json"
REPORT = "report.html"
RUN = "run.json"


def _subject_id(line: bytes) -> str | None:
    """The patient id of one result Bundle line (its ResearchSubject.individual)."""
    return _subject(line)[1]


def _subject(line: bytes) -> tuple[str | None, str | None]:
    """(study canonical, patient id) of one result Bundle line (its ResearchSubject)."""
    try:
        subject = orjson.loads(line)["entry"][0]["resource"]
        ref = subject["individual"]["reference"]
        study = (subject.get("study") or {}).get("reference")
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
        return None, None
    pid = ref.removeprefix("Patient/") if isinstance(ref, str) else None
    return (study if isinstance(study, str) else None), pid


def _now() -> str:
    """When the run's rows were written (each patient was evaluated during the run, as of
    ``asOf``): what the coordinator's worklist shows as "evaluated"."""
    return datetime.now(UTC).isoformat(timespec="seconds")


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
    """``protocol``: one protocol (today's files), or several (one row per patient and study,
    a ``study`` column, a summary and report section per study)."""

    def __init__(
        self,
        path: Path,
        protocol: Protocol | Sequence[Protocol],
        as_of: date | None,
        *,
        resume: bool,
    ):
        self.path = path
        self.protocols = [protocol] if isinstance(protocol, Protocol) else list(protocol)
        if not self.protocols:
            raise InputError("no study to screen")
        self.protocol = self.protocols[0]
        self.layout = Layout(self.protocols)
        self.resume = resume
        self.as_of = as_of
        self.header = self.layout.header
        self.counts: Counter[str] = Counter()
        self.study_counts: dict[str, Counter[str]] = {p.id: Counter() for p in self.protocols}
        self.done: set[str] = set()
        self._rows_of: Counter[str] = Counter()  # patient -> studies written (several)
        self._results: IO[bytes] | None = None
        self._worklist: IO[str] | None = None
        self._writer: Any = None

    @property
    def day(self) -> date:
        """The run's as-of day, known once ``open`` has run (a resumed run keeps its own)."""
        if self.as_of is None:
            raise RuntimeError("the output folder is not open yet")
        return self.as_of

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
        run: dict[str, object] = {
            "protocol": self.protocol.id,
            "protocolVersion": self.protocol.version,
            "asOf": self.as_of.isoformat(),
            "source": source,
        }
        if self.layout.multi:
            run["studies"] = [{"id": p.id, "version": p.version} for p in self.protocols]
        run_file.write_bytes(orjson.dumps(run, option=orjson.OPT_INDENT_2))
        carry_on = self.resume and started  # else start afresh (nothing was done yet)
        self._results = results.open("ab" if carry_on else "wb")
        self._worklist = worklist.open("a" if carry_on else "w", newline="", encoding="utf-8")
        self._writer = csv.writer(self._worklist)
        if not carry_on:
            self._writer.writerow(self.header)
        return set(self.done)

    def _keep_done(self, results: Path, worklist: Path) -> None:
        layout = self.layout
        by_canonical = {p.canonical: p.id for p in self.protocols}
        rows: dict[tuple[str, str], list[str]] = {}
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
                    if complete and row[layout.status_at] != ERROR_STATUS and not row[-1]:
                        rows[layout.key(row)] = row
        lines: dict[tuple[str, str], bytes] = {}
        if results.exists():
            with results.open("rb") as f:
                for line in f:
                    canonical, pid = _subject(line) if line.endswith(b"\n") else (None, None)
                    # one study: as before, by patient alone; several: by the subject's study
                    study = by_canonical.get(canonical or "") if layout.multi else self.protocol.id
                    if study is not None and pid is not None and (study, pid) in rows:
                        lines.setdefault((study, pid), line)
        studies = [p.id for p in self.protocols]
        pids = dict.fromkeys(pid for _, pid in lines)
        self.done = {pid for pid in pids if all((s, pid) in lines for s in studies)}
        tmp_results, tmp_worklist = results.with_suffix(".tmp"), worklist.with_suffix(".tmp")
        tmp_results.write_bytes(b"".join(v for (_, pid), v in lines.items() if pid in self.done))
        with tmp_worklist.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(self.header)
            for (study, pid), row in rows.items():
                if pid in self.done:
                    writer.writerow(row)
                    self.counts[row[layout.status_at]] += 1
                    self.study_counts[study][row[layout.status_at]] += 1
        os.replace(tmp_results, results)
        os.replace(tmp_worklist, worklist)

    # -- during ----------------------------------------------------------------------------
    def add(self, row: list[str], bundle: bytes | None) -> None:
        """Results first, then the row: a row without its result is redone on resume."""
        assert self._results is not None and self._writer is not None
        if bundle is not None:
            self._results.write(bundle + b"\n")
        self._writer.writerow(row)
        layout = self.layout
        status = row[layout.status_at]
        self.counts[status] += 1
        study, pid = layout.key(row)
        self.study_counts.setdefault(study, Counter())[status] += 1
        self._rows_of[pid] += 1
        if self._rows_of[pid] >= len(self.protocols):
            self.done.add(pid)

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
        if self.layout.multi:
            return self._finish_studies(extra)
        summary = summarise(self.path / WORKLIST, self.protocol)
        summary.update(
            {
                "protocol": self.protocol.id,
                "protocolVersion": self.protocol.version,
                "asOf": self.as_of.isoformat() if self.as_of else None,
                "evaluatedAt": _now(),
                **extra,
                "files": {"results": RESULTS, "worklist": WORKLIST, "report": REPORT},
            }
        )
        self.write_summary(summary)
        return summary

    def _finish_studies(self, extra: dict[str, Any]) -> dict[str, Any]:
        """Several studies: the run's figures, then one section (status counts, funnel,
        criteria) per study under ``studies``, in the order they were asked for."""
        sections = []
        for p in self.protocols:
            section = summarise(self.path / WORKLIST, p, study=p.id)
            sections.append(
                {
                    "study": p.id,
                    "protocolVersion": p.version,
                    "canonical": p.canonical,
                    "title": p.research_study.get("title", p.id),
                    **section,
                }
            )
        summary = {
            "patients": max((s["patients"] for s in sections), default=0),
            "rows": sum(s["patients"] for s in sections),
            "studies": sections,
            "asOf": self.as_of.isoformat() if self.as_of else None,
            "evaluatedAt": _now(),
            **extra,
            "files": {"results": RESULTS, "worklist": WORKLIST, "report": REPORT},
        }
        self.write_summary(summary)
        return summary

    def write_summary(self, summary: dict[str, Any]) -> None:
        (self.path / SUMMARY).write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2))
        if self.layout.multi:
            write_studies_report(self.path / REPORT, summary, self.protocols)
        else:
            write_report(self.path / REPORT, summary, self.protocol)
