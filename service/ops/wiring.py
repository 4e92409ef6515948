"""Attach the operations pieces to the app: one call at creation, one at shutdown."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from service.ops.audit import AuditSink
from service.ops.card_feedback import CardLifecycle
from service.ops.metrics import MetricsMiddleware
from service.ops.ratelimit import RateLimits
from service.ops.routes import router
from service.settings import Settings
from service.state import open_store

log = logging.getLogger("service.ops")


def install(app: FastAPI, settings: Settings) -> None:
    store = open_store(settings)
    app.state.store = store
    app.state.rate_limits = RateLimits(store, settings)
    app.state.card_lifecycle = CardLifecycle(store, settings)
    app.state.audit_sink = AuditSink(settings)
    app.add_middleware(MetricsMiddleware)
    app.include_router(router)


async def startup(app: FastAPI) -> None:
    """Say which store serves this process, and warn at once when it does not answer."""
    store = app.state.store
    log.info("state store", extra={"state_backend": store.backend})
    if not await store.ping():
        log.warning(
            "state store does not answer: CDS client JWTs are refused until it does",
            extra={"state_backend": store.backend},
        )


async def shutdown(app: FastAPI) -> None:
    await app.state.audit_sink.aclose()
    await app.state.store.aclose()
