"""One patient through every path of a protocol: a posted Bundle (generic and lean decoding),
pull mode against the demo FHIR server, and CDS Hooks with the server's prefetch. The tests of
the ZUMA-3 and DAPA-CKD folders assert that all of them give the same answer."""

from __future__ import annotations

import asyncio
import copy
import uuid
from unittest import mock

import httpx
import orjson
from fhir.resources.R4B.bundle import Bundle

from fhir_mappings import MAPPINGS_DIR
from service.cds.models import PatientViewRequest
from service.cds.prefetch import resolve_prefetch
from service.demo import load_demo_bundles
from service.fhir.client import FhirClient
from service.fhir.demo_store import DEMO_BASE_URL, DemoStore
from service.fhir.fetch import fetch_patient
from service.fhir.queries import prefetch_templates
from service.pipeline import evaluate_body, evaluate_body_generic, evaluate_fetched
from service.protocol import Protocol, load_protocol
from service.settings import Settings
from tests.builders import AS_OF

ZUMA3_DIR = MAPPINGS_DIR / "zuma3-brexu-cel-rr-ball"
DAPA_DIR = MAPPINGS_DIR / "dapa-ckd"
SEED_DIR = MAPPINGS_DIR / "cd19-cart-rr-ball"


def load(folder) -> Protocol:
    return load_protocol(folder / "protocol.toml")


def demo(pid: str) -> dict:
    """A demo patient's Bundle dated for AS_OF (a copy: tests edit it)."""
    return copy.deepcopy(load_demo_bundles(AS_OF)[pid])


def outcomes(result: dict, system: str) -> dict[str, str]:
    """Criterion code -> met / not-met / undetermined, from a result Bundle."""
    found = {}
    for entry in result["entry"]:
        res = entry["resource"]
        if res["resourceType"] != "Observation":
            continue
        coding = res["code"]["coding"][0]
        if coding.get("system") != system:
            continue
        value = res.get("valueCodeableConcept")
        found[coding["code"]] = value["coding"][0]["code"] if value else "undetermined"
    return found


def status(result: dict) -> str:
    subject = next(
        e["resource"] for e in result["entry"] if e["resource"]["resourceType"] == "ResearchSubject"
    )
    return subject["status"]


def _client(store: DemoStore) -> FhirClient:
    return FhirClient(httpx.AsyncClient(transport=httpx.MockTransport(store.handle)), DEMO_BASE_URL)


async def _pull(store: DemoStore, protocol: Protocol, pid: str) -> dict:
    async with _client(store) as client:
        fetched = await fetch_patient(client, protocol, pid, AS_OF)
    return evaluate_fetched(fetched, protocol, AS_OF)[1]


async def _cds(store: DemoStore, protocol: Protocol, pid: str) -> dict:
    call = PatientViewRequest.model_validate(
        {
            "hook": "patient-view",
            "hookInstance": str(uuid.uuid4()),
            "fhirServer": DEMO_BASE_URL,
            "context": {"userId": "Practitioner/x", "patientId": pid},
            "prefetch": store.prefetch(prefetch_templates(protocol), pid),
        }
    )
    with mock.patch("service.fhir.pool.client_for", lambda *a, **k: _client(store)):
        resolved = await resolve_prefetch(call, protocol, Settings(), AS_OF)
    return evaluate_fetched(resolved, protocol, AS_OF)[1]


def every_path(protocol: Protocol, data: dict, pid: str) -> dict:
    """The result Bundle of the posted Bundle; asserts lean decoding, pull mode and CDS Hooks
    give the same criterion outcomes and status (another patient on the server must not leak
    in)."""
    Bundle.model_validate(data)  # the test data is valid R4
    body = orjson.dumps(data)
    result = evaluate_body_generic(body, protocol, as_of=AS_OF)[1]
    expected = (outcomes(result, protocol.criteria_system), status(result))
    lean = evaluate_body(body, protocol, as_of=AS_OF)[1]
    assert (outcomes(lean, protocol.criteria_system), status(lean)) == expected, "lean"
    other = demo("demo-eligible")
    store = DemoStore({pid: data, "demo-eligible": other})
    for name, run in (("pull", _pull), ("cds", _cds)):
        answer = asyncio.run(run(store, protocol, pid))
        assert (outcomes(answer, protocol.criteria_system), status(answer)) == expected, name
    return result


def drop(data: dict, *ids: str) -> dict:
    """The Bundle without the resources whose id ends with one of ``ids``."""
    data["entry"] = [
        e for e in data["entry"] if not any(e["resource"]["id"].endswith(i) for i in ids)
    ]
    return data


def resource(data: dict, suffix: str) -> dict:
    return next(e["resource"] for e in data["entry"] if e["resource"]["id"].endswith(suffix))


def answer(data: dict, qr_suffix: str, link_id: str, value: bool | None) -> dict:
    """Set (or with None remove) one attestation answer."""
    qr = resource(data, qr_suffix)
    qr["item"] = [i for i in qr["item"] if i["linkId"] != link_id]
    if value is not None:
        qr["item"].append({"linkId": link_id, "answer": [{"valueBoolean": value}]})
    return data


def add(data: dict, *resources: dict) -> dict:
    base = "https://fhir.cart-eligibility.example.org/demo"
    for r in resources:
        data["entry"].append({"fullUrl": f"{base}/{r['resourceType']}/{r['id']}", "resource": r})
    return data
