"""SMART App Launch routes of the web app: launch (EHR and standalone), callback, sign-out.

The OAuth work is in ``service.app.smart``; these routes keep the flow's state in the
server-side session (state -> PKCE verifier) and start a fresh session once signed in.
"""

from __future__ import annotations

import logging
import time

from fastapi import APIRouter, Request
from starlette.responses import RedirectResponse, Response

from service.app import smart
from service.app.router import (
    _cookie_secure,
    _error,
    _read_form,
    _redirect,
    _secure,
    _settings,
    _standalone_iss,
    _state,
)
from service.app.sessions import MAX_PENDING_LOGINS, PendingLogin, check_csrf

log = logging.getLogger("service.app")
router = APIRouter()
LOGIN_TIMEOUT_SECONDS = 600


def _redirect_uri(request: Request) -> str:
    settings = _settings(request)
    if settings.app_smart_redirect_url:
        return settings.app_smart_redirect_url
    base = (settings.public_base_url or str(request.base_url)).rstrip("/")
    return f"{base}/app/callback"


@router.get("/launch")
async def launch(request: Request) -> Response:
    """EHR launch (``iss`` and ``launch``), or standalone launch (neither: the configured iss)."""
    settings = _settings(request)
    params = request.query_params
    iss, launch_id = params.get("iss"), params.get("launch")
    if iss is None and launch_id is None:
        iss = _standalone_iss(settings)
    elif not launch_id or len(launch_id) > 1024:
        return _error(request, 400, "Launch failed", "An EHR launch needs both iss and launch.")
    try:
        smart.client_id(settings)
        allowed = smart.allowed_issuer(settings, iss)
        endpoints = await smart.discover(allowed)
        redirect_uri = _redirect_uri(request)
        url, state, verifier = smart.authorization_url(
            settings, endpoints, iss=allowed, redirect_uri=redirect_uri, launch=launch_id
        )
    except smart.LaunchError as exc:
        return _error(request, 400, "Launch failed", str(exc))
    store = _state(request).sessions
    session = store.get(request)
    if session is None or session.demo:
        session = store.new()
    while len(session.pending) >= MAX_PENDING_LOGINS:
        session.pending.pop(next(iter(session.pending)))
    session.pending[state] = PendingLogin(allowed, endpoints.token, verifier, redirect_uri)
    response = RedirectResponse(url, status_code=302)
    store.set_cookie(response, session, secure=_cookie_secure(request))
    return _secure(response)


@router.get("/callback")
async def callback(request: Request) -> Response:
    store = _state(request).sessions
    session = store.get(request)
    params = request.query_params
    state = params.get("state") or ""
    pending = session.pending.pop(state, None) if session is not None else None
    if session is None or pending is None or time.time() - pending.created > LOGIN_TIMEOUT_SECONDS:
        return _error(
            request,
            400,
            "Sign-in failed",
            "The sign-in was not started here or has "
            "expired (state mismatch). Launch the app again.",
        )
    if params.get("error"):
        error = params.get("error", "")[:60]
        return _error(request, 400, "Sign-in refused", f"The EHR refused the sign-in ({error}).")
    code = params.get("code")
    if not code:
        return _error(request, 400, "Sign-in failed", "The EHR sent no authorization code.")
    try:
        login = await smart.exchange_code(
            _settings(request),
            token_endpoint=pending.token_endpoint,
            redirect_uri=pending.redirect_uri,
            code=code,
            verifier=pending.code_verifier,
        )
    except smart.LaunchError as exc:
        return _error(request, 400, "Sign-in failed", str(exc))
    # A fresh session id after sign-in (no fixation); the old one is dropped.
    store.drop(session)
    fresh = store.new()
    fresh.iss = pending.iss
    fresh.access_token = login.access_token
    fresh.patient = login.patient
    fresh.fhir_user = login.fhir_user
    fresh.user_display = login.user_display
    fresh.app_context = login.app_context
    if login.expires_in:
        fresh.expires_at = min(fresh.expires_at, time.time() + login.expires_in)
    log.info("smart sign-in", extra={"has_patient": login.patient is not None})
    if not login.patient:
        return _error(
            request, 400, "No patient", "The EHR did not say which patient to open.", fresh
        )
    return _redirect(request, f"/app/patients/{login.patient}", fresh)


@router.post("/logout")
async def logout(request: Request) -> Response:
    store = _state(request).sessions
    session = store.get(request)
    data = await _read_form(request)
    if session is not None and data is not None and check_csrf(session, data.get("csrf_token")):
        store.drop(session)
    response = RedirectResponse("/app/", status_code=303)
    store.clear_cookie(response)
    return _secure(response)
