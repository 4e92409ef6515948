"""Every answer the API and CDS Hooks give ends in the ResultStore, one row per study.

The coordinator's worklist lists these rows; a store that fails must never fail the answer
the caller is waiting for (the row is lost and the failure logged, without patient data).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from service.clinical.evaluation import Evaluation
from service.protocol import Protocol
from service.results.model import summarise

log = logging.getLogger("service.results")


async def record_answers(
    app: Any, answers: Iterable[tuple[Protocol, Evaluation]], source: str
) -> None:
    """``summarise`` each (protocol, evaluation) and record it in ``app.state.result_store``."""
    store = getattr(app.state, "result_store", None)
    if store is None:
        return
    try:
        results = [summarise(evaluation, protocol.id, source) for protocol, evaluation in answers]
        if len(results) == 1:
            await store.record(results[0])
        elif results:  # one transaction (one thread hop) for a portfolio's studies
            await store.record_many(results)
    except Exception as exc:  # noqa: BLE001 - the answer goes out whatever the store does
        log.warning("result store failed", extra={"error_type": type(exc).__name__})
