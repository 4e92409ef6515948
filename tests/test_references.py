"""Patient identity, references and versions: bundle mode and pull mode must agree.

Every scenario is run both ways on the same data: as a Bundle (entries with the server's
fullUrls, as a searchset or export would carry them) and in pull mode through the in-process
demo store (real FHIR searches, small pages so copies of a resource land on different pages).
"""

from __future__ import annotations

import copy
from datetime import timedelta
from pathlib import Path

import httpx
import orjson
import pytest

from service.clinical.evaluation import Evaluation
from service.clinical.model import Outcome
from service.fhir.client import ClientConfig, FhirClient
from service.fhir.demo_store import DEMO_BASE_URL, DemoStore
from service.fhir.fetch import MAX_LINKED_RECORDS, fetch_patient
from service.pipeline import evaluate_fetched, evaluate_record
from service.protocol import default_protocol
from service.record import record_from_bundle
from service.references import ReferenceIndex, normalise_base, reference_key
from tests.builders import (
    AS_OF,
    LOINC,
    SNOMED,
    coded_observation,
    concept,
    condition,
    consent,
    lab,
    observation,
    patient,
    quantity,
    questionnaire_response,
    result,
)

PROTOCOL = default_protocol()
PLATELETS = "777-3"  # LOINC platelets, 10*9/L; threshold >= 30
OTHER_SERVER = "http://other-hospital.example.org/fhir"
SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "fhir-samples"


def day(n: int) -> str:
    return (AS_OF - timedelta(days=n)).isoformat()


def platelets(value: float, days_ago: int, rid: str | None = None, **extra) -> dict:
    obs = lab(PLATELETS, value, "10*9/L", day=day(days_ago), **extra)
    if rid is not None:
        obs["id"] = rid
    return obs


def server_bundle(*resources: dict, base: str = DEMO_BASE_URL) -> dict:
    """A Bundle whose fullUrls are the server's RESTful URLs (a searchset or an export)."""
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": f"{base}/{r['resourceType']}/{r['id']}", "resource": r} for r in resources
        ],
    }


def bundle_mode(*resources: dict, pid: str | None = None) -> Evaluation:
    record = record_from_bundle(server_bundle(*resources), PROTOCOL, pid)
    return evaluate_record(record, PROTOCOL, AS_OF)[0]


async def pull_mode(records: dict[str, list[dict]], pid: str, page: int = 2) -> Evaluation:
    """Serve each patient's resources from the demo store; fetch and evaluate ``pid``."""
    bundles = {
        key: {"resourceType": "Bundle", "entry": [{"resource": r} for r in resources]}
        for key, resources in records.items()
    }
    store = DemoStore(bundles, default_page_size=page, max_page_size=page)
    http = httpx.AsyncClient(transport=httpx.MockTransport(store.handle))
    async with FhirClient(http, DEMO_BASE_URL, config=ClientConfig(page_size=page)) as client:
        fetched = await fetch_patient(client, PROTOCOL, pid, AS_OF)
    return evaluate_fetched(fetched, PROTOCOL, AS_OF)[0]


def outcomes(evaluation: Evaluation) -> dict[str, Outcome]:
    out: dict[str, Outcome] = {}
    stack = list(evaluation.results)
    while stack:
        r = stack.pop()
        out[r.code] = r.outcome
        stack.extend(r.members)
    return out


async def both(resources: list[dict], *, code: str, page: int = 2) -> tuple[Outcome, str]:
    """Evaluate one patient's resources both ways; they must agree. (outcome, warnings)."""
    pid = next(r["id"] for r in resources if r["resourceType"] == "Patient")
    bundled = bundle_mode(*copy.deepcopy(resources))
    pulled = await pull_mode({pid: copy.deepcopy(resources)}, pid, page=page)
    assert outcomes(bundled) == outcomes(pulled), "pull mode and bundle mode disagree"
    assert result(bundled, code).outcome is result(pulled, code).outcome
    warnings = " | ".join(i.message for i in bundled.issues)
    return result(bundled, code).outcome, warnings


def messages(evaluation: Evaluation) -> str:
    return " | ".join(i.message for i in evaluation.issues)


# -- 1. the same resource twice with different content ---------------------------------------


def fillers(n: int) -> list[dict]:
    """Other lab results between the two copies, so they land on different pages."""
    return [lab("718-7", 130, "g/L", day=day(3)) for _ in range(n)]


