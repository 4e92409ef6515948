"""A small FHIR server on loopback for the screening tests: the demo store's search, plus
failure injection, a bearer-token check, conditional update (ResearchSubject, Group) and a
Bulk Data ``$export`` that answers with the store's data as NDJSON."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl

import httpx
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from benchmarks.fhir_server import listening_socket
from service.fhir.demo_store import DemoStore

FHIR_JSON = "application/fhir+json"


class LoopbackFhir:
    def __init__(
        self,
        bundles: dict[str, dict],
        *,
        fail_patients: set[str] = frozenset(),  # type: ignore[assignment]
        token: str | None = None,
        extra: list[dict] = (),  # type: ignore[assignment]
        bulk_polls: int = 1,
        throttle_once: set[str] = frozenset(),  # type: ignore[assignment]
    ) -> None:
        self.sock = listening_socket()
        self.base = f"http://127.0.0.1:{self.sock.getsockname()[1]}/fhir"
        holder = {"zz-extra": {"entry": [{"resource": r} for r in extra]}}
        self.bundles = bundles
        self.store = DemoStore({**bundles, **holder}, base_url=self.base, max_page_size=50)
        self.fail_patients = set(fail_patients)
        self.token = token
        self.requests: list[tuple[str, str, list[tuple[str, str]]]] = []
        self.written: dict[tuple[str, str], dict] = {}
        self.creates = 0
        self.bulk_polls = bulk_polls
        self._polls = 0
        self.export_params: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.throttle = set(throttle_once)
        self.throttled = 0

    # -- HTTP ---------------------------------------------------------------------------
    async def handle(self, request: Request) -> Response:
        path = request.url.path.removeprefix("/fhir/")
        params = list(request.query_params.multi_items())
        body = await request.body()
        if request.method == "POST" and path.endswith("/_search"):
            params += parse_qsl(body.decode(), keep_blank_values=True)
        with self.lock:
            self.requests.append((request.method, path, params))
        if self.token and request.headers.get("authorization") != f"Bearer {self.token}":
            return _outcome(401, "login", "no or wrong token")
        named = {v.rsplit("/", 1)[-1] for k, v in params if k in ("patient", "subject")}
        parts = path.split("/")
        if parts[0] == "Patient" and len(parts) == 2:
            named.add(parts[1])
        with self.lock:
            hit = named & self.throttle
            self.throttle -= hit
            self.throttled += bool(hit)
        if hit:
            return Response(status_code=429, headers={"Retry-After": "1"})
        if named & self.fail_patients:
            return _outcome(500, "exception", "injected failure")
        if path.endswith("$export"):
            return self._kick_off(request, params)
        if path.startswith("bulk-status/"):
            return self._status()
        if path.startswith("bulk-files/"):
            return self._file(path.removeprefix("bulk-files/"))
        if request.method == "PUT":
            return self._put(parts, params, orjson.loads(body))
        if request.method == "GET" and parts[0] in ("ResearchSubject",) and len(parts) == 1:
            return self._search_written(parts[0], params)
        if request.method == "GET" and len(parts) == 2 and (parts[0], parts[1]) in self.written:
            return _json(self.written[(parts[0], parts[1])])
        inner = httpx.Request(request.method, str(request.url), content=body)
        answer = self.store.handle(inner)
        return Response(answer.content, answer.status_code, media_type=FHIR_JSON)

    # -- conditional update --------------------------------------------------------------
    def _matching(self, rtype: str, params: list[tuple[str, str]]) -> list[dict]:
        wanted = dict(params).get("identifier", "")
        system, _, value = wanted.rpartition("|")
        return [
            r
            for (t, _), r in self.written.items()
            if t == rtype
            and any(
                i.get("system") == system and i.get("value") == value
                for i in r.get("identifier", [])
            )
        ]

    def _search_written(self, rtype: str, params: list[tuple[str, str]]) -> Response:
        found = self._matching(rtype, params)
        return _json(
            {
                "resourceType": "Bundle",
                "type": "searchset",
                "total": len(found),
                "entry": [{"resource": r, "search": {"mode": "match"}} for r in found],
            }
        )

    def _put(self, parts: list[str], params: list[tuple[str, str]], resource: dict) -> Response:
        rtype = parts[0]
        if len(parts) == 2:
            rid = parts[1]
            existing = (rtype, rid) in self.written
        else:
            found = self._matching(rtype, params)
            if len(found) > 1:
                return _outcome(412, "multiple-matches", "several matches")
            existing = bool(found)
            rid = found[0]["id"] if found else f"{rtype.lower()}-{len(self.written) + 1}"
        self.creates += 0 if existing else 1
        stored = {**resource, "id": rid}
        self.written[(rtype, rid)] = stored
        return _json(stored, 200 if existing else 201)

    # -- bulk ----------------------------------------------------------------------------
    def _kick_off(self, request: Request, params: list[tuple[str, str]]) -> Response:
        if request.headers.get("prefer") != "respond-async":
            return _outcome(400, "invalid", "Prefer: respond-async is required")
        self.export_params = params
        self._polls = 0
        return Response(status_code=202, headers={"Content-Location": f"{self.base}/bulk-status/1"})

    def _status(self) -> Response:
        self._polls += 1
        if self._polls <= self.bulk_polls:
            return Response(status_code=202, headers={"Retry-After": "1", "X-Progress": "busy"})
        types = dict(self.export_params).get("_type", "").split(",")
        output = [{"type": t, "url": f"{self.base}/bulk-files/{t}.ndjson"} for t in types if t]
        manifest = {
            "transactionTime": "2026-11-20T00:00:00Z",
            "request": f"{self.base}/Patient/$export",
            "requiresAccessToken": bool(self.token),
            "output": output,
            "error": [],
        }
        return Response(orjson.dumps(manifest), 200, media_type="application/json")

    def _file(self, name: str) -> Response:
        rtype = name.removesuffix(".ndjson")
        lines = [
            orjson.dumps(e["resource"])
            for bundle in self.bundles.values()
            for e in bundle["entry"]
            if e["resource"]["resourceType"] == rtype
        ]
        return Response(b"\n".join(lines) + b"\n", 200, media_type="application/fhir+ndjson")

    def asked_about(self, pid: str) -> bool:
        """Did any request name this patient (read or patient= search)?"""
        for _, path, params in self.requests:
            if path == f"Patient/{pid}":
                return True
            if any(k in ("patient", "subject") and v.endswith(pid) for k, v in params):
                return True
        return False


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status, media_type=FHIR_JSON)


def _outcome(status: int, code: str, text: str) -> Response:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": text}],
    }
    return _json(body, status)


@contextmanager
def serving(fhir: LoopbackFhir) -> Iterator[LoopbackFhir]:
    methods = ["GET", "POST", "PUT", "DELETE"]
    app = Starlette(routes=[Route("/fhir/{path:path}", fhir.handle, methods=methods)])
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [fhir.sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield fhir
    finally:
        server.should_exit = True
        thread.join(10)
