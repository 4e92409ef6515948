"""One FHIR R4 AuditEvent per evaluation, to a JSON log stream or a FHIR server.

The event follows the structure of IHE Basic Audit Log Patterns (BALP): ``type`` rest,
``subtype`` operation (the $eligibility operation or a CDS Hooks call), ``action`` E (execute),
a client agent (DICOM 110153 Source Role ID) named by its API key id or JWT ``iss``/``sub``,
the clinician from CDS Hooks ``userId`` when given (requestor), this service as the server
agent (110152 Destination Role ID), ``source`` this service, and the patient as an entity with
role Patient. BALP profiles only RESTful read/query/create/update/delete, so no profile is
claimed. The API key itself, the token and patient data other than the reference never appear.

Sinks never block or fail a clinical answer: the log sink writes one JSON line per event to
its own stream (stdout or ``AUDIT_LOG_PATH``; never the application log); the FHIR sink
queues the event and a background task POSTs it. Every failure (queue full, server error) is
counted in ``eligibility_audit_sink_errors_total`` and logged by type only.
"""

import asyncio
import contextlib
import logging
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
from fastapi import Depends, HTTPException, Request

from service.clinical.evaluation import Evaluation
from service.fhir.errors import FhirError
from service.fhir.pool import client_for
from service.inputs import is_fhir_id
from service.ops import metrics
from service.ops.caller import Caller
from service.record import InputError
from service.settings import Settings

audit_log = logging.getLogger("audit")
log = logging.getLogger("service.ops.audit")

_DCM = "http://dicom.nema.org/resources/ontology/DCM"
_AUDIT_TYPE = {
    "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
    "code": "rest",
    "display": "Restful Operation",
}
_SUBTYPE = {"system": "http://hl7.org/fhir/restful-interaction", "code": "operation"}
_OUTCOME_SUCCESS, _OUTCOME_MINOR, _OUTCOME_SERIOUS = "0", "4", "8"
KEY_SYSTEM = "urn:cart-eligibility:api-key-id"
SERVICE_NAME = "cart-eligibility"


@dataclass
class AuditContext:
    """What one request evaluated; filled in by :func:`evaluation_done` from the pipeline."""

    action: str  # "$eligibility" or "cds-hooks patient-view"
    caller: Caller
    # each evaluation with the study it was made for (its canonical and title), when known
    evaluations: list[tuple[Evaluation, dict[str, Any] | None]] = field(default_factory=list)
    user: str | None = None  # CDS Hooks context.userId, e.g. Practitioner/123
    patient: str | None = None  # the patient asked about, for a request that fails


_current: ContextVar[AuditContext | None] = ContextVar("audit_context", default=None)


def evaluation_done(evaluation: Evaluation, study: dict[str, Any] | None = None) -> None:
    """Called by the pipeline for every evaluation: metrics, and the request's audit context
    (``study``: the ResearchStudy it was made for, as ``{"reference", "display"}``)."""
    try:
        undetermined = [
            r.code for r in _walk(evaluation.results) if r.outcome.value == "undetermined"
        ]
        metrics.observe_evaluation(evaluation.status.value, undetermined)
    except Exception:  # noqa: BLE001 - metrics must never break an evaluation
        log.warning("evaluation metrics failed")
    ctx = _current.get()
    if ctx is not None:
        ctx.evaluations.append((evaluation, study))


def note_context(*, user: str | None, patient: str | None) -> None:
    """The clinician (CDS Hooks ``context.userId``) and the patient asked about, for the audit
    event (the patient is used only when the request fails before an evaluation finishes)."""
    ctx = _current.get()
    if ctx is not None:
        ctx.user = user or ctx.user
        ctx.patient = patient or ctx.patient


def _walk(results: list[Any]) -> list[Any]:
    out: list[Any] = []
    for result in results:
        out.append(result)
        out.extend(_walk(result.members))
    return out


# -- the resource ---------------------------------------------------------------------------
def _client_agent(caller: Caller, requestor: bool) -> dict[str, Any]:
    who: dict[str, Any]
    if caller.kind == "api-key":
        who = {"identifier": {"system": KEY_SYSTEM, "value": caller.key_id}}
    elif caller.kind == "jwt":
        who = {"identifier": {"system": caller.iss, "value": caller.sub or caller.iss}}
    else:
        who = {"display": "anonymous client"}
    agent: dict[str, Any] = {
        "type": {"coding": [{"system": _DCM, "code": "110153", "display": "Source Role ID"}]},
        "who": who,
        "requestor": requestor,
    }
    if caller.address:
        agent["network"] = {"address": caller.address, "type": "2"}  # 2 = IP address
    return agent