async def test_differing_copies_of_one_resource_are_undetermined_in_both_modes():
    # The copy first in server order (page 1) passes; the other (page 3) fails. Before,
    # pull mode kept the first copy silently and answered met.
    first, second = platelets(250, 1, "plt-1"), platelets(12, 5, "plt-1")
    data = [patient(), first, *fillers(4), second]
    store = DemoStore({"p1": {"entry": [{"resource": r} for r in data]}})
    found = store.search("Observation", [("patient", "p1"), ("_sort", "-date")])
    assert [n // 2 for n, r in enumerate(found) if r["id"] == "plt-1"] == [0, 2]  # pages 1, 3
    outcome, warnings = await both(data, code="I7-platelets", page=2)
    assert outcome is Outcome.UNDETERMINED
    assert "two different versions of this resource" in warnings


@pytest.mark.parametrize("order", ["old-first", "new-first"])
async def test_the_later_version_wins_by_version_id(order):
    v1 = platelets(250, 2, "plt-1", meta={"versionId": "1"})
    v2 = platelets(12, 4, "plt-1", meta={"versionId": "2"})  # a corrected date, on page 3
    copies = [v1, *fillers(3), v2] if order == "old-first" else [v2, *fillers(3), v1]
    outcome, _ = await both([patient(), *copies], code="I7-platelets")
    assert outcome is Outcome.NOT_MET


async def test_last_updated_is_compared_as_an_instant_not_as_text():
    # 10:00+02:00 is 08:00Z: earlier than 09:00Z although it sorts later as text.
    early = platelets(12, 2, "plt-1", meta={"lastUpdated": "2026-11-19T10:00:00+02:00"})
    late = platelets(250, 2, "plt-1", meta={"lastUpdated": "2026-11-19T09:00:00Z"})
    outcome, _ = await both([patient(), early, late], code="I7-platelets")
    assert outcome is Outcome.MET


@pytest.mark.parametrize(
    ("meta_a", "meta_b"),
    [
        ({"versionId": "2", "lastUpdated": "2026-11-18T09:00:00Z"},
         {"versionId": "3", "lastUpdated": "2026-11-17T09:00:00Z"}),
        ({"versionId": "4"}, {"versionId": "4"}),
        ({"lastUpdated": "2026-11-18T09:00:00Z"}, {"lastUpdated": "2026-11-18T09:00:00Z"}),
        ({"versionId": "a"}, {"versionId": "b"}),
    ],
    ids=["version-and-time-disagree", "same-version", "same-time", "opaque-versions"],
)  # fmt: skip
async def test_versions_that_cannot_be_ordered_are_undetermined(meta_a, meta_b):
    a = platelets(250, 2, "plt-1", meta=meta_a)
    b = platelets(12, 2, "plt-1", meta=meta_b)
    outcome, _ = await both([patient(), a, b], code="I7-platelets")
    assert outcome is Outcome.UNDETERMINED


async def test_identical_copies_are_harmless():
    obs = platelets(250, 2, "plt-1")
    outcome, warnings = await both(
        [patient(), obs, *fillers(3), copy.deepcopy(obs)], code="I7-platelets"
    )
    assert outcome is Outcome.MET and "versions" not in warnings


# -- 2. a same-id patient on another server ---------------------------------------------------


async def test_same_id_on_another_server_is_another_patient_in_both_modes():
    ours = platelets(12, 5)  # older, failing
    theirs = platelets(250, 1, subject=f"{OTHER_SERVER}/Patient/p1")  # newer, passing
    outcome, warnings = await both([patient(), ours, theirs], code="I7-platelets")
    assert outcome is Outcome.NOT_MET  # before: met, from the other hospital's patient
    assert "this patient's id on another server" in warnings


@pytest.mark.parametrize(
    "subject",
    [
        "Patient/p1",
        "Patient/p1/_history/4",
        f"{DEMO_BASE_URL}/Patient/p1",
        "HTTP://DEMO.INVALID/fhir/Patient/p1/",
        "http://demo.invalid:80/fhir/Patient/p1/_history/2",
    ],
)
async def test_this_patients_reference_forms_count_in_both_modes(subject):
    outcome, _ = await both(
        [patient(), platelets(250, 2), platelets(12, 1, subject=subject)], code="I7-platelets"
    )
    assert outcome is Outcome.NOT_MET  # the newer result is ours and decides


@pytest.mark.parametrize(
    "subject",
    [
        f"{OTHER_SERVER}/Patient/p1",
        "http://demo.invalid/fhir2/Patient/p1",
        "http://demo.invalid/FHIR/Patient/p1",  # the path is case-sensitive
        "https://demo.invalid/fhir/Patient/p1",  # another scheme is another server
        f"{DEMO_BASE_URL}/Patient/p10",
        "Patient/p1-other",
        "Group/p1",
        "Patient?name=smith",
        "urn:uuid:5f0c6c58-9a55-4d4e-8f1f-111111111111",
    ],
)
async def test_other_references_are_another_patient_in_both_modes(subject):
    outcome, warnings = await both(
        [patient(), platelets(250, 2), platelets(12, 1, subject=subject)], code="I7-platelets"
    )
    assert outcome is Outcome.MET  # the other patient's newer result is not used
    assert "of another patient ignored" in warnings


def test_absolute_reference_is_not_ours_when_the_server_is_unknown():
    # A Patient with a urn fullUrl names no server: an absolute reference may be any server's.
    data = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": "urn:uuid:7c0cbd9e-3f1c-4b51-9d1a-6f0f3b0f1a10", "resource": patient()},
            {"resource": platelets(250, 2)},
            {"resource": platelets(12, 1, subject="https://ehr.example.org/fhir/Patient/p1")},
        ],
    }
    ev = evaluate_record(record_from_bundle(data, PROTOCOL), PROTOCOL, AS_OF)[0]
    assert result(ev, "I7-platelets").outcome is Outcome.MET
    assert "another server" in messages(ev)


