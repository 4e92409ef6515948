"""The web app under ``/app/``: review page, attestation form, enrolment, SMART launch.

Pages are rendered on the server from the pull-mode pipeline's result. Every page with
patient data is ``no-store``; every form carries the session's CSRF token; the Content
Security Policy allows only our own scripts and styles (no inline script). The only patient
datum in a URL is the patient id.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import urlencode

import jinja2
from fastapi import APIRouter, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from service.app import attestation as att
from service.app import smart
from service.app.fhir_access import Evaluated, FhirAccess
from service.app.screening_import import fingerprint, import_run, read_run
from service.app.sessions import Session, SessionStore, check_csrf
from service.app.studies import app_portfolio, resolve
from service.app.view import review_view
from service.app.worklist import WorklistError, load_worklist, parse_query
from service.cds.cards import trial_name
from service.clinical.dates import today
from service.clinical.evaluation import SubjectStatus
from service.fhir.demo_layer import DemoLayer, shared_demo_layer
from service.fhir.demo_store import DEMO_BASE_URL
from service.fhir.errors import FhirError, UpstreamAuthError
from service.fhir.queries import check_id
from service.portfolio import Portfolio
from service.protocol import Protocol
from service.results import ResultStore, app_result_store, summarise
from service.settings import Settings
from service.state.base import StoreError

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
# Per-study values every page gets from _page; a template rendered without them (one study,
# no study asked for) reads as the single-trial page it was.
_TEMPLATES.globals.update(study_id="", study_query="", several_studies=False)


@dataclass
class AppState:
    sessions: SessionStore
    demo: DemoLayer
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    static: dict[str, bytes] = field(default_factory=dict)
    portfolio: Portfolio | None = None
    # the screening run last imported ((folder, fingerprint), what the page says about it)
    imported: tuple[tuple[str, tuple[int, int]], dict[str, Any]] | None = None
    import_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


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


def _portfolio(request: Request) -> Portfolio:
    """The studies the app shows (the single-trial protocol first), loaded once."""
    state = _state(request)
    if state.portfolio is None:
        state.portfolio = app_portfolio(_protocol(request), _settings(request))
    return state.portfolio


def _results(request: Request) -> ResultStore:
    """The ResultStore on ``app.state.result_store`` (shared with the API, CDS and
    subscriptions when they set it first), opened from the settings otherwise."""
    return app_result_store(request.app)


def _study(request: Request, session: Session | None) -> Protocol:
    """The study ``?study=`` names; without it the one the EHR launched us for (when loaded),
    else the single-trial protocol. An unknown name is a 404 page."""
    name = request.query_params.get("study")
    default = _protocol(request)
    launched = (session.app_context or {}).get("study") if session else None
    if not name and isinstance(launched, str) and launched:
        with contextlib.suppress(KeyError):  # not loaded here: the warning says so
            default = _portfolio(request).get(launched.split("|")[0])
    try:
        return resolve(_portfolio(request), name, default)
    except KeyError as exc:
        raise _Answer(_error(request, 404, "Unknown study", str(exc.args[0]), session)) from None


def _study_query(protocol: Protocol) -> str:
    return "?" + urlencode({"study": protocol.id})


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
    protocol: Protocol | None = None,
    trial: str | None = None,
) -> Response:
    protocol = protocol or _protocol(request)
    settings = _settings(request)
    body = _TEMPLATES.get_template(template).render(
        trial=trial or trial_name(protocol),
        study_id=protocol.id,
        # links keep ``?study=`` when the page was asked for a study (else the single-trial
        # page's links stay as they were)
        study_query=_study_query(protocol) if "study" in request.query_params else "",
        several_studies=len(_portfolio(request)) > 1,
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


async def _evaluate(
    request: Request, session: Session, patient_id: str, protocol: Protocol | None = None
) -> Evaluated:
    protocol = protocol or _protocol(request)
    try:
        found = await _access(request, session).evaluate(protocol, patient_id, today())
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
    await _record(request, found, protocol)
    return found


async def _record(request: Request, found: Evaluated, protocol: Protocol) -> None:
    """The app's answer joins the worklist (source "app"); a store that is down costs the
    worklist one row, never the page."""
    try:
        await _results(request).record(summarise(found.evaluation, protocol.id, "app"))
    except StoreError as exc:
        log.warning("result not recorded", extra={"error_type": type(exc).__name__})


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
@_answers_early
async def index(request: Request) -> Response:
    """The coordinator's worklist (and, in demo mode, the demo patients to open)."""
    settings = _settings(request)
    session = _session(request)
    if session is not None and not session.demo and session.patient:
        return _redirect(request, f"/app/patients/{session.patient}", session)
    patients: list[dict[str, Any]] = []
    worklist = None
    screening = None
    if session is not None and session.signed_in:
        if session.demo:
            patients = await _demo_patients(request, session)
        try:
            query = parse_query(
                _multi(request), _portfolio(request), settings.app_worklist_page_size
            )
        except WorklistError as exc:
            return _error(request, 400, "Bad worklist query", str(exc), session)
        screening = await _import_screening(request)
        try:
            worklist = await load_worklist(_results(request), _portfolio(request), query)
        except StoreError:
            return _error(
                request, 503, "Worklist unavailable", "The result store does not answer.", session
            )
    return _page(
        request,
        "index.html",
        {
            "patients": patients,
            "worklist": worklist,
            "screening": screening,
            "standalone": _standalone_iss(settings),
        },
        session=session,
        trial=f"{len(_portfolio(request))} studies" if len(_portfolio(request)) > 1 else None,
    )


