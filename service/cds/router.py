"""CDS Hooks 2.0 endpoints: discovery, the patient-view service, feedback."""

from __future__ import annotations

import logging
from collections import Counter
from datetime import date
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from service import entry_cap, lean, logs, strict_json
from service.cds.cards import patient_view_cards, trial_name
from service.cds.jwt_auth import require_cds_client
from service.cds.models import FeedbackRequest, PatientViewRequest
from service.cds.portfolio import PORTFOLIO_SERVICE_ID, capped, prefetch_plan, rank, study_card
from service.cds.prefetch import ehr_client, fetch_missing, from_prefetch, resolve_prefetch
from service.clinical.dates import today
from service.evaluation_context import EvaluationContext
from service.fhir.fetch import follows_links
from service.fhir_response import FhirResponse, outcome, read_body
from service.inputs import validation_message
from service.ops.audit import audited, note_context
from service.ops.caller import jwt_caller
from service.ops.ratelimit import rate_limited
from service.pipeline import assess_fetched_off_loop
from service.portfolio_eval import SharedQueries, all_or_none, contexts_for
from service.protocol import Protocol
from service.record import resources_fit
from service.results.recording import record_answers
from service.settings import Settings

log = logging.getLogger("service.cds")
M = TypeVar("M", bound=BaseModel)
router = APIRouter(prefix="/cds-services", tags=["cds-hooks"])
HOOK = "patient-view"


def service_id(protocol: Protocol) -> str:
    return f"{protocol.id}-screening"


async def cds_client(request: Request) -> dict | None:
    """Verified JWT claims of the calling CDS client (401 with no detail otherwise)."""
    return await require_cds_client(request.app.state.cds_authenticator)(request)


# -- operations (issue 11): per-client rate limit, audit; both after the JWT check ---------
cds_caller = jwt_caller(cds_client)
CDS_RATE_LIMIT = Depends(rate_limited("cds", cds_caller))
CDS_AUDIT = Depends(audited("cds-hooks patient-view", cds_caller))