def audit_event(
    ctx: AuditContext,
    *,
    patient_reference: str | None,
    outcome: str,
    description: str | None = None,
    result_status: str | None = None,
    recorded: datetime | None = None,
    studies: Sequence[tuple[dict[str, Any], str]] = (),
) -> dict[str, Any]:
    """One request's access to one patient's data. ``studies``: each ResearchStudy the
    patient was evaluated for, with the status found (one entity each; a request that
    evaluated several studies is one event, not one per study)."""
    agents = [_client_agent(ctx.caller, requestor=ctx.user is None)]
    if ctx.user:
        agents.append(
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                            "code": "IRCP",
                            "display": "information recipient",
                        }
                    ]
                },
                "who": {"reference": ctx.user},
                "requestor": True,
            }
        )
    agents.append(
        {
            "type": {
                "coding": [{"system": _DCM, "code": "110152", "display": "Destination Role ID"}]
            },
            "who": {"display": SERVICE_NAME},
            "requestor": False,
        }
    )
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": str(uuid.uuid4()),
        "type": _AUDIT_TYPE,
        "subtype": [{**_SUBTYPE, "display": ctx.action}],
        "action": "E",
        "recorded": (recorded or datetime.now(UTC)).isoformat(timespec="milliseconds"),
        "outcome": outcome,
        "agent": agents,
        "source": {
            "observer": {"display": SERVICE_NAME},
            "type": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                    "code": "4",
                    "display": "Application Server",
                }
            ],
        },
    }
    if description:
        event["outcomeDesc"] = description
    entities: list[dict[str, Any]] = []
    if patient_reference:
        entity: dict[str, Any] = {
            "what": {"reference": patient_reference},
            "type": {
                "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                "code": "1",
                "display": "Person",
            },
            "role": {
                "system": "http://terminology.hl7.org/CodeSystem/object-role",
                "code": "1",
                "display": "Patient",
            },
        }
        if result_status:
            entity["detail"] = [{"type": "eligibility-status", "valueString": result_status}]
        entities.append(entity)
    for study, status in studies:
        entities.append(
            {
                "what": study,
                "type": {
                    "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                    "code": "2",
                    "display": "System Object",
                },
                "role": {
                    "system": "http://terminology.hl7.org/CodeSystem/object-role",
                    "code": "4",
                    "display": "Domain Resource",
                },
                "detail": [{"type": "eligibility-status", "valueString": status}],
            }
        )
    if entities:
        event["entity"] = entities
    return event


def _failure(exc: BaseException) -> tuple[str, str]:
    """Outcome code and a description that carries no request data (a status only)."""
    match exc:
        case HTTPException():
            status = exc.status_code
        case FhirError():
            status = exc.http_status
        case InputError():
            status = 400
        case _:
            status = 500
    return (_OUTCOME_MINOR if status < 500 else _OUTCOME_SERIOUS), f"HTTP {status}"


# -- sinks ----------------------------------------------------------------------------------
class _AuditEventFormatter(logging.Formatter):
    """One AuditEvent per line, as plain FHIR JSON, so the stream can be loaded as it is."""

    def format(self, record: logging.LogRecord) -> str:
        return orjson.dumps(getattr(record, "audit_event", {})).decode()


def configure_audit_log(path: Path | None) -> None:
    """The "audit" logger writes to its own stream (stdout, or ``path``), never to the
    application log on stderr: the audit trail names patients, the application log must not."""
    handler: logging.Handler = (
        logging.FileHandler(path, encoding="utf-8") if path else logging.StreamHandler(sys.stdout)
    )
    handler.setFormatter(_AuditEventFormatter())
    for old in audit_log.handlers[:]:
        audit_log.removeHandler(old)
        old.close()
    audit_log.addHandler(handler)
    audit_log.setLevel(logging.INFO)
    audit_log.propagate = False


