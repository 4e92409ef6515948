"""Import an OHDSI Usagi mapping file (CSV) as a FHIR R4 ConceptMap.

Columns read (Usagi's save / export format, one row per sourceCode + conceptId):
``sourceCode``, ``sourceName``, ``matchScore``, ``mappingStatus``, ``equivalence`` (Usagi
>= 1.4; EQUAL, EQUIVALENT, WIDER, NARROWER, INEXACT, UNMATCHED, UNREVIEWED), ``conceptId``,
``conceptName``, ``domainId``, ``mappingType``, ``comment``; others are ignored.

Assumption: Usagi's ``conceptId`` is an OMOP concept id, not a LOINC / SNOMED code, and a
plain Usagi file does not carry the code. The target code and vocabulary come from, in order:
``targetConceptCode`` + ``targetVocabularyId`` columns when the file has them (some exports
and tools add them), else the OMOP vocabulary's ``CONCEPT.csv`` (Athena download,
tab-separated) given with ``concepts``. A row whose code cannot be found is written
``unmatched`` with a comment naming the concept id: never guessed.

Rules: only ``mappingStatus`` APPROVED rows get a target; their equivalence is Usagi's
(EQUAL -> equal, EQUIVALENT or none -> equivalent, WIDER/NARROWER/INEXACT -> the same, which
the service reports but never lets decide). Every other status (UNCHECKED, FLAGGED,
INVALID_TARGET, IGNORED), concept id 0, and a ``mappingType`` other than MAPS_TO are
``unmatched``.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path
from typing import Any

from service.errors import InputError
from service.terminology.conceptmaps import EQUIVALENCES

VOCABULARY_SYSTEMS = {
    "LOINC": "http://loinc.org",
    "SNOMED": "http://snomed.info/sct",
    "UCUM": "http://unitsofmeasure.org",
    "ICD10CM": "http://hl7.org/fhir/sid/icd-10-cm",
    "ICDO3": "http://terminology.hl7.org/CodeSystem/icd-o-3",
    "RxNorm": "http://www.nlm.nih.gov/research/umls/rxnorm",
}
_EQUIVALENCE = {
    "EQUAL": "equal",
    "EQUIVALENT": "equivalent",
    "": "equivalent",
    "WIDER": "wider",
    "NARROWER": "narrower",
    "INEXACT": "inexact",
}
REQUIRED = ("sourceCode", "sourceName", "mappingStatus", "conceptId")


class UsagiError(InputError):
    """The Usagi file cannot be imported (one error line on the CLI)."""


def read_concepts(path: Path, wanted: set[str]) -> dict[str, tuple[str, str, str]]:
    """concept_id -> (vocabulary_id, concept_code, concept_name) from an Athena CONCEPT.csv
    (tab-separated), only for ``wanted`` ids (the file has millions of rows)."""
    found: dict[str, tuple[str, str, str]] = {}
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        if not {"concept_id", "vocabulary_id", "concept_code"} <= set(reader.fieldnames or ()):
            raise UsagiError(f"{path}: not an OMOP CONCEPT file (concept_id, vocabulary_id, ...)")
        for row in reader:
            if row["concept_id"] in wanted:
                found[row["concept_id"]] = (
                    row["vocabulary_id"],
                    row["concept_code"],
                    row.get("concept_name") or "",
                )
    return found


def usagi_to_conceptmap(
    path: Path,
    *,
    source_system: str,
    url: str | None = None,
    version: str = "1",
    concepts: Path | None = None,
) -> tuple[dict[str, Any], str]:
    """(ConceptMap, one-line summary) for the Usagi file at ``path``."""
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = set(reader.fieldnames or ())
        missing = [c for c in REQUIRED if c not in columns]
        if missing:
            raise UsagiError(f"{path}: not a Usagi mapping file (no column {', '.join(missing)})")
        rows = list(reader)
    ids = {r["conceptId"] for r in rows if (r.get("conceptId") or "0") != "0"}
    lookup = read_concepts(concepts, ids) if concepts is not None else {}

    per_code: dict[str, list[tuple[dict[str, Any], str | None]]] = {}
    names: dict[str, str] = {}
    tally: Counter[str] = Counter()
    for row in rows:
        code = (row.get("sourceCode") or "").strip()
        if not code:
            raise UsagiError(f"{path}: a row has an empty sourceCode")
        per_code.setdefault(code, []).append(_target(row, lookup))
        names.setdefault(code, row.get("sourceName") or "")
    groups: dict[str, list[dict[str, Any]]] = {}
    for code, targets in per_code.items():
        mapped: list[tuple[dict[str, Any], str | None]] = [
            (t, system) for t, system in targets if system is not None
        ]
        if mapped:  # an approved target makes the row's other candidates irrelevant
            targets = mapped
        by_system: dict[str, list[dict[str, Any]]] = {}
        for target, system in targets:
            by_system.setdefault(system or "http://loinc.org", []).append(target)
        for system, found in by_system.items():
            element: dict[str, Any] = {"code": code}
            if names[code]:
                element["display"] = names[code]
            element["target"] = found
            groups.setdefault(system, []).append(element)
            tally.update(t["equivalence"] for t in found)
    conceptmap = {
        "resourceType": "ConceptMap",
        "url": url or f"urn:site:conceptmap:{path.stem}",
        "version": version,
        "name": "UsagiImport",
        "title": f"Imported from Usagi file {path.name}",
        "status": "draft",
        "description": (
            "Imported by `eligibility terminology-import-usagi`: APPROVED rows keep Usagi's "
            "equivalence (default equivalent); all other rows are unmatched."
        ),
        "group": [
            {"source": source_system, "target": system, "element": els}
            for system, els in groups.items()
        ],
    }
    from fhir.resources.R4B.conceptmap import ConceptMap

    ConceptMap.model_validate(conceptmap)
    summary = f"{len(rows)} rows: " + ", ".join(f"{n} {k}" for k, n in sorted(tally.items()))
    return conceptmap, summary


def _target(
    row: dict[str, str], lookup: dict[str, tuple[str, str, str]]
) -> tuple[dict, str | None]:
    """The ConceptMap target of one Usagi row, and its code system (None: unmatched)."""
    status = (row.get("mappingStatus") or "").strip().upper()
    concept_id = (row.get("conceptId") or "0").strip()
    mapping_type = (row.get("mappingType") or "MAPS_TO").strip().upper()
    score = (row.get("matchScore") or "").strip()
    usagi_eq = (row.get("equivalence") or "").strip().upper()
    note = f"Usagi {status or 'no status'}, matchScore {score or '-'}, OMOP concept {concept_id}"
    if row.get("comment"):
        note += f"; {row['comment'].strip()}"

    def unmatched(why: str) -> tuple[dict, None]:
        return {"equivalence": "unmatched", "comment": f"{why} ({note})"}, None

    if status != "APPROVED":
        return unmatched("not approved in Usagi")
    if concept_id in ("", "0"):
        return unmatched("no target concept")
    if mapping_type != "MAPS_TO":
        return unmatched(f"mappingType {mapping_type} is not a code mapping")
    equivalence = _EQUIVALENCE.get(usagi_eq)
    if equivalence is None or equivalence not in EQUIVALENCES:
        return unmatched(f"Usagi equivalence {usagi_eq} is not a mapping")
    vocabulary = (row.get("targetVocabularyId") or "").strip()
    code = (row.get("targetConceptCode") or "").strip()
    name = row.get("conceptName") or ""
    if not code and concept_id in lookup:
        vocabulary, code, name = (
            lookup[concept_id][0],
            lookup[concept_id][1],
            name or lookup[concept_id][2],
        )
    if not code:
        return unmatched("target code unknown: give the OMOP CONCEPT file (--concepts)")
    system = VOCABULARY_SYSTEMS.get(vocabulary)
    if system is None:
        return unmatched(f"vocabulary {vocabulary or '?'} has no FHIR system here")
    target = {"code": code, "equivalence": equivalence, "comment": note}
    if name:
        target["display"] = name
    return target, system
