"""Medication criteria read the same data on every path: a posted Bundle (lean and generic
decoding), pull mode against the demo FHIR server (``_include`` brings the Medication a
``medicationReference`` names), CDS Hooks with the server's prefetch, and NDJSON screening
(codes in ``medicationCodeableConcept`` or a contained Medication). The seed protocol, which
has no medication criterion, asks for nothing more than before.
"""

from __future__ import annotations

import asyncio
import uuid
from unittest import mock

import httpx
import orjson
import pytest
from fhir.resources.R4B.bundle import Bundle

from service.cds.models import PatientViewRequest
from service.cds.prefetch import resolve_prefetch
from service.fhir.client import FhirClient
from service.fhir.demo_store import DEMO_BASE_URL, DemoStore
from service.fhir.fetch import fetch_patient
from service.fhir.queries import plan_queries, prefetch_templates
from service.pipeline import evaluate_body, evaluate_body_generic, evaluate_fetched
from service.protocol import default_protocol, load_protocol
from service.relevance import Relevance
from service.resource_kinds import MEDICATION_TYPES
from service.screening.ndjson import PatientStore
from service.screening.work import evaluate_one
from service.settings import Settings
from tests.builders import AS_OF, ago, patient
from tests.protocol_copies import ATC, RXNORM, medication_protocol
from tests.screening_population import write_ndjson
from tests.test_relevance_paths import answers


def _med(code: tuple[str, str]) -> dict:
    return {"coding": [{"system": code[0], "code": code[1]}]}


def _data(pid: str, *, standalone: bool) -> list[dict]:
    """One patient's medications: blinatumomab 10 days ago (W1 not met), an active imatinib
    order for 60 days (R1 met), imatinib and dasatinib given (D1 met). ``standalone``: the
    blinatumomab is a Medication resource of its own, else contained."""
    subject = {"reference": f"Patient/{pid}"}
    blina = {
        "resourceType": "Medication",
        "id": f"{pid}-blina",
        "code": {"coding": [{"system": ATC, "code": "L01FX07", "display": "blinatumomab"}]},
    }
    given = {
        "resourceType": "MedicationAdministration",
        "id": f"{pid}-ma1",
        "status": "completed",
        "subject": subject,
        "effectiveDateTime": ago(10),
    }
    extra = []
    if standalone:
        given["medicationReference"] = {"reference": f"Medication/{pid}-blina"}
        extra.append(blina)
    else:
        given["contained"] = [{**blina, "id": "blina"}]
        given["medicationReference"] = {"reference": "#blina"}
    order = {
        "resourceType": "MedicationRequest",
        "id": f"{pid}-mr1",
        "status": "active",
        "intent": "order",
        "subject": subject,
        "medicationCodeableConcept": _med((RXNORM, "282388")),
        "authoredOn": ago(61),
        "dosageInstruction": [{"timing": {"repeat": {"boundsPeriod": {"start": ago(60)}}}}],
    }
    dasatinib = {
        "resourceType": "MedicationStatement",
        "id": f"{pid}-ms1",
        "status": "completed",
        "subject": subject,
        "medicationCodeableConcept": _med((RXNORM, "475342")),
        "effectivePeriod": {"start": ago(300), "end": ago(200)},
    }
    return [patient(pid=pid), given, order, dasatinib, *extra]


def _collection(resources: list[dict]) -> dict:
    return {"resourceType": "Bundle", "type": "collection",
            "entry": [{"resource": r} for r in resources]}  # fmt: skip


@pytest.fixture(scope="module")
def protocol(tmp_path_factory):
    return load_protocol(medication_protocol(tmp_path_factory.mktemp("p") / "meds"))


EXPECTED = {"W1": "not-met", "R1": "met", "D1": "met"}


def _medication_answers(result: dict) -> dict[str, str]:
    found = answers(result)
    return {code: found[code][0] for code in EXPECTED}


def _client(store: DemoStore) -> FhirClient:
    return FhirClient(httpx.AsyncClient(transport=httpx.MockTransport(store.handle)), DEMO_BASE_URL)


