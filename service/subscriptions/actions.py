"""What a status change sets off: a FHIR Task for the study's coordinators (when enabled),
a metric and an AuditEvent. An unchanged status does nothing (no noise)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from service.ops import metrics
from service.ops.audit import AuditContext, AuditSink, audit_event
from service.ops.caller import Caller
from service.protocol import Protocol
from service.results.model import StudyResult
from service.subscriptions.server import FhirServer, ServerError

log = logging.getLogger("service.subscriptions")

TASK_TAG = {"system": "urn:cart-eligibility:subscription", "code": "eligibility-change"}
_SUBSCRIPTION_CALLER = Caller(kind="anonymous", id="subscription")


def changed_now(stored: StudyResult, result: StudyResult) -> bool:
    """Whether ``record`` marked *this* result as a change (not an older one it carries)."""
    return stored.previous_status is not None and stored.changed_at == result.evaluated_at


def change_task(stored: StudyResult, protocol: Protocol, role: str) -> dict[str, Any]:
    """A Task asking the study's coordinators to look at the patient again."""
    patient = {"reference": f"Patient/{stored.patient_id}"}
    title = protocol.research_study.get("title") or protocol.id
    study: dict[str, Any] = {"display": title}
    if protocol.registry_numbers:
        study["identifier"] = {
            "system": "https://clinicaltrials.gov",
            "value": protocol.registry_numbers[0],
        }
    return {
        "resourceType": "Task",
        "meta": {"tag": [TASK_TAG]},
        "status": "requested",
        "intent": "order",
        "priority": "routine",
        "code": {"text": "Review trial eligibility change"},
        "description": f"{title}: {stored.previous_status} -> {stored.status}",
        "focus": patient,
        "for": patient,
        "basedOn": [study],
        "authoredOn": datetime.now(UTC).isoformat(timespec="seconds"),
        "performerType": [{"text": role}],
        "reasonCode": {"text": stored.change or f"{stored.previous_status} -> {stored.status}"},
    }


def change_audit(stored: StudyResult) -> dict[str, Any]:
    ctx = AuditContext(action="subscription status change", caller=_SUBSCRIPTION_CALLER)
    event = audit_event(
        ctx,
        patient_reference=f"Patient/{stored.patient_id}",
        outcome="0",
        description=stored.change,
        result_status=stored.status,
    )
    event["agent"][0]["who"] = {"display": "FHIR Subscription notification"}
    return event


async def on_change(
    stored: StudyResult,
    protocol: Protocol,
    *,
    audit: AuditSink | None,
    server: FhirServer | None,
    role: str,
) -> None:
    """Metric, audit, Task; a failed Task write is logged (by type) and counted, never raised."""
    metrics.SUBSCRIPTION_STATUS_CHANGES.labels(
        study=stored.study_id, previous=stored.previous_status or "", status=stored.status
    ).inc()
    if audit is not None:
        audit.record(change_audit(stored))
    if server is not None:
        try:
            await server.create(change_task(stored, protocol, role))
        except ServerError as exc:
            log.warning("change task not written", extra={"error_type": type(exc).__name__})
