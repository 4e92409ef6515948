"""Load a site's ConceptMaps (FHIR R4) from a folder, validated once at start-up.

Every ``*.json`` file in the folder is one ConceptMap (or a Bundle of them). Each is validated
with the fhir.resources R4B ConceptMap model (R4B's ConceptMap is R4's) and must have a
``url``; a file that is not valid JSON, not a ConceptMap or not valid stops the start with a
``SiteMappingError`` naming the file. Groups whose target is UCUM map unit strings.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from service.errors import ConfigurationError

Code = tuple[str, str]  # (system, code), as service.protocol.Code

UCUM_SYSTEM = "http://unitsofmeasure.org"
# The only equivalences that may make a local code count as the protocol's code (R4
# ConceptMap.group.element.target.equivalence); "equal" is the stronger "equivalent".
EXACT = frozenset({"equivalent", "equal"})
# R4 ConceptMapEquivalence (the model checks a code's form, not its value set).
EQUIVALENCES = frozenset(
    {"relatedto", "equivalent", "equal", "wider", "subsumes", "narrower", "specializes",
     "inexact", "unmatched", "disjoint"}
)  # fmt: skip


class SiteMappingError(ConfigurationError, ValueError):
    """A site mapping file cannot be used (a start-up error, with the file named)."""


@dataclass(frozen=True, slots=True)
class MapSource:
    """The ConceptMap a mapping came from (or the terminology server that translated it)."""

    url: str
    version: str | None = None
    name: str | None = None

    @property
    def label(self) -> str:
        return f"{self.url}|{self.version}" if self.version else self.url


@dataclass(frozen=True, slots=True)
class Mapping:
    """One local code's mapping to one target (``target`` None: unmatched)."""

    source: Code
    target: Code | None
    equivalence: str
    by: MapSource
    source_display: str | None = None
    target_display: str | None = None

    @property
    def exact(self) -> bool:
        return self.target is not None and self.equivalence in EXACT

    def describe(self) -> str:
        """E.g. 'local code urn:lab|PLT mapped to http://loinc.org|777-3 by ConceptMap
        https://site.example/ConceptMap/lab|1 (equivalent)'."""
        src = f"{self.source[0]}|{self.source[1]}"
        if self.target is None:
            return f"local code {src} is unmatched in ConceptMap {self.by.label}"
        tgt = f"{self.target[0]}|{self.target[1]}"
        return (
            f"local code {src} mapped to {tgt} by ConceptMap {self.by.label} ({self.equivalence})"
        )


@dataclass(frozen=True)
class SiteMappings:
    """Every mapping of a site's folder: codes (by source code) and unit strings."""

    codes: dict[Code, tuple[Mapping, ...]] = field(default_factory=dict)
    units: dict[str, Mapping] = field(default_factory=dict)  # unit string -> UCUM mapping
    sources: tuple[MapSource, ...] = ()
    directory: Path | None = None

    def __bool__(self) -> bool:
        return bool(self.codes or self.units)

    def unit_aliases(self) -> dict[str, str]:
        """Unit string -> UCUM code, exact mappings only (the units.py hook's table)."""
        return {unit: m.target[1] for unit, m in self.units.items() if m.exact and m.target}


def _validate(resource: Any, where: str) -> None:
    from fhir.resources.R4B.conceptmap import ConceptMap  # only at start-up

    try:
        ConceptMap.model_validate(resource)
    except Exception as exc:  # noqa: BLE001 - pydantic's ValidationError and friends
        first = str(exc).splitlines()
        detail = "; ".join(line.strip() for line in first[:3])
        raise SiteMappingError(f"{where}: not a valid R4 ConceptMap ({detail})") from None
    if not isinstance(resource.get("url"), str) or not resource["url"]:
        raise SiteMappingError(f"{where}: a site ConceptMap needs a url (named in evidence)")
    for g, group in enumerate(resource.get("group") or ()):
        if not group.get("source") or not group.get("target"):
            raise SiteMappingError(f"{where}: group[{g}] needs both source and target systems")
        for e, element in enumerate(group.get("element") or ()):
            if not element.get("code"):
                raise SiteMappingError(f"{where}: group[{g}].element[{e}] has no code")
            for t, target in enumerate(element.get("target") or ()):
                if target.get("equivalence") not in EQUIVALENCES:
                    raise SiteMappingError(
                        f"{where}: group[{g}].element[{e}].target[{t}]: equivalence "
                        f"{target.get('equivalence')!r} is not an R4 ConceptMapEquivalence"
                    )
                if target.get("equivalence") != "unmatched" and not target.get("code"):
                    raise SiteMappingError(
                        f"{where}: group[{g}].element[{e}].target[{t}] has no code"
                    )


