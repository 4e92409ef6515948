"""A small screening population and helpers shared by the screening tests."""

from __future__ import annotations

import gzip
import re
from collections import defaultdict
from datetime import date
from pathlib import Path
from typing import Any

import orjson

from benchmarks.synthetic import make_patient
from service.demo import load_demo_bundles
from service.pipeline import evaluate_resource
from service.protocol import default_protocol

AS_OF = date(2026, 11, 20)
SNOMED = "http://snomed.info/sct"


def no_leukemia_bundle(pid: str = "no-leukemia") -> dict[str, Any]:
    """An adult with diabetes and recent labs, but no leukemia: not a candidate."""
    resources = [
        {"resourceType": "Patient", "id": pid, "birthDate": "1970-05-01"},
        {
            "resourceType": "Condition",
            "id": f"{pid}-dm",
            "subject": {"reference": f"Patient/{pid}"},
            "code": {"coding": [{"system": SNOMED, "code": "44054006"}]},
        },
    ]
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": r} for r in resources],
    }


# The seed trial's six demo patients (the other demo patients are written for ZUMA-3 and
# DAPA-CKD; the seed-trial screening tests count these six).
SEED_DEMO_PATIENTS = (
    "demo-eligible",
    "demo-ineligible",
    "demo-pediatric",
    "demo-potential",
    "demo-stale-labs",
    "demo-us-units",
)


def population(synthetic: int = 3, on: date = AS_OF) -> dict[str, dict[str, Any]]:
    """Patient id -> collection Bundle: the six demo patients, synthetic ones, one without ALL."""
    bundles = {k: v for k, v in load_demo_bundles(on).items() if k in SEED_DEMO_PATIENTS}
    for n in range(synthetic):
        data = make_patient(60 + 10 * n, anchor=on, seed=n, patient_id=f"synth-{n}")
        bundles[data.patient_id] = data.bundle
    bundles["no-leukemia"] = no_leukemia_bundle()
    return bundles


def write_ndjson(bundles: dict[str, dict[str, Any]], folder: Path) -> Path:
    """One file per resource type (the Observations split over two, one gzipped), as Bulk does."""
    folder.mkdir(parents=True, exist_ok=True)
    by_type: dict[str, list[bytes]] = defaultdict(list)
    for bundle in bundles.values():
        for entry in bundle["entry"]:
            resource = entry["resource"]
            by_type[resource["resourceType"]].append(orjson.dumps(resource) + b"\n")
    for rtype, lines in by_type.items():
        if rtype == "Observation":
            half = len(lines) // 2
            (folder / "Observation.1.ndjson").write_bytes(b"".join(lines[:half]))
            with gzip.open(folder / "Observation.2.ndjson.gz", "wb") as f:
                f.write(b"".join(lines[half:]))
        else:
            (folder / f"{rtype}.ndjson").write_bytes(b"".join(lines))
    return folder


_URN = re.compile(r"urn:uuid:[0-9a-f-]{36}")
_VOLATILE = {"timestamp", "recorded", "occurrenceDateTime"}


def normalise(bundle: dict[str, Any]) -> Any:
    """A result Bundle without what differs between two runs: random urn:uuids, run times."""
    names: dict[str, str] = {}

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items() if k not in _VOLATILE}
        if isinstance(node, list):
            return [walk(v) for v in node]
        if isinstance(node, str):
            return _URN.sub(lambda m: names.setdefault(m.group(0), f"urn:{len(names)}"), node)
        return node

    return walk(bundle)


def bundle_mode(bundle: dict[str, Any], on: date = AS_OF) -> Any:
    """The result the single-patient Bundle mode gives, normalised."""
    _, result = evaluate_resource(bundle, default_protocol(), as_of=on)
    return normalise(result)


def results_by_patient(path: Path) -> dict[str, Any]:
    """results.ndjson as patient id -> normalised Bundle (each patient must appear once)."""
    found: dict[str, Any] = {}
    for line in path.read_bytes().splitlines():
        bundle = orjson.loads(line)
        pid = bundle["entry"][0]["resource"]["individual"]["reference"].removeprefix("Patient/")
        assert pid not in found, f"{pid} appears twice"
        found[pid] = normalise(bundle)
    return found


def worklist(path: Path) -> dict[str, dict[str, str]]:
    import csv

    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    by_pid = {r["patient"]: r for r in rows}
    assert len(by_pid) == len(rows), "a patient has two rows"
    return by_pid
