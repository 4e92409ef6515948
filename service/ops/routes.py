"""``GET /metrics`` (Prometheus text format) and the per-operation dependency lists that the
HTTP routes add: rate limit, then audit, after authentication."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from service.ops import metrics
from service.ops.audit import audited
from service.ops.caller import api_caller
from service.ops.ratelimit import rate_limited

router = APIRouter(tags=["service"])

# $eligibility (both modes): after require_api_key (which api_caller depends on).
ELIGIBILITY_DEPENDENCIES = [
    Depends(rate_limited("eligibility", api_caller)),
    Depends(audited("$eligibility", api_caller)),
]


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics() -> Response:
    return Response(metrics.render(), media_type=metrics.CONTENT_TYPE)
