"""The ``eligibility`` command: evaluate a Bundle or a patient on a FHIR server, run the demo,
serve the API, run the benchmarks."""

from __future__ import annotations

import asyncio
import sys
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console

from service.clinical.evaluation import Evaluation
from service.fhir.errors import FhirError
from service.pipeline import evaluate_body, evaluate_from_server, parse_as_of
from service.protocol import Protocol, ProtocolError, load_protocol
from service.record import InputError
from service.screening.command import screen
from service.settings import get_settings
from service.summary import render_summary

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
EXIT_BAD_INPUT = 2
EXIT_UPSTREAM = 3


class OutputFormat(StrEnum):
    fhir = "fhir"
    summary = "summary"


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> typer.Exit:
    print(f"error: {message}", file=sys.stderr)
    return typer.Exit(code)


def _protocol() -> Protocol:
    try:
        return load_protocol(get_settings().protocol_path)
    except (OSError, ProtocolError, KeyError, ValueError) as exc:
        raise _fail(f"cannot load the trial protocol: {exc}", 1) from None


def _as_of(value: str | None) -> date | None:
    try:
        return parse_as_of(value) if value else None
    except InputError as exc:
        raise _fail(str(exc)) from None


def _print(evaluation: Evaluation, bundle: dict, protocol: Protocol, fmt: OutputFormat) -> None:
    if fmt is OutputFormat.fhir:
        sys.stdout.buffer.write(orjson.dumps(bundle, option=orjson.OPT_INDENT_2) + b"\n")
    else:
        render_summary(evaluation, protocol, Console(width=160))


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
) -> None:
    """Evaluate one patient against every inclusion criterion."""
    protocol = _protocol()
    day = _as_of(as_of)
    if (bundle is None) == (fhir_base is None):
        raise _fail("give exactly one of --bundle FILE or --fhir-base URL")
    if bundle is not None:
        try:
            body = bundle.read_bytes()
        except OSError as exc:
            raise _fail(f"cannot read {bundle}: {exc.strerror}") from None
        try:
            evaluation, result = evaluate_body(body, protocol, as_of=day, patient_id=patient)
        except InputError as exc:
            raise _fail(str(exc)) from None
    else:
        if not patient:
            raise _fail("--patient is required with --fhir-base")
        try:
            settings = get_settings().model_copy(update={"fhir_base_url": fhir_base})
            evaluation, result = asyncio.run(evaluate_from_server(settings, protocol, patient, day))
        except FhirError as exc:
            raise _fail(exc.message, EXIT_UPSTREAM if exc.http_status >= 500 else 2) from None
        except InputError as exc:
            raise _fail(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - one line, no traceback with patient data
            raise _fail(f"internal error ({type(exc).__name__})", 1) from None
    _print(evaluation, result, protocol, format)


@app.command()
def demo(
    format: Annotated[OutputFormat, typer.Option("--format")] = OutputFormat.summary,
) -> None:
    """Evaluate the bundled demo patients (dated as of today) and print their summaries.

    Each patient is pulled through the FHIR client from the built-in demo store, the same
    path ``GET /Patient/{id}/$eligibility`` takes when no FHIR server is configured.
    """
    from service.demo import load_demo_bundles

    protocol = _protocol()
    settings = get_settings().model_copy(update={"fhir_base_url": None})

    async def run_all() -> list[tuple[Evaluation, dict]]:
        return [
            await evaluate_from_server(settings, protocol, patient_id, None)
            for patient_id in load_demo_bundles()
        ]

    for evaluation, result in asyncio.run(run_all()):
        _print(evaluation, result, protocol, format)
        print()


@app.command("load-demo")
def load_demo(
    base: Annotated[str, typer.Option(help="FHIR base URL to load into")],
    files: Annotated[
        list[Path] | None, typer.Argument(help="Bundle files (default: the demo patients)")
    ] = None,
    wait: Annotated[float, typer.Option(help="seconds to wait for the server first")] = 0,
) -> None:
    """Load the demo patients (dated as of today) or other Bundles into a FHIR server."""
    import os

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


@app.command()
def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
) -> None:
    """Run the HTTP API (FHIR $eligibility, protocol resources, CDS Hooks)."""
    import uvicorn

    uvicorn.run("service.api:app", host=host, port=port, workers=workers, log_config=None)


@app.command()
def bench(
    smoke: Annotated[
        bool, typer.Option("--smoke", help="tiny sizes, few runs: exercises every case (CI)")
    ] = False,
    out: Annotated[Path, typer.Option(help="folder for the JSON and text results")] = Path(
        "bench-results"
    ),
) -> None:
    """Benchmark the engine, pull mode, HTTP API, CDS Hooks and memory against their floors."""
    from service.bench.cases import BenchConfig  # heavy: imported only when benchmarking
    from service.bench.cli import run_bench

    run_bench(BenchConfig.quick() if smoke else BenchConfig.full(), out)


if __name__ == "__main__":
    app()
