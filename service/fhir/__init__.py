"""FHIR server access (httpx, async). Knows nothing about the trial beyond the query plan."""

from service.fhir.client import ClientConfig, FhirClient, SearchResult
from service.fhir.errors import (
    DeadlineExceeded,
    FhirConfigError,
    FhirError,
    InvalidPatientId,
    PatientNotFound,
    UpstreamAuthError,
    UpstreamError,
)
from service.fhir.fetch import FetchResult, fetch_patient
from service.fhir.pool import client_for, close_clients
from service.fhir.queries import Query, plan_queries, prefetch_templates

__all__ = [
    "ClientConfig",
    "DeadlineExceeded",
    "FetchResult",
    "FhirClient",
    "FhirConfigError",
    "FhirError",
    "InvalidPatientId",
    "PatientNotFound",
    "Query",
    "SearchResult",
    "UpstreamAuthError",
    "UpstreamError",
    "close_clients",
    "client_for",
    "fetch_patient",
    "plan_queries",
    "prefetch_templates",
]
