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
from service.protocol import Protocol

router = APIRouter()

# Bodies larger than this (~5,000 Observations, ~60 ms of work) are evaluated in a thread so
# health checks stay responsive; smaller ones run inline, which is faster than the hand-off.
_INLINE_BODY_BYTES = 4 * 1024 * 1024
_OPERATION = orjson.loads((MAPPINGS_DIR / "OperationDefinition-eligibility.json").read_bytes())


def _protocol(request: Request) -> Protocol:
    return request.app.state.protocol


def _check_content_type(request: Request) -> None:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in ACCEPTED_CONTENT_TYPES:
        raise HTTPException(415, "send application/fhir+json or application/json")


AsOf = Annotated[str | None, Query(alias="asOf", description="Evaluation date, YYYY-MM-DD")]


@router.post(
    "/$eligibility",
    response_class=FhirResponse,
    tags=["eligibility"],
    dependencies=[Depends(require_api_key), *ELIGIBILITY_DEPENDENCIES],
)
async def eligibility_from_bundle(
    request: Request, as_of: AsOf = None, patient: str | None = None
) -> FhirResponse:
    """Evaluate a patient from a posted Bundle (or a Parameters with ``patientData``)."""
    _check_content_type(request)
    body = await read_body(request, request.app.state.settings.max_body_bytes)
    day = parse_as_of(as_of) if as_of else None
    args = (body, _protocol(request))
    limit = request.app.state.settings.max_bundle_entries
    kwargs = {"as_of": day, "patient_id": patient, "max_entries": limit}
    # A terminology server is called during the evaluation: never on the event loop.
    calls_out = request.app.state.settings.terminology_server_url is not None
    if calls_out or len(body) > _INLINE_BODY_BYTES:
        _, encoded = await run_in_threadpool(evaluate_body_json, *args, **kwargs)
    else:
        _, encoded = evaluate_body_json(*args, **kwargs)
    return FhirResponse(encoded)


@router.get(
    "/Patient/{patient_id}/$eligibility",
    response_class=FhirResponse,
    tags=["eligibility"],
    dependencies=[Depends(require_api_key), *ELIGIBILITY_DEPENDENCIES],
)
async def eligibility_from_server(
    request: Request, patient_id: str, as_of: AsOf = None
) -> FhirResponse:
    """Pull the patient's data from the configured FHIR server (or the demo store) and evaluate."""
    logs.register_request_secret(patient_id)
    check_patient_id(patient_id, "the patient id in the path")
    day = parse_as_of(as_of) if as_of else None
    _, bundle = await evaluate_from_server(
        request.app.state.settings, _protocol(request), patient_id, day
    )
    return FhirResponse(bundle)


def _by_id(resources: list[dict[str, Any]], resource_id: str) -> FhirResponse:
    for resource in resources:
        if resource.get("id") == resource_id:
            return FhirResponse(resource)
    raise HTTPException(404, "no such resource")


@router.get("/ResearchStudy/{resource_id}", response_class=FhirResponse, tags=["protocol"])
async def research_study(request: Request, resource_id: str) -> FhirResponse:
    return _by_id([_protocol(request).research_study], resource_id)


@router.get("/Questionnaire/{resource_id}", response_class=FhirResponse, tags=["protocol"])
async def questionnaire(request: Request, resource_id: str) -> FhirResponse:
    return _by_id([_protocol(request).questionnaire], resource_id)


@router.get("/ValueSet/{resource_id}", response_class=FhirResponse, tags=["protocol"])
async def value_set(request: Request, resource_id: str) -> FhirResponse:
    return _by_id([vs.resource for vs in _protocol(request).valuesets.values()], resource_id)


@router.get("/CodeSystem/{resource_id}", response_class=FhirResponse, tags=["protocol"])
async def code_system(request: Request, resource_id: str) -> FhirResponse:
    p = _protocol(request)
    return _by_id([p.criteria_codesystem, p.result_codesystem], resource_id)


@router.get("/OperationDefinition/{resource_id}", response_class=FhirResponse, tags=["protocol"])
async def operation_definition(resource_id: str) -> FhirResponse:
    return _by_id([_OPERATION], resource_id)


@router.get("/metadata", response_class=FhirResponse, tags=["service"])
async def metadata(request: Request) -> FhirResponse:
    read = [{"code": "read"}]
    resources = [
        {"type": t, "interaction": read}
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
    from service.fhir.client import fhir_ready

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
