"""The endpoint the FHIR server notifies (``channel.endpoint`` = ``{base}/subscription/notify``).

* ``POST /subscription/notify``: the empty-body ping (no payload): a catch-up finds what;
* ``PUT /subscription/notify/{Type}/{id}``: the full-resource form (HAPI acts as a FHIR
  client with our endpoint as its base), also ``POST /subscription/notify/{Type}``;
* ``DELETE /subscription/notify/{Type}/{id}``: a deletion (its history names the patient to
  re-evaluate; a catch-up when it cannot).

Every call must carry the shared secret in the configured header: compared in constant
time, 401 otherwise, and the secret is never logged. The answer comes at once: the change
is queued and evaluated later, so an evaluation that fails never fails the notification.
``GET /subscription/status`` (API key) shows our Subscriptions, the watermark and the queue.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Request, Response

from service.api_keys import require_api_key
from service.inputs import is_fhir_id
from service.ops import metrics
from service.subscriptions.changes import change_of
from service.subscriptions.runtime import Runtime

router = APIRouter(prefix="/subscription", tags=["subscriptions"])


def _runtime(request: Request) -> Runtime:
    runtime: Runtime | None = getattr(request.app.state, "subscriptions", None)
    settings = request.app.state.settings
    secret = settings.subscription_secret
    given = request.headers.get(settings.subscription_header) or ""
    expected = secret.get_secret_value() if secret is not None else ""
    # constant time whatever is sent; no secret configured: nobody gets in
    if not hmac.compare_digest(given.encode(), expected.encode()) or not expected:
        metrics.SUBSCRIPTION_NOTIFICATIONS.labels(outcome="refused").inc()
        raise HTTPException(status_code=401)
    if runtime is None:
        raise HTTPException(status_code=503, detail="continuous screening is not running")
    return runtime


Authorised = Annotated[Runtime, Depends(_runtime)]


def _resource(body: bytes, rtype: str, rid: str | None) -> dict[str, Any]:
    try:
        resource = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise HTTPException(status_code=400, detail="the body is not JSON") from None
    if not isinstance(resource, dict) or resource.get("resourceType") != rtype:
        raise HTTPException(status_code=400, detail=f"the body is not a {rtype}")
    if rid is not None and resource.get("id") != rid:
        raise HTTPException(status_code=400, detail="the resource id differs from the URL")
    return resource


def _queue(runtime: Runtime, resource: dict[str, Any]) -> Response:
    change = change_of(resource)
    if change is None:
        raise HTTPException(status_code=400, detail="the resource has no valid id")
    runtime.worker.offer(change)  # a full queue: the catch-up finds it
    metrics.SUBSCRIPTION_NOTIFICATIONS.labels(outcome="accepted").inc()
    return Response(status_code=200)


@router.post("/notify", include_in_schema=False)
async def ping(runtime: Authorised) -> Response:
    metrics.SUBSCRIPTION_NOTIFICATIONS.labels(outcome="ping").inc()
    runtime.worker.ping()
    return Response(status_code=200)


@router.put("/notify/{rtype}/{rid}", include_in_schema=False)
async def updated(rtype: str, rid: str, request: Request, runtime: Authorised) -> Response:
    return _queue(runtime, _resource(await request.body(), rtype, rid))


@router.post("/notify/{rtype}", include_in_schema=False)
async def created(rtype: str, request: Request, runtime: Authorised) -> Response:
    return _queue(runtime, _resource(await request.body(), rtype, None))


@router.delete("/notify/{rtype}/{rid}", include_in_schema=False)
async def deleted(rtype: str, rid: str, runtime: Authorised) -> Response:
    if not is_fhir_id(rid):
        raise HTTPException(status_code=400, detail="not a FHIR id")
    metrics.SUBSCRIPTION_NOTIFICATIONS.labels(outcome="deleted").inc()
    runtime.worker.deleted(rtype, rid)  # whose it was: its history says (or a catch-up)
    return Response(status_code=200)


@router.get("/status", dependencies=[Depends(require_api_key)])
async def status(request: Request) -> dict[str, Any]:
    runtime: Runtime | None = getattr(request.app.state, "subscriptions", None)
    if runtime is None:
        return {"enabled": False}
    return {"enabled": True, **(await runtime.status())}
