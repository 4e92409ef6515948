"""Screen the patients of a FHIR server: search-driven (pull mode per patient) or Bulk.

Search-driven: the candidates come from the protocol's own data, not a code list in code:
patients with a Condition in the protocol's screening ValueSet (``Condition?code=…``, every
page), or the members of a Group, or a file of ids. Each is then evaluated exactly as
``GET /Patient/{id}/$eligibility`` does (``evaluate_from_server``), a few at a time; the
client already honours 429/Retry-After, the deadline and the configured credentials.

Several studies: the candidates are the union of the studies' Condition searches (each
distinct search sent once), each candidate is evaluated for every study
(``evaluate_patient``: one small function, to be replaced by the multi-study evaluation
core), a Bulk export asks for the union of the studies' types and filters, and the
write-back writes one Group (and one ResearchSubject per patient) per study.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

import orjson

from service.clinical.dates import today
from service.clinical.evaluation import Evaluation
from service.fhir.errors import FhirError, InvalidPatientId, UpstreamError
from service.fhir.pool import client_for
from service.fhir.queries import check_id, token_param
from service.pipeline import evaluate_from_server
from service.protocol import Protocol
from service.record import InputError
from service.screening.ndjson import PATIENT_REFERENCE
from service.screening.outdir import OutputFolder
from service.screening.progress import Cancelled, ScreenProgress
from service.screening.rows import Layout
from service.screening.runner import ScreenResult, screen_ndjson
from service.settings import Settings

OnResult = Callable[[Protocol, Evaluation], None]

# The candidate search may be long (every page of every matching Condition): its own caps.
CANDIDATE_DEADLINE_SECONDS = 3600.0
CANDIDATE_MAX_PAGES = 1_000_000
CANDIDATE_MAX_ENTRIES = 100_000_000


def screening_valueset(protocol: Protocol) -> str:
    vs_id = protocol.general.get("screening_condition_valueset")
    if not vs_id:
        raise InputError(
            "the protocol names no screening_condition_valueset: pass --group or --patients"
        )
    return vs_id


def read_patient_file(path: Path) -> list[str]:
    """One id a line (``Patient/`` prefix allowed); blank lines and ``#`` comments skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    ids: list[str] = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pid = line.removeprefix("Patient/")
        try:
            ids.append(check_id(pid))
        except InvalidPatientId:
            raise InputError(f"{path} line {n} is not a FHIR patient id") from None
    return list(dict.fromkeys(ids))


async def _candidates(
    settings: Settings, protocol: Protocol | list[Protocol], group: str | None
) -> tuple[list[str], dict[str, Any]]:
    """Patient ids to evaluate, and what the search found that names no single patient."""
    async with client_for(settings) as client:
        client.config = replace(
            client.config,
            deadline_seconds=CANDIDATE_DEADLINE_SECONDS,
            max_pages=CANDIDATE_MAX_PAGES,
            max_entries=CANDIDATE_MAX_ENTRIES,
        )
        client.start_deadline()
        refs: list[Any] = []
        if group is not None:
            body = await client.read("Group", check_id(group), key="group")
            members = body.get("member")
            if not isinstance(members, list):
                members = []
            for m in members:
                if isinstance(m, dict) and m.get("inactive") is not True:
                    entity = m.get("entity")
                    refs.append(entity.get("reference") if isinstance(entity, dict) else None)
            source = {"group": group, "members": len(members)}
        elif isinstance(protocol, Protocol):
            valueset = protocol.valueset(screening_valueset(protocol))
            refs = await _condition_subjects(client, token_param(valueset.codes))
            source = {"conditionValueSet": valueset.url, "conditions": len(refs)}
        else:
            searches = candidate_searches(protocol)
            refs, counts = [], {}
            for param, urls in searches.items():
                found = await _condition_subjects(client, param)
                refs += found
                counts.update(dict.fromkeys(urls, len(found)))
            source = {"conditionValueSets": counts, "conditions": len(refs)}
    ids: dict[str, None] = {}
    unusable = 0
    for ref in refs:
        m = (
            PATIENT_REFERENCE.search(ref.partition("/_history/")[0])
            if isinstance(ref, str)
            else None
        )
        if m:
            ids.setdefault(m.group(1), None)
        else:
            unusable += 1
    source["notAPatient"] = unusable
    return sorted(ids), source


async def _condition_subjects(client: Any, codes: str) -> list[Any]:
    """The subject reference of every Condition with one of ``codes`` (every page)."""
    found = await client.search(("Condition", [("code", codes)]))
    if found.truncated:
        raise UpstreamError(
            "the candidate Condition search was incomplete; no screening from part of it"
        )
    return [
        (c.get("subject") or {}).get("reference") if isinstance(c, dict) else None
        for c in found.entries
    ]


def candidate_searches(protocols: list[Protocol]) -> dict[str, list[str]]:
    """The studies' candidate searches (code parameter -> ValueSet urls), each distinct one
    once; a study without a screening ValueSet is screened over the others' candidates."""
    searches: dict[str, list[str]] = {}
    for protocol in protocols:
        if protocol.general.get("screening_condition_valueset"):
            valueset = protocol.valueset(screening_valueset(protocol))
            urls = searches.setdefault(token_param(valueset.codes), [])
            if valueset.url not in urls:
                urls.append(valueset.url)
    if not searches:
        raise InputError(
            "no study names a screening_condition_valueset: pass --group or --patients"
        )
    return searches