async def _pull(store: DemoStore, protocol) -> dict:
    async with _client(store) as client:
        fetched = await fetch_patient(client, protocol, "p1", AS_OF)
    return evaluate_fetched(fetched, protocol, AS_OF)[1]


async def _cds(store: DemoStore, protocol) -> dict:
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


@pytest.mark.parametrize("standalone", [True, False], ids=["Medication-resource", "contained"])
def test_bundle_pull_and_cds_agree(protocol, standalone):
    data = _collection(_data("p1", standalone=standalone))
    Bundle.model_validate(data)
    body = orjson.dumps(data)
    expected = _medication_answers(evaluate_body_generic(body, protocol, as_of=AS_OF)[1])
    assert expected == EXPECTED
    full = answers(evaluate_body_generic(body, protocol, as_of=AS_OF)[1])
    assert answers(evaluate_body(body, protocol, as_of=AS_OF)[1]) == full, "lean decoding"
    # another patient's medications on the same server must not leak in
    other = _collection([patient(pid="p2"), *_data("p2", standalone=standalone)[1:]])
    store = DemoStore({"p1": data, "p2": other})
    assert answers(asyncio.run(_pull(store, protocol))) == full, "pull mode"
    assert answers(asyncio.run(_cds(store, protocol))) == full, "CDS Hooks"


def test_pull_without_the_included_medication_is_undetermined(protocol):
    """The washout's answer rests on the Medication: a server that does not send it gives
    an unknown agent in the window (undetermined), never a met."""
    data = _collection(_data("p1", standalone=True)[:-1])  # the Medication is not on the server
    store = DemoStore({"p1": data})
    result = asyncio.run(_pull(store, protocol))
    w1 = [
        e["resource"]
        for e in result["entry"]
        if e["resource"]["resourceType"] == "Observation"
        and e["resource"]["code"]["coding"][0]["code"] == "W1"
    ][0]
    assert "valueCodeableConcept" not in w1
    assert w1["dataAbsentReason"]["text"] == "undetermined"
    assert "medicationReference Medication/p1-blina is not in the data" in w1["note"][0]["text"]


def test_ndjson_screening_agrees_for_coded_and_contained(protocol, tmp_path):
    data = _collection(_data("p1", standalone=False))
    expected = answers(evaluate_body_generic(orjson.dumps(data), protocol, as_of=AS_OF)[1])
    src = write_ndjson({"p1": data}, tmp_path / "export")
    with PatientStore(tmp_path / "store.sqlite") as store:
        store.ingest(sorted(src.iterdir()), protocol)
        screened = {pid: orjson.loads(enc) for pid, _, enc in
                    (evaluate_one(item, protocol, AS_OF) for item in store.patients())}  # fmt: skip
    assert answers(screened["p1"]) == expected
    assert _medication_answers(screened["p1"]) == EXPECTED


def test_the_selection_follows_the_rules_reads(protocol):
    seed = Relevance(default_protocol())
    assert not set(MEDICATION_TYPES) & set(seed.types)
    assert not set(MEDICATION_TYPES) & set(seed.export_types())
    seed_keys = {q.resource_type for q in plan_queries(default_protocol(), "p1", AS_OF)}
    assert not set(MEDICATION_TYPES) & seed_keys, "no extra queries for the seed protocol"
    meds = Relevance(protocol)
    assert set(MEDICATION_TYPES) <= set(meds.types)
    assert set(MEDICATION_TYPES) <= set(meds.export_types())
    templates = prefetch_templates(protocol)
    assert templates["medicationRequests"] == (
        "MedicationRequest?patient={{context.patientId}}&_include=MedicationRequest:medication"
    )
    assert {"medicationAdministrations", "medicationStatements", "medicationDispenses"} <= set(
        templates
    )
    assert meds.matches({"resourceType": "MedicationDispense"})
    assert not seed.matches({"resourceType": "MedicationDispense"})