def test_relative_reference_in_an_entry_of_another_server_is_that_servers_patient():
    theirs = platelets(12, 1)  # subject "Patient/p1", but the entry came from another server
    data = server_bundle(patient(), platelets(250, 2))
    data["entry"].append({"fullUrl": f"{OTHER_SERVER}/Observation/{theirs['id']}",
                          "resource": theirs})  # fmt: skip
    ev = evaluate_record(record_from_bundle(data, PROTOCOL), PROTOCOL, AS_OF)[0]
    assert result(ev, "I7-platelets").outcome is Outcome.MET


def test_urn_uuid_patient_references_ignore_case():
    urn = "urn:uuid:7c0cbd9e-3f1c-4b51-9d1a-6f0f3b0f1a10"
    pat = patient()
    del pat["id"]
    data = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": urn, "resource": pat},
            {"resource": platelets(250, 2, subject=urn)},
            {"resource": platelets(12, 1, subject=urn.upper().replace("URN:UUID:", "urn:uuid:"))},
        ],
    }
    ev = evaluate_record(record_from_bundle(data, PROTOCOL), PROTOCOL, AS_OF)[0]
    assert result(ev, "I7-platelets").outcome is Outcome.NOT_MET


MRN = {"system": "http://hospital.example.org/mrn", "value": "12345"}


@pytest.mark.parametrize(
    ("subject", "ours"),
    [
        ({"reference": f"Patient?identifier={MRN['system']}|{MRN['value']}"}, True),
        ({"reference": f"Patient?identifier={MRN['system']}|99999"}, False),
        ({"reference": f"Patient?identifier={MRN['value']}"}, False),  # no system
        ({"identifier": MRN}, True),
        ({"identifier": MRN, "type": "Group"}, False),
        ({"identifier": {"value": MRN["value"]}}, False),
        ({"display": "the patient"}, False),
    ],
    ids=["conditional", "conditional-other", "conditional-no-system", "identifier",
         "identifier-not-patient", "identifier-no-system", "display-only"],
)  # fmt: skip
def test_identifier_references_count_only_when_they_match_this_patient(subject, ours):
    newer = platelets(12, 1)
    newer["subject"] = subject
    ev = bundle_mode(patient(identifier=[MRN]), platelets(250, 2), newer)
    assert result(ev, "I7-platelets").outcome is (Outcome.NOT_MET if ours else Outcome.MET)


def test_identifier_carried_by_two_patients_is_not_resolved():
    newer = platelets(12, 1)
    newer["subject"] = {"identifier": MRN}
    ev = bundle_mode(
        patient(identifier=[MRN]), patient(pid="p2", identifier=[MRN]), platelets(250, 2), newer,
        pid="p1",
    )  # fmt: skip
    assert result(ev, "I7-platelets").outcome is Outcome.MET


def test_reference_normal_form():
    assert normalise_base("HTTPS://Ehr.Example.org:443/fhir/") == "https://ehr.example.org/fhir"
    assert normalise_base("http://h:8080/x") == "http://h:8080/x"
    assert reference_key("Patient/1/_history/2", None) == "Patient/1"
    assert reference_key("Patient/1", "http://h/fhir") == "http://h/fhir/Patient/1"
    assert reference_key("http://H/fhir/Patient/1/", None) == "http://h/fhir/Patient/1"
    assert reference_key("URN:UUID:ABC", None) == "urn:uuid:abc"
    assert reference_key("Patient?identifier=a|b", None) is None
    assert reference_key("#c1", None) is None


# -- 3. urn:uuid references inside a Bundle, resolved once for every rule --------------------


REFRACTORY, REMISSION = "266721009", "103338009"
ALL_DX = "277571004"


def urn_bundle(*resources: dict) -> dict:
    """A transaction Bundle linked by urn:uuid fullUrls; references are rewritten to them."""
    urls = {f"{r['resourceType']}/{r['id']}": f"urn:uuid:00000000-0000-4000-8000-{n:012d}"
            for n, r in enumerate(resources)}  # fmt: skip

    def rewrite(value):
        if isinstance(value, dict):
            return {
                k: (urls.get(v, v) if k == "reference" else rewrite(v)) for k, v in value.items()
            }
        if isinstance(value, list):
            return [rewrite(v) for v in value]
        return value

    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": urls[f"{r['resourceType']}/{r['id']}"], "resource": rewrite(r),
             "request": {"method": "POST", "url": r["resourceType"]}}
            for r in resources
        ],
    }  # fmt: skip


