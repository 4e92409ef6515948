"""``eligibility terminology-report``: which codes and unit strings of a site's data the
service cannot read, so the terminology team knows what to map.

Every Observation and Condition code (including component codes) that no protocol ValueSet
and no exact site mapping covers, with counts and example displays, likely lab analytes first
(numeric value, category laboratory); codes the site maps only inexactly are listed with
their equivalence. Unit strings that are neither UCUM, nor a built-in alias, nor mapped.
``--conceptmap-skeleton`` writes a draft R4 ConceptMap (every element ``unmatched``, to be
completed), which the service loads without effect until someone fills it in.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from service.errors import InputError
from service.protocol import Protocol
from service.terminology import runtime
from service.terminology.conceptmaps import UCUM_SYSTEM, Code

Resource = dict[str, Any]
LAB_CATEGORY = ("http://terminology.hl7.org/CodeSystem/observation-category", "laboratory")
TARGET_FOR = {"Observation": "http://loinc.org", "Condition": "http://snomed.info/sct"}
UNIT_SOURCE = "urn:site:unit-strings"


class ReportInputError(InputError):
    """The report's input cannot be read (one error line on the CLI)."""


@dataclass
class CodeRow:
    resource_type: str
    code: Code
    count: int = 0
    numeric: int = 0  # results with a valueQuantity
    laboratory: int = 0  # results with category laboratory
    displays: Counter[str] = field(default_factory=Counter)
    units: Counter[str] = field(default_factory=Counter)
    status: str = "unmapped"  # or "mapped <equivalence> (evidence only)"

    @property
    def lab_score(self) -> float:
        """Share of results that look like lab analytes: numeric, and labelled laboratory."""
        return (self.numeric + self.laboratory) / (2 * self.count) if self.count else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "resourceType": self.resource_type,
            "system": self.code[0],
            "code": self.code[1],
            "count": self.count,
            "labScore": round(self.lab_score, 2),
            "status": self.status,
            "displays": [d for d, _ in self.displays.most_common(3)],
            "units": [u for u, _ in self.units.most_common(3)],
        }


@dataclass
class UnitRow:
    unit: str
    count: int = 0
    codes: Counter[Code] = field(default_factory=Counter)

    def as_json(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "count": self.count,
            "codes": [f"{s}|{c}" for (s, c), _ in self.codes.most_common(3)],
        }


@dataclass
class Report:
    resources: int
    covered: int  # Observations / Conditions the protocol or an exact mapping covers
    codes: list[CodeRow]
    units: list[UnitRow]
    patients: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "resources": self.resources,
            "covered": self.covered,
            "patients": self.patients,
            "codes": [r.as_json() for r in self.codes],
            "units": [u.as_json() for u in self.units],
        }


# -- input ---------------------------------------------------------------------------------


def _from_json(data: Any) -> list[Resource]:
    if isinstance(data, dict) and data.get("resourceType") == "Bundle":
        return runtime.bundle_resources(data)
    return [data] if isinstance(data, dict) and "resourceType" in data else []


def _read_file(path: Path) -> list[Resource]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ReportInputError(f"cannot read {path}: {exc.strerror}") from None
    try:
        if path.suffix in (".ndjson", ".jsonl"):
            return [
                r
                for line in raw.splitlines()
                if line.strip()
                for r in _from_json(orjson.loads(line))
            ]
        return _from_json(orjson.loads(raw))
    except orjson.JSONDecodeError:
        raise ReportInputError(f"{path} is not valid JSON / NDJSON") from None


def read_local(paths: Iterable[Path]) -> list[Resource]:
    """Resources of Bundle files, NDJSON files, or folders of either (bulk export)."""
    resources: list[Resource] = []
    for path in paths:
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".ndjson", ".jsonl", ".json"))
            if not files:
                raise ReportInputError(f"{path} holds no .ndjson or .json file")
            for file in files:
                resources += _read_file(file)
        else:
            resources += _read_file(path)
    return resources


