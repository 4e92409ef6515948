"""``POST /ResearchStudy/{id}/$screen``: the population screening over HTTP, FHIR async style.

Kick-off needs ``Prefer: respond-async`` and answers 202 with ``Content-Location`` (the
status URL). Polling the status answers 202 with ``X-Progress`` while it runs, then 200 with
links to the output files; ``DELETE`` on it cancels the job (what is done is kept). The
candidates come from the configured FHIR server (or the demo store), as search-driven
screening. Same API keys as ``$eligibility``. Jobs live in this process: run one worker for
this endpoint, or route a job's requests to the process that started it.

Several studies: ``study`` parameters (id, canonical or registry number, repeatable) add
studies to the one in the path; ``POST /$screen`` screens the named studies, or every loaded
one. Each patient's answer per study is recorded in the ResultStore (the coordinator's
worklist) as it is evaluated.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, Response

from service.api_keys import require_api_key
from service.fhir.errors import FhirError
from service.fhir_response import outcome, read_body
from service.pipeline import parse_as_of
from service.protocol import Protocol, ProtocolError
from service.record import InputError
from service.results import ResultStore, app_result_store
from service.results import summarise as study_result
from service.screening.outdir import REPORT, RESULTS, SUMMARY, WORKLIST, OutputFolder
from service.screening.progress import ScreenProgress
from service.screening.server import screen_server
from service.screening.studies import choose_studies

router = APIRouter()
SCREEN_DIR = Path(os.environ.get("ELIGIBILITY_SCREEN_DIR", "") or tempfile.gettempdir()) / (
    "eligibility-screen"
)
_FILES = {
    RESULTS: ("Bundle", "application/fhir+ndjson"),
    WORKLIST: ("worklist", "text/csv"),
    SUMMARY: ("summary", "application/json"),
    REPORT: ("report", "text/html"),
}


@dataclass
class Job:
    id: str
    request_url: str
    folder: Path
    progress: ScreenProgress = field(default_factory=lambda: ScreenProgress(enabled=False))
    state: str = "running"  # running | done | failed | cancelled
    error: str | None = None
    finished: datetime | None = None
    thread: threading.Thread | None = None


_jobs: dict[str, Job] = {}
_lock = threading.Lock()


def _run(
    job: Job,
    settings: Any,
    protocols: list[Protocol],
    group: str | None,
    as_of: date | None,
    record: Any = None,
) -> None:
    try:
        folder = OutputFolder(job.folder, protocols, as_of, resume=False)
        result = screen_server(
            settings, folder, protocols[0], group=group, progress=job.progress, on_result=record
        )
        job.state = "cancelled" if result.interrupted else "done"
    except (FhirError, InputError) as exc:
        job.state, job.error = "failed", getattr(exc, "message", str(exc))
    except Exception as exc:  # noqa: BLE001 - reported on the status URL, no data in it
        job.state, job.error = "failed", f"internal error ({type(exc).__name__})"
    job.finished = datetime.now(UTC)


def _parameters(body: bytes) -> tuple[str | None, date | None, list[str]]:
    """(group, asOf, study names) of the kick-off's Parameters (all optional)."""
    if not body.strip():
        return None, None, []
    try:
        resource = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InputError("the body is not JSON") from None
    if not isinstance(resource, dict) or resource.get("resourceType") != "Parameters":
        raise InputError("the body must be a Parameters resource")
    group = as_of = None
    studies: list[str] = []
    for param in resource.get("parameter") or ():
        if not isinstance(param, dict):
            continue
        if param.get("name") == "study":
            studies.append(_study_name(param))
        elif param.get("name") == "group":
            ref = param.get("valueReference", {}).get("reference") or param.get("valueString")
            group = str(ref).removeprefix("Group/") if ref else None
        elif param.get("name") == "asOf":
            as_of = parse_as_of(param.get("valueDate"))
    return group, as_of, studies


def _study_name(param: dict[str, Any]) -> str:
    """A ``study`` parameter: an id, canonical or registry number as a string, canonical,
    uri, identifier or reference (``ResearchStudy/{id}``)."""
    for key in ("valueString", "valueCanonical", "valueUri", "valueCode", "valueId"):
        if isinstance(param.get(key), str):
            return param[key]
    identifier = param.get("valueIdentifier")
    if isinstance(identifier, dict) and isinstance(identifier.get("value"), str):
        return identifier["value"]
    ref = param.get("valueReference")
    if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
        return ref["reference"].removeprefix("ResearchStudy/")
    raise InputError("a study parameter needs a string, canonical, identifier or reference")


def result_store(app: Any) -> ResultStore:
    """The app's ResultStore (service.results.app_result_store)."""
    return app_result_store(app)


def _recorder(store: ResultStore, loop: asyncio.AbstractEventLoop) -> Any:
    """Each evaluation of the job (its own thread and event loop) recorded on the app's loop,
    where the store's other users are."""

    def record(protocol: Protocol, evaluation: Any) -> None:
        summary = study_result(evaluation, protocol.id, "screening")
        asyncio.run_coroutine_threadsafe(store.record(summary), loop)

    return record


