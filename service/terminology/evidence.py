"""Say in each criterion's note how a site code was mapped, and list the ConceptMaps used.

Runs after evaluation on the results (the rules never see the mapping itself): a result whose
evidence includes a recoded resource gets "local code X mapped to Y by ConceptMap url|version
(equivalence)" added to its reason; the Provenance lists every ConceptMap that was used.
"""

from __future__ import annotations

from collections.abc import Iterator

from service.clinical.evaluation import Evaluation
from service.clinical.model import CriterionResult
from service.record import PatientRecord
from service.terminology.conceptmaps import UCUM_SYSTEM, Mapping, MapSource


def _walk(results: list[CriterionResult]) -> Iterator[CriterionResult]:
    for r in results:
        yield r
        yield from _walk(r.members)


def annotate(
    evaluation: Evaluation, record: PatientRecord, units: dict[str, Mapping] | None = None
) -> None:
    """Add the mappings (codes, and site unit strings) to each affected criterion's reason;
    set ``evaluation.conceptmaps``."""
    if not record.mapped and not units:
        return
    by_ref = _unit_uses(record, units) if units else {}
    used: dict[MapSource, None] = {}
    for result in _walk(evaluation.results):
        lines: dict[str, None] = {}
        for ref in result.evidence:
            recoded = record.mapped.get(ref.reference)
            for mapping in recoded.uses if recoded is not None else ():
                lines[f"{ref.reference}: {mapping.describe()}"] = None
                used[mapping.by] = None
            for mapping in by_ref.get(ref.reference, ()):
                lines[
                    f"{ref.reference}: unit {mapping.source[1]!r} read as UCUM "
                    f"{mapping.target[1] if mapping.target else '?'} by ConceptMap "
                    f"{mapping.by.label}"
                ] = None
                used[mapping.by] = None
        if lines:
            result.reason = f"{result.reason} [site terminology: {'; '.join(lines)}]"
    evaluation.conceptmaps = list(used)


def _unit_uses(record: PatientRecord, units: dict[str, Mapping]) -> dict[str, list[Mapping]]:
    """Observation reference -> the site unit mappings its values (or components') use."""
    found: dict[str, list[Mapping]] = {}
    seen: set[int] = set()
    for observations in record.observations.values():
        for obs in observations:
            if id(obs) in seen:
                continue
            seen.add(id(obs))
            items = [obs, *(c for c in obs.get("component") or () if isinstance(c, dict))]
            for item in items:
                quantity = item.get("valueQuantity")
                if not isinstance(quantity, dict):
                    continue
                unit = quantity.get("unit")
                if quantity.get("system") == UCUM_SYSTEM and quantity.get("code"):
                    unit = quantity["code"]  # the UCUM code is what was read
                mapping = units.get(unit.strip()) if isinstance(unit, str) else None
                if mapping is not None and mapping.exact:
                    found.setdefault(record.ref(obs).reference, []).append(mapping)
    return found