def evaluate_bundle(data: dict) -> Evaluation:
    return evaluate_record(record_from_bundle(data, PROTOCOL), PROTOCOL, AS_OF)[0]


def disease_status(value: str, days_ago: int, focus: dict) -> dict:
    obs = coded_observation("97509-4", SNOMED, value, day=day(days_ago))
    obs["focus"] = [{"reference": f"Condition/{focus['id']}"}]
    return obs


def test_disease_status_focus_resolves_through_urn_uuid():
    dx = condition(SNOMED, ALL_DX, onset="2022-01-01")
    refractory = disease_status(REFRACTORY, 30, dx)
    data = urn_bundle(patient(), dx, refractory)
    assert data["entry"][2]["resource"]["focus"][0]["reference"].startswith("urn:uuid:")
    r = result(evaluate_bundle(data), "I4")
    assert r.outcome is Outcome.MET  # before: undetermined, the focus was "not tied"


def test_focus_on_another_patients_condition_is_not_resolved_as_ours():
    dx = condition(SNOMED, ALL_DX, onset="2022-01-01")
    theirs = condition(SNOMED, ALL_DX, onset="2022-01-01", subject={"reference": "Patient/p2"})
    refractory = disease_status(REFRACTORY, 30, theirs)
    data = urn_bundle(patient(), patient(pid="p2"), dx, theirs, refractory)
    ev = evaluate_record(record_from_bundle(data, PROTOCOL, "p1"), PROTOCOL, AS_OF)[0]
    assert result(ev, "I4").outcome is Outcome.UNDETERMINED


async def test_focus_resolves_in_pull_mode_too():
    dx = condition(SNOMED, ALL_DX, onset="2022-01-01")
    outcome, _ = await both([patient(), dx, disease_status(REFRACTORY, 30, dx)], code="I4")
    assert outcome is Outcome.MET


@pytest.mark.parametrize("author_type", ["Practitioner", "PractitionerRole"])
def test_attestation_author_resolves_through_urn_uuid(author_type):
    author = {"resourceType": author_type, "id": "pi-1"}
    qr = questionnaire_response({"I11": True}, authored=day(2), author=f"{author_type}/pi-1")
    data = urn_bundle(patient(), author, qr)
    assert "type" not in data["entry"][2]["resource"]["author"]
    r = result(evaluate_bundle(data), "I11")
    assert r.outcome is Outcome.MET  # before: undetermined, author type unknown


def test_urn_author_that_is_not_a_practitioner_is_not_an_investigator():
    author = {"resourceType": "RelatedPerson", "id": "mother"}
    qr = questionnaire_response({"I11": True}, authored=day(2), author="RelatedPerson/mother")
    data = urn_bundle(patient(), author, qr)
    data["entry"][2]["resource"]["author"]["type"] = "Practitioner"  # says so, but is not
    assert result(evaluate_bundle(data), "I11").outcome is Outcome.UNDETERMINED


def test_conditional_author_reference_resolves_by_identifier():
    npi = {"system": "http://hl7.org/fhir/sid/us-npi", "value": "9999407494"}
    author = {"resourceType": "Practitioner", "id": "pi-1", "identifier": [npi]}
    qr = questionnaire_response(
        {"I11": True}, authored=day(2),
        author=f"Practitioner?identifier={npi['system']}|{npi['value']}",
    )  # fmt: skip
    assert result(evaluate_bundle(urn_bundle(patient(), author, qr)), "I11").outcome is (
        Outcome.MET
    )


def test_consent_study_context_resolves_through_urn_uuid():
    study = {
        "resourceType": "ResearchStudy",
        "id": "rs",
        "identifier": [{"value": PROTOCOL.canonical}],
        "status": "active",
    }
    other = {"resourceType": "ResearchStudy", "id": "rs2", "identifier": [{"value": "urn:x"}]}
    ext = "http://hl7.org/fhir/StructureDefinition/consent-ResearchStudyContext"

    def with_study(target: dict) -> dict:
        c = consent(date_time=day(10), period=(day(10), None))
        c["extension"] = [
            {"url": ext, "valueReference": {"reference": f"ResearchStudy/{target['id']}"}}
        ]
        return c

    ours = result(evaluate_bundle(urn_bundle(patient(), study, with_study(study))), "I12")
    theirs = result(evaluate_bundle(urn_bundle(patient(), other, with_study(other))), "I12")
    assert ours.outcome is Outcome.MET and "another study" not in ours.reason
    assert theirs.outcome is not Outcome.MET