async def read_server(settings: Any, patients: list[str], sample: int) -> list[Resource]:
    """Observations and Conditions of the given patients, or of the first ``sample`` patients
    the server lists, through the service's FHIR client (auth, retries, caps, deadline)."""
    import asyncio

    from service.fhir.pool import client_for

    if not patients:
        capped = settings.model_copy(
            update={"max_entries": max(1, sample), "page_size": max(1, sample)}
        )
        async with client_for(capped) as client:
            found = await client.search(("Patient", [("_elements", "id")]))
        patients = [p["id"] for p in found.entries if isinstance(p.get("id"), str)][:sample]
    resources: list[Resource] = []

    async def one(pid: str) -> None:
        async with client_for(settings) as client:
            for rtype in ("Observation", "Condition"):
                result = await client.search((rtype, [("patient", pid)]))
                resources.extend(result.entries)

    await asyncio.gather(*(one(pid) for pid in patients))
    resources.append({"resourceType": "_Sample", "patients": len(patients)})
    return resources


# -- analysis ------------------------------------------------------------------------------


def _codes_of(concept: Any) -> list[tuple[Code, str | None]]:
    if not isinstance(concept, dict):
        return []
    return [
        ((c.get("system") or "", str(c["code"])), c.get("display") or concept.get("text"))
        for c in concept.get("coding") or ()
        if isinstance(c, dict) and "code" in c
    ]


def _is_lab(resource: Resource) -> bool:
    categories = resource.get("category")
    for concept in categories if isinstance(categories, list) else ():
        for code, _ in _codes_of(concept):
            if code == LAB_CATEGORY or code[1] == "laboratory":
                return True
    return False


def build_report(resources: list[Resource], protocol: Protocol) -> Report:
    """What the protocol and the configured site mappings do not cover in ``resources``."""
    from service.units import builtin_reading

    protocol_codes = frozenset(c for vs in protocol.valuesets.values() for c in vs.codes)
    term = runtime.active()
    site = term.site if term is not None else None
    site_codes = site.codes if site is not None else {}
    site_units = site.unit_aliases() if site is not None else {}
    rows: dict[tuple[str, Code], CodeRow] = {}
    units: dict[str, UnitRow] = {}
    total = covered = patients = 0

    def covers(code: Code) -> bool:
        return code in protocol_codes or any(m.exact for m in site_codes.get(code, ()))

    for resource in resources:
        rtype = resource.get("resourceType")
        if rtype == "_Sample":
            patients = resource["patients"]
            continue
        if rtype not in ("Observation", "Condition"):
            continue
        total += 1
        items = [resource]
        if rtype == "Observation" and isinstance(resource.get("component"), list):
            items += [c for c in resource["component"] if isinstance(c, dict)]
        lab = rtype == "Observation" and _is_lab(resource)
        any_covered = False
        for item in items:
            codes = _codes_of(item.get("code"))
            quantity = item.get("valueQuantity") if rtype == "Observation" else None
            unit = _unit(quantity)
            if unit is not None and builtin_reading(unit) is None and unit not in site_units:
                unit_row = units.setdefault(unit, UnitRow(unit))
                unit_row.count += 1
                unit_row.codes.update(c for c, _ in codes[:1])
            if any(covers(c) for c, _ in codes):
                any_covered = True
                continue
            for code, display in codes:
                row = rows.setdefault((rtype, code), CodeRow(rtype, code))
                row.count += 1
                row.numeric += isinstance(quantity, dict)
                row.laboratory += lab
                if display:
                    row.displays[display] += 1
                if unit:
                    row.units[unit] += 1
                inexact = sorted({m.equivalence for m in site_codes.get(code, ())})
                if inexact:
                    row.status = f"mapped {'/'.join(inexact)} (evidence only)"
        covered += any_covered
    ranked = sorted(rows.values(), key=lambda r: (-round(r.lab_score, 2), -r.count, r.code))
    unit_rows = sorted(units.values(), key=lambda u: (-u.count, u.unit))
    return Report(total, covered, ranked, unit_rows, patients)


def _unit(quantity: Any) -> str | None:
    if not isinstance(quantity, dict):
        return None
    if quantity.get("system") == UCUM_SYSTEM and isinstance(quantity.get("code"), str):
        return quantity["code"]
    unit = quantity.get("unit")
    return unit if isinstance(unit, str) and unit.strip() else None


