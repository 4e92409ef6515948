"""The web app under ``/app/``: review page, attestation form, enrolment, SMART launch.

Pages are rendered on the server from the pull-mode pipeline's result. Every page with
patient data is ``no-store``; every form carries the session's CSRF token; the Content
Security Policy allows only our own scripts and styles (no inline script). The only patient
datum in a URL is the patient id.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import jinja2
from fastapi import APIRouter, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from service.app import attestation as att
from service.app import smart
from service.app.fhir_access import Evaluated, FhirAccess
from service.app.sessions import Session, SessionStore, check_csrf
from service.app.view import review_view
from service.cds.cards import trial_name
from service.clinical.dates import today
from service.clinical.evaluation import SubjectStatus
from service.fhir.demo_layer import DemoLayer, shared_demo_layer
from service.fhir.demo_store import DEMO_BASE_URL
from service.fhir.errors import FhirError, UpstreamAuthError
from service.fhir.queries import check_id
from service.protocol import Protocol
from service.settings import Settings

log = logging.getLogger("service.app")
router = APIRouter()  # mounted under /app by service.app

DEMO_AUTHOR = {
    "reference": "Practitioner/demo-investigator",
    "display": "Demo Investigator (demo mode, not a real person)",
}
MAX_FORM_BYTES = 64 * 1024
MAX_REMEMBERED = 100  # submission keys a session remembers (the FHIR server remembers all)
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'self'; base-uri 'none'; connect-src 'self'"
)
_STATIC = {
    "app.css": "text/css; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("service.app", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


@dataclass
class AppState:
    sessions: SessionStore
    demo: DemoLayer
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    static: dict[str, bytes] = field(default_factory=dict)


def _state(request: Request) -> AppState:
    app_state = request.app.state
    found = getattr(app_state, "web_app", None)
    if found is None:
        settings = _settings(request)
        secret = settings.app_session_secret
        found = AppState(
            sessions=SessionStore(
                secret.get_secret_value() if secret else None,
                idle_seconds=settings.app_session_idle_minutes * 60,
                max_seconds=settings.app_session_max_hours * 3600,
            ),
            demo=shared_demo_layer(),
        )
        app_state.web_app = found
    return found


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _protocol(request: Request) -> Protocol:
    return request.app.state.protocol


def demo_mode(settings: Settings) -> bool:
    """No FHIR server and no SMART client: the built-in demo patients, a demo investigator."""
    return settings.fhir_base_url is None and not settings.app_smart_client_id


def _enrolment_on(settings: Settings) -> bool:
    return settings.app_enrolment_enabled or demo_mode(settings)


# -- responses ---------------------------------------------------------------------------------
def _secure(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    # same-origin, not no-referrer: with no-referrer Chrome sends "Origin: null" on our own
    # form posts; other sites still get no referrer (no patient id, no OAuth code)
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    return response


def _cookie_secure(request: Request) -> bool:
    configured = _settings(request).app_cookie_secure
    return configured if configured is not None else request.url.scheme == "https"


def _page(
    request: Request,
    template: str,
    context: dict[str, Any],
    *,
    status: int = 200,
    session: Session | None = None,
) -> Response:
    protocol = _protocol(request)
    settings = _settings(request)
    body = _TEMPLATES.get_template(template).render(
        trial=trial_name(protocol),
        study_title=protocol.research_study.get("title", protocol.id),
        demo=demo_mode(settings),
        session=session,
        user=_user_label(session),
        csrf=session.csrf if session else "",
        flash=_take_flash(session),
        **context,
    )
    response = HTMLResponse(body, status_code=status)
    if session is not None:
        _state(request).sessions.set_cookie(response, session, secure=_cookie_secure(request))
    return _secure(response)


def _redirect(request: Request, url: str, session: Session | None = None) -> Response:
    response = RedirectResponse(url, status_code=303)
    if session is not None:
        _state(request).sessions.set_cookie(response, session, secure=_cookie_secure(request))
    return _secure(response)


def _error(
    request: Request, status: int, title: str, message: str, session: Session | None = None
) -> Response:
    return _page(
        request,
        "error.html",
        {"title": title, "message": message, "standalone": _standalone_iss(_settings(request))},
        status=status,
        session=session,
    )


def _take_flash(session: Session | None) -> list[str]:
    if session is None:
        return []
    messages, session.flash = session.flash, []
    return messages


def _user_label(session: Session | None) -> str | None:
    if session is None:
        return None
    if session.demo:
        return DEMO_AUTHOR["display"]
    return session.user_display or session.fhir_user


# -- sessions and access -----------------------------------------------------------------------
def _session(request: Request) -> Session | None:
    """The live session; in demo mode one is made for every visitor."""
    store = _state(request).sessions
    session = store.get(request)
    if session is None and demo_mode(_settings(request)):
        session = store.new(demo=True)
    return session


def _access(request: Request, session: Session) -> FhirAccess:
    settings = _settings(request)
    if session.demo:
        return FhirAccess(settings, base_url=DEMO_BASE_URL, token=None, demo=_state(request).demo)
    assert session.iss is not None
    return FhirAccess(settings, base_url=session.iss, token=session.access_token)


class _Answer(Exception):
    """An error page to answer with at once, raised by the checks the routes share."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def _answers_early(route: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
    """Turn an ``_Answer`` raised inside ``route`` into its response."""

    @functools.wraps(route)
    async def answered(*args: Any, **kwargs: Any) -> Response:
        try:
            return await route(*args, **kwargs)
        except _Answer as early:
            return early.response

    return answered