def _json(content: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(content, status_code=status)


def _services(request: Request) -> dict[str, list[Protocol]]:
    """Service id -> its studies: one service per loaded study (``<id>-screening``) and,
    with several loaded, ``trials-screening`` for all of them (one card per study)."""
    portfolio = list(request.app.state.portfolio)
    services = {service_id(p): [p] for p in portfolio}
    if len(portfolio) > 1:
        return {PORTFOLIO_SERVICE_ID: portfolio, **services}
    return services


@router.get("", dependencies=[Depends(cds_client)])
async def discovery(request: Request) -> JSONResponse:
    from service.fhir.queries import prefetch_templates

    found = []
    for sid, protocols in _services(request).items():
        if len(protocols) > 1:
            site = EvaluationContext.current(protocols[0]).site
            relevances = [EvaluationContext(p, site).relevance for p in protocols]
            names = ", ".join(trial_name(p) for p in protocols)
            found.append(
                {
                    "hook": HOOK,
                    "id": sid,
                    "title": f"Screening for {len(protocols)} trials",
                    "description": (
                        f"Checks the patient against every criterion of each trial ({names}) "
                        "and shows one card per trial in which the patient is eligible or a "
                        "possible candidate."
                    ),
                    "prefetch": prefetch_plan(relevances).templates,
                    "usageRequirements": _USAGE,
                }
            )
            continue
        protocol = protocols[0]
        found.append(
            {
                "hook": HOOK,
                "id": sid,
                "title": f"Screening for the {trial_name(protocol)}",
                "description": (
                    "Checks the patient against every inclusion criterion of "
                    f"{protocol.research_study.get('title', protocol.id)} and shows a card "
                    "when the patient is eligible or a possible candidate."
                ),
                "prefetch": prefetch_templates(protocol),
                "usageRequirements": _USAGE,
            }
        )
    return _json({"services": found})


_USAGE = (
    "Grant read access to Patient, Observation, Condition, Procedure, Consent "
    "and QuestionnaireResponse, or send the prefetch."
)


async def _body(request: Request) -> Any:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        raise HTTPException(415, "send application/json")
    settings = request.app.state.settings
    raw = await read_body(request, settings.max_body_bytes)
    entry_cap.check(raw, settings.max_bundle_entries)  # prefetch Bundles: 413 before decoding
    if lean.unique_keys(raw):  # the C proof of unique keys, as $eligibility's lean decoder
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise HTTPException(400, "the request body is not JSON") from None
    try:  # unsure or refused: the generic decoder, whose answer (and message) is the one
        return strict_json.loads(raw)
    except strict_json.DuplicateKeyError as exc:
        raise HTTPException(400, f"the request body is {exc}") from None
    except ValueError:
        raise HTTPException(400, "the request body is not JSON") from None


def _validated(model: type[M], body: Any, what: str) -> M:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise HTTPException(400, validation_message(what, exc.errors())) from None


@router.post("/{sid}", dependencies=[Depends(cds_client), CDS_RATE_LIMIT, CDS_AUDIT])
async def call_service(sid: str, request: Request):
    settings: Settings = request.app.state.settings
    protocols = _services(request).get(sid)
    if protocols is None:
        raise HTTPException(404, "no such CDS service")
    body = await _body(request)
    _register_secrets(body)
    call = _validated(PatientViewRequest, body, "CDS Hooks request")
    note_context(user=call.context.userId, patient=call.context.patientId)  # for the audit

    if call.fhirServer is not None and not _allowed(call.fhirServer, settings):
        # Refused before any outbound request: no SSRF through our service.
        return outcome(403, "forbidden", "fhirServer is not on this service's allowlist")

    day = today()
    base = (settings.public_base_url or str(request.base_url)).rstrip("/")
    lifecycle = request.app.state.card_lifecycle
    if len(protocols) > 1:
        return await _portfolio_cards(request, call, protocols, settings, day, base)
    protocol = protocols[0]
    resolved = await resolve_prefetch(call, protocol, settings, day)
    if resolved.missing:
        return _incomplete(resolved.missing)
    evaluation = await assess_fetched_off_loop(
        resolved, protocol, day, EvaluationContext.current(protocol)
    )
    await record_answers(request.app, [(protocol, evaluation)], "cds")
    cards = patient_view_cards(evaluation, protocol, settings, service_base_url=base)
    # Hidden while a clinician's override holds and the result is unchanged (issue 11).
    cards = await lifecycle.apply(
        cards, evaluation, request.state.caller, call.fhirServer, study=protocol.id
    )
    return _json(cards)


def _incomplete(missing: set[str]) -> FhirResponse:
    return outcome(
        412,
        "required",
        "prefetch incomplete and no fhirServer to fetch from: " + ", ".join(sorted(missing)),
    )


async def _portfolio_cards(
    request: Request,
    call: PatientViewRequest,
    protocols: list[Protocol],
    settings: Settings,
    day: date,
    base: str,
) -> JSONResponse | FhirResponse:
    """Every study from one prefetch (what is missing fetched once for all), a card per
    study that shows one; an override hides only its own study's card."""
    contexts = contexts_for(protocols)
    plan = prefetch_plan([c.relevance for c in contexts])
    parts = [from_prefetch(call, c.relevance, plan.queries(n)) for n, c in enumerate(contexts)]
    missing = {plan.keys[n][k] for n, (r, _) in enumerate(parts) for k in r.missing}
    if missing:
        return _incomplete(missing)
    fetching = [
        (c, resolved, need)
        for c, (resolved, need) in zip(contexts, parts, strict=True)
        if need or follows_links(resolved.patient)
    ]
    if fetching:
        async with ehr_client(call, settings) as client:
            shared = SharedQueries(client)  # a search two studies need is sent once
            await all_or_none(
                [fetch_missing(shared, call, c.relevance, need, r, day) for c, r, need in fetching]
            )
    # the studies' searches return many of the same resources: their shapes are proved once,
    # and a ValueSet's results read once for every study that reads the very same results
    fits = resources_fit({id(r): r for p, _ in parts for r in p.resources}.values())
    facts: dict[Any, Any] = {}
    answers = []
    for context, (resolved, _) in zip(contexts, parts, strict=True):
        evaluation = await assess_fetched_off_loop(
            resolved, context.protocol, day, context, fits, facts
        )
        answers.append((context.protocol, evaluation))
    await record_answers(request.app, answers, "cds")
    lifecycle = request.app.state.card_lifecycle
    shown = []
    for protocol, evaluation in answers:
        card = study_card(evaluation, protocol, settings, base)
        if card is None:
            continue
        kept = await lifecycle.apply(
            {"cards": [card]}, evaluation, request.state.caller, call.fhirServer, study=protocol.id
        )
        if kept["cards"]:
            shown.append((protocol, evaluation, kept["cards"][0]))
    return _json({"cards": capped(rank(shown), settings.cds_max_cards, base)})


def _register_secrets(body: Any) -> None:
    """The caller's token and the patient's id, as sent (before validation): never logged."""
    if not isinstance(body, dict):
        return
    auth, context = body.get("fhirAuthorization"), body.get("context")
    if isinstance(auth, dict):
        logs.register_request_secret(auth.get("access_token"))
    if isinstance(context, dict):
        logs.register_request_secret(context.get("patientId"))


def _allowed(server: str, settings: Settings) -> bool:
    allowed = {s.rstrip("/") for s in settings.cds_allowed_fhir_servers}
    return server.rstrip("/") in allowed


@router.post("/{sid}/feedback", dependencies=[Depends(cds_client), CDS_RATE_LIMIT])
async def feedback(sid: str, request: Request) -> JSONResponse:
    if sid not in _services(request):
        raise HTTPException(404, "no such CDS service")
    body = _validated(FeedbackRequest, await _body(request), "feedback")
    counts = Counter(item.outcome for item in body.feedback)
    hidden = await request.app.state.card_lifecycle.feedback(body.feedback, request.state.caller)
    log.info("cds feedback", extra={"service": sid, "outcomes": dict(counts), "hidden": hidden})
    return _json({})
