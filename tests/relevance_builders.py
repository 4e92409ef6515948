"""Shared by the issue-19 §2/§4 tests: contained panels, and each path's answer.

Only APIs the code had before issue 19, so the regression tests run on the old code too.
"""

from __future__ import annotations

from typing import Any

import orjson

from service.clinical.engine import evaluate
from service.clinical.model import CriterionResult
from service.pipeline import evaluate_body, evaluate_body_generic
from service.protocol import default_protocol
from service.record import record_from_bundle
from service.screening.ndjson import PatientStore
from service.screening.work import evaluate_one
from tests.builders import AS_OF, LOINC, ago, concept, lab, observation, patient, quantity, result
from tests.screening_population import write_ndjson

PROTOCOL = default_protocol()
PLT, HGB, CBC = "777-3", "718-7", "58410-2"  # CBC panel: no criterion reads its code


def member(mid: str, code: str, value: float, unit: str, **extra: Any) -> dict:
    """A contained result as exports send it: no subject, no date of its own."""
    return {
        "resourceType": "Observation",
        "id": mid,
        "status": "final",
        "code": concept(LOINC, code),
        "valueQuantity": quantity(value, unit),
        **extra,
    }


def contained_panel(*members: dict, named: tuple[str, ...] | None = None, **extra: Any) -> dict:
    """A CBC panel holding ``members``; ``named``: the ids its hasMember names (default all)."""
    names = [m["id"] for m in members] if named is None else list(named)
    extra.setdefault("day", ago(1))
    return observation(
        CBC, contained=list(members), hasMember=[{"reference": f"#{n}"} for n in names], **extra
    )


def component_panel(code: str, value: float, unit: str, **extra: Any) -> dict:
    part = {"code": concept(LOINC, code), "valueQuantity": quantity(value, unit)}
    extra.setdefault("day", ago(1))
    return observation(CBC, component=[part], **extra)


def outcome(answer: dict, code: str) -> str:
    """The outcome code of criterion ``code`` in a result Bundle."""
    for entry in answer["entry"]:
        res = entry["resource"]
        codes = [c.get("code") for c in (res.get("code") or {}).get("coding", [])]
        if res["resourceType"] == "Observation" and code in codes:
            return res["valueCodeableConcept"]["coding"][0]["code"]
    raise KeyError(code)


def bundle_answer(data: dict, *, generic: bool = False) -> dict:
    run = evaluate_body_generic if generic else evaluate_body
    return run(orjson.dumps(data), PROTOCOL, as_of=AS_OF)[1]


def criterion(data: dict, code: str = "I7-platelets") -> CriterionResult:
    return result(evaluate(record_from_bundle(data, PROTOCOL), PROTOCOL, AS_OF), code)


def screen(bundles: dict[str, dict], folder) -> dict[str, dict]:
    """The NDJSON screening path (ingest, group, evaluate one patient) as the runner runs it."""
    src = write_ndjson(bundles, folder / "export")
    found: dict[str, dict] = {}
    with PatientStore(folder / "store.sqlite") as store:
        store.ingest(sorted(src.iterdir()), PROTOCOL)
        for item in store.patients():
            pid, _, encoded = evaluate_one(item, PROTOCOL, AS_OF)
            assert encoded is not None, pid
            found[pid] = orjson.loads(encoded)
    return found


def collection(*resources: dict) -> dict:
    return {"resourceType": "Bundle", "type": "collection",
            "entry": [{"resource": r} for r in resources]}  # fmt: skip


def merged_pair() -> dict[str, dict]:
    """p1 survives a merge of p0 (Patient.link replaces); p0's newer count fails."""
    survivor = patient(link=[{"other": {"reference": "Patient/p0"}, "type": "replaces"}])
    old = patient(pid="p0", link=[{"other": {"reference": "Patient/p1"}, "type": "replaced-by"}])
    passing = lab(PLT, 100, "10*9/L", day=ago(5))
    failing = lab(PLT, 12, "10*9/L", day=ago(1), subject="Patient/p0")
    return {"p1": collection(survivor, passing), "p0": collection(old, failing)}
