"""Evaluate one decoded patient Bundle against several studies: the one call to swap for the
multi-study evaluation core when it lands. Today each study's single-study evaluation of
the same decoded Bundle (``evaluate_resource``, exactly what ``$eligibility`` runs)."""

from __future__ import annotations

from datetime import date
from typing import Any

from service.clinical.evaluation import Evaluation
from service.pipeline import evaluate_resource
from service.protocol import Protocol


def evaluate_studies(
    bundle: dict[str, Any], protocols: list[Protocol], as_of: date | None = None
) -> list[tuple[Protocol, Evaluation]]:
    """(protocol, evaluation) per study, in the order given (decoded once, by the caller)."""
    return [(p, evaluate_resource(bundle, p, as_of=as_of)[0]) for p in protocols]
