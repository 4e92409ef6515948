"""The process's site terminology: configured once at start-up, read by the pipeline.

``configure`` loads and validates the site folder (a bad file stops the start) and installs
its unit mappings; ``table_for`` builds one evaluation's mapping table before evaluation
(folder, then ``$translate`` for codes still unknown). Nothing configured: ``active()`` is
None and the pipeline passes no table (zero cost on the hot path).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.contained import has_members, member_results
from service.protocol import Protocol
from service.terminology.conceptmaps import Code, SiteMappings, load_site_mappings
from service.terminology.table import MappingTable
from service.terminology.translate import Translator

Resource = dict[str, Any]

# Resource types whose codes a site may map.
MAPPED_TYPES = frozenset({"Observation", "Condition"})


@dataclass
class Terminology:
    site: SiteMappings | None
    translator: Translator | None
    folder_table: MappingTable
    _reverse: dict[Code, set[Code]] | None = None

    def local_codes(self, codes: Iterable[Code]) -> set[Code]:
        """Site codes the folder maps (in any way) to one of ``codes``: pull mode searches
        for them too, so a result mapped only inexactly is seen and keeps its criterion
        open."""
        if self.site is None:
            return set()
        if self._reverse is None:
            reverse: dict[Code, set[Code]] = {}
            for source, mappings in self.site.codes.items():
                for m in mappings:
                    if m.target is not None:
                        reverse.setdefault(m.target, set()).add(source)
            self._reverse = reverse
        found: set[Code] = set()
        for code in codes:
            found |= self._reverse.get(code, set())
        return found

    def unknown_codes(self, resources: Iterable[Resource], protocol: Protocol) -> set[Code]:
        """Codes of Observations and Conditions in systems the protocol does not use (a
        protocol system's other codes are other tests, not local codes) and not mapped by
        the folder: what is left to ask the terminology server."""
        known_systems = protocol_systems(protocol)
        folder = self.site.codes if self.site is not None else {}
        unknown: set[Code] = set()
        for resource in resources:
            if not isinstance(resource, dict) or resource.get("resourceType") not in MAPPED_TYPES:
                continue
            # a panel's contained results are read as results of their own (service.contained)
            parts = [resource]
            if resource["resourceType"] == "Observation" and has_members(resource):
                parts += [member for _, member in member_results(resource)]
            for part in parts:
                for code in resource_codes(part):
                    if code[0] not in known_systems and code not in folder:
                        unknown.add(code)
        return unknown


def protocol_systems(protocol: Protocol) -> frozenset[str]:
    return frozenset(system for vs in protocol.valuesets.values() for system, _ in vs.codes)


def resource_codes(resource: Resource) -> list[Code]:
    """(system, code) of ``code`` and of each ``component.code``."""
    concepts = [resource.get("code")]
    components = resource.get("component")
    if isinstance(components, list):
        concepts += [c.get("code") for c in components if isinstance(c, dict)]
    found: list[Code] = []
    for concept in concepts:
        if isinstance(concept, dict):
            for coding in concept.get("coding") or ():
                if isinstance(coding, dict) and "code" in coding:
                    found.append((coding.get("system") or "", str(coding["code"])))
    return found


_ACTIVE: list[Terminology] = []  # at most one; a list so no `global` statement is needed


def configure(
    site_dir: Path | str | None,
    server_url: str | None = None,
    *,
    timeout: float = 3.0,
    cache_seconds: float = 3600.0,
    concurrency: int = 8,
    conceptmap_url: str | None = None,
) -> Terminology | None:
    """Load the site folder and set up the translator; None (and nothing active) when
    neither is configured. Raises ``SiteMappingError`` for a bad folder or file."""
    from service import units

    _ACTIVE.clear()
    site = load_site_mappings(site_dir) if site_dir else None
    units.set_site_units(site.unit_aliases() if site is not None else {})
    translator = (
        Translator(
            server_url,
            timeout=timeout,
            cache_seconds=cache_seconds,
            concurrency=concurrency,
            conceptmap_url=conceptmap_url,
        )
        if server_url
        else None
    )
    if site is None and translator is None:
        return None
    active = Terminology(site, translator, MappingTable.of(site))
    _ACTIVE.append(active)
    return active


def configure_from(settings: Any) -> Terminology | None:
    """``configure`` from the settings (``ELIGIBILITY_SITE_MAPPINGS`` and the
    ``ELIGIBILITY_TERMINOLOGY_*`` block)."""
    return configure(
        settings.site_mappings,
        settings.terminology_server_url,
        timeout=settings.terminology_timeout,
        cache_seconds=settings.terminology_cache_seconds,
        concurrency=settings.terminology_concurrency,
        conceptmap_url=settings.terminology_conceptmap_url,
    )


def active() -> Terminology | None:
    return _ACTIVE[0] if _ACTIVE else None


def reset() -> None:
    """Forget the configuration (tests)."""
    from service import units

    _ACTIVE.clear()
    units.set_site_units({})


_ACTIVE_NOW: Any = object()  # default of ``site``: the terminology configured now


def _needs_translation(
    resources: Iterable[Resource], protocol: Protocol, site: Terminology | None
) -> tuple[MappingTable | None, Terminology | None, set[Code]]:
    """(the table when no server call is needed, else the terminology and the codes to ask)."""
    term = active() if site is _ACTIVE_NOW else site
    if term is None:
        return None, None, set()
    if term.translator is None:
        return term.folder_table, None, set()
    unknown = term.unknown_codes(resources, protocol)
    if not unknown:
        return term.folder_table, None, set()
    return None, term, unknown


async def table_for(
    resources: Iterable[Resource], protocol: Protocol, site: Terminology | None = _ACTIVE_NOW
) -> MappingTable | None:
    """One evaluation's mapping table (pull mode: the translations run in parallel);
    ``site``: the evaluation's terminology (service.evaluation_context)."""
    table, term, unknown = _needs_translation(resources, protocol, site)
    if term is None or term.translator is None:  # _needs_translation: term has a translator
        return table
    translated, failed = await term.translator.translate(unknown)
    return MappingTable.of(term.site, translated, failed)


def table_for_sync(
    resources: Iterable[Resource], protocol: Protocol, site: Terminology | None = _ACTIVE_NOW
) -> MappingTable | None:
    """``table_for`` for synchronous callers (bundle mode)."""
    table, term, unknown = _needs_translation(resources, protocol, site)
    if term is None or term.translator is None:
        return table
    translated, failed = term.translator.translate_sync(unknown)
    return MappingTable.of(term.site, translated, failed)


def bundle_resources(bundle: Any) -> list[Resource]:
    """The resources of a Bundle (nested Bundles of a batch-response opened once)."""
    out: list[Resource] = []
    entries = bundle.get("entry") if isinstance(bundle, dict) else None
    for entry in entries if isinstance(entries, list) else ():
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            continue
        if resource.get("resourceType") == "Bundle":
            out += bundle_resources(resource)
        else:
            out.append(resource)
    return out
