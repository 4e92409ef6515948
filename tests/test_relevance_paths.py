"""Issue 19 §4 property: every path reads the same data, so every path gives the same answer.

Hypothesis builds patients whose platelet counts sit in plain Observations, panel components,
contained hasMember members and member chains, dated to the day, the month or the year, some
on a record merged into the patient (Patient.link replaces). Each patient is evaluated as a
posted Bundle (lean and generic decoding), by NDJSON screening, in pull mode against the demo
FHIR server, and through CDS Hooks with the server's prefetch (the merged record's data
fetched from the server): every criterion's outcome and evidence must be the same.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from typing import Any
from unittest import mock

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.cds.models import PatientViewRequest
from service.cds.prefetch import resolve_prefetch
from service.fhir.client import FhirClient
from service.fhir.demo_store import DEMO_BASE_URL, DemoStore
from service.fhir.fetch import fetch_patient
from service.fhir.queries import prefetch_templates
from service.pipeline import evaluate_fetched
from service.settings import Settings
from tests.builders import AS_OF, lab, patient
from tests.relevance_builders import (
    CBC,
    PLT,
    PROTOCOL,
    ago,
    bundle_answer,
    collection,
    component_panel,
    contained_panel,
    member,
    screen,
)

_ids = itertools.count()

RESULT = st.fixed_dictionaries(
    {
        "fails": st.booleans(),
        "days": st.integers(0, 40),  # the platelet window is 14 days: some are out of it
        "precision": st.sampled_from(["day", "day", "month", "year", "none"]),
        "shape": st.sampled_from(["plain", "component", "member", "chain"]),
        "on_merged": st.booleans(),
    }
)
PATIENTS = st.tuples(st.booleans(), st.lists(RESULT, min_size=2, max_size=4))


def _result(spec: dict[str, Any], owner: str) -> dict:
    value = 12 if spec["fails"] else 100
    return (
        _undated(_shaped(spec, owner, value))
        if spec["precision"] == "none"
        else _shaped(spec, owner, value)
    )


def _undated(result: dict) -> dict:
    """The same result with no time at all (it may be the newest: it must block everywhere,
    also in pull mode, whose searches filter by date)."""
    for res in (result, *result.get("contained", ())):
        for key in ("effectiveDateTime", "effectivePeriod", "effectiveInstant", "issued"):
            res.pop(key, None)
    return result


def _shaped(spec: dict[str, Any], owner: str, value: float) -> dict:
    cut = {"day": 10, "month": 7, "year": 4, "none": 10}[spec["precision"]]
    where = {"day": ago(spec["days"])[:cut], "subject": f"Patient/{owner}"}
    n = next(_ids)
    if spec["shape"] == "plain":
        return lab(PLT, value, "10*9/L", **where)
    if spec["shape"] == "component":
        return component_panel(PLT, value, "10*9/L", **where)
    leaf = member(f"m{n}", PLT, value, "10*9/L")
    if spec["shape"] == "member":
        return contained_panel(leaf, **where)
    sub = member(f"s{n}", CBC, 0, "1", hasMember=[{"reference": f"#m{n}"}])
    del sub["valueQuantity"]
    return contained_panel(sub, leaf, named=(f"s{n}",), **where)


def records(merged: bool, specs: list[dict[str, Any]]) -> dict[str, dict]:
    """Patient id -> its own collection Bundle (p0: the record merged into p1)."""
    owners = {"p1": [patient()], "p0": []}
    if merged:
        owners["p1"][0]["link"] = [{"other": {"reference": "Patient/p0"}, "type": "replaces"}]
        link = [{"other": {"reference": "Patient/p1"}, "type": "replaced-by"}]
        owners["p0"].append(patient(pid="p0", link=link))
    for spec in specs:
        owner = "p0" if merged and spec["on_merged"] else "p1"
        owners[owner].append(_result(spec, owner))
    return {pid: collection(*res) for pid, res in owners.items() if res}


def answers(result: dict) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Criterion code -> (outcome, evidence references) of a result Bundle."""
    found: dict[str, tuple[str, tuple[str, ...]]] = {}
    for entry in result["entry"]:
        res = entry["resource"]
        if res["resourceType"] == "Observation" and "valueCodeableConcept" in res:
            code = res["code"]["coding"][0]["code"]
            evidence = tuple(sorted(d.get("reference", "") for d in res.get("derivedFrom", [])))
            found[code] = (res["valueCodeableConcept"]["coding"][0]["code"], evidence)
    return found


def _client(store: DemoStore) -> FhirClient:
    return FhirClient(httpx.AsyncClient(transport=httpx.MockTransport(store.handle)), DEMO_BASE_URL)


async def pull(store: DemoStore) -> dict:
    async with _client(store) as client:
        fetched = await fetch_patient(client, PROTOCOL, "p1", AS_OF)
    return evaluate_fetched(fetched, PROTOCOL, AS_OF)[1]


async def cds(store: DemoStore) -> dict:
    call = PatientViewRequest.model_validate(
        {
            "hook": "patient-view",
            "hookInstance": str(uuid.uuid4()),
            "fhirServer": DEMO_BASE_URL,
            "context": {"userId": "Practitioner/x", "patientId": "p1"},
            "prefetch": store.prefetch(prefetch_templates(PROTOCOL), "p1"),
        }
    )
    with mock.patch("service.fhir.pool.client_for", lambda *a, **k: _client(store)):
        resolved = await resolve_prefetch(call, PROTOCOL, Settings(), AS_OF)
    return evaluate_fetched(resolved, PROTOCOL, AS_OF)[1]


@settings(
    max_examples=40, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(PATIENTS)
def test_every_path_gives_the_same_answer(tmp_path_factory, case):
    merged, specs = case
    data = records(merged, specs)
    together = collection(*(e["resource"] for b in data.values() for e in b["entry"]))
    expected = answers(bundle_answer(together, generic=True))
    assert answers(bundle_answer(together)) == expected, "lean decoding"
    screened = screen(data, tmp_path_factory.mktemp("ndjson"))
    assert answers(screened["p1"]) == expected, "NDJSON screening"
    store = DemoStore(data)
    assert answers(asyncio.run(pull(store))) == expected, "pull mode"
    assert answers(asyncio.run(cds(store))) == expected, "CDS Hooks"


def test_the_generator_reaches_every_shape_and_a_merged_newer_failure():
    """The property is not vacuous: a merged record's newer failing member decides."""
    specs = [
        {"fails": False, "days": 5, "precision": "day", "shape": "plain", "on_merged": False},
        {"fails": True, "days": 1, "precision": "day", "shape": "chain", "on_merged": True},
    ]
    data = records(True, specs)
    together = collection(*(e["resource"] for b in data.values() for e in b["entry"]))
    outcome, evidence = answers(bundle_answer(together))["I7-platelets"]
    assert outcome == "not-met"
    assert len(evidence) == 1 and "#m" in evidence[0]