# -- output --------------------------------------------------------------------------------


def render(report: Report, console: Any, top: int) -> None:
    from rich.table import Table

    sampled = f" from {report.patients} patients" if report.patients else ""
    console.print(
        f"{report.resources} Observations/Conditions{sampled}; {report.covered} covered by the "
        f"protocol's ValueSets or an exact site mapping; {len(report.codes)} codes and "
        f"{len(report.units)} unit strings not covered"
    )
    if not report.codes and not report.units:
        console.print("nothing to map: every code and unit string is covered")
        return
    table = Table(title="Codes not covered (likely lab analytes first)")
    for name in ("type", "system", "code", "count", "lab", "status", "example displays", "units"):
        table.add_column(name)
    for row in report.codes[:top]:
        table.add_row(
            row.resource_type,
            row.code[0],
            row.code[1],
            str(row.count),
            f"{row.lab_score:.2f}",
            row.status,
            "; ".join(d for d, _ in row.displays.most_common(2)),
            ", ".join(u for u, _ in row.units.most_common(2)),
        )
    console.print(table)
    if report.units:
        utable = Table(
            title="Unit strings the service cannot read (not UCUM, no alias, no mapping)"
        )
        for name in ("unit", "count", "example codes"):
            utable.add_column(name)
        for u in report.units[:top]:
            codes = ", ".join(f"{s}|{c}" for (s, c), _ in u.codes.most_common(2))
            utable.add_row(u.unit, str(u.count), codes)
        console.print(utable)


def skeleton(report: Report, protocol: Protocol) -> dict[str, Any]:
    """A draft R4 ConceptMap of the uncovered local codes (systems the protocol does not use)
    and unit strings; every target ``unmatched`` with a comment, for the team to complete."""
    known_systems = runtime.protocol_systems(protocol)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in report.codes:
        if row.code[0] in known_systems or row.status != "unmapped":
            continue
        target = TARGET_FOR[row.resource_type]
        hint = f"{row.count} results"
        if row.units:
            hint += f"; units {', '.join(u for u, _ in row.units.most_common(3))}"
        element: dict[str, Any] = {"code": row.code[1]}
        if row.displays:
            element["display"] = row.displays.most_common(1)[0][0]
        element["target"] = [
            {
                "equivalence": "unmatched",
                "comment": f"TODO: set code and equivalence (only 'equivalent' feeds a "
                f"criterion). Seen: {hint}; lab score {row.lab_score:.2f}",
            }
        ]
        groups.setdefault((row.code[0] or "urn:site:no-system", target), []).append(element)
    if report.units:
        groups[(UNIT_SOURCE, UCUM_SYSTEM)] = [
            {
                "code": u.unit,
                "target": [
                    {
                        "equivalence": "unmatched",
                        "comment": f"TODO: the UCUM code for this unit string ({u.count} results)",
                    }
                ],
            }
            for u in report.units
        ]
    now = datetime.now(UTC).date().isoformat()
    draft: dict[str, Any] = {
        "resourceType": "ConceptMap",
        "url": f"urn:uuid:{uuid.uuid4()}",
        "version": "0.1-draft",
        "name": "SiteDraftConceptMap",
        "title": "Draft site mappings (from eligibility terminology-report)",
        "status": "draft",
        "date": now,
        "description": (
            "Draft written by `eligibility terminology-report --conceptmap-skeleton`: every "
            "target is unmatched until the terminology team sets code and equivalence. Give it "
            "a real url and version before use; only 'equivalent' or 'equal' feed a criterion."
        ),
    }
    if groups:
        draft["group"] = [
            {"source": source, "target": target, "element": elements}
            for (source, target), elements in groups.items()
        ]
    return draft


def write_skeleton(report: Report, protocol: Protocol, path: Path) -> None:
    resource = skeleton(report, protocol)
    from fhir.resources.R4B.conceptmap import ConceptMap

    ConceptMap.model_validate(resource)  # never write a draft the loader would refuse
    path.write_bytes(orjson.dumps(resource, option=orjson.OPT_INDENT_2) + b"\n")
