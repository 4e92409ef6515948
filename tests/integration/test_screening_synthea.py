"""Screening a Synthea population (custom module deploy/synthea/modules/cd19_ball.json).

Runs when SYNTHEA_NDJSON names a folder written by ``deploy/synthea/generate OUT`` (then
``OUT/fhir``); Synthea needs Java and Maven, so the fast suite skips it.
"""

from __future__ import annotations

import os
from collections import defaultdict
from datetime import date
from pathlib import Path

import orjson
import pytest

from service.protocol import default_protocol
from service.screening.outdir import OutputFolder
from service.screening.runner import screen_ndjson
from service.settings import get_settings
from tests.screening_population import bundle_mode, results_by_patient, worklist

SOURCE = os.environ.get("SYNTHEA_NDJSON")
pytestmark = pytest.mark.skipif(
    not SOURCE, reason="set SYNTHEA_NDJSON to a folder from deploy/synthea/generate"
)
B_ALL = b'"277571004"'


def _bundles(folder: Path) -> dict[str, dict]:
    """Each patient's resources as one collection Bundle (the Bundle-mode reference)."""
    by_patient: dict[str, list[dict]] = defaultdict(list)
    for path in sorted(folder.glob("*.ndjson")):
        for line in path.read_bytes().splitlines():
            resource = orjson.loads(line)
            if resource["resourceType"] == "Patient":
                by_patient[resource["id"]].insert(0, resource)
                continue
            ref = (resource.get("subject") or resource.get("patient") or {}).get("reference", "")
            if ref.startswith("Patient/"):
                by_patient[ref.removeprefix("Patient/")].append(resource)
    return {
        pid: {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": r} for r in rs],
        }
        for pid, rs in by_patient.items()
    }


def test_synthea_population_matches_bundle_mode(tmp_path):
    folder = Path(SOURCE)
    protocol = default_protocol()
    day = date.today()
    out = OutputFolder(tmp_path / "out", protocol, day, resume=False)
    result = screen_ndjson(folder, out, protocol, get_settings().protocol_path, workers=2)
    assert result.failed == 0
    rows = worklist(tmp_path / "out" / "worklist.csv")
    found = results_by_patient(tmp_path / "out" / "results.ndjson")
    bundles = _bundles(folder)
    assert set(rows) == set(found) == set(bundles)
    for pid, bundle in bundles.items():
        assert found[pid] == bundle_mode(bundle, day), pid
    with_ball = {
        pid
        for pid, b in bundles.items()
        if B_ALL
        in orjson.dumps(
            [e["resource"] for e in b["entry"] if e["resource"]["resourceType"] == "Condition"]
        )
    }
    assert with_ball, "the custom module produced no B-ALL patient"
    assert {p for p, r in rows.items() if r["I3"] == "met"} == with_ball
    # No consent or attestation in Synthea: nobody can be eligible.
    assert all(r["status"] != "eligible" for r in rows.values())