def _multi(request: Request) -> dict[str, list[str]]:
    params: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        params.setdefault(key, []).append(value)
    return params


async def _demo_patients(request: Request, session: Session) -> list[dict[str, Any]]:
    """Each demo patient against every study (recorded: the worklist lists them too)."""
    access = _access(request, session)
    primary = _protocol(request)
    patients = []
    for pid in _state(request).demo.patients():
        row: dict[str, Any] = {"id": pid, "studies": []}
        for protocol in _portfolio(request):
            try:
                found = await access.evaluate(protocol, pid, today())
            except FhirError:
                continue
            await _record(request, found, protocol)
            view = review_view(found, protocol)
            if protocol is primary:
                row.update(name=view.patient_name, status=view.status)
                row["status_text"] = view.status_text
            row["studies"].append(
                {"id": protocol.id, "name": trial_name(protocol), "status": view.status}
            )
        if "status" in row:
            patients.append(row)
    return patients


async def _import_screening(request: Request) -> dict[str, Any] | None:
    """Bring the latest screening run into the ResultStore once per run (a new run is a new
    worklist file); returns what the page says about it."""
    folder = _settings(request).app_screening_output_dir
    if folder is None:
        return None
    state = _state(request)
    mark = fingerprint(folder)
    if mark is None:
        return {"folder": str(folder), "missing": True}
    async with state.import_lock:
        if state.imported is not None and state.imported[0] == (str(folder), mark):
            return state.imported[1]  # this run is in the store already
        try:
            run = await asyncio.to_thread(read_run, folder, _portfolio(request), _protocol(request))
            await import_run(_results(request), run)
        except (OSError, ValueError, StoreError) as exc:
            log.warning("screening run not read", extra={"error_type": type(exc).__name__})
            return {"folder": str(folder), "unreadable": True}
        summary = {
            "folder": str(folder),
            "evaluated_at": run.evaluated_at.strftime("%Y-%m-%d %H:%M %Z"),
            "as_of": run.as_of,
            "rows": len(run.results),
            "errors": run.errors,
            "unknown": sorted(run.unknown_studies),
        }
        state.imported = ((str(folder), mark), summary)
    return summary


