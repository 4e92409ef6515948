"""Evaluate one patient against every study, in pull mode, keeping the versions read.

The default is the ``evaluate_from_server`` pipeline per protocol (the same fetch plan,
terminology and engine as ``GET /Patient/{id}/$eligibility``). A multi-study core that
fetches once can replace it: the worker takes any function of this shape.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from service.clinical.dates import today
from service.clinical.evaluation import Evaluation
from service.protocol import Protocol
from service.settings import Settings


@dataclass(frozen=True)
class StudyEvaluation:
    protocol: Protocol
    evaluation: Evaluation
    versions: dict[str, str]  # "Type/id" -> versionId (or lastUpdated) of what was read


EvaluatePatient = Callable[[Settings, Sequence[Protocol], str], Awaitable[list[StudyEvaluation]]]


def versions_of(patient: dict[str, Any], resources: list[dict[str, Any]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for res in [patient, *resources]:
        found = res.get("meta")
        meta: dict[str, Any] = found if isinstance(found, dict) else {}
        version = meta.get("versionId") or meta.get("lastUpdated")
        if res.get("resourceType") and res.get("id") and isinstance(version, str):
            out[f"{res['resourceType']}/{res['id']}"] = version
    return out


async def evaluate_patient(
    settings: Settings, protocols: Sequence[Protocol], patient_id: str
) -> list[StudyEvaluation]:
    """Every study, pull mode, as of today."""
    from service.evaluation_context import EvaluationContext
    from service.fhir.fetch import fetch_patient
    from service.fhir.pool import client_for
    from service.pipeline import evaluate_fetched_off_loop
    from service.terminology import runtime as terminology

    day = today()
    out: list[StudyEvaluation] = []
    for protocol in protocols:
        context = EvaluationContext.current(protocol)
        async with client_for(settings) as client:
            fetched = await fetch_patient(
                client, protocol, patient_id, day, relevance=context.relevance
            )
        mappings = await terminology.table_for(fetched.resources, protocol, context.site)
        evaluation, _ = await evaluate_fetched_off_loop(fetched, protocol, day, mappings, context)
        out.append(
            StudyEvaluation(protocol, evaluation, versions_of(fetched.patient, fetched.resources))
        )
    return out
