"""Every patient in ../shared/fhir-samples can be evaluated, and none comes out eligible."""

from __future__ import annotations

from collections import defaultdict
from datetime import date
from pathlib import Path

import orjson
import pytest

from service.clinical.evaluation import SubjectStatus
from service.pipeline import evaluate_resource
from service.protocol import default_protocol
from service.record import InputError

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "fhir-samples"
AS_OF = date(2026, 11, 27)


def _cases() -> list[tuple[str, dict, str]]:
    """(label, Bundle, patient id) per Patient; single-resource files grouped by folder (PCSP)."""
    cases: list[tuple[str, dict, str]] = []
    folders: dict[Path, list[dict]] = defaultdict(list)
    for path in sorted(SAMPLES.rglob("*.json")):
        data = orjson.loads(path.read_bytes())
        if data.get("resourceType") == "Bundle":
            entries = data.get("entry") or []
            patients = [
                e["resource"]
                for e in entries
                if e.get("resource", {}).get("resourceType") == "Patient"
            ]
            for i, p in enumerate(patients):
                pid = p.get("id") or next(
                    e.get("fullUrl") for e in entries if e.get("resource") is p
                )
                cases.append((f"{path.relative_to(SAMPLES)}#{i}", data, pid))
        else:
            folders[path.parent].append(data)
    for folder, resources in sorted(folders.items()):
        for p in (r for r in resources if r.get("resourceType") == "Patient"):
            data = {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [{"resource": r} for r in resources],
            }
            cases.append((str(folder.relative_to(SAMPLES)), data, p["id"]))
    return cases


CASES = _cases() if SAMPLES.is_dir() else []


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="../shared/fhir-samples not present")
def test_samples_hold_the_expected_patients():
    assert len(CASES) >= 20


@pytest.mark.parametrize(("label", "data", "pid"), CASES, ids=[c[0] for c in CASES])
def test_sample_patient_evaluates_and_is_not_eligible(label, data, pid):
    try:
        evaluation, result = evaluate_resource(
            data, default_protocol(), as_of=AS_OF, patient_id=pid
        )
    except InputError as exc:  # pragma: no cover - would be a finding
        pytest.fail(f"{label}: {exc}")
    assert evaluation.status is not SubjectStatus.ELIGIBLE
    assert len(evaluation.results) == 12
    assert result["entry"][0]["resource"]["resourceType"] == "ResearchSubject"
