#!/usr/bin/env python3
"""Check that a FHIR server behaves as our FHIR client expects (standard library only).

Run after ``deploy/hapi/start``: ``python deploy/hapi/smoke_check.py --base http://127.0.0.1:8090/fhir``.
It writes a few ``smoke-*`` resources (PUT, so reruns are harmless) and checks: R4
CapabilityStatement, transaction, token OR + date + sort search, paging through ``link[next]``,
404 on an unknown read, 400 on an unknown search parameter. Exit status 1 if any check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

LOINC = "http://loinc.org"
PATIENT = "smoke-pat-1"


def _get(url: str) -> tuple[int, Any]:
    req = urllib.request.Request(url, headers={"Accept": "application/fhir+json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        body = err.read()
        try:
            return err.code, json.loads(body)
        except ValueError:
            return err.code, body.decode("utf-8", "replace")


def _post(url: str, doc: dict[str, Any]) -> tuple[int, Any]:
    req = urllib.request.Request(
        url,
        data=json.dumps(doc).encode(),
        headers={"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode("utf-8", "replace")


def _obs(oid: str, code: str, when: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/{PATIENT}"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": 1.0, "system": "http://unitsofmeasure.org", "code": "10*3/uL"},
    }


def _transaction() -> dict[str, Any]:
    resources = [
        {"resourceType": "Patient", "id": PATIENT, "gender": "female", "birthDate": "1980-05-01"},
        _obs("smoke-obs-1", "26499-4", "2026-01-10T08:00:00Z"),
        _obs("smoke-obs-2", "751-8", "2026-02-10T08:00:00Z"),
        _obs("smoke-obs-3", "26499-4", "2026-03-10T08:00:00Z"),
        _obs("smoke-obs-old", "26499-4", "2025-06-10T08:00:00Z"),
    ]
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
            for r in resources
        ],
    }


def _ids(bundle: dict[str, Any]) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", [])]


def _next(bundle: dict[str, Any]) -> str | None:
    return next((lk["url"] for lk in bundle.get("link", []) if lk["relation"] == "next"), None)


def run(base: str) -> list[tuple[str, bool, str]]:
    """The checks, in order, as (name, passed, detail)."""
    results: list[tuple[str, bool, str]] = []

    def check(name: str, fn: Callable[[], tuple[bool, str]]) -> None:
        try:
            ok, detail = fn()
        except Exception as err:  # a smoke check reports, it does not crash
            ok, detail = False, f"{type(err).__name__}: {err}"
        results.append((name, ok, detail))

    def metadata() -> tuple[bool, str]:
        status, doc = _get(f"{base}/metadata")
        ok = status == 200 and doc.get("resourceType") == "CapabilityStatement"
        return ok and doc.get(
            "fhirVersion"
        ) == "4.0.1", f"{status} fhirVersion={doc.get('fhirVersion')}"

    def transaction() -> tuple[bool, str]:
        status, doc = _post(base, _transaction())
        codes = [e["response"]["status"] for e in doc.get("entry", [])] if status == 200 else doc
        return status == 200 and doc.get("type") == "transaction-response", f"{status} {codes}"

    query = urllib.parse.urlencode(
        {
            "patient": PATIENT,
            "code": f"{LOINC}|26499-4,{LOINC}|751-8",
            "date": "ge2026-01-01",
            "_sort": "-date",
            "_count": "2",
        }
    )
    pages: list[dict[str, Any]] = []

    def search_page1() -> tuple[bool, str]:
        status, doc = _get(f"{base}/Observation?{query}")
        pages.append(doc)
        ok = status == 200 and _ids(doc) == ["smoke-obs-3", "smoke-obs-2"] and bool(_next(doc))
        return ok, f"{status} ids={_ids(doc)} next={_next(doc)}"

    def search_page2() -> tuple[bool, str]:
        status, doc = _get(_next(pages[0]) or "")
        return status == 200 and _ids(doc) == ["smoke-obs-1"] and not _next(doc), (
            f"{status} ids={_ids(doc)}"
        )

    def read_ok() -> tuple[bool, str]:
        status, doc = _get(f"{base}/Patient/{PATIENT}")
        return status == 200 and doc.get("id") == PATIENT, str(status)

    def read_404() -> tuple[bool, str]:
        status, _ = _get(f"{base}/Patient/smoke-no-such-patient")
        return status == 404, str(status)

    def unknown_param_400() -> tuple[bool, str]:
        status, _ = _get(f"{base}/Observation?patient={PATIENT}&smoke-bogus=1")
        return status == 400, str(status)

    check("metadata is an R4 CapabilityStatement", metadata)
    check("transaction of Patient + 4 Observations", transaction)
    check("search code OR + date ge + _sort=-date, _count=2: page 1", search_page1)
    check("follow link[next]: page 2 is the last", search_page2)
    check("read Patient/{id}", read_ok)
    check("read unknown Patient -> 404", read_404)
    check("unknown search parameter -> 400", unknown_param_400)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="http://127.0.0.1:8090/fhir")
    args = parser.parse_args(argv)
    results = run(args.base.rstrip("/"))
    for name, ok, detail in results:
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
    failed = sum(not ok for _, ok, _ in results)
    print(f"smoke check: {len(results) - failed} of {len(results)} checks ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
