"""Demo mode: a writable in-memory layer over the read-only demo store.

Attestations (QuestionnaireResponse) and enrolments (ResearchSubject) written in demo mode
are kept here, per process, and searched together with the demo patients' own data. There is
one layer per process (``shared_demo_layer``): the web app writes to it and pull mode
(``GET /Patient/{id}/$eligibility`` with no FHIR base) reads from it, so the two agree. The layer
speaks the two writes the app uses, as a FHIR server would: conditional create
(``If-None-Exist``) and conditional update (``PUT [type]?identifier=...``).
"""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, date, datetime
from functools import cache
from typing import Any
from urllib.parse import parse_qsl

import httpx
import orjson

from service.fhir import demo_store
from service.fhir.demo_store import DEMO_BASE_URL, DemoStore

FHIR_JSON = "application/fhir+json"
MAX_WRITES = 2000  # demo mode has no login: bound what anyone can add
_WRITABLE = {"QuestionnaireResponse": "subject", "ResearchSubject": "individual"}


def _identifier_matches(resource: dict[str, Any], token: str) -> bool:
    system, sep, value = token.partition("|")
    if not sep:
        system, value = "", token
    found = resource.get("identifier")
    for ident in found if isinstance(found, list) else [found]:
        if not isinstance(ident, dict) or ident.get("value") != value:
            continue
        if not system or ident.get("system") == system:
            return True
    return False


class DemoLayer:
    """The demo store plus what the app wrote in this process."""

    def __init__(self, base_url: str = DEMO_BASE_URL) -> None:
        self.base_url = base_url.rstrip("/")
        self._base_path = httpx.URL(self.base_url).path.rstrip("/") + "/"
        self._written: dict[str, list[dict[str, Any]]] = {}  # patient id -> resources
        self._count = 0
        self._store: DemoStore | None = None
        self._built_on: date | None = None
        self._lock = threading.RLock()

    def reset(self) -> None:
        """Forget everything written (tests; a restart does the same)."""
        with self._lock:
            self._written.clear()
            self._count = 0
            self._store = None

    def patients(self) -> list[str]:
        return sorted(_bundles())

    def written(self, rtype: str) -> list[dict[str, Any]]:
        with self._lock:
            return [r for rs in self._written.values() for r in rs if r["resourceType"] == rtype]

    # -- the store ---------------------------------------------------------------------------
    def _current(self) -> DemoStore:
        with self._lock:
            if self._store is None or self._built_on != date.today():
                bundles = {}
                for pid, bundle in _bundles().items():
                    extra = [{"resource": r} for r in self._written.get(pid, [])]
                    bundles[pid] = {**bundle, "entry": [*(bundle.get("entry") or []), *extra]}
                self._store = DemoStore(bundles, base_url=self.base_url)
                self._built_on = date.today()
            return self._store

    # -- HTTP --------------------------------------------------------------------------------
    def handle(self, request: httpx.Request) -> httpx.Response:
        parts = [p for p in request.url.path[len(self._base_path) :].split("/") if p]
        if request.method == "POST" and len(parts) == 1 and parts[0] in _WRITABLE:
            return self._create(parts[0], request)
        if request.method == "PUT" and len(parts) == 1 and parts[0] in _WRITABLE:
            return self._conditional_update(parts[0], request)
        if request.method == "GET" and parts == ["ResearchSubject"]:
            return self._search_written("ResearchSubject", request)
        return self._current().handle(request)

    def _owner(self, rtype: str, resource: Any) -> str | None:
        """The demo patient a written resource belongs to, or None (refused)."""
        if not isinstance(resource, dict) or resource.get("resourceType") != rtype:
            return None
        ref = (resource.get(_WRITABLE[rtype]) or {}).get("reference")
        if not isinstance(ref, str) or not ref.startswith("Patient/"):
            return None
        pid = ref.removeprefix("Patient/")
        return pid if pid in _bundles() else None

    def _store_new(self, pid: str, resource: dict[str, Any]) -> dict[str, Any]:
        resource = {**resource, "id": uuid.uuid4().hex}
        resource["meta"] = {"versionId": "1", "lastUpdated": _now()}
        self._written.setdefault(pid, []).append(resource)
        self._count += 1
        self._store = None  # rebuilt with the new resource on the next read
        return resource

    def _create(self, rtype: str, request: httpx.Request) -> httpx.Response:
        resource = _body(request)
        pid = self._owner(rtype, resource)
        if pid is None:
            return _outcome(422, "processing", f"{rtype} must reference a demo Patient")
        condition = request.headers.get("if-none-exist", "")
        token = dict(parse_qsl(condition)).get("identifier") if condition else None
        with self._lock:
            if token:
                found = [r for r in self._written.get(pid, []) if _identifier_matches(r, token)]
                if len(found) > 1:
                    return _outcome(412, "duplicate", "more than one match")
                if found:
                    return _resource(200, found[0])
            if self._count >= MAX_WRITES:
                return _outcome(507, "too-costly", "demo store is full; restart the service")
            return _resource(201, self._store_new(pid, resource))

    def _conditional_update(self, rtype: str, request: httpx.Request) -> httpx.Response:
        token = dict(request.url.params.multi_items()).get("identifier")
        resource = _body(request)
        pid = self._owner(rtype, resource)
        if not token or pid is None:
            return _outcome(422, "processing", f"{rtype} update needs an identifier and patient")
        with self._lock:
            mine = self._written.get(pid, [])
            found = [r for r in mine if _identifier_matches(r, token)]
            if len(found) > 1:
                return _outcome(412, "duplicate", "more than one match")
            if found:
                old = found[0]
                version = str(int(old["meta"]["versionId"]) + 1)
                new = {**resource, "id": old["id"]}
                new["meta"] = {"versionId": version, "lastUpdated": _now()}
                mine[mine.index(old)] = new
                self._store = None
                return _resource(200, new)
            if self._count >= MAX_WRITES:
                return _outcome(507, "too-costly", "demo store is full; restart the service")
            return _resource(201, self._store_new(pid, resource))

    def _search_written(self, rtype: str, request: httpx.Request) -> httpx.Response:
        params = dict(request.url.params.multi_items())
        token = params.get("identifier")
        found = [r for r in self.written(rtype) if not token or _identifier_matches(r, token)]
        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(found),
            "entry": [
                {"fullUrl": f"{self.base_url}/{rtype}/{r['id']}", "resource": r} for r in found
            ],
        }
        return _resource(200, bundle)


def _bundles() -> dict[str, dict]:
    return demo_store._load_demo_bundles()  # the demo store's own loader (tests replace it)


@cache
def shared_demo_layer() -> DemoLayer:
    """This process's demo data: what every interface reads when no FHIR base is set."""
    return DemoLayer()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _body(request: httpx.Request) -> Any:
    try:
        return orjson.loads(request.content)
    except orjson.JSONDecodeError:
        return None


def _resource(status: int, body: dict[str, Any]) -> httpx.Response:
    headers = {"content-type": FHIR_JSON}
    if body.get("resourceType") not in (None, "Bundle", "OperationOutcome") and body.get("id"):
        version = body.get("meta", {}).get("versionId", "1")
        headers["location"] = f"{body['resourceType']}/{body['id']}/_history/{version}"
    return httpx.Response(status, content=orjson.dumps(body), headers=headers)


def _outcome(status: int, code: str, text: str) -> httpx.Response:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": text}],
    }
    return httpx.Response(status, content=orjson.dumps(body), headers={"content-type": FHIR_JSON})