def test_reference_index_resolves_every_form():
    index = ReferenceIndex("http://h/fhir")
    prac = {"resourceType": "Practitioner", "id": "d1",
            "identifier": [{"system": "s", "value": "v"}]}  # fmt: skip
    other = {"resourceType": "Practitioner", "id": "d2"}
    index.add(prac, "urn:uuid:aa")
    index.add(other, "http://x/fhir/Practitioner/d2")
    holder = {"resourceType": "QuestionnaireResponse",
              "contained": [{"resourceType": "Practitioner", "id": "c"}]}  # fmt: skip
    assert index.resolve("urn:uuid:AA") is prac
    assert index.resolve("Practitioner/d1") is prac
    assert index.resolve("http://H/fhir/Practitioner/d1/_history/1") is prac
    assert index.resolve({"reference": "Practitioner?identifier=s|v"}) is prac
    assert index.resolve({"type": "Practitioner", "identifier": {"system": "s", "value": "v"}}) is (
        prac
    )
    assert index.resolve("Practitioner/d2") is None  # that one is on another server
    assert index.resolve("http://x/fhir/Practitioner/d2") is other
    assert index.resolve("#c", holder)["id"] == "c"
    assert index.resolve("#zz", holder) is None


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="../shared/fhir-samples not present")
def test_synthea_transaction_bundle_links_resolve():
    path = next(iter(sorted((SAMPLES / "synthea-smart-generated-sample-data").glob("*.json"))),
                None)  # fmt: skip
    if path is None:
        pytest.skip("no Synthea sample bundle")
    data = orjson.loads(path.read_bytes())
    entries = data["entry"]
    pat = next(e for e in entries if e["resource"]["resourceType"] == "Patient")
    prac = next(e for e in entries if e["resource"]["resourceType"] == "Practitioner")
    qr = questionnaire_response({"I11": True}, authored=day(2), author=prac["fullUrl"],
                                subject=pat["fullUrl"])  # fmt: skip
    dx = condition(SNOMED, ALL_DX, onset="2022-01-01", subject={"reference": pat["fullUrl"]})
    status = coded_observation("97509-4", SNOMED, REFRACTORY, day=day(30),
                               subject=pat["fullUrl"])  # fmt: skip
    status["focus"] = [{"reference": "urn:uuid:00000000-0000-4000-8000-0000000000dd"}]
    entries += [
        {"fullUrl": "urn:uuid:00000000-0000-4000-8000-0000000000aa", "resource": qr},
        {"fullUrl": "urn:uuid:00000000-0000-4000-8000-0000000000dd", "resource": dx},
        {"fullUrl": "urn:uuid:00000000-0000-4000-8000-0000000000ee", "resource": status},
    ]
    ev = evaluate_bundle(data)
    assert result(ev, "I11").outcome is Outcome.MET
    assert result(ev, "I4").outcome is Outcome.MET


# -- 4. merged and linked patient records -----------------------------------------------------


def linked(kind: str, target: str) -> dict:
    return {"other": {"reference": target}, "type": kind}


def survivor(*links: dict) -> dict:
    return patient(pid="p-new", link=list(links))


def old_record(**extra) -> dict:
    return patient(
        pid="p-old", active=False, link=[linked("replaced-by", "Patient/p-new")], **extra
    )


def of(pid: str, obs: dict) -> dict:
    obs["subject"] = {"reference": f"Patient/{pid}"}
    return obs


async def test_merged_record_results_take_part_in_newest_decides():
    new = survivor(linked("replaces", "Patient/p-old"))
    mine = of("p-new", platelets(250, 5))  # older, passing
    merged = of("p-old", platelets(12, 1))  # newer, failing, on the old record
    bundled = bundle_mode(new, old_record(), mine, merged)  # the survivor is chosen
    assert bundled.patient_id == "p-new"
    pulled = await pull_mode({"p-new": [new, mine], "p-old": [old_record(), merged]}, "p-new")
    for ev in (bundled, pulled):
        assert result(ev, "I7-platelets").outcome is Outcome.NOT_MET  # before: met
        assert "merged into this patient" in messages(ev)
    assert outcomes(bundled) == outcomes(pulled)


async def test_merged_record_searches_run_in_parallel_with_the_rest():
    new = survivor(linked("replaces", "Patient/p-old"), linked("replaces", "Patient/p-old"))
    bundles = {
        pid: {"resourceType": "Bundle", "entry": [{"resource": r}]}
        for pid, r in (("p-new", new), ("p-old", old_record()))
    }
    store = DemoStore(bundles)
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return store.handle(request)

    http = httpx.AsyncClient(transport=httpx.MockTransport(handle))
    async with FhirClient(http, DEMO_BASE_URL) as client:
        fetched = await fetch_patient(client, PROTOCOL, "p-new", AS_OF)
    searches = [u for u in seen if "/Patient/" not in u]
    assert sum("patient=p-old" in u for u in searches) == sum(
        "patient=p-new" in u for u in searches
    )
    assert any("(linked record 1)" in k for k in fetched.timings)
    assert fetched.server_base == DEMO_BASE_URL


