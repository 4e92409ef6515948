"""FHIR JSON responses and OperationOutcome errors for the HTTP layer."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import HTTPException, Request, Response

FHIR_JSON = "application/fhir+json"
ACCEPTED_CONTENT_TYPES = ("application/fhir+json", "application/json")


class FhirResponse(Response):
    media_type = FHIR_JSON

    def render(self, content: Any) -> bytes:
        """JSON of ``content``; bytes are taken as already-encoded JSON."""
        return content if isinstance(content, bytes) else orjson.dumps(content)


def outcome(status: int, code: str, message: str, severity: str = "error") -> FhirResponse:
    return FhirResponse(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": severity, "code": code, "diagnostics": message}],
        },
        status_code=status,
    )


# HTTP status -> OperationOutcome issue type, for errors raised without a more specific code.
ISSUE_CODE = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    412: "required",
    413: "too-long",
    415: "not-supported",
    422: "invalid",
    429: "throttled",
    502: "transient",
    504: "timeout",
}


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"request body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"request body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
