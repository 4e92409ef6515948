"""Prometheus metrics. Labels are route templates, resource types, query names, statuses and
criterion codes: never a patient id or any other value taken from a request.

With several workers, ``eligibility serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` before they start;
each worker then writes its samples to files there and ``/metrics`` (answered by any worker)
adds up all of them (prometheus-client's multiprocess mode).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prom_multiprocess
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_TYPE = CONTENT_TYPE_LATEST
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

HTTP_REQUESTS = Counter(
    "eligibility_http_requests_total", "HTTP requests", ["method", "route", "status"]
)
HTTP_LATENCY = Histogram(
    "eligibility_http_request_duration_seconds",
    "HTTP request latency",
    ["method", "route", "status"],
    buckets=_LATENCY_BUCKETS,
)
FHIR_REQUESTS = Counter(
    "eligibility_fhir_requests_total",
    "Requests to the upstream FHIR server",
    ["resource", "query", "status"],
)
FHIR_ERRORS = Counter(
    "eligibility_fhir_errors_total",
    "Upstream FHIR requests that failed (HTTP >= 400, transport error, cancelled)",
    ["resource", "query", "error"],
)
FHIR_LATENCY = Histogram(
    "eligibility_fhir_request_duration_seconds",
    "Upstream FHIR request latency",
    ["resource", "query"],
    buckets=_LATENCY_BUCKETS,
)
EVALUATIONS = Counter("eligibility_evaluations_total", "Evaluations by result status", ["status"])
UNDETERMINED = Counter(
    "eligibility_undetermined_total", "Undetermined criteria (panel members too)", ["criterion"]
)
STORE_ERRORS = Counter(
    "eligibility_store_errors_total", "State store failures", ["backend", "operation"]
)
RATE_LIMITED = Counter("eligibility_rate_limited_total", "Requests refused with 429", ["scope"])
AUDIT_EVENTS = Counter("eligibility_audit_events_total", "AuditEvents handed to a sink", ["sink"])
AUDIT_ERRORS = Counter(
    "eligibility_audit_sink_errors_total", "AuditEvents a sink failed to record", ["sink"]
)
CDS_FEEDBACK = Counter("eligibility_cds_feedback_total", "CDS Hooks feedback items", ["outcome"])
BODIES_REFUSED = Counter(
    "eligibility_request_bodies_refused_total",
    "Request bodies refused before decoding: too_many_entries (413), decode_budget (503)",
    ["reason"],
)
CDS_SUPPRESSED = Counter(
    "eligibility_cds_cards_suppressed_total", "Cards not shown after a clinician's override"
)


def render() -> bytes:
    """The exposition text: all workers' samples when running in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        prom_multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def observe_evaluation(status: str, undetermined: Iterable[str]) -> None:
    EVALUATIONS.labels(status=status).inc()
    for code in undetermined:
        UNDETERMINED.labels(criterion=code).inc()


def observe_fhir(resource: str, query: str | None, status: int | str, seconds: float) -> None:
    """One upstream request: ``status`` is the HTTP status or the exception's class name."""
    query = query or "read"
    FHIR_REQUESTS.labels(resource=resource, query=query, status=str(status)).inc()
    FHIR_LATENCY.labels(resource=resource, query=query).observe(seconds)
    if not isinstance(status, int) or status >= 400:
        FHIR_ERRORS.labels(resource=resource, query=query, error=str(status)).inc()


def store_error(backend: str, operation: str) -> None:
    STORE_ERRORS.labels(backend=backend, operation=operation).inc()


class MetricsMiddleware:
    """Counts and times every HTTP request by method, route template and status (pure ASGI)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")  # template, never the path
            method = scope["method"] if scope["method"] in _METHODS else "other"
            labels = {"method": method, "route": route, "status": str(status)}
            HTTP_REQUESTS.labels(**labels).inc()
            HTTP_LATENCY.labels(**labels).observe(time.perf_counter() - started)


# -- continuous screening (FHIR Subscriptions, service/subscriptions/) ----------------------
SUBSCRIPTION_NOTIFICATIONS = Counter(
    "eligibility_subscription_notifications_total",
    "Subscription notifications: accepted, ping, refused (bad secret), dropped (queue full)",
    ["outcome"],
)
SUBSCRIPTION_EVALUATIONS = Counter(
    "eligibility_subscription_evaluations_total",
    "Patients re-evaluated after a change (every study each), by outcome",
    ["outcome"],
)
SUBSCRIPTION_DUPLICATES = Counter(
    "eligibility_subscription_duplicate_changes_total",
    "Changes seen again (same resource version) and not evaluated again",
)
SUBSCRIPTION_STATUS_CHANGES = Counter(
    "eligibility_subscription_status_changes_total",
    "A patient's status for a study changed",
    ["study", "previous", "status"],
)
SUBSCRIPTION_LAG = Histogram(
    "eligibility_subscription_lag_seconds",
    "From the change (meta.lastUpdated) to the stored result",
    buckets=(0.25, 0.5, 1, 2, 3, 5, 10, 30, 60, 300, 1800),
)
SUBSCRIPTION_CATCHUPS = Counter(
    "eligibility_subscription_catchup_runs_total", "Catch-up searches run", ["outcome"]
)