async def test_seealso_record_holds_its_criteria_open_in_both_modes():
    new = patient(pid="p1", link=[linked("seealso", "Patient/p9")])
    other = patient(pid="p9")
    mine = of("p1", platelets(250, 5))
    theirs = of("p9", platelets(12, 1))
    hb = of("p1", lab("718-7", 130, "g/L", day=day(2)))
    bundled = bundle_mode(new, other, mine, theirs, hb, pid="p1")
    pulled = await pull_mode({"p1": [new, mine, hb], "p9": [other, theirs]}, "p1")
    for ev in (bundled, pulled):
        r = result(ev, "I7-platelets")
        assert r.outcome is Outcome.UNDETERMINED
        assert "Patient.link seealso" in r.reason
        assert result(ev, "I7-hemoglobin").outcome is Outcome.MET  # nothing of it on p9
        assert result(ev, "I1").outcome is Outcome.MET
    assert outcomes(bundled) == outcomes(pulled)


async def test_a_replaced_record_is_never_decided_in_both_modes():
    old = old_record()
    data = [old, of("p-old", platelets(250, 2))]
    bundled = bundle_mode(*data, pid="p-old")
    pulled = await pull_mode({"p-old": data}, "p-old")
    for ev in (bundled, pulled):
        assert set(outcomes(ev).values()) == {Outcome.UNDETERMINED}
        assert "replaced by Patient/p-new" in messages(ev)
    assert bundled.status == pulled.status


@pytest.mark.parametrize(
    "target",
    [f"{OTHER_SERVER}/Patient/p-old", "Patient/not a valid id!", "urn:uuid:1234"],
    ids=["other-server", "invalid-id", "unresolved-urn"],
)
async def test_a_merged_record_that_cannot_be_read_holds_data_criteria_open(target):
    new = survivor(linked("replaces", target))
    mine = of("p-new", platelets(250, 2))
    bundled = bundle_mode(new, mine)
    pulled = await pull_mode({"p-new": [new, mine]}, "p-new")
    for ev in (bundled, pulled):
        assert result(ev, "I7-platelets").outcome is Outcome.UNDETERMINED
        assert result(ev, "I1").outcome is Outcome.MET  # from the Patient itself
        assert "cannot be read" in messages(ev)
    assert outcomes(bundled) == outcomes(pulled)


async def test_too_many_linked_records_are_not_all_searched():
    links = [linked("replaces", f"Patient/old-{n}") for n in range(MAX_LINKED_RECORDS + 1)]
    new = survivor(*links)
    pulled = await pull_mode({"p-new": [new, of("p-new", platelets(250, 2))]}, "p-new")
    assert result(pulled, "I7-platelets").outcome is Outcome.UNDETERMINED
    assert "only 4 were searched" in messages(pulled)


def test_bundle_with_both_records_and_no_choice_picks_the_survivor_only_when_clear():
    new = survivor(linked("replaces", "Patient/p-old"))
    assert record_from_bundle(server_bundle(new, old_record()), PROTOCOL).patient_id == "p-new"
    from service.record import InputError

    with pytest.raises(InputError, match="2 Patient resources"):
        record_from_bundle(server_bundle(patient(pid="a"), patient(pid="b")), PROTOCOL)


# -- CDS Hooks: a prefetch holds one record; linked records are searched on fhirServer --------


EHR = "https://ehr.example.org/fhir"


def _cds_call(prefetch: dict, **extra):
    from service.cds.models import PatientViewRequest

    return PatientViewRequest.model_validate(
        {
            "hook": "patient-view",
            "hookInstance": "5b2c5d8e-6d4b-4b7e-9f39-0d7b6c1e2f3a",
            "context": {"userId": "Practitioner/dr-1", "patientId": "p-new"},
            "prefetch": prefetch,
            **extra,
        }
    )


def _prefetch(store: DemoStore, pid: str) -> dict:
    from service.fhir.queries import prefetch_templates

    return {
        key: store.handle(
            httpx.Request("GET", f"{EHR}/{t.replace('{{context.patientId}}', pid)}")
        ).json()
        for key, t in prefetch_templates(PROTOCOL).items()
    }


async def test_cds_full_prefetch_still_searches_the_merged_record():
    import respx

    from service.cds.prefetch import resolve_prefetch
    from service.settings import Settings

    new = survivor(linked("replaces", "Patient/p-old"))
    records = {"p-new": [new, of("p-new", platelets(250, 5))],
               "p-old": [old_record(), of("p-old", platelets(12, 1))]}  # fmt: skip
    store = DemoStore(
        {k: {"resourceType": "Bundle", "entry": [{"resource": r} for r in v]}
         for k, v in records.items()},
        base_url=EHR,
    )  # fmt: skip
    settings = Settings(_env_file=None, cds_allowed_fhir_servers=[EHR])
    with respx.mock(assert_all_mocked=True) as mock:
        route = mock.route(host="ehr.example.org").mock(side_effect=store.handle)
        resolved = await resolve_prefetch(
            _cds_call(_prefetch(store, "p-new"), fhirServer=EHR), PROTOCOL, settings, AS_OF
        )
    assert route.calls and all("p-old" in str(c.request.url) for c in route.calls)
    ev = evaluate_fetched(resolved, PROTOCOL, AS_OF)[0]
    assert result(ev, "I7-platelets").outcome is Outcome.NOT_MET  # the merged newer result

    # Without fhirServer the linked record cannot be read: nothing data-driven is decided.
    alone = await resolve_prefetch(_cds_call(_prefetch(store, "p-new")), PROTOCOL, settings, AS_OF)
    assert not alone.missing
    ev = evaluate_fetched(alone, PROTOCOL, AS_OF)[0]
    assert result(ev, "I7-platelets").outcome is Outcome.UNDETERMINED
    assert result(ev, "I1").outcome is Outcome.MET


