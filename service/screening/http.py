"""``POST /ResearchStudy/{id}/$screen``: the population screening over HTTP, FHIR async style.

Kick-off needs ``Prefer: respond-async`` and answers 202 with ``Content-Location`` (the
status URL). Polling the status answers 202 with ``X-Progress`` while it runs, then 200 with
links to the output files; ``DELETE`` on it cancels the job (what is done is kept). The
candidates come from the configured FHIR server (or the demo store), as search-driven
screening. Same API keys as ``$eligibility``. Jobs live in this process: run one worker for
this endpoint, or route a job's requests to the process that started it.
"""

from __future__ import annotations

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
from service.record import InputError
from service.screening.outdir import REPORT, RESULTS, SUMMARY, WORKLIST, OutputFolder
from service.screening.progress import ScreenProgress
from service.screening.server import screen_server

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


def _run(job: Job, settings: Any, protocol: Any, group: str | None, as_of: date | None) -> None:
    try:
        folder = OutputFolder(job.folder, protocol, as_of, resume=False)
        result = screen_server(settings, folder, protocol, group=group, progress=job.progress)
        job.state = "cancelled" if result.interrupted else "done"
    except (FhirError, InputError) as exc:
        job.state, job.error = "failed", getattr(exc, "message", str(exc))
    except Exception as exc:  # noqa: BLE001 - reported on the status URL, no data in it
        job.state, job.error = "failed", f"internal error ({type(exc).__name__})"
    job.finished = datetime.now(UTC)


def _parameters(body: bytes) -> tuple[str | None, date | None]:
    if not body.strip():
        return None, None
    try:
        resource = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InputError("the body is not JSON") from None
    if not isinstance(resource, dict) or resource.get("resourceType") != "Parameters":
        raise InputError("the body must be a Parameters resource")
    group = as_of = None
    for param in resource.get("parameter") or ():
        if not isinstance(param, dict):
            continue
        if param.get("name") == "group":
            ref = param.get("valueReference", {}).get("reference") or param.get("valueString")
            group = str(ref).removeprefix("Group/") if ref else None
        elif param.get("name") == "asOf":
            as_of = parse_as_of(param.get("valueDate"))
    return group, as_of


@router.post("/ResearchStudy/{study_id}/$screen", dependencies=[Depends(require_api_key)])
async def kick_off(request: Request, study_id: str) -> Response:
    protocol = request.app.state.protocol
    if study_id != protocol.research_study.get("id"):
        return outcome(404, "not-found", f"no ResearchStudy {study_id!r} here")
    if request.headers.get("prefer", "").strip().lower() != "respond-async":
        return outcome(
            400, "not-supported", "$screen runs asynchronously: send Prefer: respond-async"
        )
    body = await read_body(request, request.app.state.settings.max_body_bytes)
    try:
        group, as_of = _parameters(body)
    except InputError as exc:
        return outcome(400, "invalid", str(exc))
    job = Job(uuid.uuid4().hex, str(request.url), SCREEN_DIR / uuid.uuid4().hex)
    thread = threading.Thread(
        target=_run,
        args=(job, request.app.state.settings, protocol, group, as_of),
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