def _studies(request: Request, study_id: str | None, names: list[str]) -> list[Protocol]:
    """The path's study (the app's protocol, or another loaded one), then the named ones."""
    protocol = request.app.state.protocol
    settings = request.app.state.settings
    if study_id is not None and study_id == protocol.research_study.get("id") and not names:
        return [protocol]  # one study: exactly as before
    try:
        loaded = choose_studies(settings, [])
    except (OSError, ProtocolError) as exc:
        raise InputError(f"cannot load the trial protocols: {exc}") from None
    by_id = {p.research_study.get("id"): p for p in loaded}
    first: list[str] = []
    if study_id is not None:
        if study_id not in by_id:
            raise LookupError(f"no ResearchStudy {study_id!r} here")
        first = [by_id[study_id].id]
    return choose_studies(settings, [*first, *names]) if first or names else loaded


@router.post("/ResearchStudy/{study_id}/$screen", dependencies=[Depends(require_api_key)])
async def kick_off(request: Request, study_id: str) -> Response:
    return await _kick_off(request, study_id)


@router.post("/$screen", dependencies=[Depends(require_api_key)])
async def kick_off_studies(request: Request) -> Response:
    """Screen the ``study`` parameters' studies, or every loaded one."""
    return await _kick_off(request, None)


async def _kick_off(request: Request, study_id: str | None) -> Response:
    protocol = request.app.state.protocol
    if study_id is not None and study_id != protocol.research_study.get("id"):
        try:
            _studies(request, study_id, [])
        except LookupError:
            return outcome(404, "not-found", f"no ResearchStudy {study_id!r} here")
    if request.headers.get("prefer", "").strip().lower() != "respond-async":
        return outcome(
            400, "not-supported", "$screen runs asynchronously: send Prefer: respond-async"
        )
    body = await read_body(request, request.app.state.settings.max_body_bytes)
    try:
        group, as_of, names = _parameters(body)
        protocols = _studies(request, study_id, names)
    except InputError as exc:
        return outcome(400, "invalid", str(exc))
    except LookupError as exc:
        return outcome(404, "not-found", str(exc.args[0]))
    record = _recorder(result_store(request.app), asyncio.get_running_loop())
    job = Job(uuid.uuid4().hex, str(request.url), SCREEN_DIR / uuid.uuid4().hex)
    thread = threading.Thread(
        target=_run,
        args=(job, request.app.state.settings, protocols, group, as_of, record),
        name=f"screen-{job.id[:8]}",
        daemon=True,
    )
    job.thread = thread
    with _lock:
        _jobs[job.id] = job
    thread.start()
    status_url = str(request.url_for("screen_status", job_id=job.id))
    return Response(status_code=202, headers={"Content-Location": status_url})


def _job(job_id: str) -> Job | None:
    with _lock:
        return _jobs.get(job_id)


@router.get(
    "/$screen-status/{job_id}", name="screen_status", dependencies=[Depends(require_api_key)]
)
async def status(request: Request, job_id: str) -> Response:
    job = _job(job_id)
    if job is None:
        return outcome(404, "not-found", "no such screening job")
    if job.state == "running":
        p = job.progress
        done = f"{int(p.completed)} of {int(p.total)}" if p.total else "starting"
        counts = ", ".join(f"{n} {s}" for s, n in sorted(p.counts.items()))
        progress = f"{p.stage_name or 'starting'}: {done}" + (f" ({counts})" if counts else "")
        return Response(status_code=202, headers={"X-Progress": progress[:200], "Retry-After": "2"})
    if job.state == "failed":
        return outcome(500, "exception", f"the screening failed: {job.error}")
    base = str(request.url_for("screen_output", job_id=job.id, name="x")).removesuffix("/x")
    manifest = {
        "transactionTime": (job.finished or datetime.now(UTC)).isoformat(timespec="seconds"),
        "request": job.request_url,
        "requiresAccessToken": bool(request.app.state.settings.api_keys),
        "cancelled": job.state == "cancelled",
        "output": [
            {"type": kind, "url": f"{base}/{name}"}
            for name, (kind, _) in _FILES.items()
            if (job.folder / name).exists()
        ],
        "error": [],
    }
    return Response(orjson.dumps(manifest), 200, media_type="application/json")


@router.delete("/$screen-status/{job_id}", dependencies=[Depends(require_api_key)])
async def cancel(job_id: str) -> Response:
    job = _job(job_id)
    if job is None:
        return outcome(404, "not-found", "no such screening job")
    job.progress.cancelled = True
    return Response(status_code=202)


@router.get(
    "/$screen-output/{job_id}/{name}",
    name="screen_output",
    dependencies=[Depends(require_api_key)],
)
async def output(job_id: str, name: str) -> Response:
    job = _job(job_id)
    if job is None or name not in _FILES or not (job.folder / name).exists():
        return outcome(404, "not-found", "no such output file")
    return FileResponse(job.folder / name, media_type=_FILES[name][1])
