"""Run a screening from a folder of NDJSON: ingest, group, evaluate in parallel, write out.

Ctrl-C stops cleanly: batches in flight are dropped, everything finished is already on disk,
and summary.json / report.html describe what was done; ``--resume`` carries on from there.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.clinical.dates import today
from service.evaluation_context import relevance_for
from service.protocol import Protocol
from service.record import InputError
from service.relevance import Relevance, RelevanceUnion
from service.screening.executors import (
    DaskExecutor,
    Executor,
    InlineExecutor,
    PoolExecutor,
    batched,
    run_batches,
)
from service.screening.ndjson import PatientStore, ndjson_files
from service.screening.outdir import OutputFolder
from service.screening.progress import ScreenProgress
from service.screening.work import Outcome, Studies

BATCH_PATIENTS = 16
BATCH_LINES = 20_000


@dataclass
class ScreenResult:
    counts: dict[str, int]
    failed: int
    interrupted: bool
    summary: dict[str, Any] = field(default_factory=dict)


def make_executor(workers: int, cluster: str | None) -> Executor:
    if cluster:
        return DaskExecutor(cluster)
    if workers <= 1:
        return InlineExecutor()
    return PoolExecutor(workers)


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


def studies_of(
    out: OutputFolder, protocol_path: Path
) -> tuple[Studies, Relevance | RelevanceUnion]:
    """What the workers load and what the export is read for: the one protocol (its path as
    given) or, several studies in ``out``, every protocol file and the union selection."""
    if not out.layout.multi:
        return str(protocol_path), relevance_for(out.protocol, None)
    paths = tuple(str(p.directory / "protocol.toml") for p in out.protocols)
    return paths, RelevanceUnion(relevance_for(p, None) for p in out.protocols)


def screen_ndjson(
    folder: Path,
    out: OutputFolder,
    protocol: Protocol,
    protocol_path: Path,
    *,
    workers: int = 1,
    cluster: str | None = None,
    progress: ScreenProgress | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
    source: str | None = None,
) -> ScreenResult:
    """Screen every patient of an NDJSON export folder into ``out`` (several studies in
    ``out``: each patient read, grouped and decoded once, then evaluated for each study)."""
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder")
    files = ndjson_files(folder)
    if not files:
        raise InputError(f"{folder} holds no .ndjson or .ndjson.gz files")
    progress = progress or ScreenProgress(enabled=False)
    executor = make_executor(workers, cluster)
    try:
        done = out.open(source or f"ndjson:{folder}", today())
    except BaseException:
        executor.close(cancel=True)
        raise
    as_of = out.day.isoformat()
    interrupted = False
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    spill = out.path / f".screen-spill-{os.getpid()}.sqlite"
    studies, relevance = studies_of(out, protocol_path)
    per_patient = len(out.protocols)
    executor.start(studies)  # workers get ready while the export is read
    with PatientStore(spill) as store:
        try:
            progress.stage("reading export", sum(p.stat().st_size for p in files))
            report = store.ingest(files, protocol, on_bytes=progress.advance, relevance=relevance)
            timings["ingestSeconds"] = round(time.perf_counter() - clock, 3)
            clock = time.perf_counter()
            todo = report.patients - sum(1 for pid in store.patient_ids() if pid in done)
            progress.stage("screening", todo * per_patient)  # rows: patient x study

            def take(outcomes: list[Outcome]) -> None:
                for outcome in outcomes:
                    out.add(outcome[1], outcome[2])
                    progress.advance(1, outcome[1][out.layout.status_at])
                    if on_outcome is not None:
                        on_outcome(outcome)
                out.flush()

            def failed(pids: list[str], exc: BaseException) -> None:
                message = f"could not be evaluated ({type(exc).__name__})"
                rows = [out.layout.error(pid, message, p) for pid in pids for p in out.protocols]
                take([(row[out.layout.patient_at], row, None) for row in rows])

            try:
                batches = batched(store.patients(skip=done), BATCH_PATIENTS, BATCH_LINES)
                run_batches(executor, studies, as_of, batches, take, failed)
            except KeyboardInterrupt:
                interrupted = True
                executor.close(cancel=True)
            else:
                executor.close()
            timings["evaluateSeconds"] = round(time.perf_counter() - clock, 3)
        except KeyboardInterrupt:
            interrupted = True
            report = store.report
            executor.close(cancel=True)
        except BaseException:
            executor.close(cancel=True)
            raise
        finally:
            out.close()
    summary = out.finish(
        {
            "source": source or "ndjson",
            "input": report.as_dict(),
            "interrupted": interrupted,
            "timings": timings,
        }
    )
    return ScreenResult(dict(out.counts), out.failed, interrupted, summary)
