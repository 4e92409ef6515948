"""Several studies share one patient's Observations (service.record.SharedObservations): each
study's answer must be exactly the answer it gets alone, whatever the data looks like.

Hypothesis builds patients whose lab results (the codes the three trials read) come plain, as
panel components or as contained members; dated to the day, the month or not at all; some of
another patient or of none, some preliminary, malformed, unnamed, or sent twice (the same copy
or a differing version). Each patient is evaluated as a posted Bundle against the three trials
together and against each alone, and by NDJSON screening of the three together and each alone:
every criterion's outcome, reason and evidence, and every issue, must be the same.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import itertools
import re
import uuid
from datetime import timedelta
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.cds.models import PatientViewRequest
from service.cds.portfolio import prefetch_plan
from service.cds.prefetch import from_prefetch
from service.clinical.evaluation import Evaluation
from service.evaluation_context import EvaluationContext
from service.fhir.demo_store import DemoStore
from service.pipeline import assess_fetched_off_loop, evaluate_body, evaluate_fetched
from service.portfolio_eval import evaluate_body_portfolio
from service.record import SharedObservations, record_from_resources, resources_fit
from service.screening.ndjson import PatientData
from service.screening.rows import Layout
from service.screening.work import evaluate_one, evaluate_studies
from tests.builders import AS_OF, PATIENT_ID, lab, patient
from tests.relevance_builders import collection, component_panel, contained_panel, member
from tests.trial_paths import DAPA_DIR, SEED_DIR, ZUMA3_DIR, load

PROTOCOLS = [load(SEED_DIR), load(ZUMA3_DIR), load(DAPA_DIR)]

# (LOINC code, UCUM unit, a passing-looking value, a failing-looking value)
LABS = [
    ("777-3", "10*9/L", 150, 12),  # platelets
    ("718-7", "g/L", 120, 50),  # hemoglobin
    ("751-8", "10*9/L", 2.0, 0.2),  # neutrophils
    ("2160-0", "mg/dL", 0.9, 3.5),  # creatinine
    ("1975-2", "mg/dL", 0.8, 4.0),  # bilirubin
    ("1742-6", "U/L", 30, 400),  # ALT
    ("62238-1", "mL/min/{1.73_m2}", 45, 10),  # eGFR
    ("9318-7", "mg/g{creat}", 400, 100),  # albumin/creatinine ratio
]

_ids = itertools.count()

RESULT = st.fixed_dictionaries(
    {
        "lab": st.sampled_from(range(len(LABS))),
        "fails": st.booleans(),
        "days": st.integers(0, 40),
        "precision": st.sampled_from(["day", "day", "day", "month", "none"]),
        "shape": st.sampled_from(["plain", "plain", "component", "member"]),
        "subject": st.sampled_from(["ours"] * 6 + ["other", "none"]),
        "quirk": st.sampled_from(
            ["none"] * 8 + ["preliminary", "malformed", "unnamed", "same-copy", "other-version"]
        ),
    }
)
PATIENTS = st.lists(RESULT, min_size=1, max_size=8)


def _result(spec: dict[str, Any]) -> dict:
    code, unit, good, bad = LABS[spec["lab"]]
    value = bad if spec["fails"] else good
    day = (AS_OF - timedelta(days=spec["days"])).isoformat()
    day = {"day": day, "month": day[:7], "none": day}[spec["precision"]]
    where: dict[str, Any] = {"day": day}
    n = next(_ids)
    if spec["shape"] == "plain":
        res = lab(code, value, unit, **where)
    elif spec["shape"] == "component":
        res = component_panel(code, value, unit, **where)
    else:
        res = contained_panel(member(f"m{n}", code, value, unit), **where)
    res["id"] = f"obs-{n}"
    if spec["precision"] == "none":
        for key in ("effectiveDateTime", "effectivePeriod", "issued"):
            res.pop(key, None)
    if spec["subject"] == "other":
        res["subject"] = {"reference": "Patient/someone-else"}
    elif spec["subject"] == "none":
        res.pop("subject", None)
    quirk = spec["quirk"]
    if quirk == "preliminary":
        res["status"] = "preliminary"
    elif quirk == "malformed":
        res["valueQuantity" if "valueQuantity" in res else "status"] = ["not", "a", "quantity"]
    elif quirk == "unnamed":
        res.pop("id")
    return res


def patient_bundle(specs: list[dict[str, Any]]) -> dict:
    resources: list[dict] = [patient()]
    for spec in specs:
        res = _result(spec)
        resources.append(res)
        if spec["quirk"] == "same-copy":
            resources.append(copy.deepcopy(res))
        elif spec["quirk"] == "other-version":
            other = copy.deepcopy(res)
            other["status"] = "amended"
            resources.append(other)
    return collection(*resources)


def described(evaluation: Evaluation) -> tuple[Any, ...]:
    """Everything an evaluation says but the moment it was made."""
    return (
        evaluation.status,
        [dataclasses.asdict(r) for r in evaluation.results],
        [dataclasses.asdict(i) for i in evaluation.issues],
        [dataclasses.asdict(s) for s in evaluation.sources],
    )


def alone(body: bytes) -> list[tuple[Any, ...]]:
    return [described(evaluate_body(body, p, as_of=AS_OF)[0]) for p in PROTOCOLS]


@settings(
    max_examples=60, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(PATIENTS)
def test_each_study_of_a_portfolio_answers_as_alone(specs):
    body = orjson.dumps(patient_bundle(specs))
    together = evaluate_body_portfolio(body, PROTOCOLS, as_of=AS_OF)
    assert [described(a.evaluation) for a in together] == alone(body)


def _patient_data(data: dict) -> PatientData:
    lines = [orjson.dumps(e["resource"]) for e in data["entry"]]
    return PatientData(
        patient_id=PATIENT_ID,
        patients=[x for x in lines if b'"resourceType":"Patient"' in x],
        resources=[x for x in lines if b'"resourceType":"Patient"' not in x],
        linked=[],
    )


@settings(
    max_examples=40, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(PATIENTS)
def test_screening_several_studies_answers_each_as_alone(specs):
    item = _patient_data(patient_bundle(specs))
    layout = Layout(PROTOCOLS)
    together = evaluate_studies(item, layout, AS_OF)
    for protocol, (_, row, result) in zip(PROTOCOLS, together, strict=True):
        _, own_row, own_result = evaluate_one(item, protocol, AS_OF)
        assert row == layout.place(own_row, protocol)
        assert _without_ids(result) == _without_ids(own_result)


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_INSTANT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")


def _without_ids(result: bytes | None) -> Any:
    """A result Bundle with what each run generates (uuids, instants) blanked."""
    if result is None:
        return None
    return orjson.loads(_INSTANT.sub("TS", _UUID.sub("ID", result.decode())))


@pytest.mark.parametrize(
    ("quirk", "shared"),
    [("none", True), ("malformed", False), ("other-version", False), ("unnamed", False)],
)
def test_regular_data_is_grouped_once_and_anything_else_is_not(quirk, shared):
    """The property above is not vacuous: regular data takes the shared groups, and each kind
    of irregular data falls back to every study's own walk."""
    spec = {
        "lab": 0, "fails": False, "days": 2, "precision": "day", "shape": "plain",
        "subject": "ours", "quirk": quirk,
    }  # fmt: skip
    data = patient_bundle([spec])
    codes = frozenset().union(*(p.relevance.protocol_codes for p in PROTOCOLS))
    resources = [e["resource"] for e in data["entry"]]
    grouped = SharedObservations.of_resources(resources[1:], codes)
    record = record_from_resources(resources[0], resources[1:], PROTOCOLS[0], shared=grouped)
    assert (record.shared_view is not None) is shared


