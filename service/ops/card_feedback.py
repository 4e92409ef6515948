"""The card's life after it is shown: override reasons, feedback, and hiding an overridden card.

A ``patient-view`` card offers the reasons in ``fhir_mappings/CodeSystem-cds-override-reason``.
When the CDS client reports (CDS Hooks 2.0 feedback) that a clinician overrode the card with one
of them, the card is not shown again for that patient to that client for
``cds_override_suppress_days``, unless the screening result changes: the override is stored
with a hash of the result status and every criterion's outcome, and a different hash shows the
card again. Feedback is accepted only from the client the card was shown to.

State lives in the shared store under hashed keys (no patient id in a key). A store failure
shows the card (the safe side) and is counted in ``eligibility_store_errors_total``.
"""

from __future__ import annotations

import hashlib
import logging
from functools import cache
from typing import Any

import orjson

from fhir_mappings import MAPPINGS_DIR
from service.clinical.evaluation import Evaluation
from service.ops import metrics
from service.ops.caller import Caller
from service.settings import Settings
from service.state import StateStore, StoreError

log = logging.getLogger("service.ops.card_feedback")
_DAY = 86_400.0


@cache
def override_reasons() -> tuple[dict[str, str], ...]:
    """The Codings a card offers as ``overrideReasons`` (each with the required display)."""
    system = orjson.loads((MAPPINGS_DIR / "CodeSystem-cds-override-reason.json").read_bytes())
    return tuple(
        {"system": system["url"], "code": c["code"], "display": c["display"]}
        for c in system["concept"]
    )


def result_hash(evaluation: Evaluation) -> str:
    """Changes whenever the status or any criterion's (or panel member's) outcome changes."""
    parts = [evaluation.status.value]

    def walk(results: list[Any]) -> None:
        for r in results:
            parts.append(f"{r.code}={r.outcome.value}")
            walk(r.members)

    walk(evaluation.results)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _patient_key(
    caller: Caller, fhir_server: str | None, patient_reference: str, study: str | None = None
) -> str:
    """Whose card: client, server and patient, and the study (an override hides only that
    study's card; ``None``: the key as before studies were told apart)."""
    raw = f"{caller.id}\0{(fhir_server or '').rstrip('/')}\0{patient_reference}"
    if study is not None:
        raw += f"\0{study}"
    return hashlib.sha256(raw.encode()).hexdigest()


class CardLifecycle:
    def __init__(self, store: StateStore, settings: Settings) -> None:
        self._store = store
        self._suppress_ttl = settings.cds_override_suppress_days * _DAY
        self._card_ttl = settings.cds_card_memory_days * _DAY

    async def apply(
        self,
        response: dict[str, Any],
        evaluation: Evaluation,
        caller: Caller,
        fhir_server: str | None,
        study: str | None = None,
    ) -> dict[str, Any]:
        """Hide the cards when an override still holds; else remember them for feedback.
        ``study``: the study the cards are for (its override is its own)."""
        cards = response.get("cards") or []
        if not cards:
            return response
        patient = _patient_key(caller, fhir_server, evaluation.patient_reference, study)
        current = result_hash(evaluation)
        try:
            overridden = await self._store.get(f"cds:hide:{patient}")
            if overridden == current:
                metrics.CDS_SUPPRESSED.inc()
                return {**response, "cards": []}
            if overridden is not None:  # the result changed: the override no longer applies
                await self._store.delete(f"cds:hide:{patient}")
        except StoreError:
            metrics.store_error(self._store.backend, "card_lookup")
            log.warning("state store unavailable: card shown")
        record = orjson.dumps({"p": patient, "h": current, "c": caller.id}).decode()
        for card in cards:
            if not card.get("uuid"):
                continue
            try:
                await self._store.put(f"cds:card:{card['uuid']}", record, self._card_ttl)
            except StoreError:
                metrics.store_error(self._store.backend, "card_remember")
                log.warning("state store unavailable: card feedback will not be honoured")
        return response

    async def feedback(self, items: list[Any], caller: Caller) -> int:
        """Record overrides; returns how many now hide a card."""
        offered = {(r["system"], r["code"]) for r in override_reasons()}
        hidden = 0
        for item in items:
            metrics.CDS_FEEDBACK.labels(outcome=item.outcome).inc()
            reason = item.overrideReason.reason if item.overrideReason else None
            if item.outcome != "overridden" or reason is None:
                continue
            if (reason.system, reason.code) not in offered:
                continue
            try:
                raw = await self._store.get(f"cds:card:{item.card}")
                if raw is None:
                    continue  # unknown or forgotten card
                record = orjson.loads(raw)
                if record.get("c") != caller.id:
                    continue  # only the client the card was shown to may dismiss it
                await self._store.put(f"cds:hide:{record['p']}", record["h"], self._suppress_ttl)
                hidden += 1
            except StoreError:
                metrics.store_error(self._store.backend, "feedback")
                log.warning("state store unavailable: feedback not recorded")
        return hidden
