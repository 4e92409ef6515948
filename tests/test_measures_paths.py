"""The computed / range / history / event criteria give the same answers through every path:
a posted Bundle (lean and generic decoding), NDJSON screening, pull mode against the demo FHIR
server and CDS Hooks with the server's prefetch (the demo server stands in for HAPI here;
the HAPI suite runs the same paths against the real server)."""

from __future__ import annotations

import asyncio
import uuid
from unittest import mock

import httpx
import orjson
import pytest

from service.cds.models import PatientViewRequest
from service.cds.prefetch import resolve_prefetch
from service.fhir.client import FhirClient
from service.fhir.demo_store import DEMO_BASE_URL, DemoStore
from service.fhir.fetch import fetch_patient
from service.fhir.queries import prefetch_templates
from service.pipeline import evaluate_body, evaluate_body_generic, evaluate_fetched
from service.protocol import load_protocol
from service.screening.ndjson import PatientStore
from service.screening.work import evaluate_one
from service.settings import Settings
from tests.builders import AS_OF, patient, procedure
from tests.builders import questionnaire_response as qr
from tests.measure_cases import ago, creatinine, egfr, uacr, weight
from tests.protocol_copies import SNOMED, measures_protocol
from tests.screening_population import write_ndjson
from tests.test_rule_events import mi

CODES = ("C1", "C2", "R1", "H1", "T1", "E3", "E4")


@pytest.fixture(scope="module")
def protocol(tmp_path_factory):
    return load_protocol(measures_protocol(tmp_path_factory.mktemp("p") / "measures"))


def collection(*resources: dict) -> dict:
    return {"resourceType": "Bundle", "type": "collection",
            "entry": [{"resource": r} for r in resources]}  # fmt: skip


CASES = {
    "all met": lambda q: [
        creatinine(1.0),
        weight(70),
        egfr(66),
        uacr(45, "mg/mmol"),
        uacr(100, day=ago(120)),
        procedure(SNOMED, "425843001", performed=str(ago(200))),
        mi(str(ago(400))),
        q({"E3": True}),
    ],
    "unsafe": lambda q: [
        creatinine(1.0, day=ago(3)),
        creatinine(0.5, day=ago(20)),  # older: never decides in place of the newest
        weight(7000),
        egfr(80),
        uacr(100, day="2026-08"),
        procedure(SNOMED, "425843001", performed="2026-08"),
        mi(None),
        q({"E3": True}),
    ],
    "not met": lambda q: [
        creatinine(3.0),
        weight(50),
        uacr(20, "mg/mmol"),
        uacr(10, day=ago(200)),
        procedure(SNOMED, "425843001", performed=str(ago(20))),
        mi(str(ago(10))),
    ],
}


def answers(result: dict) -> dict[str, tuple[str, tuple[str, ...]]]:
    found = {}
    for entry in result["entry"]:
        res = entry["resource"]
        code = (res.get("code") or {}).get("coding", [{}])[0].get("code")
        if res["resourceType"] == "Observation" and code in CODES:
            value = res.get("valueCodeableConcept", {}).get("coding", [{"code": "undetermined"}])
            evidence = tuple(sorted(d.get("reference", "") for d in res.get("derivedFrom", [])))
            found[code] = (value[0]["code"], evidence)
    return found


def _client(store: DemoStore) -> FhirClient:
    return FhirClient(httpx.AsyncClient(transport=httpx.MockTransport(store.handle)), DEMO_BASE_URL)


async def pull(store: DemoStore, protocol) -> dict:
    async with _client(store) as client:
        fetched = await fetch_patient(client, protocol, "p1", AS_OF)
    return evaluate_fetched(fetched, protocol, AS_OF)[1]


async def cds(store: DemoStore, protocol) -> dict:
    call = PatientViewRequest.model_validate(
        {
            "hook": "patient-view",
            "hookInstance": str(uuid.uuid4()),
            "fhirServer": DEMO_BASE_URL,
            "context": {"userId": "Practitioner/x", "patientId": "p1"},
            "prefetch": store.prefetch(prefetch_templates(protocol), "p1"),
        }
    )
    with mock.patch("service.fhir.pool.client_for", lambda *a, **k: _client(store)):
        resolved = await resolve_prefetch(call, protocol, Settings(), AS_OF)
    return evaluate_fetched(resolved, protocol, AS_OF)[1]


def screen(data: dict, protocol, folder) -> dict:
    src = write_ndjson({"p1": data}, folder / "export")
    with PatientStore(folder / "store.sqlite") as store:
        store.ingest(sorted(src.iterdir()), protocol)
        for item in store.patients():
            pid, _, encoded = evaluate_one(item, protocol, AS_OF)
            assert pid == "p1" and encoded is not None
            return orjson.loads(encoded)
    raise AssertionError("no patient screened")


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_path_gives_the_same_answer(protocol, case, tmp_path):
    who = patient("1966-06-01", gender="female")
    q = lambda answers: qr(answers, questionnaire=protocol.questionnaire_url)  # noqa: E731
    data = collection(who, *CASES[case](q))
    expected = answers(evaluate_body_generic(orjson.dumps(data), protocol, as_of=AS_OF)[1])
    assert set(expected) == set(CODES)
    outcomes = {c: o for c, (o, _) in expected.items()}
    if case != "unsafe":
        want = "met" if case == "all met" else "not-met"
        assert set(outcomes.values()) == {want}, outcomes
    else:
        assert set(outcomes.values()) == {"undetermined"}, outcomes
    lean = evaluate_body(orjson.dumps(data), protocol, as_of=AS_OF)[1]
    assert answers(lean) == expected, "lean decoding"
    assert answers(screen(data, protocol, tmp_path)) == expected, "NDJSON screening"
    store = DemoStore({"p1": data})
    assert answers(asyncio.run(pull(store, protocol))) == expected, "pull mode"
    assert answers(asyncio.run(cds(store, protocol))) == expected, "CDS Hooks"
