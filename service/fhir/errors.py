"""Why a FHIR fetch failed, as exceptions that carry the HTTP status we answer with.

A failed fetch is never turned into an answer: the caller gets one of these instead.
Messages are safe to show and log: they name the query (its key, resource type and
parameter NAMES) but never parameter values, patient ids, tokens or server diagnostics.
"""

from __future__ import annotations

from collections.abc import Iterable

from service.errors import ConfigurationError, ServiceError
from service.errors import UpstreamError as ServiceUpstreamError


class FhirError(ServiceError):
    """Base: ``http_status`` is what our API answers; ``issue_code`` feeds OperationOutcome."""

    http_status: int = 502
    issue_code: str = "exception"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidPatientId(FhirError):
    """The id cannot be a FHIR id (checked before it goes into a URL)."""

    http_status = 400
    issue_code = "value"


class PatientNotFound(FhirError):
    """The FHIR server has no such Patient (404/410 on the read)."""

    http_status = 404
    issue_code = "not-found"


class UpstreamAuthError(FhirError, ServiceUpstreamError):
    """The FHIR server (or its token endpoint) refused our credentials: 401/403."""

    http_status = 502
    issue_code = "security"


class AccessForbidden(UpstreamAuthError):
    """HTTP 403: our credentials are good but may not read this (a scope not granted)."""


class UpstreamError(FhirError, ServiceUpstreamError):
    """The FHIR server failed or answered something we cannot use."""

    http_status = 502
    issue_code = "exception"


class SearchRefused(UpstreamError):
    """The FHIR server refused a search as invalid or unsupported (HTTP 400, 422 or 501):
    e.g. a modifier it does not implement. A query with a fallback is then asked again."""


class DeadlineExceeded(FhirError, ServiceUpstreamError):
    """The evaluation's overall deadline ran out before the data was complete."""

    http_status = 504
    issue_code = "timeout"


class FhirConfigError(FhirError, ConfigurationError):
    """Our own FHIR access settings are unusable (missing key, wrong key type, ...)."""

    http_status = 500
    issue_code = "exception"


def describe_query(key: str | None, resource_type: str, param_names: Iterable[str]) -> str:
    """A log- and user-safe description of a query: key, type and parameter names only."""
    names = ", ".join(dict.fromkeys(param_names))
    label = f"'{key}' " if key else ""
    kind = "read" if not names else "search"
    params = f"; parameters: {names}" if names else ""
    return f"{label}{resource_type} {kind}{params}"
