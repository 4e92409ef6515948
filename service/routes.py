"""FHIR endpoints: the $eligibility operation (bundle and pull mode), the protocol resources."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from fhir_mappings import MAPPINGS_DIR
from service import __version__, logs
from service.api_keys import require_api_key
from service.fhir_response import ACCEPTED_CONTENT_TYPES, FhirResponse, read_body
from service.inputs import check_patient_id
from service.ops.routes import ELIGIBILITY_DEPENDENCIES
from service.pipeline import evaluate_body_json, evaluate_from_server, parse_as_of
from service.portfolio import Portfolio
from service.portfolio_eval import (
    StudyAnswer,
    combined_bundle,
    evaluate_body_portfolio_json,
    evaluate_portfolio_from_server,
)
from service.protocol import Protocol
from service.results.recording import record_answers

router = APIRouter()

# Bodies larger than this (~5,000 Observations, ~60 ms of work) are evaluated in a thread so
# health checks stay responsive; smaller ones run inline, which is faster than the hand-off.
_INLINE_BODY_BYTES = 4 * 1024 * 1024
_OPERATION = orjson.loads((MAPPINGS_DIR / "OperationDefinition-eligibility.json").read_bytes())


def _protocol(request: Request) -> Protocol:
    return request.app.state.protocol


def _portfolio(request: Request) -> Portfolio:
    return request.app.state.portfolio


def _studies(request: Request, names: list[str] | None) -> list[Protocol]:
    """The protocols ``study`` names (id, canonical or registry number; repeatable), in
    the order asked; every loaded protocol when none is named. An unknown name is a 400
    that names it (and the loaded ones)."""
    try:
        return _portfolio(request).select(names or [])
    except KeyError as exc:
        raise HTTPException(400, str(exc.args[0])) from None


def _check_content_type(request: Request) -> None:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in ACCEPTED_CONTENT_TYPES:
        raise HTTPException(415, "send application/fhir+json or application/json")


AsOf = Annotated[str | None, Query(alias="asOf", description="Evaluation date, YYYY-MM-DD")]
Study = Annotated[
    list[str] | None,
    Query(
        description="Study id, ResearchStudy canonical or registry number (NCT...); "
        "repeatable; default every loaded study"
    ),
]


@router.post(
    "/$eligibility",
    response_class=FhirResponse,
    tags=["eligibility"],
    dependencies=[Depends(require_api_key), *ELIGIBILITY_DEPENDENCIES],
)
async def eligibility_from_bundle(
    request: Request, as_of: AsOf = None, patient: str | None = None, study: Study = None
) -> FhirResponse:
    """Evaluate a patient from a posted Bundle (or a Parameters with ``patientData``)
    against each chosen study; the body is decoded once for all of them."""
    _check_content_type(request)
    protocols = _studies(request, study)
    body = await read_body(request, request.app.state.settings.max_body_bytes)
    day = parse_as_of(as_of) if as_of else None
    limit = request.app.state.settings.max_bundle_entries
    kwargs = {"as_of": day, "patient_id": patient, "max_entries": limit}
    # A terminology server is called during the evaluation: never on the event loop.
    calls_out = request.app.state.settings.terminology_server_url is not None
    threaded = calls_out or len(body) * len(protocols) > _INLINE_BODY_BYTES
    if len(protocols) == 1:  # exactly the single-study answer (encoded in the GC pause)
        args = (body, protocols[0])
        if threaded:
            evaluation, encoded = await run_in_threadpool(evaluate_body_json, *args, **kwargs)
        else:
            evaluation, encoded = evaluate_body_json(*args, **kwargs)
        await record_answers(request.app, [(protocols[0], evaluation)], "api")
        return FhirResponse(encoded)
    if threaded:
        done, encoded = await run_in_threadpool(
            evaluate_body_portfolio_json, body, protocols, **kwargs
        )
    else:
        done, encoded = evaluate_body_portfolio_json(body, protocols, **kwargs)
    await record_answers(request.app, done, "api")
    return FhirResponse(encoded)


async def _answer(request: Request, answers: list[StudyAnswer]) -> FhirResponse:
    await record_answers(request.app, [(a.protocol, a.evaluation) for a in answers], "api")
    return FhirResponse(combined_bundle(answers))


@router.get(
    "/Patient/{patient_id}/$eligibility",
    response_class=FhirResponse,
    tags=["eligibility"],
    dependencies=[Depends(require_api_key), *ELIGIBILITY_DEPENDENCIES],
)
async def eligibility_from_server(
    request: Request, patient_id: str, as_of: AsOf = None, study: Study = None
) -> FhirResponse:
    """Pull the patient's data from the configured FHIR server (or the demo store) and
    evaluate it against each chosen study: each distinct query is sent once for all."""
    logs.register_request_secret(patient_id)
    check_patient_id(patient_id, "the patient id in the path")
    protocols = _studies(request, study)
    day = parse_as_of(as_of) if as_of else None
    settings = request.app.state.settings
    if len(protocols) == 1:
        evaluation, bundle = await evaluate_from_server(settings, protocols[0], patient_id, day)
        await record_answers(request.app, [(protocols[0], evaluation)], "api")
        return FhirResponse(bundle)
    answers = await evaluate_portfolio_from_server(settings, protocols, patient_id, day)
    return await _answer(request, answers)


def _by_id(resources: list[dict[str, Any]], resource_id: str) -> FhirResponse:
    for resource in resources:
        if resource.get("id") == resource_id:
            return FhirResponse(resource)
    raise HTTPException(404, "no such resource")


@router.get("/ResearchStudy", response_class=FhirResponse, tags=["protocol"])
async def research_studies(request: Request) -> FhirResponse:
    """Every loaded study, as a searchset (``identifier`` carries its registry numbers)."""
    studies = [p.research_study for p in _portfolio(request)]
    base = (request.app.state.settings.public_base_url or str(request.base_url)).rstrip("/")
    return FhirResponse(
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(studies),
            "entry": [
                {
                    "fullUrl": f"{base}/ResearchStudy/{s['id']}",
                    "resource": s,
                    "search": {"mode": "match"},
                }
                for s in studies
            ],
        }
    )


@router.get("/ResearchStudy/{resource_id}", response_class=FhirResponse, tags=["protocol"])
async def research_study(request: Request, resource_id: str) -> FhirResponse:
    return _by_id([p.research_study for p in _portfolio(request)], resource_id)


@router.get("/Questionnaire/{resource_id}", response_class=FhirResponse, tags=["protocol"])
async def questionnaire(request: Request, resource_id: str) -> FhirResponse:
    return _by_id([p.questionnaire for p in _portfolio(request)], resource_id)


@router.get("/ValueSet/{resource_id}", response_class=FhirResponse, tags=["protocol"])
async def value_set(request: Request, resource_id: str) -> FhirResponse:
    return _by_id(
        [vs.resource for p in _portfolio(request) for vs in p.valuesets.values()], resource_id
    )


@router.get("/CodeSystem/{resource_id}", response_class=FhirResponse, tags=["protocol"])
async def code_system(request: Request, resource_id: str) -> FhirResponse:
    return _by_id(
        [cs for p in _portfolio(request) for cs in (p.criteria_codesystem, p.result_codesystem)],
        resource_id,
    )


@router.get("/OperationDefinition/{resource_id}", response_class=FhirResponse, tags=["protocol"])
async def operation_definition(resource_id: str) -> FhirResponse:
    return _by_id([_OPERATION], resource_id)


@router.get("/metadata", response_class=FhirResponse, tags=["service"])
async def metadata(request: Request) -> FhirResponse:
    read = [{"code": "read"}]
    resources = [
        {"type": t, "interaction": read}
        if t != "ResearchStudy"
        else {"type": t, "interaction": [*read, {"code": "search-type"}]}
        for t in ("ResearchStudy", "Questionnaire", "ValueSet", "CodeSystem", "OperationDefinition")
    ]
    resources.append(
        {
            "type": "Patient",
            "operation": [{"name": "eligibility", "definition": _OPERATION["url"]}],
        }
    )
    return FhirResponse(
        {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": date.today().isoformat(),
            "kind": "instance",
            "software": {"name": "cart-eligibility", "version": __version__},
            "implementation": {"description": "Trial eligibility service (FHIR R4)"},
            "fhirVersion": "4.0.1",
            "format": ["application/fhir+json", "json"],
            "rest": [
                {
                    "mode": "server",
                    "resource": resources,
                    "operation": [{"name": "eligibility", "definition": _OPERATION["url"]}],
                }
            ],
        }
    )


@router.get("/healthz", tags=["service"])
async def healthz(request: Request) -> JSONResponse:
    """Readiness: 503 while the FHIR server does not answer through our connection pool."""
    from service.fhir.pool import fhir_ready

    ready = await fhir_ready(request.app.state.settings)
    body = {
        "status": "ok" if ready else "unavailable",
        "protocol": _protocol(request).versioned_canonical,
        "fhir": "reachable" if ready else "unreachable",  # never the URL or the error
    }
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/livez", tags=["service"])
async def livez() -> dict[str, str]:
    """Liveness: the process answers. Never depends on the FHIR server (no restart loops)."""
    return {"status": "ok"}
