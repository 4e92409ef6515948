"""The ``searchset`` answer: the matching studies with ``search.score`` and, beyond the peers,
every criterion's result on each ResearchStudy (manual: integrators/get-clinical-trial.md).

Score (in [0, 1]): 1.0 eligible; a potential candidate ``max(0.01, 0.5 * met / total)`` over
the top-level criteria (never 0: 0 means ineligible; below 0.5: some criterion is still
undetermined); ineligible studies are left out, or, when the request asks with
``includeIneligible``, listed with ``search.mode`` ``include`` and score 0.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator
from typing import Any

from service.clinical.evaluation import Evaluation
from service.clinical.model import CriterionResult, Outcome
from service.criterion_kind import kind_of
from service.protocol import Protocol

BASE = "https://fhir.cart-eligibility.example.org/StructureDefinition"
CRITERION_RESULT = f"{BASE}/eligibility-criterion-result"
STATUS = f"{BASE}/eligibility-status"
REASON_LIMIT = 1000


def score(evaluation: Evaluation) -> float:
    status = str(evaluation.status)
    if status == "eligible":
        return 1.0
    if status != "potential-candidate":
        return 0.0
    top = evaluation.results
    met = sum(r.outcome is Outcome.MET for r in top)
    return max(0.01, round(0.5 * met / len(top), 3)) if top else 0.01


def _walk(results: list[CriterionResult]) -> Iterator[CriterionResult]:
    for result in results:
        yield result
        yield from _walk(result.members)


def criterion_extension(protocol: Protocol, result: CriterionResult) -> dict[str, Any]:
    """One criterion: its code (the protocol's criteria CodeSystem), kind, outcome, reason."""
    parts: list[dict[str, Any]] = [
        {
            "url": "code",
            "valueCoding": {
                "system": protocol.criteria_system,
                "code": result.code,
                "display": protocol.criterion_display(result.code),
            },
        },
        {"url": "kind", "valueCode": kind_of(protocol, result.code)},
        {"url": "outcome", "valueCode": str(result.outcome)},
    ]
    if result.reason:
        parts.append({"url": "reason", "valueString": result.reason[:REASON_LIMIT]})
    return {"url": CRITERION_RESULT, "extension": parts}


def study_entry(protocol: Protocol, evaluation: Evaluation) -> dict[str, Any]:
    """The study's ResearchStudy with its status for this patient and every criterion."""
    study = copy.deepcopy(protocol.research_study)
    study.pop("text", None)  # its narrative describes the study, not this answer
    extensions = list(study.get("extension") or [])
    extensions.append({"url": STATUS, "valueCode": str(evaluation.status)})
    extensions += [criterion_extension(protocol, r) for r in _walk(evaluation.results)]
    study["extension"] = extensions
    value = score(evaluation)
    return {
        "fullUrl": protocol.canonical,
        "resource": study,
        "search": {"mode": "match" if value > 0 else "include", "score": value},
    }


def not_applied(names: list[str]) -> dict[str, Any]:
    """The OperationOutcome entry saying which search parameters were not applied."""
    return {
        "fullUrl": f"urn:uuid:{uuid.uuid4()}",
        "resource": {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": "information",
                    "code": "not-supported",
                    "diagnostics": f"{', '.join(names)} not applied: this service answers "
                    "for the trials of one site, whatever the distance",
                }
            ],
        },
        "search": {"mode": "outcome"},
    }


def searchset(entries: list[dict[str, Any]], outcome: dict[str, Any] | None) -> dict[str, Any]:
    """Best first: score, then the protocol order (a stable sort)."""
    ordered = sorted(entries, key=lambda e: -e["search"]["score"])
    matched = sum(e["search"]["mode"] == "match" for e in ordered)
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": matched,
        "entry": [*ordered, *([outcome] if outcome else [])],
    }
