"""``eligibility screen``: screen a population into an output folder (see docs-screening.md).

Exit codes: 0 every patient evaluated, 3 some could not be (their rows carry ``error``; also
when the FHIR server failed as a whole), 2 bad input, 130 interrupted (what is done is kept;
``--resume`` continues), 1 an internal error.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from service.fhir.errors import FhirError
from service.pipeline import parse_as_of
from service.protocol import ProtocolError
from service.record import InputError
from service.screening.outdir import OutputFolder
from service.screening.progress import ScreenProgress
from service.screening.runner import ScreenResult, default_workers, screen_ndjson
from service.screening.studies import choose_studies, protocol_file
from service.settings import get_settings

EXIT_BAD_INPUT = 2
EXIT_SOME_FAILED = 3
EXIT_INTERRUPTED = 130


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> typer.Exit:
    print(f"error: {message}", file=sys.stderr)
    return typer.Exit(code)


def screen(
    out: Annotated[Path, typer.Option(help="Output folder (results, worklist, summary, report)")],
    ndjson: Annotated[
        Path | None, typer.Option(help="A folder of NDJSON files (a Bulk Data export)")
    ] = None,
    fhir_base: Annotated[
        str | None, typer.Option(help="Screen the patients of this FHIR R4 server")
    ] = None,
    group: Annotated[
        str | None, typer.Option(help="With --fhir-base: the members of this Group")
    ] = None,
    patients: Annotated[
        Path | None, typer.Option(help="With --fhir-base: a file of patient ids, one a line")
    ] = None,
    bulk: Annotated[
        bool, typer.Option("--bulk", help="With --fhir-base: Bulk Data $export, then local")
    ] = False,
    as_of: Annotated[
        str | None, typer.Option(help="Evaluation date YYYY-MM-DD (default today)")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Local evaluation processes (default: one per CPU)")
    ] = None,
    concurrency: Annotated[
        int, typer.Option(help="Patients fetched at once from the FHIR server")
    ] = 4,
    cluster: Annotated[
        str | None, typer.Option(help="Dask scheduler (tcp://HOST:PORT) to evaluate on")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Skip patients already done in --out")
    ] = False,
    write_group: Annotated[
        bool,
        typer.Option("--write-group", help="Write a Group of eligible and potential candidates"),
    ] = False,
    write_results: Annotated[
        bool,
        typer.Option("--write-results", help="Write one ResearchSubject per patient (idempotent)"),
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on a terminal")] = True,
    study: Annotated[
        list[str] | None,
        typer.Option(
            "--study",
            help="Protocol id, ResearchStudy canonical or registry number (repeatable; "
            "default every protocol); several: one worklist row per patient and study",
        ),
    ] = None,
) -> None:
    """Screen a population: which patients could be candidates, and what is missing for each.

    Several studies are screened in one pass over the data: each patient is read, grouped and
    decoded once, then evaluated for each study (manual: integrators/screening.md)."""
    settings = get_settings()
    try:
        protocols = choose_studies(settings, study)
    except InputError as exc:
        raise _fail(str(exc)) from None
    except (OSError, ProtocolError, KeyError, ValueError) as exc:
        raise _fail(f"cannot load the trial protocol: {exc}", 1) from None
    protocol = protocols[0]
    if (ndjson is None) == (fhir_base is None):
        raise _fail("give exactly one of --ndjson DIR or --fhir-base URL")
    if ndjson is not None and (group or patients or bulk):
        raise _fail("--group, --patients and --bulk go with --fhir-base")
    if group and patients:
        raise _fail("give at most one of --group ID or --patients FILE")
    if (write_group or write_results) and fhir_base is None:
        raise _fail("--write-group and --write-results need --fhir-base")
    if cluster and fhir_base is not None and not bulk:
        raise _fail("--cluster evaluates local data: use it with --ndjson or --bulk")
    if concurrency < 1 or (workers is not None and workers < 1):
        raise _fail("--concurrency and --workers must be at least 1")
    try:
        day = parse_as_of(as_of) if as_of else None
        folder = OutputFolder(out, protocols, day, resume=resume)
        with ScreenProgress(enabled=progress) as bar:
            if ndjson is not None:
                result = screen_ndjson(
                    ndjson,
                    folder,
                    protocol,
                    protocol_file(protocol, settings),
                    workers=workers or default_workers(),
                    cluster=cluster,
                    progress=bar,
                )
            else:
                from service.screening.server import screen_server

                server_settings = settings.model_copy(
                    update={
                        "fhir_base_url": fhir_base,
                        "protocol_path": protocol_file(protocol, settings),
                    }
                )
                result = screen_server(
                    server_settings,
                    folder,
                    protocol,
                    group=group,
                    patients_file=patients,
                    bulk=bulk,
                    workers=workers or default_workers(),
                    cluster=cluster,
                    concurrency=concurrency,
                    write_group=write_group,
                    write_results=write_results,
                    progress=bar,
                )
    except InputError as exc:
        raise _fail(str(exc)) from None
    except FhirError as exc:
        raise _fail(exc.message, EXIT_SOME_FAILED if exc.http_status >= 500 else 2) from None
    except OSError as exc:
        raise _fail(f"{exc.strerror or type(exc).__name__}: {exc.filename or ''}".strip()) from None
    except Exception as exc:  # noqa: BLE001 - one line, no traceback with patient data
        raise _fail(f"internal error ({type(exc).__name__})", 1) from None
    _report(result, out)


def _report(result: ScreenResult, out: Path) -> None:
    counts = ", ".join(f"{n} {s}" for s, n in sorted(result.counts.items())) or "no patients"
    print(f"screened into {out}: {counts}", file=sys.stderr)
    for section in result.summary.get("studies") or ():  # several studies: each its own line
        mine = ", ".join(f"{n} {s}" for s, n in section["byStatus"].items() if n)
        print(f"  {section['study']}: {mine or 'no patients'}", file=sys.stderr)
    if result.interrupted:
        print("interrupted: finished patients are kept; --resume continues", file=sys.stderr)
        raise typer.Exit(EXIT_INTERRUPTED)
    if result.failed:
        print(f"{result.failed} patient(s) could not be evaluated (see 'error')", file=sys.stderr)
        raise typer.Exit(EXIT_SOME_FAILED)
