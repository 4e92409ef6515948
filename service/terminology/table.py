"""The mapping table one evaluation reads, and how it recodes a resource.

Built before evaluation (site folder + any ``$translate`` answers); the record builder asks it
only about codes no protocol ValueSet knows, so the cost is one dict lookup per unknown code,
and nothing at all when no site mappings are configured (the table is None).

An exact (``equivalent``/``equal``) mapping adds the target coding to a copy of the resource,
so every rule reads it as if the site had sent the standard code. Any other mapping to a code
a criterion reads makes the resource evidence only, through the protocol's own "context"
mechanism (``service.clinical.observations``): listed, never deciding.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Iterable
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass, field
from typing import Any

from service.protocol import ValueSet
from service.terminology.conceptmaps import Code, Mapping, MapSource, SiteMappings

Resource = dict[str, Any]


@dataclass(frozen=True)
class MappingTable:
    """Local code -> its mappings; ``failed``: codes a terminology server could not translate."""

    codes: MappingABC[Code, tuple[Mapping, ...]] = field(default_factory=dict)
    failed: MappingABC[Code, str] = field(default_factory=dict)

    def lookup(self, code: Code) -> tuple[Mapping, ...]:
        return self.codes.get(code, ())

    @classmethod
    def of(
        cls,
        site: SiteMappings | None,
        translated: MappingABC[Code, tuple[Mapping, ...]] | None = None,
        failed: MappingABC[Code, str] | None = None,
    ) -> MappingTable:
        folder = site.codes if site is not None else {}
        codes = ChainMap(dict(translated), folder) if translated else folder
        return cls(codes, dict(failed or {}))


@dataclass(slots=True)
class Recoded:
    """A resource as the evaluation should read it, and how its codes were mapped."""

    resource: Resource  # a copy with the mapped codings added (or the original)
    matched: list[Code]  # protocol codes it now carries (exact, or evidence-only targets)
    uses: list[Mapping]  # the mappings that gave them (named in the criterion's note)
    evidence_only: ValueSet | None = None  # set when only a non-exact mapping reached a code
    failed: list[str] = field(default_factory=list)  # translations that failed, in words


def _concept_codes(concept: Any) -> list[Code]:
    if not isinstance(concept, dict):
        return []
    return [
        (c.get("system") or "", str(c["code"]))
        for c in concept.get("coding") or ()
        if isinstance(c, dict) and "code" in c
    ]


def _with_codings(concept: Any, added: list[Mapping]) -> Any:
    if not added or not isinstance(concept, dict):
        return concept
    codings = list(concept.get("coding") or ())
    for m in added:
        assert m.target is not None
        coding = {"system": m.target[0], "code": m.target[1], "userSelected": False}
        if m.target_display:
            coding["display"] = m.target_display
        codings.append(coding)
    return {**concept, "coding": codings}


def _lookup(
    codes: Iterable[Code], table: MappingTable, wanted: frozenset[Code] | None
) -> tuple[list[Mapping], list[Mapping], list[str]]:
    """(exact, other) mappings of ``codes`` to wanted targets, and failed translations."""
    exact: list[Mapping] = []
    other: list[Mapping] = []
    failed: list[str] = []
    for code in codes:
        for m in table.lookup(code):
            if m.target is None or (wanted is not None and m.target not in wanted):
                continue
            (exact if m.exact else other).append(m)
        why = table.failed.get(code)
        if why is not None:
            failed.append(f"local code {code[0]}|{code[1]} could not be translated ({why})")
    return exact, other, failed


def recode(resource: Resource, table: MappingTable, wanted: frozenset[Code] | None) -> Recoded:
    """``resource`` with its local codes (``code`` and each ``component.code``) mapped.

    Exact mappings to ``wanted`` codes (None: any target) are added as codings. When none
    exists, non-exact ones are added too but the result is marked evidence only. A resource
    with both keeps only the exact ones (a non-exact target never decides).
    """
    parts: list[tuple[str | int, list[Mapping], list[Mapping]]] = []
    failed: list[str] = []
    exact, other, why = _lookup(_concept_codes(resource.get("code")), table, wanted)
    parts.append(("code", exact, other))
    failed += why
    components = resource.get("component")
    if isinstance(components, list):
        for n, part in enumerate(components):
            if isinstance(part, dict):
                exact, other, why = _lookup(_concept_codes(part.get("code")), table, wanted)
                parts.append((n, exact, other))
                failed += why
    any_exact = any(e for _, e, _ in parts)
    chosen = [(where, e if any_exact else o) for where, e, o in parts]
    used = [m for _, ms in chosen for m in ms]
    if not used:
        return Recoded(resource, [], [], None, failed)
    copy = dict(resource)
    for where, ms in chosen:
        if not ms:
            continue
        if where == "code":
            copy["code"] = _with_codings(resource.get("code"), ms)
        else:
            if copy.get("component") is components:  # copied once, on the first part mapped
                copy["component"] = list(resource["component"])
            part = copy["component"][where]
            copy["component"][where] = {**part, "code": _with_codings(part.get("code"), ms)}
    matched = list(dict.fromkeys(m.target for m in used if m.target is not None))
    marker = None if any_exact else evidence_only_valueset(used)
    return Recoded(copy, matched, used, marker, failed)


def evidence_only_valueset(used: list[Mapping]) -> ValueSet:
    """A ValueSet of the local codes that were mapped only inexactly, read by the context
    mechanism as "evidence, never deciding"; its title says which mapping and why."""
    first = used[0]
    kinds = sorted({m.equivalence for m in used})
    title = (
        f"a site code mapped only {'/'.join(kinds)} (not equivalent) by ConceptMap {first.by.label}"
    )
    resource = {
        "resourceType": "ValueSet",
        "title": title,
        "evidenceOnlyWhy": "a mapping that is not equivalent never decides",
    }
    displays = {m.source: m.source_display or m.source[1] for m in used}
    return ValueSet(
        f"site-mapping:{first.by.url}", first.by.url, frozenset(displays), resource, displays
    )


def conceptmap_sources(uses: Iterable[Mapping]) -> list[MapSource]:
    return list(dict.fromkeys(m.by for m in uses))