@pytest.mark.parametrize(
    ("old_links", "why"),
    [
        ([linked("replaced-by", "Patient/p-new"), linked("replaces", "Patient/p-older")],
         "links on to another record"),
        ([linked("replaced-by", "Patient/someone-else")], "says it was replaced by another"),
    ],
    ids=["chain-of-merges", "points-elsewhere"],
)  # fmt: skip
async def test_a_merged_record_that_is_not_a_plain_merge_holds_data_criteria_open(old_links, why):
    new = survivor(linked("replaces", "Patient/p-old"))
    old = patient(pid="p-old", active=False, link=old_links)
    mine, merged = of("p-new", platelets(250, 5)), of("p-old", platelets(250, 1))
    bundled = bundle_mode(new, old, mine, merged, pid="p-new")
    pulled = await pull_mode({"p-new": [new, mine], "p-old": [old, merged]}, "p-new")
    for ev in (bundled, pulled):
        assert result(ev, "I7-platelets").outcome is Outcome.UNDETERMINED
        assert why in messages(ev)
    assert outcomes(bundled) == outcomes(pulled)


async def test_a_merged_record_gone_from_the_server_is_not_an_error():
    new = survivor(linked("replaces", "Patient/p-gone"))
    pulled = await pull_mode({"p-new": [new, of("p-new", platelets(250, 2))]}, "p-new")
    assert result(pulled, "I7-platelets").outcome is Outcome.MET


@pytest.mark.parametrize(
    "damage",
    [
        {"link": 5},
        {"link": [5, {"type": "replaces", "other": 7}, {"type": "seealso"}]},
        {"identifier": 5},
        {"identifier": {"system": "s", "value": "v"}},
    ],
)
async def test_malformed_links_and_identifiers_never_sink_the_evaluation(damage):
    pat = patient(**damage)
    odd = platelets(250, 2)
    odd["subject"] = {"identifier": 5}
    prac = {"resourceType": "Practitioner", "id": "d1", "identifier": "x", "contained": 3}
    data = server_bundle(pat, prac, odd, patient(pid="p2", link=3), platelets(250, 1))
    ev = evaluate_record(record_from_bundle(data, PROTOCOL, "p1"), PROTOCOL, AS_OF)[0]
    assert result(ev, "I7-platelets").outcome is not None
    pulled = await pull_mode({"p1": [pat, prac, odd, platelets(250, 1)]}, "p1")
    assert outcomes(pulled) == outcomes(ev)


async def test_differing_copies_coded_differently_hold_both_criteria_open():
    # Same id: one copy says platelets 12, the other hemoglobin 130. Neither is current.
    a = platelets(12, 1, "obs-x")
    b = lab("718-7", 130, "g/L", day=day(1))
    b["id"] = "obs-x"
    outcome, _ = await both([patient(), platelets(250, 5), a, b], code="I7-platelets")
    assert outcome is Outcome.UNDETERMINED


async def test_an_older_version_arriving_later_does_not_replace_the_newer():
    v2 = platelets(12, 1, "obs-x", meta={"versionId": "2"})
    v1 = lab("718-7", 130, "g/L", day=day(1), meta={"versionId": "1"})
    v1["id"] = "obs-x"
    ev = bundle_mode(patient(), platelets(250, 5), v2, v1)
    assert result(ev, "I7-platelets").outcome is Outcome.NOT_MET  # v2 (platelets 12) holds


@pytest.mark.parametrize(
    ("first", "second", "code"),
    [
        (condition(SNOMED, ALL_DX, id="c-1"), condition(SNOMED, "91857003", id="c-1"), "I3"),
        (questionnaire_response({"I11": True}, authored=day(2), id="qr-1"),
         questionnaire_response({"I11": False}, authored=day(2), id="qr-1"), "I11"),
        (consent(date_time=day(10), period=(day(10), None), id="cs-1"),
         consent(status="rejected", date_time=day(10), id="cs-1"), "I12"),
    ],
    ids=["condition", "attestation", "consent"],
)  # fmt: skip
async def test_differing_copies_of_any_resource_type_are_undetermined(first, second, code):
    outcome, warnings = await both([patient(), first, second], code=code)
    assert outcome is Outcome.UNDETERMINED
    assert "two different versions" in warnings