def _cds_call(data: dict) -> PatientViewRequest:
    """A patient-view call whose prefetch the EHR filled for the three trials' templates."""
    plan = prefetch_plan([p.relevance for p in PROTOCOLS])
    store = DemoStore({PATIENT_ID: data})
    return PatientViewRequest.model_validate(
        {
            "hook": "patient-view",
            "hookInstance": str(uuid.uuid4()),
            "context": {"userId": "Practitioner/x", "patientId": PATIENT_ID},
            "prefetch": store.prefetch(plan.templates, PATIENT_ID),
        }
    )


@settings(
    max_examples=40, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(PATIENTS)
def test_cds_studies_sharing_shapes_and_results_answer_as_alone(specs):
    """The portfolio CDS service's sharing (one shape proof, one dict of per-ValueSet results
    over each study's own prefetched resources) changes no study's answer."""
    call = _cds_call(patient_bundle(specs))
    plan = prefetch_plan([p.relevance for p in PROTOCOLS])
    parts = [from_prefetch(call, p.relevance, plan.queries(n))[0] for n, p in enumerate(PROTOCOLS)]
    fits = resources_fit({id(r): r for part in parts for r in part.resources}.values())
    facts: dict[Any, Any] = {}

    async def shared() -> list[Evaluation]:
        return [
            await assess_fetched_off_loop(part, p, AS_OF, EvaluationContext.current(p), fits, facts)
            for p, part in zip(PROTOCOLS, parts, strict=True)
        ]

    together = asyncio.run(shared())
    for protocol, part, evaluation in zip(PROTOCOLS, parts, together, strict=True):
        own = evaluate_fetched(part, protocol, AS_OF)[0]
        assert described(evaluation) == described(own)
