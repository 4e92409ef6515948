"""A small in-memory FHIR server (httpx.MockTransport) for the Subscription unit tests:
create / read / update / delete, ``_tag`` and ``_lastUpdated=gt`` searches, paging."""

from __future__ import annotations

import asyncio
import itertools
from datetime import datetime
from types import SimpleNamespace
from typing import Any

import httpx
import orjson

from service.subscriptions.server import FhirServer

BASE = "http://fhir.test/fhir"


class FakeFhir:
    def __init__(self, page_size: int = 3) -> None:
        self.resources: dict[tuple[str, str], dict[str, Any]] = {}
        self.writes: list[tuple[str, str]] = []  # (method, path) of every write
        self.page_size = page_size
        self._ids = itertools.count(1)
        self.delay = 0.0  # seconds per answer (a server that takes its time)
        self.history: dict[tuple[str, str], list[dict[str, Any]]] = {}  # newest first

    def server(self) -> FhirServer:
        async def answer(request: httpx.Request) -> httpx.Response:
            await asyncio.sleep(self.delay)
            return self.handle(request)

        return FhirServer(BASE, httpx.AsyncClient(transport=httpx.MockTransport(answer)))

    def put(self, resource: dict[str, Any], version: str = "1", updated: str | None = None):
        meta = {"versionId": version, **({"lastUpdated": updated} if updated else {})}
        stored = {**resource, "meta": {**resource.get("meta", {}), **meta}}
        key = (resource["resourceType"], resource["id"])
        self.resources[key] = stored
        self.history.setdefault(key, []).insert(0, {"resource": stored})
        return stored

    def of_type(self, rtype: str) -> list[dict[str, Any]]:
        return [r for (t, _), r in self.resources.items() if t == rtype]

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/fhir/").strip("/")
        parts = path.split("/")
        if request.method == "GET" and len(parts) == 1:
            return self._search(parts[0], request.url.params)
        if request.method == "GET" and len(parts) == 3 and parts[2] == "_history":
            versions = self.history.get((parts[0], parts[1]))
            if versions is None:
                return httpx.Response(404)
            bundle = {"resourceType": "Bundle", "type": "history", "entry": versions}
            return httpx.Response(200, json=bundle)
        if request.method == "POST" and len(parts) == 1:
            self.writes.append(("POST", path))
            body = orjson.loads(request.content)
            body["id"] = str(next(self._ids))
            return httpx.Response(201, json=self.put(body))
        if request.method == "PUT" and len(parts) == 2:
            self.writes.append(("PUT", path))
            return httpx.Response(200, json=self.put(orjson.loads(request.content)))
        if request.method == "DELETE" and len(parts) == 2:
            self.writes.append(("DELETE", path))
            if self.resources.pop((parts[0], parts[1]), None) is not None:
                versions = self.history[(parts[0], parts[1])]
                gone = {"method": "DELETE", "url": path}
                etag = f'W/"{len(versions) + 1}"'
                versions.insert(0, {"request": gone, "response": {"status": "204", "etag": etag}})
            return httpx.Response(204)
        return httpx.Response(400)

    def _search(self, rtype: str, params: httpx.QueryParams) -> httpx.Response:
        found = self.of_type(rtype)
        tag = params.get("_tag")
        if tag:
            system, _, code = tag.partition("|")
            found = [
                r
                for r in found
                if any(
                    t.get("system") == system and t.get("code") == code
                    for t in r["meta"].get("tag", [])
                )
            ]
        since = params.get("_lastUpdated")
        if since:
            after = datetime.fromisoformat(since.removeprefix("gt"))
            found = [
                r
                for r in found
                if datetime.fromisoformat(r["meta"]["lastUpdated"].replace("Z", "+00:00")) > after
            ]
            found.sort(key=lambda r: r["meta"]["lastUpdated"])
        offset = int(params.get("_offset", "0"))
        page = found[offset : offset + self.page_size]
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": r, "search": {"mode": "match"}} for r in page],
            "link": [],
        }
        if offset + self.page_size < len(found):
            nxt = httpx.URL(
                f"{BASE}/{rtype}", params={**dict(params), "_offset": offset + self.page_size}
            )
            bundle["link"].append({"relation": "next", "url": str(nxt)})
        return httpx.Response(200, json=bundle)


def fake_evaluation(pid: str, status: str, failed: tuple[str, ...] = ()) -> Any:
    """What ``summarise`` reads of an Evaluation (the clinical engine is tested elsewhere)."""
    from datetime import UTC, date

    from service.clinical.model import Outcome

    results = [SimpleNamespace(code=c, outcome=Outcome.NOT_MET) for c in failed]
    return SimpleNamespace(
        patient_id=pid,
        status=status,
        evaluated_at=datetime.now(UTC),
        as_of=date.today(),
        results=results,
    )
