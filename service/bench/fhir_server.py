"""A static, read-only FHIR server over synthetic patients, for the pull-mode benchmark.

It answers what our client asks (``Patient/{id}`` read; type searches with ``patient``,
``code`` tokens, ``date`` prefixes, ``questionnaire``, ``_sort=(-)date``, ``_count``, real
``link[next]`` paging, and POST ``{type}/_search``) after a fixed added latency per request,
so the benchmark measures our fan-out, paging and evaluation rather than a database.
Results of a search are indexed once and cached, so later pages cost almost nothing here.

Run it as ``python -m service.bench.fhir_server --data BUNDLE.json --latency-ms 50``: it binds
127.0.0.1 on a free port and prints ``PORT <n>`` on stdout once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

FHIR_JSON = "application/fhir+json"
MAX_COUNT = 500
Resource = dict[str, Any]
Params = list[tuple[str, str]]

# The element that names the patient, per resource type.
_PATIENT_ELEMENT = {
    "Observation": "subject",
    "Condition": "subject",
    "Procedure": "subject",
    "Consent": "patient",
    "QuestionnaireResponse": "subject",
}
_PAGING = {"_count", "_offset"}
_ALLOWED: dict[str, set[str]] = {
    "Observation": {"patient", "subject", "code", "date", "_sort"},
    "Condition": {"patient", "subject"},
    "Procedure": {"patient", "subject"},
    "Consent": {"patient"},
    "QuestionnaireResponse": {"patient", "subject", "questionnaire"},
}


class SearchError(ValueError):
    """A search this server does not support (answered with HTTP 400, as HAPI would)."""


def _split_unescaped(value: str, sep: str, *, unescape: bool = True) -> list[str]:
    """Split on ``sep`` where it is not escaped with a backslash (FHIR search escaping)."""
    parts, buf, escaped = [], [], False
    for ch in value:
        if escaped:
            buf.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
            if not unescape:
                buf.append(ch)
        elif ch == sep:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    parts.append("".join(buf))
    return parts


def _instant(value: str) -> datetime:
    """A FHIR date or dateTime as an aware datetime (a date means its first instant, UTC)."""
    if len(value) == 10:
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _date_test(search: str):
    """A predicate over a resource instant for ``ge2025-01-01`` and friends (day precision)."""
    prefix, value = (search[:2], search[2:]) if search[:2].isalpha() else ("eq", search)
    try:
        lo = _instant(value)
    except ValueError:
        raise SearchError(f"bad date {search!r}") from None
    hi = lo + (timedelta(days=1) if len(value) == 10 else timedelta(microseconds=1))
    tests = {
        "ge": lambda t: t >= lo,
        "gt": lambda t: t >= hi,
        "le": lambda t: t < hi,
        "lt": lambda t: t < lo,
        "eq": lambda t: lo <= t < hi,
    }
    if prefix not in tests:
        raise SearchError(f"unsupported date prefix {prefix!r}")
    return tests[prefix]


class StaticFhirStore:
    """Resources of any number of patients, indexed for the searches our client makes."""

    def __init__(self, resources: list[Resource], base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._by_id: dict[tuple[str, str], Resource] = {}
        # (type, patient id) -> resources; Observations also by (patient, system, code)
        self._by_patient: defaultdict[tuple[str, str], list[Resource]] = defaultdict(list)
        self._obs_by_code: defaultdict[tuple[str, str, str], list[Resource]] = defaultdict(list)
        self._when: dict[int, datetime] = {}
        self._cache: dict[tuple[str, tuple[tuple[str, str], ...]], list[Resource]] = {}
        for resource in resources:
            rtype, rid = resource["resourceType"], resource["id"]
            self._by_id[(rtype, rid)] = resource
            element = _PATIENT_ELEMENT.get(rtype)
            if element is None:
                continue
            pid = resource[element]["reference"].removeprefix("Patient/")
            self._by_patient[(rtype, pid)].append(resource)
            if rtype == "Observation":
                self._when[id(resource)] = _instant(resource["effectiveDateTime"])
                for coding in resource["code"]["coding"]:
                    self._obs_by_code[(pid, coding["system"], coding["code"])].append(resource)

    def read(self, rtype: str, rid: str) -> Resource | None:
        return self._by_id.get((rtype, rid))

    def search(self, rtype: str, params: Params) -> list[Resource]:
        """Every match of a search, in the requested order (cached per distinct search)."""
        key = (rtype, tuple(sorted(p for p in params if p[0] not in _PAGING)))
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = self._search(rtype, [p for p in key[1]])
        return found

    def _search(self, rtype: str, params: Params) -> list[Resource]:
        allowed = _ALLOWED.get(rtype)
        if allowed is None:
            raise SearchError(f"search on {rtype} is not supported")
        unknown = sorted({name for name, _ in params} - allowed)
        if unknown:
            raise SearchError(f"unknown search parameter {unknown[0]}")
        values = dict(params)
        pid = (values.get("patient") or values.get("subject") or "").removeprefix("Patient/")
        if not pid:
            raise SearchError("a patient is required")
        if rtype == "Observation" and "code" in values:
            seen: set[int] = set()
            found = []
            for alternative in _split_unescaped(values["code"], ",", unescape=False):
                system, code = (_split_unescaped(alternative, "|") + [""])[:2]
                for obs in self._obs_by_code.get((pid, system, code), ()):
                    if id(obs) not in seen:
                        seen.add(id(obs))
                        found.append(obs)
        else:
            found = list(self._by_patient.get((rtype, pid), ()))
        for name, value in params:
            if name == "date":
                test = _date_test(value)
                found = [r for r in found if test(self._when[id(r)])]
            elif name == "questionnaire":
                found = [r for r in found if r.get("questionnaire", "").split("|")[0] == value]
        if "_sort" in values:
            sort = values["_sort"]
            if sort.lstrip("-") != "date":
                raise SearchError(f"cannot sort on {sort}")
            found.sort(key=lambda r: self._when[id(r)], reverse=sort.startswith("-"))
        return found

    def page(self, rtype: str, params: Params) -> Resource:
        """One searchset page with ``self`` and (when more remain) ``next`` links."""
        count, offset = 20, 0
        for name, value in params:
            if name == "_count" and value.isdigit():
                count = min(int(value), MAX_COUNT)
            elif name == "_offset" and value.isdigit():
                offset = int(value)
        matches = self.search(rtype, params)
        keep = [p for p in params if p[0] not in _PAGING]
        links = [{"relation": "self", "url": self._url(rtype, keep, count, offset)}]
        if count and offset + count < len(matches):
            links.append({"relation": "next", "url": self._url(rtype, keep, count, offset + count)})
        return {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(matches),
            "link": links,
            "entry": [
                {
                    "fullUrl": f"{self.base_url}/{rtype}/{r['id']}",
                    "resource": r,
                    "search": {"mode": "match"},
                }
                for r in matches[offset : offset + count]
            ],
        }

    def _url(self, rtype: str, params: Params, count: int, offset: int) -> str:
        return f"{self.base_url}/{rtype}?{urlencode([*params, ('_count', count), ('_offset', offset)])}"  # noqa: E501


def _json(body: Resource, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type=FHIR_JSON)


def _outcome(status: int, code: str, text: str) -> Response:
    issue = {"severity": "error", "code": code, "diagnostics": text}
    return _json({"resourceType": "OperationOutcome", "issue": [issue]}, status)


def create_fhir_app(store: StaticFhirStore, latency_ms: float) -> Starlette:
    """The store over HTTP, under ``/fhir``, each answer held back ``latency_ms``."""
    delay = latency_ms / 1000

    def answer_search(rtype: str, params: Params) -> Response:
        try:
            return _json(store.page(rtype, params))
        except SearchError as exc:
            return _outcome(400, "processing", str(exc))

    async def read(request: Request) -> Response:
        await asyncio.sleep(delay)
        found = store.read(request.path_params["rtype"], request.path_params["rid"])
        return _json(found) if found else _outcome(404, "not-found", "no such resource")

    async def search(request: Request) -> Response:
        await asyncio.sleep(delay)
        return answer_search(request.path_params["rtype"], list(request.query_params.multi_items()))

    async def post_search(request: Request) -> Response:
        await asyncio.sleep(delay)
        form = parse_qsl((await request.body()).decode(), keep_blank_values=True)
        params = list(request.query_params.multi_items()) + form
        return answer_search(request.path_params["rtype"], params)

    async def metadata(request: Request) -> Response:
        capability = {"resourceType": "CapabilityStatement", "status": "active", "kind": "instance"}
        return _json(capability)

    return Starlette(
        routes=[
            Route("/fhir/metadata", metadata),
            Route("/fhir/{rtype}/_search", post_search, methods=["POST"]),
            Route("/fhir/{rtype}/{rid}", read),
            Route("/fhir/{rtype}", search),
        ]
    )


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
    args = parser.parse_args(argv)
    sock = listening_socket()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}/fhir"
    bundles = [orjson.loads(path.read_bytes()) for path in args.data]
    resources = [entry["resource"] for bundle in bundles for entry in bundle["entry"]]
    store = StaticFhirStore(resources, base)
    serve(create_fhir_app(store, args.latency_ms), sock)


if __name__ == "__main__":
    main(sys.argv[1:])
