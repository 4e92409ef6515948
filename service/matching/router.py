"""``POST /getClinicalTrial`` (manual: get-clinical-trial). Same API keys as ``$eligibility``.

Errors keep the reference service's shape on this route: 400 ``{"error": "..."}``.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from service import entry_cap
from service.api_keys import require_api_key
from service.fhir_response import read_body
from service.matching.answer import not_applied, searchset, study_entry
from service.matching.evaluate import evaluate_studies
from service.matching.filters import wanted
from service.matching.request import MatchRequestError, read_request
from service.ops.audit import audited
from service.ops.caller import api_caller
from service.ops.ratelimit import rate_limited
from service.protocol import Protocol, ProtocolError
from service.record import InputError
from service.screening.studies import choose_studies

router = APIRouter()


def _error(status: int, message: str) -> Response:
    return Response(orjson.dumps({"error": message}), status, media_type="application/json")


def loaded_studies(app: Any) -> list[Protocol]:
    """Every loaded protocol (ELIGIBILITY_PROTOCOL_DIRS, or all under fhir_mappings/), read
    once per app."""
    studies = getattr(app.state, "matching_studies", None)
    if studies is None:
        studies = app.state.matching_studies = choose_studies(app.state.settings, [])
    return studies


@router.post(
    "/getClinicalTrial",
    dependencies=[
        Depends(require_api_key),
        Depends(rate_limited("eligibility", api_caller)),
        Depends(audited("getClinicalTrial", api_caller)),
    ],
    tags=["matching"],
)
async def get_clinical_trial(request: Request) -> Response:
    settings = request.app.state.settings
    body = await read_body(request, settings.max_body_bytes)
    try:
        entry_cap.check(body, settings.max_bundle_entries)
        bundle, params = read_request(body)
    except MatchRequestError as exc:
        return _error(400, str(exc))
    try:
        protocols = [p for p in loaded_studies(request.app) if wanted(p, params)]
    except (OSError, ProtocolError, InputError) as exc:
        return _error(500, f"the trial protocols could not be loaded ({type(exc).__name__})")
    try:
        answers = await run_in_threadpool(evaluate_studies, bundle, protocols)
    except InputError as exc:
        return _error(400, f"Invalid patientBundle: {exc}")
    entries = [study_entry(p, e) for p, e in answers]
    if not params.include_ineligible:
        entries = [e for e in entries if e["search"]["mode"] == "match"]
    ignored = [
        name
        for name, value in (("zipCode", params.zip_code), ("travelRadius", params.travel_radius))
        if value is not None
    ]
    answer = searchset(entries, not_applied(ignored) if ignored else None)
    return Response(orjson.dumps(answer), 200, media_type="application/fhir+json")