@pytest.mark.parametrize(
    "make",
    [
        lambda: condition(SNOMED, ALL_DX, subject={"reference": f"{OTHER_SERVER}/Patient/p1"}),
        lambda: consent(date_time=day(10), period=(day(10), None),
                        patient_ref=f"{OTHER_SERVER}/Patient/p1"),
        lambda: questionnaire_response({"I11": True}, authored=day(2),
                                       subject=f"{OTHER_SERVER}/Patient/p1"),
    ],
    ids=["condition", "consent", "attestation"],
)  # fmt: skip
async def test_another_servers_patient_is_ignored_for_every_resource_type(make):
    outcome_by_code = {"Condition": "I3", "Consent": "I12", "QuestionnaireResponse": "I11"}
    res = make()
    outcome, warnings = await both([patient(), res], code=outcome_by_code[res["resourceType"]])
    assert outcome is Outcome.UNDETERMINED  # nothing of this patient's: not met from theirs
    assert "another server" in warnings


@pytest.mark.parametrize(
    "target",
    ["Patient/p-old", f"{DEMO_BASE_URL}/Patient/p-old", "Patient/p-old/_history/3",
     "HTTP://demo.invalid/fhir/Patient/p-old/"],
)  # fmt: skip
async def test_merge_link_forms(target):
    new = survivor(linked("replaces", target))
    mine, merged = of("p-new", platelets(250, 5)), of("p-old", platelets(12, 1))
    bundled = bundle_mode(new, old_record(), mine, merged)
    pulled = await pull_mode({"p-new": [new, mine], "p-old": [old_record(), merged]}, "p-new")
    for ev in (bundled, pulled):
        assert result(ev, "I7-platelets").outcome is Outcome.NOT_MET


# -- every demo patient, disturbed in each way above: pull mode and bundle mode agree ---------


def _disturb(bundle: dict, how: str) -> dict:
    """A copy of a demo Bundle with one class of identity/version problem in every lab."""
    out = copy.deepcopy(bundle)
    extra = []
    for n, entry in enumerate(out["entry"]):
        res = entry["resource"]
        if res["resourceType"] != "Observation" or "valueQuantity" not in res:
            continue
        twin = copy.deepcopy(res)
        twin["valueQuantity"]["value"] = twin["valueQuantity"]["value"] * 0.1
        if how == "differing-copy":
            pass
        elif how == "newer-version":
            res["meta"], twin["meta"] = {"versionId": "1"}, {"versionId": "2"}
        elif how == "foreign-subject":
            twin["id"] = f"{res['id']}-x"
            twin["subject"] = {"reference": f"{OTHER_SERVER}/{res['subject']['reference']}"}
        extra.append({"fullUrl": f"urn:uuid:00000000-0000-4000-8000-{n:012d}", "resource": twin})
    out["entry"] += extra
    return out


@pytest.mark.parametrize("how", ["differing-copy", "newer-version", "foreign-subject"])
async def test_demo_patients_disturbed_agree_both_ways(how):
    from service.demo import load_demo_bundles

    bundles = {pid: _disturb(b, how) for pid, b in load_demo_bundles(AS_OF).items()}
    store = DemoStore(bundles, default_page_size=7, max_page_size=7)
    http = httpx.AsyncClient(transport=httpx.MockTransport(store.handle))
    async with FhirClient(http, DEMO_BASE_URL, config=ClientConfig(page_size=7)) as client:
        for pid, data in bundles.items():
            bundled = evaluate_record(record_from_bundle(data, PROTOCOL, pid), PROTOCOL, AS_OF)[0]
            fetched = await fetch_patient(client, PROTOCOL, pid, AS_OF)
            pulled = evaluate_fetched(fetched, PROTOCOL, AS_OF)[0]
            assert outcomes(bundled) == outcomes(pulled), (how, pid)
            if how == "differing-copy":
                assert result(bundled, "I7").outcome is not Outcome.MET, pid


async def test_a_seealso_related_person_is_not_a_patient_record():
    from service.fhir.fetch import follows_links

    pat = patient(link=[linked("seealso", "RelatedPerson/mother")])
    assert not follows_links(pat)
    outcome, warnings = await both([pat, platelets(250, 2)], code="I7-platelets")
    assert outcome is Outcome.MET and "Patient.link" not in warnings


# -- component-only panels are searched for in pull mode -------------------------------------


async def test_a_panel_with_the_analyte_only_in_a_component_is_fetched_in_pull_mode():
    """Pull mode searches ``combo-code``: a ``code`` search never finds a CBC whose platelet
    count is a component, and an older passing standalone result would decide alone."""
    pat = patient("p1")
    standalone = platelets(250, 6, "old-plt")
    cbc = observation(
        "58410-2",  # CBC panel: in no ValueSet of the protocol
        day=day(1),
        component=[{"code": concept(LOINC, PLATELETS), "valueQuantity": quantity(12, "10*9/L")}],
    )
    cbc["id"] = "cbc"
    outcome, _ = await both([pat, standalone, cbc], code="I7-platelets")
    assert outcome is Outcome.NOT_MET
