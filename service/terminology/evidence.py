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
from service.terminology.conceptmaps import MapSource


def _walk(results: list[CriterionResult]) -> Iterator[CriterionResult]:
    for r in results:
        yield r
        yield from _walk(r.members)


def annotate(evaluation: Evaluation, record: PatientRecord) -> None:
    """Add the mapping to each affected criterion's reason; set ``evaluation.conceptmaps``."""
    if not record.mapped:
        return
    used: dict[MapSource, None] = {}
    for result in _walk(evaluation.results):
        lines: dict[str, None] = {}
        for ref in result.evidence:
            recoded = record.mapped.get(ref.reference)
            if recoded is None:
                continue
            for mapping in recoded.uses:
                lines[f"{ref.reference}: {mapping.describe()}"] = None
                used[mapping.by] = None
        if lines:
            result.reason = f"{result.reason} [site terminology: {'; '.join(lines)}]"
    evaluation.conceptmaps = list(used)