def conceptmap_mappings(resource: dict[str, Any]) -> list[Mapping]:
    """The mappings of one (validated) ConceptMap."""
    by = MapSource(resource["url"], resource.get("version"), resource.get("name"))
    found: list[Mapping] = []
    for group in resource.get("group") or ():
        source_system, target_system = group["source"], group["target"]
        for element in group.get("element") or ():
            source = (source_system, str(element["code"]))
            targets = element.get("target") or [{"equivalence": "unmatched"}]
            for target in targets:
                equivalence = target.get("equivalence", "unmatched")
                code = target.get("code")
                found.append(
                    Mapping(
                        source,
                        (target_system, str(code)) if code and equivalence != "unmatched" else None,
                        equivalence,
                        by,
                        element.get("display"),
                        target.get("display"),
                    )
                )
    return found


def _resources(path: Path) -> list[Any]:
    """The file's resources as found (a Bundle's entries unwrapped): the caller checks each."""
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise SiteMappingError(f"{path}: cannot read JSON ({exc})") from None
    if isinstance(data, dict) and data.get("resourceType") == "Bundle":
        return [e.get("resource") for e in data.get("entry") or () if isinstance(e, dict)]
    return [data]


def load_site_mappings(directory: Path | str) -> SiteMappings:
    """Every ConceptMap in ``directory`` (``*.json``), validated; a bad file is an error."""
    directory = Path(directory)
    if not directory.is_dir():
        raise SiteMappingError(f"site mappings folder {directory} does not exist")
    codes: defaultdict[Code, list[Mapping]] = defaultdict(list)
    units: dict[str, Mapping] = {}
    sources: list[MapSource] = []
    for path in sorted(directory.glob("*.json")):
        for n, resource in enumerate(_resources(path)):
            where = f"{path}" + (f" (entry {n})" if n else "")
            if not isinstance(resource, dict) or resource.get("resourceType") != "ConceptMap":
                kind = resource.get("resourceType") if isinstance(resource, dict) else resource
                raise SiteMappingError(f"{where}: expected a ConceptMap, got {kind!r}")
            _validate(resource, where)
            for mapping in conceptmap_mappings(resource):
                if mapping.target is not None and mapping.target[0] == UCUM_SYSTEM:
                    _add_unit(units, mapping, where)
                else:
                    codes[mapping.source].append(mapping)
            sources.append(
                MapSource(resource["url"], resource.get("version"), resource.get("name"))
            )
    _check_units(units, directory)
    return SiteMappings({k: tuple(v) for k, v in codes.items()}, units, tuple(sources), directory)


def _add_unit(units: dict[str, Mapping], mapping: Mapping, where: str) -> None:
    unit = mapping.source[1]
    old = units.get(unit)
    if old is not None and (old.target, old.exact) != (mapping.target, mapping.exact):
        raise SiteMappingError(f"{where}: unit {unit!r} is mapped twice, to different units")
    units[unit] = mapping


def _check_units(units: dict[str, Mapping], directory: Path) -> None:
    """A unit mapping's target must be valid UCUM, and its source must not already be UCUM
    or a built-in alias (a site file must not silently re-read a standard unit)."""
    if not units:
        return
    from service.units import UnitError, builtin_reading, check_ucum

    for unit, mapping in units.items():
        assert mapping.target is not None
        try:
            check_ucum(mapping.target[1])
        except UnitError as exc:
            raise SiteMappingError(f"{directory}: unit mapping {unit!r}: {exc}") from None
        known = builtin_reading(unit)
        if known is not None:
            raise SiteMappingError(
                f"{directory}: unit {unit!r} is already read as {known!r} (UCUM or the built-in "
                "alias table); a site mapping may only add units the service cannot read"
            )
