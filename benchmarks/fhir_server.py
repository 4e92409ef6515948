"""The service's demo FHIR store (service.fhir.demo_store) over loopback HTTP, for pull mode.

Every request is held back a fixed latency and then answered by ``DemoStore.handle``: the
same search code the service uses when no FHIR base is set (reads, GET and POST searches,
``link[next]`` paging, a search's matches cached across its pages), so the benchmark measures
our fan-out, paging and evaluation rather than a database.

Run it as ``python -m benchmarks.fhir_server --data BUNDLE.json --latency-ms 50``: it binds
127.0.0.1 on a free port and prints ``PORT <n>`` on stdout once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.fhir.demo_store import DemoStore

MAX_PAGE_SIZE = 500  # above the client's page size (200), so _count is honoured as asked


def store_for(bundles: list[dict], base_url: str, max_page_size: int = MAX_PAGE_SIZE) -> DemoStore:
    """A store over collection Bundles of one patient each, keyed by their Patient's id."""
    by_patient = {}
    for bundle in bundles:
        resources = (e["resource"] for e in bundle["entry"])
        patient = next(r for r in resources if r["resourceType"] == "Patient")
        by_patient[patient["id"]] = bundle
    return DemoStore(by_patient, base_url=base_url, max_page_size=max_page_size)


def create_fhir_app(store: DemoStore, latency_ms: float) -> Starlette:
    """The store over HTTP under its base path, each answer held back ``latency_ms``."""
    delay = latency_ms / 1000

    async def forward(request: Request) -> Response:
        await asyncio.sleep(delay)
        inner = httpx.Request(request.method, str(request.url), content=await request.body())
        answer = store.handle(inner)
        return Response(
            answer.content,
            status_code=answer.status_code,
            media_type=answer.headers.get("content-type"),
        )

    base_path = httpx.URL(store.base_url).path.rstrip("/")
    return Starlette(routes=[Route(base_path + "/{path:path}", forward, methods=["GET", "POST"])])


def listening_socket() -> socket.socket:
    """A loopback socket on a free port, already listening (early clients queue, not fail)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    return sock


def serve(app: Any, sock: socket.socket, **options: Any) -> None:
    """Announce the port on stdout, then serve until terminated."""
    import uvicorn

    config = uvicorn.Config(app, **(options or {"log_level": "warning", "access_log": False}))
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    uvicorn.Server(config).run(sockets=[sock])  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, action="append", required=True, help="a Bundle file (repeatable)"
    )
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--max-page-size", type=int, default=MAX_PAGE_SIZE)
    args = parser.parse_args(argv)
    sock = listening_socket()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}/fhir"
    bundles = [orjson.loads(path.read_bytes()) for path in args.data]
    store = store_for(bundles, base, args.max_page_size)
    serve(create_fhir_app(store, args.latency_ms), sock)


if __name__ == "__main__":
    main(sys.argv[1:])
