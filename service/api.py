"""The HTTP API: the $eligibility operation, the protocol's resources, CDS Hooks, health."""

from __future__ import annotations

import gc
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import inputs, logs, units
from service.api_keys import check_exposure
from service.app import router as web_app_router
from service.body_budget import BodyBudgetMiddleware, ByteBudget
from service.cds.jwt_auth import CdsClientAuthenticator
from service.cds.router import router as cds_router
from service.entry_cap import TooManyEntries
from service.fhir.errors import FhirError
from service.fhir.pool import close_clients
from service.fhir_response import ISSUE_CODE, outcome
from service.inputs import validation_message
from service.matching.router import router as matching_router
from service.ops import metrics
from service.ops import wiring as ops_wiring
from service.ops.request_context import RequestContextMiddleware
from service.portfolio import Portfolio, configured_paths, load_portfolio
from service.protocol import Protocol, ProtocolError, load_protocol
from service.record import InputError
from service.results import open_result_store
from service.routes import router as fhir_router
from service.screening.http import router as screen_router
from service.settings import Settings, get_settings
from service.subscriptions import receiver as subscription_receiver
from service.subscriptions import runtime as subscription_runtime
from service.terminology.runtime import configure_from as configure_terminology

log = logging.getLogger("service.api")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    logs.install()  # redaction first: nothing this app or its libraries log may carry secrets
    logs.register_settings_secrets(settings)
    check_exposure(settings)
    inputs.check_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        logs.configure(settings.log_level)
        units.warm_up()  # the UCUM registry takes ~0.5 s: pay it before the first request
        # ~100k long-lived objects (FastAPI, pydantic, pint) would otherwise be walked by every
        # full collection (60-90 ms each); freeze them out of the collector's generations.
        gc.collect()
        gc.freeze()
        if not settings.cds_auth_enabled:
            log.warning("CDS Hooks client authentication is OFF (development only)")
        if settings.fhir_base_url is None:
            log.info("no FHIR base configured: serving the built-in demo patients")
        if app.state.cds_authenticator.demo_client_trusted:
            log.warning("CDS Hooks demo mode: trusting the PUBLIC demo EHR key (cds-demo)")
        await ops_wiring.startup(app)
        await subscription_runtime.start(app)  # continuous screening, when configured
        yield
        await subscription_runtime.stop(app)
        await ops_wiring.shutdown(app)
        await app.state.result_store.aclose()
        await app.state.cds_authenticator.aclose()
        await close_clients()

    app = FastAPI(
        title="CD19 CAR-T trial eligibility service",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs",
    )
    app.state.settings = settings
    # Every loaded study (``study`` on $eligibility, CDS Hooks, GET /ResearchStudy); the
    # single-trial surfaces keep reading app.state.protocol (ELIGIBILITY_PROTOCOL_PATH).
    app.state.portfolio = load_configured_portfolio(settings)
    app.state.protocol = _single_protocol(app.state.portfolio, settings)
    app.state.result_store = open_result_store(settings)  # the latest answer per patient and study
    configure_terminology(settings)  # site ConceptMaps: a bad file stops the start (issue 10)
    # Innermost middleware: a refused body is still counted, logged and given a request id.
    app.state.body_budget = ByteBudget(settings.max_decoding_bytes)
    app.add_middleware(
        BodyBudgetMiddleware,
        budget=app.state.body_budget,
        max_body=settings.max_body_bytes,
        wait=settings.body_budget_wait_seconds,
    )
    ops_wiring.install(app, settings)  # state store, rate limits, audit sink, /metrics
    app.state.cds_authenticator = CdsClientAuthenticator(settings, store=app.state.store)

    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
        )

    app.add_middleware(RequestContextMiddleware)  # outermost: ids and the access log

    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError):
        return outcome(400, "invalid", str(exc))

    @app.exception_handler(TooManyEntries)
    async def too_many_entries(request: Request, exc: TooManyEntries):
        metrics.BODIES_REFUSED.labels(reason="too_many_entries").inc()
        return outcome(413, "too-long", str(exc))

    @app.exception_handler(FhirError)
    async def fhir_error(request: Request, exc: FhirError):
        return outcome(exc.http_status, exc.issue_code, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 401:  # say nothing about why a credential was refused
            return Response(status_code=401, headers=exc.headers)
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        response = outcome(exc.status_code, ISSUE_CODE.get(exc.status_code, "processing"), message)
        for key, value in (exc.headers or {}).items():
            response.headers[key] = value
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return outcome(400, "invalid", validation_message("request", list(exc.errors())))

    @app.exception_handler(ProtocolError)
    async def protocol_error(request: Request, exc: ProtocolError):
        log.error("protocol error", extra={"error_type": type(exc).__name__})
        return outcome(500, "exception", "the trial protocol data is inconsistent")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.error("unhandled error", extra={"error_type": type(exc).__name__})
        return outcome(500, "exception", "internal error")  # never a stack trace

    app.include_router(fhir_router)
    app.include_router(cds_router)
    app.include_router(web_app_router)
    app.include_router(screen_router)
    app.include_router(matching_router)  # POST /getClinicalTrial (service.matching)
    app.include_router(subscription_receiver.router)
    logs.set_route_resolver(_route_resolver(app))
    return app


def load_configured_portfolio(settings: Settings) -> Portfolio:
    """The studies this service answers for (as ``eligibility evaluate --study`` loads them)."""
    return load_portfolio(configured_paths(settings.protocol_dirs, settings.protocol_path))


def _single_protocol(portfolio: Portfolio, settings: Settings) -> Protocol:
    """The protocol at ``protocol_path``: the portfolio's own object when it holds it."""
    wanted = Path(settings.protocol_path)
    wanted = (wanted.parent if wanted.name == "protocol.toml" else wanted).resolve()
    for protocol in portfolio:
        if Path(protocol.directory).resolve() == wanted:
            return protocol
    return load_protocol(settings.protocol_path)


def _templates(routes: list[Any]) -> Iterator[tuple[re.Pattern[str], str]]:
    """(regex, template) of every route, also inside included routers. If FastAPI's
    internals change, paths resolve to 'unmatched': less informative, never a leak."""
    for route in routes:
        regex, path = getattr(route, "path_regex", None), getattr(route, "path", None)
        if isinstance(regex, re.Pattern) and isinstance(path, str):
            yield regex, path
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _templates(list(getattr(inner, "routes", ())))


def _route_resolver(app: FastAPI) -> Callable[[str], str]:
    """A request path -> its route template, for uvicorn's access log (no ids in logs)."""
    routes = list(_templates(app.routes))

    def resolve(path: str) -> str:
        for regex, template in routes:
            if regex.match(path):
                return template
        return "unmatched"

    return resolve


app = create_app()
