"""Authoring tools for protocol folders: ``eligibility protocol check`` and ``protocol show``.

Whoever writes the next protocol is usually editing TOML and JSON by hand; these tools say
what is wrong (file, criterion, key) before the protocol ever evaluates a patient, and show
what the engine will read, as a table.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from service.protocol import Protocol, ProtocolError, load_protocol

# Code systems a protocol may use; its own CodeSystems are added per folder. HL7's own
# terminology (terminology.hl7.org, hl7.org/fhir) is known too.
KNOWN_SYSTEMS = {
    "http://loinc.org": "LOINC",
    "http://snomed.info/sct": "SNOMED CT",
    "http://hl7.org/fhir/sid/icd-10-cm": "ICD-10-CM",
    "http://terminology.hl7.org/CodeSystem/icd-o-3": "ICD-O-3",
    "http://www.nlm.nih.gov/research/umls/rxnorm": "RxNorm",
    "http://www.whocc.no/atc": "ATC",
    "http://unitsofmeasure.org": "UCUM",
    "http://www.ama-assn.org/go/cpt": "CPT",
    "urn:ietf:rfc:3986": "URI",
}
KNOWN_PREFIXES = ("http://terminology.hl7.org/CodeSystem/", "http://hl7.org/fhir/")


@dataclass
class CheckReport:
    """Problems (errors fail the check) and warnings, each one line naming file and key."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def check_folder(folder: Path) -> CheckReport:
    """Everything the loader checks, plus FHIR validity, UCUM units, known code systems and
    unused ValueSets (a warning)."""
    report = CheckReport()
    folder = Path(folder)
    resources = _read_resources(folder, report)
    try:
        protocol = load_protocol(folder / "protocol.toml")
    except (OSError, ProtocolError) as exc:
        report.errors.append(str(exc))
        protocol = None
    _validate_fhir(resources, report)
    own = {r["url"] for r in resources.values() if r.get("resourceType") == "CodeSystem"}
    _check_systems(resources, own, report)
    if protocol is not None:
        _check_units(protocol, report)
        _check_used(protocol, report)
    return report


def _read_resources(folder: Path, report: CheckReport) -> dict[Path, dict[str, Any]]:
    found: dict[Path, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.json")):
        try:
            data = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            report.errors.append(f"{path}: not readable JSON ({exc})")
            continue
        if isinstance(data, dict) and isinstance(data.get("resourceType"), str):
            found[path] = data
        else:
            report.errors.append(f"{path}: not a FHIR resource (no resourceType)")
    return found


def _validate_fhir(resources: dict[Path, dict[str, Any]], report: CheckReport) -> None:
    from fhir.resources.R4B import get_fhir_model_class
    from pydantic import ValidationError

    for path, data in resources.items():
        try:
            get_fhir_model_class(data["resourceType"]).model_validate(data)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            if isinstance(exc, ValidationError):
                for err in exc.errors()[:5]:
                    loc = ".".join(str(p) for p in err.get("loc", ()))
                    report.errors.append(f"{path}: invalid FHIR R4 at {loc}: {err.get('msg')}")
            else:
                report.errors.append(f"{path}: invalid FHIR R4: {exc}")


def _codings(node: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """(element path, system) of every Coding and ValueSet include in a resource."""
    if isinstance(node, dict):
        if isinstance(node.get("system"), str) and ("code" in node or "concept" in node):
            yield where, node["system"]
        for key, value in node.items():
            yield from _codings(value, f"{where}.{key}" if where else key)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _codings(value, f"{where}[{i}]")


def _check_systems(
    resources: dict[Path, dict[str, Any]], own: set[str], report: CheckReport
) -> None:
    for path, data in resources.items():
        for where, system in _codings(data):
            if system in KNOWN_SYSTEMS or system in own or system.startswith(KNOWN_PREFIXES):
                continue
            report.errors.append(f"{path}: {where}: unknown code system {system!r}")


def _check_units(protocol: Protocol, report: CheckReport) -> None:
    from service.units import UnitError, check_ucum

    toml = protocol.directory / "protocol.toml"
    for c in protocol.criteria.values():
        for key, unit in c.typed.units() if c.typed is not None else ():
            try:
                check_ucum(unit)
            except UnitError as exc:
                report.errors.append(
                    f"{toml}: [criteria.{c.code}] key {key!r}: unit {unit!r} is not UCUM ({exc})"
                )


def _check_used(protocol: Protocol, report: CheckReport) -> None:
    used: set[str] = set()
    for key, value in protocol.general.items():
        if key.endswith("valueset"):
            used.add(value)
        elif key.endswith("valuesets"):
            used.update(value.values() if isinstance(value, dict) else value)
    for c in protocol.criteria.values():
        if c.typed is not None:
            used.update(v for _, v in c.typed.references("valueset"))
    for vs_id in sorted(set(protocol.valuesets) - used):
        report.warnings.append(f"ValueSet {vs_id!r} is used by no criterion nor [general]")


# -- show -----------------------------------------------------------------------------


def _quantity(value: Any) -> str:
    if hasattr(value, "low"):
        return f"{value.low:g}–{value.high:g} {value.unit}"
    return f"{value.value:g} {value.unit}"


def _thresholds(typed: Any) -> str:
    """The decision limits of a criterion, in words short enough for a table cell."""
    if typed is None:
        return ""
    parts: list[str] = []
    data = typed.model_dump(exclude_none=True)
    for key, value in data.items():
        if key in ("window_days", "analyte", "disease", "treatment", "histology_extension"):
            continue
        if key.endswith(("valueset", "valuesets", "attestation_item")):
            continue
        attr = getattr(typed, key)
        if hasattr(attr, "unit"):
            parts.append(f"{key} {_quantity(attr)}")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            parts.append(f"{key} {value:g}")
        elif isinstance(value, list | tuple) and all(isinstance(v, int | float) for v in value):
            parts.append(f"{key} {'–'.join(f'{v:g}' for v in value)}")
        elif isinstance(value, bool) and value:
            parts.append(key)
    comparator = data.get("comparator")
    if comparator and "threshold" in data:
        parts = [p for p in parts if not p.startswith(("comparator", "threshold"))]
        parts.insert(0, f"{comparator} {_quantity(typed.threshold)}")
    return "; ".join(parts)


def show_table(protocol: Protocol) -> Table:
    table = Table(title=f"{protocol.id} — {protocol.versioned_canonical}", show_lines=True)
    for column in ("code", "kind", "title", "rule", "thresholds", "window", "ValueSets / items"):
        table.add_column(column, overflow="fold")
    for c in protocol.criteria.values():
        typed = c.typed
        window = getattr(typed, "window_days", None)
        reads = [v for _, v in typed.references("valueset")] if typed is not None else []
        reads += [f"item {v}" for _, v in typed.references("attestation_item")] if typed else []
        if c.members:
            reads.append("members: " + ", ".join(c.members))
        code = f"  {c.code}" if c.is_member else c.code
        table.add_row(
            code,
            c.kind,
            c.title,
            c.rule,
            _thresholds(typed),
            f"{window} days" if window is not None else "",
            ", ".join(reads),
        )
    return table


def show(protocol: Protocol, console: Console) -> None:
    registry = ", ".join(protocol.registry_numbers) or "no registry number"
    console.print(f"[bold]{protocol.research_study.get('title', protocol.id)}[/bold] ({registry})")
    console.print(show_table(protocol))