@router.get("/patients/{patient_id}/studies")
@_answers_early
async def patient_studies(request: Request, patient_id: str) -> Response:
    """Every loaded study side by side for one patient: status and what is still open."""
    session = _authorise(request, patient_id)
    studies = []
    name = patient_id
    for protocol in _portfolio(request):
        found = await _evaluate(request, session, patient_id, protocol)
        view = review_view(found, protocol)
        name = view.patient_name
        stored = await _stored(request, patient_id, protocol.id)
        studies.append(
            {
                "id": protocol.id,
                "name": trial_name(protocol),
                "title": protocol.research_study.get("title", protocol.id),
                "view": view,
                "query": _study_query(protocol),
                "change": stored.change if stored else None,
            }
        )
    return _page(
        request,
        "patient.html",
        {
            "patient_id": patient_id,
            "patient_name": name,
            "studies": studies,
            "can_attest": _can_attest(session),
        },
        session=session,
        trial=f"{len(studies)} studies" if len(studies) > 1 else None,
    )


async def _stored(request: Request, patient_id: str, study_id: str) -> Any:
    try:
        return await _results(request).latest(patient_id, study_id)
    except StoreError:
        return None


@router.get("/patients/{patient_id}")
@_answers_early
async def review(request: Request, patient_id: str) -> Response:
    session = _authorise(request, patient_id)
    protocol = _study(request, session)
    found = await _evaluate(request, session, patient_id, protocol)
    view = review_view(found, protocol)
    enrolment = None
    if _enrolment_on(_settings(request)):
        try:
            enrolment = await _enrolment(request, session, patient_id, protocol)
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
        protocol=protocol,
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
    protocol = _study(request, session)
    found = await _evaluate(request, session, patient_id, protocol)
    form = att.build_form(protocol, found.evaluation)
    return _form_page(request, session, patient_id, found, form, {}, None, protocol)


def _form_page(
    request: Request,
    session: Session,
    patient_id: str,
    found: Evaluated,
    form: att.FormModel,
    posted: dict[str, Any],
    submission: att.Submission | None,
    protocol: Protocol,
    *,
    status: int = 200,
) -> Response:
    view = review_view(found, protocol)
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
        protocol=protocol,
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
    protocol = _study(request, session)
    submission_id = data.get("submission_id")
    if not att.valid_submission_id(submission_id):
        return _error(request, 400, "Bad form", "The form has no valid submission key.", session)
    assert isinstance(submission_id, str)

    locks = _state(request).locks
    lock = locks.setdefault(submission_id, asyncio.Lock())
    try:
        async with lock:  # a double click waits for the first request, then sees its result
            return await _save_attestation(
                request, session, patient_id, data, submission_id, protocol
            )
    finally:
        if not lock.locked():
            locks.pop(submission_id, None)


async def _save_attestation(
    request: Request,
    session: Session,
    patient_id: str,
    data: dict[str, Any],
    submission_id: str,
    protocol: Protocol,
) -> Response:
    """Write the response (to this study's Questionnaire) once per submission key, then show
    the study's new result."""
    back = _review_url(request, patient_id, protocol)
    if submission_id in session.submissions:
        return _redirect(request, back, session)
    found = await _evaluate(request, session, patient_id, protocol)
    form = att.build_form(protocol, found.evaluation)
    submission = att.read_submission(form, data)
    if submission.errors:
        return _form_page(
            request, session, patient_id, found, form, data, submission, protocol, status=422
        )
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
    return _redirect(request, back, session)


def _review_url(request: Request, patient_id: str, protocol: Protocol) -> str:
    """The review page of ``protocol`` (the address without ``study`` when it was asked so)."""
    if "study" not in request.query_params:
        return f"/app/patients/{patient_id}"
    return f"/app/patients/{patient_id}{_study_query(protocol)}"


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


async def _enrolment(
    request: Request, session: Session, patient_id: str, protocol: Protocol
) -> dict | None:
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
    protocol = _study(request, session)
    found = await _evaluate(request, session, patient_id, protocol)
    if found.evaluation.status is not SubjectStatus.ELIGIBLE:
        return _error(
            request,
            409,
            "Not eligible",
            "Only an eligible patient can be enrolled; the latest evaluation is "
            f"{found.evaluation.status.value}.",
            session,
        )
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
    return _redirect(request, _review_url(request, patient_id, protocol), session)


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
