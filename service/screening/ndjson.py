"""Read a Bulk Data export (a folder of NDJSON files) and group it by patient, on disk.

Files are streamed line by line and never loaded whole. Every resource one evaluation could
use is written, as the bytes read, to a SQLite file keyed by its patient; patients are then
read back one at a time in id order. Memory stays bounded whatever the export's size (the
database lives on disk; SQLite keeps only a small page cache), and grouping costs one sort.

A resource is attributed to a patient only through its own subject reference
(``Patient/{id}``, relative or absolute). One that names no patient, a Group (several
patients) or a patient absent from the export is counted and reported, never guessed.
"""

from __future__ import annotations

import gzip
import io
import re
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from service.evaluation_context import relevance_for
from service.protocol import Protocol
from service.relevance import Relevance, RelevanceUnion
from service.resource_kinds import KINDS, MEDICATION_TYPES

PATIENT_REFERENCE = re.compile(r"(?:^|/)Patient/([A-Za-z0-9\-.]{1,64})$")
_GROUP_REF = re.compile(r"(?:^|/)Group/[A-Za-z0-9\-.]{1,64}$")
_INSERT_BATCH = 5000
_PROGRESS_BYTES = 1 << 20
PATIENT, OTHER, MEDICATION = 0, 1, 2  # MEDICATION rows are keyed "Medication/{id}", not by patient
MEDICATION_REFERENCE = re.compile(r"(?:^|/)Medication/([A-Za-z0-9\-.]{1,64})$")


@dataclass
class IngestReport:
    """What the export held and what could not be attributed to one patient (counts only)."""

    files: int = 0
    lines: int = 0
    resources: int = 0
    kept: int = 0
    patients: int = 0
    unreadable_lines: Counter[str] = field(default_factory=Counter)  # file name -> lines
    ignored_types: Counter[str] = field(default_factory=Counter)  # types no criterion reads
    not_in_protocol: int = 0  # Observations with codes no criterion reads
    no_patient: Counter[str] = field(default_factory=Counter)  # type -> count
    several_patients: Counter[str] = field(default_factory=Counter)  # subject is a Group
    unknown_patient: int = 0  # resources naming a patient the export does not hold

    def as_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "lines": self.lines,
            "resources": self.resources,
            "kept": self.kept,
            "patients": self.patients,
            "unreadableLines": dict(self.unreadable_lines),
            "ignoredTypes": dict(self.ignored_types),
            "observationsNotInProtocol": self.not_in_protocol,
            "noPatientReference": dict(self.no_patient),
            "severalPatients": dict(self.several_patients),
            "patientNotInExport": self.unknown_patient,
        }


@dataclass(slots=True)
class PatientData:
    """One patient's raw NDJSON lines: its Patient resource(s) and everything else, with the
    records its Patient links to (``Patient.link``: their Patients and their resources,
    which the record builder merges or holds open exactly as for a Bundle)."""

    patient_id: str
    patients: list[bytes]
    resources: list[bytes]
    linked: list[bytes] = field(default_factory=list)


def ndjson_files(folder: Path) -> list[Path]:
    """The export's files (``*.ndjson``, ``*.ndjson.gz``), in a stable order."""
    files = [
        p for p in folder.iterdir() if p.is_file() and p.name.endswith((".ndjson", ".ndjson.gz"))
    ]
    return sorted(files)


def _open(path: Path) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if path.name.endswith(".gz") else path.open("rb")


def patient_of(resource: dict[str, Any]) -> tuple[str | None, str | None]:
    """(patient id, None) or (None, why not): the subject must name exactly one Patient."""
    subject = KINDS[resource["resourceType"]].subject_of(resource)
    ref = subject.get("reference") if isinstance(subject, dict) else None
    if not isinstance(ref, str):
        return None, "none"
    ref = ref.partition("/_history/")[0]
    m = PATIENT_REFERENCE.search(ref)
    if m:
        return m.group(1), None
    return None, "several" if _GROUP_REF.search(ref) else "none"