async def evaluate_patient(
    settings: Settings,
    protocols: list[Protocol],
    layout: Layout,
    pid: str,
    day: date,
    on_result: OnResult | None = None,
) -> list[tuple[list[str], bytes | None]]:
    """One patient's worklist row and result per study, pulled from the FHIR server (today
    each study's pull as ``GET /Patient/{id}/$eligibility``; the multi-study core, once it
    lands, fetches once for all behind this same call)."""
    answers: list[tuple[list[str], bytes | None]] = []
    for protocol in protocols:
        try:
            evaluation, bundle = await evaluate_from_server(settings, protocol, pid, day)
        except (FhirError, InputError) as exc:
            answers.append((layout.error(pid, getattr(exc, "message", str(exc)), protocol), None))
        except Exception as exc:  # noqa: BLE001 - one error row, no patient data
            message = f"internal error ({type(exc).__name__})"
            answers.append((layout.error(pid, message, protocol), None))
        else:
            answers.append((layout.row(evaluation, protocol), orjson.dumps(bundle)))
            if on_result is not None:
                on_result(protocol, evaluation)
    return answers


async def _evaluate_all(
    settings: Settings,
    pids: list[str],
    day: date,
    out: OutputFolder,
    concurrency: int,
    progress: ScreenProgress,
    on_result: OnResult | None = None,
) -> bool:
    """Evaluate every id, ``concurrency`` at a time; False when cancelled part-way."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    stopped = False
    for pid in pids:
        queue.put_nowait(pid)

    async def worker() -> None:
        nonlocal stopped
        while not stopped:
            try:
                pid = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            answers = await evaluate_patient(
                settings, out.protocols, out.layout, pid, day, on_result
            )
            for row, body in answers:
                out.add(row, body)
            out.flush()
            try:
                for row, _ in answers:
                    progress.advance(1, row[out.layout.status_at])
            except Cancelled:
                stopped = True

    async with asyncio.TaskGroup() as tg:
        for _ in range(min(concurrency, max(1, len(pids)))):
            tg.create_task(worker())
    return not stopped


def screen_server(
    settings: Settings,
    out: OutputFolder,
    protocol: Protocol,
    *,
    group: str | None = None,
    patients_file: Path | None = None,
    bulk: bool = False,
    workers: int = 1,
    cluster: str | None = None,
    concurrency: int = 4,
    write_group: bool = False,
    write_results: bool = False,
    progress: ScreenProgress | None = None,
    on_result: OnResult | None = None,
) -> ScreenResult:
    """``on_result(protocol, evaluation)``: called for each evaluation of the search-driven
    mode (``$screen`` records them in the ResultStore)."""
    progress = progress or ScreenProgress(enabled=False)
    if bulk:
        from service.screening.bulk import bulk_export

        if patients_file is not None:
            raise InputError("--bulk exports a Group or all patients, not a file of ids")
        export_dir = out.path / "bulk"
        progress.stage("bulk export", None)
        wanted = out.protocols if out.layout.multi else protocol
        manifest = asyncio.run(bulk_export(settings, wanted, export_dir, group=group))
        result = screen_ndjson(
            export_dir,
            out,
            protocol,
            settings.protocol_path,
            workers=workers,
            cluster=cluster,
            progress=progress,
            source=f"bulk:{'Group/' + group if group else 'Patient'}",
        )
        result.summary["bulk"] = manifest
        out.write_summary(result.summary)
    else:
        result = _search_driven(
            settings, out, protocol, group, patients_file, concurrency, progress, on_result
        )
    if (write_group or write_results) and not result.interrupted:
        from service.screening.writeback import write_back

        written = {
            p.id: asyncio.run(
                write_back(settings, p, out, group=write_group, results=write_results)
            )
            for p in out.protocols
        }
        result.summary["written"] = written if out.layout.multi else written[protocol.id]
        out.write_summary(result.summary)
    return result


def _search_driven(
    settings: Settings,
    out: OutputFolder,
    protocol: Protocol,
    group: str | None,
    patients_file: Path | None,
    concurrency: int,
    progress: ScreenProgress,
    on_result: OnResult | None = None,
) -> ScreenResult:
    if patients_file is not None:
        candidates, found = read_patient_file(patients_file), {"file": str(patients_file)}
        label = f"patients:{patients_file}"
    else:
        progress.stage("finding candidates", None)
        wanted = out.protocols if out.layout.multi else protocol
        candidates, found = asyncio.run(_candidates(settings, wanted, group))
        label = f"group:{group}" if group else "condition-search"
    done = out.open(f"{label}@{settings.fhir_base_url}", today())
    todo = [pid for pid in candidates if pid not in done]
    progress.stage("screening", len(todo) * len(out.protocols))  # rows: patient x study
    interrupted = False
    try:
        interrupted = not asyncio.run(
            _evaluate_all(settings, todo, out.day, out, concurrency, progress, on_result)
        )
    except KeyboardInterrupt:
        interrupted = True
    finally:
        out.close()
    summary = out.finish(
        {
            "source": label,
            "candidates": {"patients": len(candidates), **found},
            "interrupted": interrupted,
        }
    )
    return ScreenResult(dict(out.counts), out.failed, interrupted, summary)
