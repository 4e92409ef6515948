"""Optional ``ConceptMap/$translate`` client for a FHIR terminology server (e.g. HAPI).

Used before evaluation, never inside a rule: the pipeline collects the codes neither the
protocol nor the site folder knows, translates them in parallel here, and hands the record
builder a mapping table. Answers (matches and "no match") are cached for
``cache_seconds``; a failed call (timeout, HTTP error, unreadable answer) is not cached and
makes the affected criteria undetermined, never met. The equivalence rule is the folder's.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

import httpx

from service.errors import UpstreamError
from service.terminology.conceptmaps import Code, Mapping, MapSource

log = logging.getLogger("service.terminology")


class TranslateError(UpstreamError):
    """One $translate call failed; args[0] says how, without URLs or codes (for the note)."""


class Translator:
    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 3.0,
        cache_seconds: float = 3600.0,
        concurrency: int = 8,
        conceptmap_url: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self.concurrency = max(1, concurrency)
        self.conceptmap_url = conceptmap_url
        self._transport = transport
        self._cache: dict[Code, tuple[float, tuple[Mapping, ...]]] = {}
        self._lock = threading.Lock()

    def cached(self, code: Code) -> tuple[Mapping, ...] | None:
        with self._lock:
            hit = self._cache.get(code)
            if hit is None:
                return None
            if hit[0] < time.monotonic():
                del self._cache[code]
                return None
            return hit[1]

    async def translate(
        self, codes: Iterable[Code]
    ) -> tuple[dict[Code, tuple[Mapping, ...]], dict[Code, str]]:
        """(mappings by code, failures by code) for ``codes``, in parallel, cache first."""
        found: dict[Code, tuple[Mapping, ...]] = {}
        missing: list[Code] = []
        for code in dict.fromkeys(codes):
            hit = self.cached(code)
            if hit is None:
                missing.append(code)
            else:
                found[code] = hit
        failed: dict[Code, str] = {}
        if not missing:
            return found, failed
        limit = asyncio.Semaphore(self.concurrency)
        async with httpx.AsyncClient(
            timeout=httpx.Timeout(self.timeout), transport=self._transport
        ) as client:

            async def one(code: Code) -> None:
                async with limit:
                    try:
                        mappings = await asyncio.wait_for(
                            self._translate_one(client, code), self.timeout
                        )
                    except TranslateError as exc:
                        failed[code] = exc.args[0]
                        return
                    except (TimeoutError, httpx.TimeoutException):
                        failed[code] = "the terminology server did not answer in time"
                        return
                    except httpx.HTTPError:
                        failed[code] = "the terminology server could not be reached"
                        return
                found[code] = mappings
                with self._lock:
                    self._cache[code] = (time.monotonic() + self.cache_seconds, mappings)

            await asyncio.gather(*(one(code) for code in missing))
        if failed:
            log.warning("terminology $translate failed", extra={"failed": len(failed)})
        return found, failed

    def translate_sync(
        self, codes: Iterable[Code]
    ) -> tuple[dict[Code, tuple[Mapping, ...]], dict[Code, str]]:
        """``translate`` from synchronous code (bundle mode); runs its own event loop, in a
        helper thread when the caller is already inside one."""
        codes = list(codes)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.translate(codes))
        out: list[Any] = []
        worker = threading.Thread(target=lambda: out.append(asyncio.run(self.translate(codes))))
        worker.start()
        worker.join()
        return out[0]

    async def _translate_one(self, client: httpx.AsyncClient, code: Code) -> tuple[Mapping, ...]:
        params = {"system": code[0], "code": code[1]}
        if self.conceptmap_url:
            params["url"] = self.conceptmap_url
        response = await client.get(
            f"{self.base_url}/ConceptMap/$translate",
            params=params,
            headers={"Accept": "application/fhir+json"},
        )
        if response.status_code == 404:
            return ()  # some servers answer "no such code / no map" with 404
        if response.status_code != 200:
            raise TranslateError(f"the terminology server answered HTTP {response.status_code}")
        try:
            body = response.json()
        except ValueError:
            raise TranslateError("the terminology server sent an unreadable answer") from None
        return parse_translate(body, code, self.base_url)


def _part(parts: list[Any], name: str) -> dict[str, Any] | None:
    return next((p for p in parts if isinstance(p, dict) and p.get("name") == name), None)


def parse_translate(body: Any, code: Code, base_url: str) -> tuple[Mapping, ...]:
    """The matches of a $translate ``Parameters`` answer (R4 ``equivalence``; R5
    ``relationship`` is read too, its ``equivalent`` being the only exact one)."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise TranslateError("the terminology server did not answer with Parameters")
    params = [p for p in body.get("parameter") or () if isinstance(p, dict)]
    result = _part(params, "result")
    if result is None or not isinstance(result.get("valueBoolean"), bool):
        raise TranslateError("the terminology server's answer has no result")
    found: list[Mapping] = []
    for match in (p for p in params if p.get("name") == "match"):
        parts = match.get("part") or []
        eq = _part(parts, "equivalence") or _part(parts, "relationship") or {}
        equivalence = eq.get("valueCode")
        concept = (_part(parts, "concept") or {}).get("valueCoding") or {}
        source = (_part(parts, "source") or {}).get("valueUri") or (
            _part(parts, "originMap") or {}
        ).get("valueCanonical")
        if not isinstance(equivalence, str) or not isinstance(concept, dict):
            continue
        if equivalence == "source-is-narrower-than-target":
            equivalence = "wider"
        elif equivalence == "source-is-broader-than-target":
            equivalence = "narrower"
        elif equivalence == "related-to":
            equivalence = "relatedto"
        url, _, version = (source or f"{base_url}/ConceptMap/$translate").partition("|")
        target = concept.get("code")
        found.append(
            Mapping(
                code,
                (concept.get("system") or "", str(target)) if target else None,
                equivalence,
                MapSource(url, version or None),
                None,
                concept.get("display"),
            )
        )
    return tuple(found)