class _ObservationSkipper:
    """Recognise, without decoding, an Observation line that holds none of the protocol's
    codes (most of an export: vital signs, other labs), so it is not parsed at all.

    Only a certainty skips: exactly one ``resourceType`` in the line (nothing contained) and
    it is Observation, no backslash anywhere (no escape can hide a key or a code), and no
    ``"code": "…"`` value in the line is a protocol code. Anything else is decoded and
    checked properly.
    """

    def __init__(self, wanted: Iterable[tuple[str, str]]) -> None:
        self._codes = frozenset(code.encode() for _, code in wanted)
        self._code_value = re.compile(rb'"code"\s*:\s*"([^"\\]*)"')
        self._observation = re.compile(rb'"resourceType"\s*:\s*"Observation"')

    def __call__(self, line: bytes) -> bool:
        return (
            line.count(b'"resourceType"') == 1
            and b'"Observation"' in line
            and b"\\" not in line
            and self._observation.search(line) is not None
            and self._codes.isdisjoint(self._code_value.findall(line))
        )


class PatientStore:
    """The export grouped by patient in a SQLite file (deleted on ``close``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.unlink(missing_ok=True)
        self._db = sqlite3.connect(path)
        self._db.executescript(
            "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-16000;"
            "CREATE TABLE res (pid TEXT NOT NULL, kind INTEGER NOT NULL, body BLOB NOT NULL);"
        )
        self.report = IngestReport()

    def close(self) -> None:
        self._db.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> PatientStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- ingest ----------------------------------------------------------------------------
    def ingest(
        self,
        files: Iterable[Path],
        protocol: Protocol,
        on_bytes: Callable[[int], None] | None = None,
        relevance: Relevance | RelevanceUnion | None = None,
    ) -> IngestReport:
        """``relevance``: the selection (service.relevance) every other path uses too (several
        studies: the union of theirs, so the export is read and grouped once for all)."""
        wanted = relevance if relevance is not None else relevance_for(protocol, None)
        skip = _ObservationSkipper(wanted.codes)
        report = self.report
        pending: list[tuple[str, int, bytes]] = []
        unreported = 0
        for path in files:
            report.files += 1
            with _open(path) as stream:
                for line in stream:
                    report.lines += 1
                    unreported += len(line)
                    if unreported >= _PROGRESS_BYTES and on_bytes is not None:
                        on_bytes(unreported)
                        unreported = 0
                    if skip(line):
                        report.resources += 1
                        report.not_in_protocol += 1
                        continue
                    row = self._classify(line, path.name, wanted)
                    if row is not None:
                        pending.append(row)
                        if len(pending) >= _INSERT_BATCH:
                            self._flush(pending)
        if on_bytes is not None:
            on_bytes(unreported)
        self._flush(pending)
        self._db.execute("CREATE INDEX res_pid ON res (pid, kind)")
        (report.patients,) = self._db.execute(
            "SELECT COUNT(DISTINCT pid) FROM res WHERE kind = 0"
        ).fetchone()
        (report.unknown_patient,) = self._db.execute(
            "SELECT COUNT(*) FROM res r WHERE kind = 1 AND NOT EXISTS "
            "(SELECT 1 FROM res p WHERE p.pid = r.pid AND p.kind = 0)"
        ).fetchone()
        return report

    def _flush(self, pending: list[tuple[str, int, bytes]]) -> None:
        if pending:
            self._db.executemany("INSERT INTO res VALUES (?, ?, ?)", pending)
            self.report.kept += len(pending)
            pending.clear()

    def _classify(
        self, line: bytes, name: str, wanted: Relevance | RelevanceUnion
    ) -> tuple[str, int, bytes] | None:
        line = line.strip()
        if not line:
            return None
        report = self.report
        try:
            resource = orjson.loads(line)
        except orjson.JSONDecodeError:
            resource = None
        rtype = resource.get("resourceType") if isinstance(resource, dict) else None
        if not isinstance(rtype, str):
            report.unreadable_lines[name] += 1
            return None
        report.resources += 1
        if rtype == "Patient":
            pid = resource.get("id")
            if not isinstance(pid, str) or not pid:
                report.no_patient["Patient"] += 1  # a Patient without id cannot be named
                return None
            return pid, PATIENT, line
        if rtype == "Medication" and any(wanted.reads(t) for t in MEDICATION_TYPES):
            mid = resource.get("id")  # no patient of its own: the patients naming it get it
            return (f"Medication/{mid}", MEDICATION, line) if isinstance(mid, str) else None
        if not wanted.reads(rtype):
            report.ignored_types[rtype] += 1
            return None
        if not wanted.matches(resource):
            report.not_in_protocol += 1  # the record builder would skip it first, too
            return None
        pid, why = patient_of(resource)
        if pid is None:
            (report.several_patients if why == "several" else report.no_patient)[rtype] += 1
            return None
        return pid, OTHER, line

    # -- read back -------------------------------------------------------------------------
    def patient_ids(self) -> Iterator[str]:
        for (pid,) in self._db.execute("SELECT DISTINCT pid FROM res WHERE kind = 0 ORDER BY pid"):
            yield pid

    def patients(self, skip: set[str] | frozenset[str] = frozenset()) -> Iterator[PatientData]:
        """Each patient with a Patient resource, in id order, one at a time."""
        cursor = self._db.execute("SELECT pid, kind, body FROM res ORDER BY pid, kind, rowid")
        current: PatientData | None = None
        for pid, kind, body in cursor:
            if current is None or current.patient_id != pid:
                if current is not None and current.patients and current.patient_id not in skip:
                    yield self._with_medications(self._with_links(current))
                current = PatientData(pid, [], [])
            (current.patients if kind == PATIENT else current.resources).append(body)
        if current is not None and current.patients and current.patient_id not in skip:
            yield self._with_medications(self._with_links(current))

    def _with_links(self, data: PatientData) -> PatientData:
        """Add the records the Patient links to (as pull mode fetches them): a merged
        record's results are this patient's, and a ``seealso`` record's hold criteria open."""
        linked: list[str] = []
        for body in data.patients:
            for lid in linked_patient_ids(orjson.loads(body)):
                if lid != data.patient_id and lid not in linked:
                    linked.append(lid)
        for lid in linked[:MAX_LINKED_RECORDS]:
            rows = self._db.execute(
                "SELECT kind, body FROM res WHERE pid = ? ORDER BY kind, rowid", (lid,)
            )
            for kind, body in rows:
                (data.linked if kind == PATIENT else data.resources).append(body)
        return data

    def _with_medications(self, data: PatientData) -> PatientData:
        """Add the Medications its medication resources name (``medicationReference``), as
        pull mode's ``_include`` brings them: a Medication names no patient of its own."""
        wanted: list[str] = []
        for body in data.resources:
            if b'"medicationReference"' not in body:
                continue
            ref = _medication_reference(orjson.loads(body))
            if ref is not None and ref not in wanted:
                wanted.append(ref)
        for ref in wanted:
            rows = self._db.execute(
                "SELECT body FROM res WHERE pid = ? AND kind = ? ORDER BY rowid", (ref, MEDICATION)
            )
            data.resources.extend(body for (body,) in rows)
        return data


