"""Continuous screening inside the service: at start (when ``SUBSCRIPTION_ENDPOINT`` is set)
subscribe in the background, start the worker and its catch-up; at shutdown stop them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI

from service.portfolio import load_portfolio
from service.results import ResultStore, app_result_store
from service.settings import Settings
from service.subscriptions import subscribe
from service.subscriptions.criteria import criteria_for, subscribed_types
from service.subscriptions.evaluate import EvaluatePatient, evaluate_patient
from service.subscriptions.ledger import Ledger
from service.subscriptions.server import FhirServer
from service.subscriptions.worker import SubscriptionWorker

log = logging.getLogger("service.subscriptions")


@dataclass
class Runtime:
    settings: Settings
    worker: SubscriptionWorker
    server: FhirServer
    endpoint: str
    criteria: list[str]
    subscriptions: list[subscribe.SubscriptionState] = field(default_factory=list)
    subscribe_error: str | None = None
    task: asyncio.Task[None] | None = None

    async def subscribe(self) -> None:
        """Create or update ours, then wait for ``active`` and say which are not."""
        s = self.settings
        assert s.subscription_secret is not None
        header = subscribe.secret_header(
            s.subscription_header, s.subscription_secret.get_secret_value()
        )
        try:
            await subscribe.ensure(self.server, self.criteria, self.endpoint, header)
            self.subscriptions = await subscribe.wait_active(
                self.server, self.endpoint, s.subscription_activation_timeout
            )
            self.subscribe_error = None
        except Exception as exc:  # noqa: BLE001 - the catch-up still covers every change
            self.subscribe_error = type(exc).__name__
            log.warning("subscribing failed", extra={"error_type": type(exc).__name__})
            return
        for sub in self.subscriptions:
            if sub.status != "active":
                log.warning("subscription not active", extra={"status": sub.status})

    async def status(self) -> dict[str, Any]:
        mark = await self.worker.ledger.watermark()
        return {
            "endpoint": self.endpoint,
            "subscriptions": [
                {"id": s.id, "criteria": s.criteria, "status": s.status, "error": s.error}
                for s in self.subscriptions
            ],
            "subscribe_error": self.subscribe_error,
            "watermark": mark.isoformat() if mark else None,
            "worker": self.worker.status(),
        }


def build(
    settings: Settings,
    store: Any,
    results: ResultStore,
    audit: Any,
    evaluate: EvaluatePatient = evaluate_patient,
) -> Runtime:
    if not settings.fhir_base_url or settings.subscription_secret is None:
        raise ValueError(
            "SUBSCRIPTION_ENDPOINT needs ELIGIBILITY_FHIR_BASE_URL and "
            "ELIGIBILITY_SUBSCRIPTION_SECRET"
        )
    protocols = load_portfolio(settings.protocol_dirs or None).protocols
    criteria = criteria_for(protocols)
    server = FhirServer.from_settings(settings)
    worker = SubscriptionWorker(
        settings,
        protocols,
        Ledger(store, settings.subscription_seen_days),
        results,
        types=subscribed_types(criteria),
        server=server,
        audit=audit,
        evaluate=evaluate,
    )
    endpoint = (settings.subscription_endpoint or "").rstrip("/")
    return Runtime(settings, worker, server, endpoint, criteria)


async def start(app: FastAPI) -> None:
    settings: Settings = app.state.settings
    if not settings.subscription_endpoint:
        return
    results = app_result_store(app)  # the one store the API, CDS, screening and app share
    # app.state.subscription_evaluate: another evaluation core (e.g. one fetch for every study)
    evaluate = getattr(app.state, "subscription_evaluate", None) or evaluate_patient
    runtime = build(settings, app.state.store, results, app.state.audit_sink, evaluate)
    app.state.subscriptions = runtime
    runtime.worker.start()
    runtime.task = asyncio.get_running_loop().create_task(runtime.subscribe())


async def stop(app: FastAPI) -> None:
    runtime: Runtime | None = getattr(app.state, "subscriptions", None)
    if runtime is None:
        return
    if runtime.task is not None:
        runtime.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await runtime.task
    await runtime.worker.stop()
    await runtime.server.aclose()
