"""The service's own FastAPI app for the HTTP and CDS benchmarks, plus a bare floor route.

``POST /bench/bare`` exists only in this app instance: it decodes the JSON body and returns
a fixed small document, so the benchmark can compare $eligibility with the cost of the same
server, middleware and body transfer doing no evaluation at all.

Run it as ``python -m benchmarks.app_server``: uvicorn on 127.0.0.1, free port, printed as
``PORT <n>``; CDS Hooks client authentication is off (benchmark only).
"""

from __future__ import annotations

import os
from pathlib import Path

import orjson
from fastapi import FastAPI, Request, Response

from fhir_mappings import DEFAULT_PROTOCOL
from service.settings import Settings

BARE_PATH = "/bench/bare"
_BARE_ANSWER = orjson.dumps({"resourceType": "OperationOutcome", "issue": []})


def bench_settings() -> Settings:
    """Service defaults (no .env), CDS client authentication off; no rate limit (it would
    refuse the load) and audit events written to the null device (the parent reads only the
    first line of stdout, so a full pipe would stall the server). The seed trial alone: the
    HTTP and CDS targets were set for it, and ``$eligibility`` with no ``study`` evaluates
    every loaded protocol (the several-study cases load theirs explicitly)."""
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        cds_auth_enabled=False,
        rate_limit_enabled=False,
        audit_log_path=Path(os.devnull),
        protocol_dirs=[DEFAULT_PROTOCOL.parent],
    )


def build_app(settings: Settings | None = None) -> FastAPI:
    from service.api import create_app

    app = create_app(settings or bench_settings())

    async def bare(request: Request) -> Response:
        orjson.loads(await request.body())
        return Response(_BARE_ANSWER, media_type="application/json")

    app.add_api_route(BARE_PATH, bare, methods=["POST"], include_in_schema=False)
    return app


def main() -> None:
    from benchmarks.fhir_server import listening_socket, serve

    sock = listening_socket()
    serve(build_app(), sock, log_config=None)  # as ``eligibility serve`` runs it


if __name__ == "__main__":
    main()