def _medication_reference(resource: Any) -> str | None:
    """``Medication/{id}`` of a literal medicationReference (relative or absolute); None for
    a contained (``#...``), urn: or unreadable one (the record builder says what it lacks)."""
    target = resource.get("medicationReference") if isinstance(resource, dict) else None
    ref = target.get("reference") if isinstance(target, dict) else None
    if not isinstance(ref, str):
        return None
    m = MEDICATION_REFERENCE.search(ref.partition("/_history/")[0])
    return f"Medication/{m.group(1)}" if m else None


# Patient.link types whose records are read with the patient's (as service.fhir.fetch)
FOLLOWED_LINKS = ("replaces", "seealso", "refer")
MAX_LINKED_RECORDS = 4


def linked_patient_ids(patient: Any) -> list[str]:
    """Ids of the export's Patients this one links to (``FOLLOWED_LINKS``), each once."""
    links = patient.get("link") if isinstance(patient, dict) else None
    found: list[str] = []
    for link in links if isinstance(links, list) else ():
        if not isinstance(link, dict) or link.get("type") not in FOLLOWED_LINKS:
            continue
        other = link.get("other")
        ref = other.get("reference") if isinstance(other, dict) else None
        m = (
            PATIENT_REFERENCE.search(ref.partition("/_history/")[0])
            if isinstance(ref, str)
            else None
        )
        if m is not None and m.group(1) not in found:
            found.append(m.group(1))
    return found