def _authorise(request: Request, patient_id: str) -> Session:
    """The session allowed to see ``patient_id`` (else the error page is the answer)."""
    session = _session(request)
    if session is None or not session.signed_in:
        raise _Answer(
            _error(
                request,
                401,
                "Please sign in",
                "Open this app from your EHR (SMART launch), or sign in with the standalone "
                "launch.",
            )
        )
    try:
        check_id(patient_id)
    except FhirError as exc:
        raise _Answer(_error(request, 400, "Invalid patient id", exc.message, session)) from None
    if not session.demo and session.patient != patient_id:
        raise _Answer(
            _error(
                request,
                403,
                "Not this patient",
                "This session was launched for another patient. Launch the app again from the "
                "patient's chart.",
                session,
            )
        )
    return session


async def _evaluate(request: Request, session: Session, patient_id: str) -> Evaluated:
    try:
        found = await _access(request, session).evaluate(_protocol(request), patient_id, today())
    except UpstreamAuthError:
        if session.demo:
            raise
        _state(request).sessions.drop(session)  # the user's token no longer works
        raise _Answer(
            _error(
                request,
                401,
                "Your sign-in has ended",
                "The FHIR server no longer accepts your sign-in. Launch the app again from "
                "the EHR.",
            )
        ) from None
    except FhirError as exc:
        title = "Patient not found" if exc.http_status == 404 else "Could not evaluate"
        raise _Answer(_error(request, exc.http_status, title, exc.message, session)) from None
    return found


async def _read_form(request: Request) -> dict[str, Any] | None:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_FORM_BYTES:
        return None
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/x-www-form-urlencoded":
        return None
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return None
    form = await request.form()
    return {k: v for k, v in form.multi_items() if isinstance(v, str)}