class AuditSink:
    """Where AuditEvents go. ``record`` never raises and never waits on the network."""

    def __init__(self, settings: Settings) -> None:
        self.kind = settings.audit_sink
        if self.kind == "log":
            configure_audit_log(settings.audit_log_path)
        self._settings = settings
        self._base = (settings.audit_fhir_base_url or settings.fhir_base_url or "").rstrip("/")
        if self.kind == "fhir" and not self._base:
            raise ValueError("audit_sink=fhir needs AUDIT_FHIR_BASE_URL or FHIR_BASE_URL")
        self._queue: asyncio.Queue[dict[str, Any]] | None = None
        self._worker: asyncio.Task[None] | None = None

    def record(self, event: dict[str, Any]) -> None:
        if self.kind == "none":
            return
        try:
            if self.kind == "log":
                audit_log.info("AuditEvent", extra={"audit_event": event})
            else:
                self._enqueue(event)
            metrics.AUDIT_EVENTS.labels(sink=self.kind).inc()
        except Exception as exc:  # noqa: BLE001 - an audit failure never fails the answer
            metrics.AUDIT_ERRORS.labels(sink=self.kind).inc()
            log.warning("audit sink failed", extra={"error_type": type(exc).__name__})

    def _enqueue(self, event: dict[str, Any]) -> None:
        if self._queue is None:
            self._queue = asyncio.Queue(self._settings.audit_queue_size)
            self._worker = asyncio.get_running_loop().create_task(self._drain())
        self._queue.put_nowait(event)  # QueueFull is counted by record()

    async def _drain(self) -> None:
        """POST each event through the one FHIR client: the service's credentials only if
        the audit base is the configured FHIR base; sent once (a create is not idempotent)."""
        assert self._queue is not None
        while True:
            event = await self._queue.get()
            try:
                async with client_for(self._settings, base_url=self._base) as client:
                    await client.create(event)
            except Exception as exc:  # noqa: BLE001 - counted and logged, never raised
                metrics.AUDIT_ERRORS.labels(sink="fhir").inc()
                log.warning("audit sink failed", extra={"error_type": type(exc).__name__})
            finally:
                self._queue.task_done()

    async def aclose(self, timeout: float = 2.0) -> None:
        """Give queued events a moment to go out, then stop."""
        if self._queue is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), timeout)
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None


# -- the dependency -------------------------------------------------------------------------
def audited(
    action: str, caller_dependency: Callable[..., Awaitable[Caller]]
) -> Callable[..., AsyncIterator[AuditContext]]:
    """A FastAPI dependency that writes one AuditEvent per evaluation the request ran.

    A request that failed before any evaluation finished is audited once, with the failure
    outcome and the patient from the path when there is one.
    """

    async def dependency(
        request: Request, caller: Annotated[Caller, Depends(caller_dependency)]
    ) -> AsyncIterator[AuditContext]:
        ctx = AuditContext(action=action, caller=caller)
        token = _current.set(ctx)
        failure: BaseException | None = None
        try:
            yield ctx
        except BaseException as exc:
            failure = exc
            raise
        finally:
            with contextlib.suppress(ValueError):
                _current.reset(token)
            _emit(request, ctx, failure)

    return dependency


def _emit(request: Request, ctx: AuditContext, failure: BaseException | None) -> None:
    sink: AuditSink = request.app.state.audit_sink
    try:
        if ctx.evaluations:
            by_patient: dict[str, list[tuple[Evaluation, dict[str, Any] | None]]] = {}
            for evaluation, study in ctx.evaluations:
                by_patient.setdefault(evaluation.patient_reference, []).append((evaluation, study))
            for reference, done in by_patient.items():  # one event per patient, all studies
                statuses = {e.status.value for e, _ in done}
                sink.record(
                    audit_event(
                        ctx,
                        patient_reference=reference,
                        outcome=_OUTCOME_SUCCESS,
                        result_status=statuses.pop() if len(statuses) == 1 else None,
                        studies=[(s, e.status.value) for e, s in done if s is not None],
                    )
                )
        elif failure is not None:
            code, description = _failure(failure)
            patient = request.path_params.get("patient_id") or ctx.patient
            if not is_fhir_id(patient):  # refused as input: never copied into the trail
                patient = None
            sink.record(
                audit_event(
                    ctx,
                    patient_reference=f"Patient/{patient}" if patient else None,
                    outcome=code,
                    description=description,
                )
            )
    except Exception as exc:  # noqa: BLE001 - building the event must not fail the answer
        metrics.AUDIT_ERRORS.labels(sink=sink.kind).inc()
        log.warning("audit event failed", extra={"error_type": type(exc).__name__})
