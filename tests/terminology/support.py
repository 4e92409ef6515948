"""Helpers for the site-terminology tests: a demo patient recoded to local-only codes, and a
loopback ``ConceptMap/$translate`` stub answering from a ConceptMap."""

from __future__ import annotations

import copy
import threading
import time
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from service.terminology.conceptmaps import conceptmap_mappings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_DIR = ROOT / "docs" / "site-mappings-example"
EXAMPLE_FILE = EXAMPLE_DIR / "ConceptMap-example-hospital-lab.json"
DEMO_DIR = ROOT / "service" / "demo_patients"
AS_OF = date(2026, 11, 20)  # the demo files' own date
DEMO_PATIENTS = sorted(p.stem for p in DEMO_DIR.glob("demo-*.json"))


def example_conceptmap() -> dict[str, Any]:
    return orjson.loads(EXAMPLE_FILE.read_bytes())


def demo_bundle(patient: str) -> dict[str, Any]:
    return orjson.loads((DEMO_DIR / f"{patient}.json").read_bytes())


def local_codes() -> dict[tuple[str, str], tuple[str, str, str]]:
    """Standard code -> (local system, local code, local display), exact mappings only."""
    out: dict[tuple[str, str], tuple[str, str, str]] = {}
    for m in conceptmap_mappings(example_conceptmap()):
        if m.exact and m.target is not None and m.target not in out:
            out[m.target] = (m.source[0], m.source[1], m.source_display or "")
    return out


def _recode_concept(concept: Any, table: dict) -> Any:
    if not isinstance(concept, dict):
        return concept
    codings = []
    for coding in concept.get("coding") or ():
        key = (coding.get("system"), coding.get("code"))
        if key in table:
            system, code, display = table[key]
            codings.append({"system": system, "code": code, "display": display})
        else:
            codings.append(coding)
    return {**concept, "coding": codings}


def recode_bundle(bundle: dict[str, Any], only: set[str] | None = None) -> dict[str, Any]:
    """The Bundle with every Observation / Condition code the example maps replaced by the
    site's local code (``only``: just these standard codes)."""
    table = local_codes()
    if only is not None:
        table = {k: v for k, v in table.items() if k[1] in only}
    out = copy.deepcopy(bundle)
    for entry in out.get("entry", []):
        resource = entry.get("resource") or {}
        if resource.get("resourceType") not in ("Observation", "Condition"):
            continue
        resource["code"] = _recode_concept(resource.get("code"), table)
        for part in resource.get("component") or ():
            part["code"] = _recode_concept(part.get("code"), table)
    return out


def outcomes(evaluation) -> dict[str, str]:
    found: dict[str, str] = {}

    def walk(results):
        for r in results:
            found[r.code] = r.outcome.value
            walk(r.members)

    walk(evaluation.results)
    return found


class TranslateStub:
    """``GET /fhir/ConceptMap/$translate`` over loopback, answering from ConceptMaps the way
    HAPI does (Parameters: result, match{equivalence, concept, source}).

    ``mode``: ``ok``, ``500`` (every call fails), ``hang`` (answers after ``hang_seconds``).
    """

    def __init__(self, conceptmaps: list[dict[str, Any]], mode: str = "ok") -> None:
        self.mode = mode
        self.hang_seconds = 5.0
        self.calls: list[tuple[str, str]] = []
        self._maps = [(cm, conceptmap_mappings(cm)) for cm in conceptmaps]
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                return

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                stub.calls.append((query.get("system", ""), query.get("code", "")))
                if not url.path.endswith("/ConceptMap/$translate"):
                    return self._send(404, {"resourceType": "OperationOutcome"})
                if stub.mode == "500":
                    return self._send(500, {"resourceType": "OperationOutcome"})
                if stub.mode == "hang":
                    time.sleep(stub.hang_seconds)
                self._send(200, stub.answer(query.get("system"), query.get("code")))

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = orjson.dumps(body)
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._httpd.server_address[1]}/fhir"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def answer(self, system: str | None, code: str | None) -> dict[str, Any]:
        matches = []
        for cm, mappings in self._maps:
            for m in mappings:
                if m.source == (system, code) and m.target is not None:
                    matches.append(
                        {
                            "name": "match",
                            "part": [
                                {"name": "equivalence", "valueCode": m.equivalence},
                                {
                                    "name": "concept",
                                    "valueCoding": {"system": m.target[0], "code": m.target[1]},
                                },
                                {"name": "source", "valueUri": cm["url"]},
                            ],
                        }
                    )
        return {
            "resourceType": "Parameters",
            "parameter": [{"name": "result", "valueBoolean": bool(matches)}, *matches],
        }

    def __enter__(self) -> TranslateStub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