def _same_origin(request: Request) -> bool:
    """A browser's Origin (when sent) must be ours: a second line behind the CSRF token."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":  # privacy settings, sandboxes: the token decides
        return True
    return origin.rstrip("/") == str(request.base_url).rstrip("/")


async def _checked_form(request: Request, session: Session) -> dict[str, Any]:
    """The posted form, read and checked (size, type, Origin, CSRF token)."""
    data = await _read_form(request)
    if data is None:
        raise _Answer(_error(request, 400, "Bad form", "The form could not be read.", session))
    if not _same_origin(request) or not check_csrf(session, data.get("csrf_token")):
        raise _Answer(
            _error(
                request,
                403,
                "Form expired",
                "The form was not sent from this page or your session changed. Reload the page "
                "and try again.",
                session,
            )
        )
    return data


# -- pages ---------------------------------------------------------------------------------------
@router.get("/")
async def index(request: Request) -> Response:
    settings = _settings(request)
    session = _session(request)
    if session is not None and not session.demo and session.patient:
        return _redirect(request, f"/app/patients/{session.patient}", session)
    patients: list[dict[str, str]] = []
    if session is not None and session.demo:
        access = _access(request, session)
        protocol = _protocol(request)
        for pid in _state(request).demo.patients():
            try:
                found = await access.evaluate(protocol, pid, today())
            except FhirError:
                continue
            view = review_view(found, protocol)
            patients.append(
                {
                    "id": pid,
                    "name": view.patient_name,
                    "status": view.status,
                    "status_text": view.status_text,
                }
            )
    return _page(
        request,
        "index.html",
        {"patients": patients, "standalone": _standalone_iss(settings)},
        session=session,
    )


@router.get("/patients/{patient_id}")
@_answers_early
async def review(request: Request, patient_id: str) -> Response:
    session = _authorise(request, patient_id)
    found = await _evaluate(request, session, patient_id)
    protocol = _protocol(request)
    view = review_view(found, protocol)
    enrolment = None
    if _enrolment_on(_settings(request)):
        try:
            enrolment = await _enrolment(request, session, patient_id)
        except FhirError:
            enrolment = {"error": "The enrolment record could not be read."}
    return _page(
        request,
        "review.html",
        {
            "view": view,
            "can_attest": _can_attest(session),
            "enrolment_on": _enrolment_on(_settings(request)),
            "enrolment": enrolment,
            "eligible": found.evaluation.status is SubjectStatus.ELIGIBLE,
            "study_context": _study_context_warning(session, protocol),
        },
        session=session,
    )


def _can_attest(session: Session) -> bool:
    return session.demo or smart.author_reference(session.fhir_user, session.iss or "") is not None


def _study_context_warning(session: Session, protocol: Protocol) -> str | None:
    """The EHR launched us for a study (CDS appContext): say so if it is not this one."""
    study = (session.app_context or {}).get("study")
    if not isinstance(study, str) or not study:
        return None
    if study.split("|")[0] == protocol.canonical:
        return None
    return "The EHR launched this app for another study than the one screened here."


@router.get("/patients/{patient_id}/attest")
@_answers_early
async def attestation_form(request: Request, patient_id: str) -> Response:
    session = _authorise(request, patient_id)
    if not _can_attest(session):
        return _not_investigator(request, session)
    found = await _evaluate(request, session, patient_id)
    form = att.build_form(_protocol(request), found.evaluation)
    return _form_page(request, session, patient_id, found, form, {}, None)


def _form_page(
    request: Request,
    session: Session,
    patient_id: str,
    found: Evaluated,
    form: att.FormModel,
    posted: dict[str, Any],
    submission: att.Submission | None,
    *,
    status: int = 200,
) -> Response:
    view = review_view(found, _protocol(request))
    return _page(
        request,
        "attest.html",
        {
            "view": view,
            "form": form,
            "posted": posted,
            "errors": submission.errors if submission else {},
            "submission_id": uuid.uuid4().hex,
            "patient_id": patient_id,
        },
        status=status,
        session=session,
    )


def _not_investigator(request: Request, session: Session) -> Response:
    return _error(
        request,
        403,
        "Only an investigator can attest",
        "Attestations must be signed by a Practitioner; the signed-in user is not one.",
        session,
    )


@router.post("/patients/{patient_id}/attest")
@_answers_early
async def submit_attestation(request: Request, patient_id: str) -> Response:
    session = _authorise(request, patient_id)
    data = await _checked_form(request, session)
    if not _can_attest(session):
        return _not_investigator(request, session)
    submission_id = data.get("submission_id")
    if not att.valid_submission_id(submission_id):
        return _error(request, 400, "Bad form", "The form has no valid submission key.", session)
    assert isinstance(submission_id, str)

    locks = _state(request).locks
    lock = locks.setdefault(submission_id, asyncio.Lock())
    try:
        async with lock:  # a double click waits for the first request, then sees its result
            return await _save_attestation(request, session, patient_id, data, submission_id)
    finally:
        if not lock.locked():
            locks.pop(submission_id, None)


async def _save_attestation(
    request: Request, session: Session, patient_id: str, data: dict[str, Any], submission_id: str
) -> Response:
    """Write the response once per submission key, then show the new result."""
    if submission_id in session.submissions:
        return _redirect(request, f"/app/patients/{patient_id}", session)
    found = await _evaluate(request, session, patient_id)
    protocol = _protocol(request)
    form = att.build_form(protocol, found.evaluation)
    submission = att.read_submission(form, data)
    if submission.errors:
        return _form_page(request, session, patient_id, found, form, data, submission, status=422)
    response = att.questionnaire_response(
        protocol,
        form,
        submission,
        patient_id=patient_id,
        author=_author(session),
        submission_id=submission_id,
    )
    system, value = att.submission_identifier(submission_id)
    try:
        stored = await _access(request, session).create_once(response, f"{system}|{value}")
    except FhirError as exc:
        return _error(
            request, exc.http_status, "The attestation was not saved", exc.message, session
        )
    ref = f"QuestionnaireResponse/{stored['id']}"
    while len(session.submissions) >= MAX_REMEMBERED:
        session.submissions.pop(next(iter(session.submissions)))
    session.submissions[submission_id] = ref
    answers = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in submission.answers.items())
    session.flash.append(f"Attestation saved ({answers}) as {ref}. The result below is new.")
    log.info("attestation saved", extra={"items": len(submission.answers)})
    return _redirect(request, f"/app/patients/{patient_id}", session)


def _author(session: Session) -> dict[str, str]:
    if session.demo:
        return dict(DEMO_AUTHOR)
    reference = smart.author_reference(session.fhir_user, session.iss or "")
    assert reference is not None
    author = {"reference": reference}
    if session.user_display:
        author["display"] = session.user_display
    return author


# -- enrolment -----------------------------------------------------------------------------------
def _subject_identifier(protocol: Protocol, patient_id: str) -> str:
    return f"{protocol.canonical}/research-subject|{patient_id}"


async def _enrolment(request: Request, session: Session, patient_id: str) -> dict | None:
    protocol = _protocol(request)
    found = await _access(request, session).find(
        "ResearchSubject", _subject_identifier(protocol, patient_id)
    )
    if not found:
        return None
    subject = found[0]
    return {
        "reference": f"ResearchSubject/{subject.get('id')}",
        "status": subject.get("status"),
        "since": (subject.get("period") or {}).get("start"),
    }


@router.post("/patients/{patient_id}/enrol")
@_answers_early
async def enrol(request: Request, patient_id: str) -> Response:
    session = _authorise(request, patient_id)
    await _checked_form(request, session)
    if not _enrolment_on(_settings(request)):
        return _error(request, 404, "Enrolment is off", "Enrolment is not enabled.", session)
    if not _can_attest(session):
        return _not_investigator(request, session)
    found = await _evaluate(request, session, patient_id)
    if found.evaluation.status is not SubjectStatus.ELIGIBLE:
        return _error(
            request,
            409,
            "Not eligible",
            "Only an eligible patient can be enrolled; the latest evaluation is "
            f"{found.evaluation.status.value}.",
            session,
        )
    protocol = _protocol(request)
    identifier = _subject_identifier(protocol, patient_id)
    system, _, value = identifier.partition("|")
    study = protocol.research_study
    subject = {
        "resourceType": "ResearchSubject",
        "identifier": [{"system": system, "value": value}],
        "status": "on-study",
        "period": {"start": today().isoformat()},
        "study": {
            "reference": f"ResearchStudy/{study.get('id', protocol.id)}",
            "identifier": {"system": "urn:ietf:rfc:3986", "value": protocol.canonical},
            "display": str(study.get("title", protocol.id)),
        },
        "individual": {"reference": f"Patient/{patient_id}"},
    }
    try:
        stored = await _access(request, session).upsert(subject, identifier)
    except FhirError as exc:
        return _error(request, exc.http_status, "Enrolment not saved", exc.message, session)
    session.flash.append(f"Enrolment recorded as ResearchSubject/{stored['id']}.")
    return _redirect(request, f"/app/patients/{patient_id}", session)


# -- SMART App Launch ----------------------------------------------------------------------------
def _standalone_iss(settings: Settings) -> str | None:
    if not settings.app_smart_client_id:
        return None
    if settings.app_smart_standalone_iss:
        return settings.app_smart_standalone_iss
    return settings.app_smart_allowed_issuers[0] if settings.app_smart_allowed_issuers else None


# -- static files --------------------------------------------------------------------------------
@router.get("/static/{name}")
async def static(request: Request, name: str) -> Response:
    media = _STATIC.get(name)
    if media is None:
        return Response(status_code=404)
    cache = _state(request).static
    if name not in cache:
        cache[name] = (resources.files("service.app") / "static" / name).read_bytes()
    return Response(
        cache[name],
        media_type=media,
        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )
