"""The ``eligibility`` command: evaluate a Bundle or a patient on a FHIR server, run the demo,
serve the API, run the benchmarks."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console
from typer.core import TyperGroup

try:  # typer >= 0.20 carries its own copy of click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover - older typer on click
    # The same classes, from click itself: mypy types the two copies as distinct.
    from click.exceptions import (  # type: ignore[assignment]
        ClickException,
        NoArgsIsHelpError,
        UsageError,
    )

from service import logs
from service.clinical.evaluation import Evaluation
from service.fhir.errors import FhirError
from service.inputs import ConfigurationError, check_settings
from service.pipeline import evaluate_from_server, parse_as_of
from service.portfolio_eval import (
    StudyAnswer,
    combined_bundle,
    evaluate_body_portfolio,
    evaluate_portfolio_from_server,
)
from service.protocol import Protocol, ProtocolError, load_protocol
from service.record import InputError
from service.screening.command import screen
from service.settings import get_settings
from service.subscriptions.command import subscribe
from service.summary import render_summary

EXIT_BAD_INPUT = 2
EXIT_UPSTREAM = 3


class _OneLineErrors(TyperGroup):
    """Usage errors (unknown option, ``--format xml``) as one ``error:`` line and exit 2.

    Typer draws them in a rich box with a usage banner; scripts and people reading stderr are
    better served by the same one-line form every other bad input gets.
    """

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except NoArgsIsHelpError as exc:
            exc.show()  # bare `eligibility`: the help text, as before
            sys.exit(exc.exit_code)
        except UsageError as exc:
            print(f"error: {exc.format_message()}", file=sys.stderr)
            sys.exit(EXIT_BAD_INPUT)
        except ClickException as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except typer.Abort:
            print("error: aborted", file=sys.stderr)
            sys.exit(1)
        except Exception as exc:  # noqa: BLE001 - one line, never a traceback with patient data
            print(f"error: internal error ({type(exc).__name__})", file=sys.stderr)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__, cls=_OneLineErrors)


class OutputFormat(StrEnum):
    fhir = "fhir"
    summary = "summary"


@app.callback()
def _redact_logs() -> None:
    """Every command's log lines, ours and libraries', pass the redactor (service/logs.py)."""
    logs.install()
    logs.register_settings_secrets(get_settings())
    try:
        check_settings(get_settings())
    except ConfigurationError as exc:
        raise _fail(str(exc)) from None


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> typer.Exit:
    print(f"error: {message}", file=sys.stderr)
    return typer.Exit(code)


def _protocol() -> Protocol:
    try:
        return load_protocol(get_settings().protocol_path)
    except (OSError, ProtocolError, KeyError, ValueError) as exc:
        raise _fail(f"cannot load the trial protocol: {exc}", 1) from None


def _studies(names: list[str] | None) -> list[Protocol]:
    """The protocols ``--study`` names (id, canonical or registry number); default: all of
    ELIGIBILITY_PROTOCOL_DIRS, or every folder under fhir_mappings/, or an explicitly set
    ELIGIBILITY_PROTOCOL_PATH alone."""
    from service.portfolio import configured_paths, load_portfolio

    settings = get_settings()
    try:
        portfolio = load_portfolio(configured_paths(settings.protocol_dirs, settings.protocol_path))
    except (OSError, ProtocolError, KeyError, ValueError) as exc:
        raise _fail(f"cannot load the trial protocol: {exc}", 1) from None
    try:
        return portfolio.select(names or [])
    except KeyError as exc:
        raise _fail(str(exc.args[0])) from None


def _as_of(value: str | None) -> date | None:
    try:
        return parse_as_of(value) if value else None
    except InputError as exc:
        raise _fail(str(exc)) from None


SiteMappingsOption = Annotated[
    Path | None,
    typer.Option(
        "--site-mappings",
        help="A folder of the site's FHIR R4 ConceptMaps (local codes -> LOINC / SNOMED CT, "
        "unit strings -> UCUM); default ELIGIBILITY_SITE_MAPPINGS",
    ),
]


def _site_terminology(site_mappings: Path | None) -> None:
    """Load the site's terminology (folder, optional $translate server) before evaluating;
    a bad folder or ConceptMap is one ``error:`` line."""
    from service.terminology.conceptmaps import SiteMappingError
    from service.terminology.runtime import configure_from

    settings = get_settings()
    if site_mappings is not None:
        settings = settings.model_copy(update={"site_mappings": site_mappings})
    try:
        configure_from(settings)
    except SiteMappingError as exc:
        raise _fail(str(exc)) from None


def _print(evaluation: Evaluation, bundle: dict, protocol: Protocol, fmt: OutputFormat) -> None:
    if fmt is OutputFormat.fhir:
        sys.stdout.buffer.write(orjson.dumps(bundle, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        render_summary(evaluation, protocol, _console())


def _console() -> Console:
    """The terminal's width ($COLUMNS wins); piped output is not squeezed to 80 columns."""
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=160)
    return console


@app.command()
def evaluate(
    bundle: Annotated[
        Path | None, typer.Option(help="A FHIR R4 Bundle (JSON) holding one patient's data")
    ] = None,
    fhir_base: Annotated[
        str | None, typer.Option(help="Pull the patient from this FHIR R4 base URL instead")
    ] = None,
    patient: Annotated[
        str | None, typer.Option(help="Patient id (required with --fhir-base)")
    ] = None,
    as_of: Annotated[
        str | None, typer.Option(help="Evaluation date YYYY-MM-DD (default today)")
    ] = None,
    format: Annotated[OutputFormat, typer.Option("--format")] = OutputFormat.fhir,
    site_mappings: SiteMappingsOption = None,
    study: Annotated[
        list[str] | None,
        typer.Option(
            "--study",
            help="Protocol id, ResearchStudy canonical or registry number (repeatable; "
            "default every protocol)",
        ),
    ] = None,
) -> None:
    """Evaluate one patient against every criterion of each chosen protocol.

    With one protocol the output is that protocol's result; with several, the FHIR output is
    the one Bundle ``POST /$eligibility`` answers (each study's ResearchSubject, criterion
    Observations, GuidanceResponse and Provenance; summaries follow each other).
    """
    protocols = _studies(study)
    _site_terminology(site_mappings)
    day = _as_of(as_of)
    if (bundle is None) == (fhir_base is None):
        raise _fail("give exactly one of --bundle FILE or --fhir-base URL")
    body = b""
    if bundle is not None:
        try:
            body = bundle.read_bytes()
        except OSError as exc:
            raise _fail(f"cannot read {bundle}: {exc.strerror}") from None
    elif not patient:
        raise _fail("--patient is required with --fhir-base")
    answers = _evaluate_all(protocols, body, fhir_base, patient, day)
    if len(answers) == 1 or format is OutputFormat.summary:
        for i, answer in enumerate(answers):
            if i:
                print()
            _print(answer.evaluation, answer.bundle, answer.protocol, format)
        return
    # the Bundle POST /$eligibility answers for these studies, byte for byte the same shape
    combined = combined_bundle(answers)
    sys.stdout.buffer.write(orjson.dumps(combined, option=orjson.OPT_INDENT_2) + b"\n")


def _evaluate_all(
    protocols: list[Protocol],
    body: bytes,
    fhir_base: str | None,
    patient: str | None,
    day: date | None,
) -> list[StudyAnswer]:
    """Every protocol's evaluation in one pass (service.portfolio_eval): the Bundle decoded
    once, or the union of the protocols' queries pulled from the FHIR server once."""
    if fhir_base is None:
        try:
            limit = get_settings().max_bundle_entries  # as the HTTP API (manual: Limits)
            return evaluate_body_portfolio(
                body, protocols, as_of=day, patient_id=patient, max_entries=limit
            )
        except InputError as exc:
            raise _fail(str(exc)) from None
    try:
        settings = get_settings().model_copy(update={"fhir_base_url": fhir_base})
        return asyncio.run(evaluate_portfolio_from_server(settings, protocols, patient or "", day))
    except FhirError as exc:
        raise _fail(exc.message, EXIT_UPSTREAM if exc.http_status >= 500 else 2) from None
    except InputError as exc:
        raise _fail(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - one line, no traceback with patient data
        raise _fail(f"internal error ({type(exc).__name__})", 1) from None


@app.command()
def demo(
    format: Annotated[OutputFormat, typer.Option("--format")] = OutputFormat.summary,
    export: Annotated[
        Path | None,
        typer.Option(
            help="Write the demo patients' Bundles, dated as of today, to this folder "
            "(to post or load them) instead of evaluating them"
        ),
    ] = None,
    site_mappings: SiteMappingsOption = None,
    study: Annotated[
        list[str] | None,
        typer.Option(
            "--study",
            help="Protocol id, ResearchStudy canonical or registry number (repeatable; "
            "default every protocol)",
        ),
    ] = None,
) -> None:
    """Evaluate the bundled demo patients (dated as of today) and print their summaries.

    Each patient is pulled through the FHIR client from the built-in demo store, the same
    path ``GET /Patient/{id}/$eligibility`` takes when no FHIR server is configured. With one
    study the output is that study's summaries; with several, a patient x trial matrix
    (``--format fhir``: one collection Bundle of result Bundles per patient).
    """
    from service.clinical.dates import today
    from service.demo import load_demo_bundles

    if export is not None:
        day = today()
        try:
            export.mkdir(parents=True, exist_ok=True)
            for patient_id, data in load_demo_bundles(day).items():
                path = export / f"{patient_id}.json"
                path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
                print(path)
        except OSError as exc:
            raise _fail(f"cannot write to {export}: {exc.strerror}") from None
        print(f"dated as of {day.isoformat()}: post them today (or pass --as-of {day})")
        return

    protocols = _studies(study)
    if len(protocols) > 1:
        _site_terminology(site_mappings)
        _demo_matrix(protocols, format)
        return
    protocol = protocols[0]
    _site_terminology(site_mappings)
    settings = get_settings().model_copy(update={"fhir_base_url": None})

    async def run_all() -> list[tuple[Evaluation, dict]]:
        return [
            await evaluate_from_server(settings, protocol, patient_id, None)
            for patient_id in load_demo_bundles()
        ]

    for evaluation, result in asyncio.run(run_all()):
        _print(evaluation, result, protocol, format)
        print()


def _demo_matrix(protocols: list[Protocol], fmt: OutputFormat) -> None:
    """Every demo patient against every study, each patient pulled once for all of them."""
    from service.demo import load_demo_bundles
    from service.demo_matrix import render_matrix

    settings = get_settings().model_copy(update={"fhir_base_url": None})

    async def run_all() -> list[tuple[str, list[StudyAnswer]]]:
        return [
            (pid, await evaluate_portfolio_from_server(settings, protocols, pid, None))
            for pid in load_demo_bundles()
        ]

    rows = asyncio.run(run_all())
    if fmt is OutputFormat.fhir:
        for _, answers in rows:
            collection = {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [{"resource": answer.bundle} for answer in answers],
            }
            sys.stdout.buffer.write(orjson.dumps(collection, option=orjson.OPT_INDENT_2) + b"\n")
        return
    render_matrix(rows, _console())


@app.command("cds-demo")
def cds_demo(
    patient: Annotated[str, typer.Argument(help="a demo patient id, e.g. demo-eligible")],
    url: Annotated[str, typer.Option(help="the running service")] = "http://127.0.0.1:8000",
    json_out: Annotated[bool, typer.Option("--json", help="print the raw CDS response")] = False,
) -> None:
    """Act as an EHR: call the service's CDS Hooks patient-view for a demo patient, print cards.

    Signs its JWT with the PUBLIC demo key, which the service trusts only in demo mode (no FHIR
    server configured); the prefetch is filled from the demo patients' data.
    """
    from service.demo import load_demo_bundles
    from service.demo_ehr import DemoEhrError, call_patient_view

    bundles = load_demo_bundles()
    if patient not in bundles:
        raise _fail(f"unknown demo patient {patient!r}; one of: {', '.join(bundles)}")
    try:
        answer = call_patient_view(url, patient, bundles)
    except DemoEhrError as exc:
        raise _fail(exc.message, EXIT_UPSTREAM) from None
    if json_out:
        sys.stdout.buffer.write(orjson.dumps(answer, option=orjson.OPT_INDENT_2) + b"\n")
        return
    _print_cards(answer.get("cards") or [])


def _print_cards(cards: list[dict]) -> None:
    from rich.console import Group
    from rich.markdown import Markdown
    from rich.panel import Panel
    from rich.text import Text

    console = _console()
    if not cards:
        console.print("no cards (the service shows none for an ineligible patient)")
        return
    for card in cards:
        body: list[Markdown | Text] = [Markdown(card.get("detail") or "")]
        for suggestion in card.get("suggestions") or []:
            body.append(Markdown(f"**suggestion:** {suggestion.get('label', '')}"))
        for link in card.get("links") or []:
            body.append(Text(f"link: {link.get('label', '')} {link.get('url', '')}"))
        title = Text(f"[{card.get('indicator', 'info')}] {card.get('summary', '')}")
        console.print(Panel(Group(*body), title=title, title_align="left"))


@app.command("load-demo")
def load_demo(
    base: Annotated[str, typer.Option(help="FHIR base URL to load into")],
    files: Annotated[
        list[Path] | None, typer.Argument(help="Bundle files (default: the demo patients)")
    ] = None,
    wait: Annotated[float, typer.Option(help="seconds to wait for the server first")] = 0,
) -> None:
    """Load the demo patients (dated as of today) or other Bundles into a FHIR server."""
    from service.demo import load_demo_bundles
    from service.fhir.loader import LoadError, load_bundles

    if files:
        try:
            bundles = [(f.name, orjson.loads(f.read_bytes())) for f in files]
        except (OSError, orjson.JSONDecodeError) as exc:
            raise _fail(f"cannot read a Bundle: {exc}") from None
    else:
        bundles = list(load_demo_bundles().items())
    token = os.environ.get("ELIGIBILITY_FHIR_TOKEN") or None  # never printed
    try:
        for line in load_bundles(base, bundles, token=token, wait_seconds=wait):
            print(line)
    except LoadError as exc:
        raise _fail(str(exc), EXIT_UPSTREAM) from None


app.command("screen")(screen)
app.command("subscribe")(subscribe)

protocol_app = typer.Typer(
    no_args_is_help=True, help="Tools for whoever writes a protocol folder (check, show)."
)
app.add_typer(protocol_app, name="protocol")


@protocol_app.command("check")
def protocol_check(
    folder: Annotated[Path, typer.Argument(help="A protocol folder (holds protocol.toml)")],
) -> None:
    """Check a protocol folder: everything the loader checks, every FHIR resource valid R4,
    every unit UCUM, every code system known; unused ValueSets are warnings."""
    from service.protocol_tools import check_folder

    if not (folder / "protocol.toml").is_file():
        raise _fail(f"{folder}: no protocol.toml in this folder")
    report = check_folder(folder)
    for line in report.errors:
        print(f"error: {line}", file=sys.stderr)
    for line in report.warnings:
        print(f"warning: {line}", file=sys.stderr)
    if not report.ok:
        raise typer.Exit(1)
    print(f"{folder}: ok ({len(report.warnings)} warnings)")


@protocol_app.command("show")
def protocol_show(
    folder: Annotated[Path, typer.Argument(help="A protocol folder (holds protocol.toml)")],
) -> None:
    """Print the criteria as a table: code, kind, rule, thresholds, windows, ValueSets."""
    from service.protocol_tools import show

    try:
        protocol = load_protocol(folder)
    except (OSError, ProtocolError) as exc:
        raise _fail(str(exc), 1) from None
    show(protocol, _console())


@app.command()
def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
    site_mappings: SiteMappingsOption = None,
) -> None:
    """Run the HTTP API (FHIR $eligibility, protocol resources, CDS Hooks).

    With several workers, each worker learns the count (so the state store defaults to SQLite
    shared by all of them, unless ELIGIBILITY_REDIS_URL is set) and Prometheus metrics are
    collected in multiprocess mode from a fresh directory.
    """
    import os
    import tempfile
    from contextlib import ExitStack

    import uvicorn

    _site_terminology(site_mappings)  # a bad ConceptMap: one error line, before starting
    if site_mappings is not None:  # every worker loads it again at start-up
        os.environ["ELIGIBILITY_SITE_MAPPINGS"] = str(site_mappings.resolve())
    with ExitStack() as stack:
        if workers > 1:
            from service.state.factory import default_sqlite_path

            os.environ["ELIGIBILITY_WORKERS"] = str(workers)
            if not os.environ.get("ELIGIBILITY_STATE_SQLITE_PATH"):
                os.environ["ELIGIBILITY_STATE_SQLITE_PATH"] = str(default_sqlite_path(port))
            if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
                metrics_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="prom-"))
                os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        uvicorn.run("service.api:app", host=host, port=port, workers=workers, log_config=None)


# The checkout `eligibility bench` looks in for benchmarks/ (an installed service has none).
BENCHMARKS_CHECKOUT = Path(__file__).resolve().parent.parent


@app.command()
def bench(
    smoke: Annotated[
        bool, typer.Option("--smoke", help="tiny sizes, few runs: exercises every case (CI)")
    ] = False,
    out: Annotated[Path, typer.Option(help="folder for the JSON and text results")] = Path(
        "bench-results"
    ),
) -> None:
    """Benchmark the engine, pull mode, HTTP API, CDS Hooks and memory against their floors.

    The benchmarks live in the checkout (``benchmarks/``), not in the installed package: this
    thin entry finds them next to ``service/`` and fails with a clear message without them.
    """
    checkout = BENCHMARKS_CHECKOUT
    if not (checkout / "benchmarks" / "__init__.py").is_file():
        raise _fail(
            "the benchmarks are not installed with the service; run them from a checkout "
            f"(no benchmarks/ folder in {checkout})"
        )
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    from benchmarks.cases import BenchConfig  # heavy: imported only when benchmarking
    from benchmarks.cli import run_bench

    run_bench(BenchConfig.quick() if smoke else BenchConfig.full(), out)


# -- site terminology tools (issue 10) -------------------------------------------------


@app.command("terminology-report")
def terminology_report(
    bundle: Annotated[
        list[Path] | None,
        typer.Option(help="A Bundle file, or an NDJSON folder / file (repeatable)"),
    ] = None,
    fhir_base: Annotated[
        str | None, typer.Option(help="Sample patients from this FHIR R4 server instead")
    ] = None,
    patients: Annotated[
        list[str] | None, typer.Option("--patient", help="Patient ids to read (repeatable)")
    ] = None,
    sample: Annotated[
        int, typer.Option(help="With --fhir-base and no --patient: this many patients")
    ] = 20,
    site_mappings: SiteMappingsOption = None,
    conceptmap_skeleton: Annotated[
        Path | None,
        typer.Option(help="Write a draft ConceptMap (R4) of the uncovered codes to this file"),
    ] = None,
    top: Annotated[int, typer.Option(help="Rows to print per table")] = 40,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
) -> None:
    """Every Observation / Condition code and unit string no ValueSet or site mapping covers,
    with counts and example displays, likely lab analytes first."""
    from service.terminology import report as rpt

    protocol = _protocol()
    _site_terminology(site_mappings)
    if (not bundle) == (fhir_base is None):
        raise _fail("give --bundle PATH (repeatable) or --fhir-base URL")
    try:
        if bundle:
            resources = rpt.read_local(bundle)
        else:
            settings = get_settings().model_copy(update={"fhir_base_url": fhir_base})
            resources = asyncio.run(rpt.read_server(settings, patients or [], sample))
    except rpt.ReportInputError as exc:
        raise _fail(str(exc)) from None
    except FhirError as exc:
        raise _fail(exc.message, EXIT_UPSTREAM if exc.http_status >= 500 else 2) from None
    result = rpt.build_report(resources, protocol)
    if json_out:
        sys.stdout.buffer.write(orjson.dumps(result.as_json(), option=orjson.OPT_INDENT_2) + b"\n")
    else:
        rpt.render(result, _console(), top)
    if conceptmap_skeleton is not None:
        try:
            rpt.write_skeleton(result, protocol, conceptmap_skeleton)
        except OSError as exc:
            raise _fail(f"cannot write {conceptmap_skeleton}: {exc.strerror}") from None
        print(f"draft ConceptMap written to {conceptmap_skeleton}", file=sys.stderr)


@app.command("terminology-import-usagi")
def terminology_import_usagi(
    csv_file: Annotated[Path, typer.Argument(help="An OHDSI Usagi mapping export (CSV)")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the ConceptMap (JSON)")],
    source_system: Annotated[
        str, typer.Option(help="The site code system the sourceCodes belong to")
    ] = "urn:site:local-lab-codes",
    url: Annotated[str | None, typer.Option(help="The ConceptMap's canonical url")] = None,
    version: Annotated[str, typer.Option(help="The ConceptMap's version")] = "1",
    concepts: Annotated[
        Path | None,
        typer.Option(help="OMOP CONCEPT.csv (Athena, tab-separated): concept id -> code"),
    ] = None,
) -> None:
    """Turn a Usagi mapping export into a ConceptMap: APPROVED rows become equivalent,
    others unmatched (see docs-terminology.md for the columns read)."""
    from service.terminology.usagi import UsagiError, usagi_to_conceptmap

    try:
        conceptmap, summary = usagi_to_conceptmap(
            csv_file, source_system=source_system, url=url, version=version, concepts=concepts
        )
        out.write_bytes(orjson.dumps(conceptmap, option=orjson.OPT_INDENT_2) + b"\n")
    except UsagiError as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:
        raise _fail(f"cannot read or write a file: {exc.strerror}") from None
    print(summary)


if __name__ == "__main__":
    app()
