"""The query plan, the parallel patient fetch, and the built-in demo store."""

from __future__ import annotations

import asyncio
import time
import tomllib
from datetime import date, timedelta

import httpx
import pytest
import respx
import stamina

import service.fhir.demo_store as demo_store
from fhir_mappings import DEFAULT_PROTOCOL
from service.fhir.client import ClientConfig, FhirClient
from service.fhir.demo_store import DEMO_BASE_URL, DemoStore, demo_transport
from service.fhir.errors import InvalidPatientId, PatientNotFound, UpstreamError
from service.fhir.fetch import fetch_patient
from service.fhir.pool import client_for
from service.fhir.queries import plan_queries, prefetch_templates
from service.protocol import CriterionDef, Protocol, ValueSet
from service.settings import Settings

LOINC = "http://loinc.org"
QUESTIONNAIRE = "http://example.org/fhir/Questionnaire/attestation"
TODAY = date(2025, 6, 15)
CODES = {
    "bilirubin-total": {(LOINC, "1975-2")},
    "hemoglobin": {(LOINC, "718-7"), (LOINC, "59260-0")},
    "lvef": {(LOINC, "10230-1")},
    "cd19-immunophenotype": {(LOINC, "cd19-test")},
    "ecog": {(LOINC, "89247-1")},
    "karnofsky": {(LOINC, "89243-0")},
    "disease-status-observation": {("http://snomed.info/sct", "disease-status")},
}


@pytest.fixture(autouse=True)
def fast_retries():
    with stamina.set_testing(True, attempts=100, cap=True):
        yield


def make_protocol() -> Protocol:
    """The real protocol.toml criteria with stand-in ValueSets (codes only matter here)."""
    raw = tomllib.loads(DEFAULT_PROTOCOL.read_text(encoding="utf-8"))
    criteria: dict[str, CriterionDef] = {}
    vs_ids: set[str] = set()
    for code, spec in raw["criteria"].items():
        spec = dict(spec)
        title, rule, members = spec.pop("title"), spec.pop("rule"), spec.pop("members", ())
        criteria[code] = CriterionDef(code, title, rule, spec, tuple(members))
        for key, value in spec.items():
            if key.endswith("valueset"):
                vs_ids.add(value)
            elif key.endswith("valuesets"):
                vs_ids.update(value)
    valuesets = {
        v: ValueSet(v, f"http://example.org/fhir/ValueSet/{v}",
                    frozenset(CODES.get(v, {(LOINC, f"{v}-code")})), {})
        for v in vs_ids
    }  # fmt: skip
    return Protocol(
        id="test",
        directory=DEFAULT_PROTOCOL.parent,
        general=raw.get("general", {}),
        criteria=criteria,
        valuesets=valuesets,
        research_study={"url": "http://example.org/fhir/ResearchStudy/x", "version": "1"},
        criteria_codesystem={},
        result_codesystem={},
        questionnaire={"url": QUESTIONNAIRE},
        canonical="http://example.org/fhir/ResearchStudy/x",
        version="1",
    )


PROTOCOL = make_protocol()
LAB_SETS = {"bilirubin-total", "alt", "ast", "creatinine", "anc", "platelets", "hemoglobin", "lvef",
            "lvef-any-method"}  # fmt: skip


# -- the plan -----------------------------------------------------------------------------


def test_plan_groups_observation_searches_by_protocol_windows():
    plan = {q.key: q for q in plan_queries(PROTOCOL, "p1", TODAY)}
    assert list(plan) == [
        "patient", "cd19Immunophenotype", "diseaseStatus", "labs", "ecog", "undated",
        "conditions", "procedures", "consents", "attestations", "reports",
    ]  # fmt: skip
    assert plan["patient"].read and plan["patient"].read_id == "p1"
    # issue 19 §4: a result with no effective time is never found by a date search
    undated = dict(plan["undated"].params)
    assert undated["date:missing"] == "true" and "date" not in undated
    assert set(undated["combo-code"].split(",")) >= set(
        dict(plan["labs"].params)["combo-code"].split(",")
    )
    assert dict(plan["undated"].fallback or ())["_sort"] == "-date"  # no date filter at all
    assert "date:missing" not in dict(plan["undated"].fallback or ())
    # issue 19 §5: echocardiography reports, whose results take their method from them
    reports = dict(plan["reports"].params)
    assert plan["reports"].resource_type == "DiagnosticReport" and reports["patient"] == "p1"
    assert reports["code"] == "http://loinc.org|echocardiography-report-code"  # test protocol
    assert plan["reports"].feeds == {"DiagnosticReport"}

    labs = dict(plan["labs"].params)
    assert plan["labs"].feeds == LAB_SETS
    assert labs["date"] == f"ge{TODAY - timedelta(days=43)}"  # LVEF's 42 d + 1 d margin
    assert labs["_sort"] == "-date" and labs["patient"] == "p1"
    codes = set(labs["combo-code"].split(","))
    assert {
        "http://loinc.org|1975-2",
        "http://loinc.org|718-7",
        "http://loinc.org|59260-0",
    } <= codes
    assert "http://loinc.org|89247-1" not in codes  # ECOG has its own search

    assert dict(plan["cd19Immunophenotype"].params)["date"] == f"ge{TODAY - timedelta(days=91)}"
    ecog = dict(plan["ecog"].params)
    assert plan["ecog"].feeds == {"ecog", "karnofsky"}
    assert ecog["date"] == f"ge{TODAY - timedelta(days=31)}"
    assert set(ecog["combo-code"].split(",")) == {
        "http://loinc.org|89247-1",
        "http://loinc.org|89243-0",
    }
    assert "date" not in dict(plan["diseaseStatus"].params)  # all history
    assert plan["diseaseStatus"].feeds == {"disease-status-observation"}

    assert plan["conditions"].feeds == {"Condition"}
    assert plan["attestations"].params == (("patient", "p1"), ("questionnaire", QUESTIONNAIRE))


def test_plan_without_as_of_has_no_date_filters_and_ids_are_checked():
    assert not any(n == "date" for q in plan_queries(PROTOCOL, "p1", None) for n in q.param_names)
    with pytest.raises(InvalidPatientId):
        plan_queries(PROTOCOL, "p1/../x", TODAY)


def test_prefetch_templates():
    t = prefetch_templates(PROTOCOL)
    assert t["patient"] == "Patient/{{context.patientId}}"
    assert t["ecog"] == (
        "Observation?patient={{context.patientId}}"
        "&combo-code=http://loinc.org|89243-0,http://loinc.org|89247-1&_sort=-date"
    )
    assert t["attestations"] == (
        f"QuestionnaireResponse?patient={{{{context.patientId}}}}&questionnaire={QUESTIONNAIRE}"
    )
    assert t["conditions"] == "Condition?patient={{context.patientId}}"
    assert all("date=" not in v for v in t.values())
    assert set(t) == {q.key for q in plan_queries(PROTOCOL, "x", None)}


def test_plan_of_the_real_protocol_when_its_files_exist():
    try:
        from service.protocol import default_protocol

        protocol = default_protocol()
    except (OSError, ValueError) as exc:
        pytest.skip(f"protocol FHIR resources not written yet ({type(exc).__name__})")
    keys = [q.key for q in plan_queries(protocol, "p1", TODAY)]
    assert keys == [q.key for q in plan_queries(PROTOCOL, "p1", TODAY)]  # same derivation
    for q in plan_queries(protocol, "p1", TODAY):
        if q.resource_type == "Observation":
            assert dict(q.params)["combo-code"], q.key


# -- demo data ------------------------------------------------------------------------------


def days_ago(n: int) -> str:
    return (TODAY - timedelta(days=n)).isoformat() + "T08:00:00Z"


def observation(rid: str, code: tuple[str, str], when: str, value: float = 1.0) -> dict:
    return {
        "resourceType": "Observation",
        "id": rid,
        "status": "final",
        "code": {"coding": [{"system": code[0], "code": code[1]}]},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value},
    }


def demo_bundles() -> dict[str, dict]:
    p1 = [
        {"resourceType": "Patient", "id": "p1", "birthDate": "1980-01-01"},
        observation("bili-new", (LOINC, "1975-2"), days_ago(5)),
        observation("bili-old", (LOINC, "1975-2"), days_ago(60)),  # outside 43 d
        *(observation(f"hb-{i}", (LOINC, "718-7"), days_ago(i)) for i in range(1, 8)),
        observation("ecog-new", (LOINC, "89247-1"), days_ago(10)),
        observation("ecog-old", (LOINC, "89247-1"), days_ago(40)),  # outside 31 d
        observation("cd19", (LOINC, "cd19-test"), days_ago(80)),
        observation("status", ("http://snomed.info/sct", "disease-status"), days_ago(700)),
        observation("pulse", (LOINC, "8867-4"), days_ago(1)),  # not in any ValueSet
        {"resourceType": "Condition", "id": "dx", "code": {"text": "B-ALL"}},
        {"resourceType": "Procedure", "id": "hsct", "status": "completed"},
        {"resourceType": "Consent", "id": "consent", "status": "active"},
        {
            "resourceType": "QuestionnaireResponse",
            "id": "qr",
            "questionnaire": f"{QUESTIONNAIRE}|1",
        },
        {"resourceType": "QuestionnaireResponse", "id": "qr-other", "questionnaire": "http://x/Q"},
    ]
    p2 = [
        {"resourceType": "Patient", "id": "p2"},
        observation("p2-bili", (LOINC, "1975-2"), days_ago(1)),
    ]
    return {
        pid: {"resourceType": "Bundle", "type": "collection",
              "entry": [{"resource": r} for r in resources]}
        for pid, resources in (("p1", p1), ("p2", p2))
    }  # fmt: skip


def demo_client(page: int = 3, config: ClientConfig | None = None) -> FhirClient:
    transport = demo_transport(demo_bundles(), default_page_size=page, max_page_size=page)
    http = httpx.AsyncClient(transport=transport)
    return FhirClient(http, DEMO_BASE_URL, config=config or ClientConfig(page_size=page))


async def test_fetch_patient_through_the_demo_store_with_paging():
    async with demo_client(page=3) as client:
        result = await fetch_patient(client, PROTOCOL, "p1", TODAY)
    ids = {r["id"] for r in result.resources}
    assert result.patient["id"] == "p1"
    assert ids == {
        "bili-new", *(f"hb-{i}" for i in range(1, 8)), "ecog-new", "cd19", "status",
        "dx", "hsct", "consent", "qr",
    }  # fmt: skip
    assert result.truncated == frozenset() and result.issues == []
    assert set(result.timings) == {q.key for q in plan_queries(PROTOCOL, "p1", TODAY)}
    labs = [r["id"] for r in result.resources if r["id"].startswith(("hb", "bili"))]
    assert labs[:3] == ["hb-1", "hb-2", "hb-3"]  # _sort=-date across pages


def _undated_platelets() -> dict[str, dict]:
    """p1 with a hemoglobin 3 days ago and one with no time at all."""
    bundles = demo_bundles()
    old = observation("plt-dated", (LOINC, "718-7"), days_ago(3), value=100)
    undated = observation("plt-undated", (LOINC, "718-7"), days_ago(0), value=5)
    del undated["effectiveDateTime"]
    bundles["p1"]["entry"] += [{"resource": old}, {"resource": undated}]
    return bundles


@pytest.mark.parametrize("refuse_missing", [False, True])
async def test_a_result_with_no_time_is_fetched_even_with_date_filters(refuse_missing):
    """Issue 19 §4: bundle mode keeps an undated result (it may be the newest and blocks
    older ones); pull mode must read it too, also from a server without ``:missing``."""
    store = DemoStore(_undated_platelets())
    seen: list[httpx.QueryParams] = []

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/Observation"):
            seen.append(request.url.params)
        if refuse_missing and "date:missing" in request.url.params:
            return httpx.Response(400, json={"resourceType": "OperationOutcome", "issue": []})
        return store.handle(request)

    http = httpx.AsyncClient(transport=httpx.MockTransport(handle))
    async with FhirClient(http, DEMO_BASE_URL) as client:
        result = await fetch_patient(client, PROTOCOL, "p1", TODAY)
    ids = {r["id"] for r in result.resources}
    assert {"plt-dated", "plt-undated"} <= ids
    assert any(p.get("date:missing") == "true" for p in seen)
    unfiltered = [
        p
        for p in seen
        if "718-7" in p["combo-code"] and "date" not in p and "date:missing" not in p
    ]
    assert len(unfiltered) == (1 if refuse_missing else 0)  # the fallback, only when refused


async def test_fetch_only_some_keys():
    async with demo_client() as client:
        result = await fetch_patient(client, PROTOCOL, "p1", TODAY, only={"ecog", "consents"})
    assert result.patient == {}
    assert {r["id"] for r in result.resources} == {"ecog-new", "consent"}
    with pytest.raises(ValueError, match="unknown query keys"):
        async with demo_client() as client:
            await fetch_patient(client, PROTOCOL, "p1", TODAY, only={"nope"})


async def test_truncated_search_is_reported_in_the_fetch_result():
    async with demo_client(page=3, config=ClientConfig(page_size=3, max_pages=1)) as client:
        result = await fetch_patient(client, PROTOCOL, "p1", TODAY)
    assert result.truncated == LAB_SETS  # 8 lab results, one page of 3 allowed
    assert len(result.issues) == 1 and "'labs'" in result.issues[0].message
    assert result.issues[0].severity == "warning"


async def test_unknown_patient_fails_the_whole_fetch():
    async with demo_client() as client:
        with pytest.raises(PatientNotFound):
            await fetch_patient(client, PROTOCOL, "nobody", TODAY)


async def test_one_failing_search_fails_the_fetch_and_names_it():
    with respx.mock(base_url="http://fhir.test/fhir", assert_all_called=False) as router:
        router.get("/Patient/p1").respond(200, json={"resourceType": "Patient", "id": "p1"})
        router.get("/Consent").respond(500)
        empty = {"resourceType": "Bundle", "type": "searchset", "entry": []}
        router.route().respond(200, json=empty)
        async with FhirClient(httpx.AsyncClient(), "http://fhir.test/fhir") as client:
            with pytest.raises(UpstreamError) as err:
                await fetch_patient(client, PROTOCOL, "p1", TODAY)
    assert "'consents' Consent search" in err.value.message and "HTTP 500" in err.value.message


@pytest.mark.parametrize(
    "bundle",
    [
        {"resourceType": "Bundle", "type": "searchset", "entry": 5},
        {"resourceType": "Bundle", "type": "searchset", "link": 5},
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": {"resourceType": "Consent", "id": "c"}, "search": "match"}],
        },
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": {"resourceType": "Consent", "id": ["p1"]}}],  # unhashable
        },
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "link": [{"relation": "next", "url": "http://[p1/fhir/Consent"}],
        },
    ],
    ids=["entry-number", "link-number", "search-string", "id-list", "unparsable-next"],
)
async def test_a_malformed_search_fails_the_fetch_as_an_upstream_error(bundle):
    with respx.mock(base_url="http://fhir.test/fhir", assert_all_called=False) as router:
        router.get("/Patient/p1").respond(200, json={"resourceType": "Patient", "id": "p1"})
        router.get("/Consent").respond(200, json=bundle)
        empty = {"resourceType": "Bundle", "type": "searchset", "entry": []}
        router.route().respond(200, json=empty)
        async with FhirClient(httpx.AsyncClient(), "http://fhir.test/fhir") as client:
            with pytest.raises(UpstreamError) as err:  # not a TypeError or an ExceptionGroup
                await fetch_patient(client, PROTOCOL, "p1", TODAY)
    assert "'consents' Consent search" in err.value.message
    assert "malformed Bundle" in err.value.message and "p1" not in err.value.message
    assert err.value.http_status == 502


async def test_a_programming_error_is_not_turned_into_an_upstream_error(monkeypatch):
    async def broken(self, query):
        raise KeyError("bug")

    monkeypatch.setattr(FhirClient, "search", broken)
    with respx.mock(base_url="http://fhir.test/fhir") as router:
        router.get("/Patient/p1").respond(200, json={"resourceType": "Patient", "id": "p1"})
        async with FhirClient(httpx.AsyncClient(), "http://fhir.test/fhir") as client:
            with pytest.raises(ExceptionGroup) as err:
                await fetch_patient(client, PROTOCOL, "p1", TODAY)
    assert err.group_contains(KeyError)


async def test_queries_run_in_parallel():
    """Each request is slowed by 0.20-0.30 s; the total must track the slowest, not the sum."""
    delays: dict[str, float] = {}

    async def slow_server(request: httpx.Request) -> httpx.Response:
        n = len(delays)
        delay = 0.20 + 0.10 * (n % 9) / 8
        delays[f"{request.method} {request.url.path}?{len(request.url.query)}"] = delay
        await asyncio.sleep(delay)
        if request.url.path.endswith("/Patient/p1"):
            return httpx.Response(200, json={"resourceType": "Patient", "id": "p1"})
        rtype = request.url.path.rsplit("/", 1)[-1]
        entry = [{"resource": {"resourceType": rtype, "id": f"{rtype}-{n}"}}]
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset",
                                         "entry": entry})  # fmt: skip

    with respx.mock() as router:
        router.route(host="fhir.test").mock(side_effect=slow_server)
        async with FhirClient(httpx.AsyncClient(), "http://fhir.test/fhir") as client:
            started = time.perf_counter()
            result = await fetch_patient(client, PROTOCOL, "p1", TODAY)
            total = time.perf_counter() - started

    n = len(plan_queries(PROTOCOL, "p1", TODAY))
    slowest, summed = max(delays.values()), sum(delays.values())
    print(
        f"\nparallel fetch: {n} requests, total {total * 1000:.0f} ms, "
        f"slowest single {slowest * 1000:.0f} ms, sum of delays {summed * 1000:.0f} ms; "
        f"per-query ms {result.timings}"
    )
    assert len(delays) == n and len(result.resources) == n - 1
    assert total < slowest + 0.25
    assert total < summed / 3


# -- the demo store itself ------------------------------------------------------------------


async def demo_get(path: str, params=None, store: DemoStore | None = None) -> httpx.Response:
    store = store or DemoStore(demo_bundles(), default_page_size=2, max_page_size=2)
    async with httpx.AsyncClient(transport=httpx.MockTransport(store.handle)) as http:
        return await http.get(f"{DEMO_BASE_URL}/{path}", params=params)


async def test_demo_store_paging_links_walk_all_results():
    store = DemoStore(demo_bundles(), default_page_size=2, max_page_size=2)
    ids, url, pages = [], f"{DEMO_BASE_URL}/Observation?patient=p1&code={LOINC}|718-7", 0
    async with httpx.AsyncClient(transport=httpx.MockTransport(store.handle)) as http:
        while url:
            bundle = (await http.get(url)).json()
            pages += 1
            assert bundle["type"] == "searchset" and bundle["total"] == 7
            ids += [e["resource"]["id"] for e in bundle["entry"]]
            url = next((x["url"] for x in bundle["link"] if x["relation"] == "next"), None)
    assert pages == 4 and sorted(ids) == sorted(f"hb-{i}" for i in range(1, 8))


async def test_demo_store_filters():
    async def ids(params: dict) -> list[str]:
        resp = await demo_get("Observation", {"patient": "p1", "_count": "50", **params},
                              DemoStore(demo_bundles(), max_page_size=50))  # fmt: skip
        assert resp.status_code == 200
        return [e["resource"]["id"] for e in resp.json()["entry"]]

    assert sorted(await ids({"code": f"{LOINC}|1975-2"})) == ["bili-new", "bili-old"]
    assert sorted(await ids({"code": "1975-2"})) == ["bili-new", "bili-old"]  # any system
    assert await ids({"code": "http://snomed.info/sct|1975-2"}) == []
    assert await ids({"code": f"{LOINC}|1975-2", "date": f"ge{TODAY - timedelta(days=30)}"}) == [
        "bili-new"
    ]
    assert await ids({"code": f"{LOINC}|1975-2", "date": f"lt{TODAY - timedelta(days=30)}"}) == [
        "bili-old"
    ]
    both = f"{LOINC}|89247-1,{LOINC}|1975-2"
    assert await ids({"code": both, "_sort": "-date"}) == [
        "bili-new", "ecog-new", "ecog-old", "bili-old"
    ]  # fmt: skip
    assert await ids({"code": both, "_sort": "date"}) == [
        "bili-old", "ecog-old", "ecog-new", "bili-new"
    ]  # fmt: skip


async def test_demo_store_other_types_and_errors():
    qr = await demo_get("QuestionnaireResponse", {"patient": "p1", "questionnaire": QUESTIONNAIRE})
    assert [e["resource"]["id"] for e in qr.json()["entry"]] == ["qr"]
    other = await demo_get("Observation", {"patient": "Patient/p2"})
    assert [e["resource"]["id"] for e in other.json()["entry"]] == ["p2-bili"]
    assert (await demo_get("Patient/p1")).json()["id"] == "p1"
    missing = await demo_get("Patient/zz")
    assert missing.status_code == 404 and missing.json()["resourceType"] == "OperationOutcome"
    unknown = await demo_get("Observation", {"patient": "p1", "foo": "bar"})
    assert unknown.status_code == 400


async def test_demo_store_answers_post_search():
    store = DemoStore(demo_bundles())
    async with httpx.AsyncClient(transport=httpx.MockTransport(store.handle)) as http:
        resp = await http.post(
            f"{DEMO_BASE_URL}/Observation/_search",
            content=f"patient=p1&code={LOINC}|89247-1".encode(),
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
    assert sorted(e["resource"]["id"] for e in resp.json()["entry"]) == ["ecog-new", "ecog-old"]


def test_demo_store_runs_a_search_once_for_all_its_pages(monkeypatch):
    store = DemoStore(demo_bundles(), default_page_size=2, max_page_size=2, cache_size=2)
    calls: list[str] = []
    search = store._search
    monkeypatch.setattr(store, "_search", lambda t, p: calls.append(t) or search(t, p))
    hb = [("patient", "p1"), ("code", f"{LOINC}|718-7"), ("_sort", "-date")]
    pages = [store.page("Observation", [*hb, ("_offset", str(o))]) for o in (0, 2, 4, 6)]
    assert [e["resource"]["id"] for p in pages for e in p["entry"]] == [
        f"hb-{i}" for i in range(1, 8)
    ]
    assert calls == ["Observation"]  # later pages came from the cache
    assert store.search("Observation", list(reversed(hb))) is store.search("Observation", hb)
    store.search("Consent", [("patient", "p1")])
    store.search("Procedure", [("patient", "p1")])  # evicts the oldest (cache_size=2)
    store.search("Observation", hb)
    assert calls == ["Observation", "Consent", "Procedure", "Observation"]


def test_demo_store_caps_the_page_size():
    store = DemoStore(demo_bundles(), max_page_size=3)
    page = store.page("Observation", [("patient", "p1"), ("_count", "500")])
    assert len(page["entry"]) == 3 and page["total"] == 14
    next_url = next(x["url"] for x in page["link"] if x["relation"] == "next")
    assert "_count=3" in next_url and "_offset=3" in next_url
    assert len(DemoStore(demo_bundles(), max_page_size=500).page(
        "Observation", [("patient", "p1"), ("_count", "500")])["entry"]) == 14  # fmt: skip


async def test_demo_store_refuses_malformed_dates_and_answers_metadata_and_reads():
    for bad in ("ge2025-13-45", "ap2025-01-01", "yesterday"):
        resp = await demo_get("Observation", {"patient": "p1", "date": bad})
        assert resp.status_code == 400, bad
        assert resp.json()["resourceType"] == "OperationOutcome"
    metadata = (await demo_get("metadata")).json()
    assert metadata["resourceType"] == "CapabilityStatement"
    types = {r["type"] for r in metadata["rest"][0]["resource"]}
    assert {"Patient", "Observation", "QuestionnaireResponse"} <= types
    assert (await demo_get("Observation/hb-3")).json()["effectiveDateTime"] == days_ago(3)
    assert (await demo_get("Observation/nope")).status_code == 404


def test_demo_store_token_forms_and_conflicting_patients():
    store = DemoStore(demo_bundles())

    def ids(*params: tuple[str, str]) -> list[str]:
        return sorted(r["id"] for r in store.search("Observation", list(params)))

    assert ids(("patient", "p1"), ("code", f"{LOINC}|")) == sorted(
        ["bili-new", "bili-old", *(f"hb-{i}" for i in range(1, 8)), "ecog-new", "ecog-old",
         "cd19", "pulse"]
    )  # fmt: skip
    assert ids(("patient", "p1"), ("code", "|718-7")) == []  # "no system" matches none here
    assert ids(("patient", "p1"), ("patient", "p2")) == []
    assert ids(("subject", "Patient/p2")) == ["p2-bili"]


async def test_client_for_without_a_base_uses_the_demo_store(monkeypatch):
    monkeypatch.setattr(demo_store, "_load_demo_bundles", demo_bundles)
    settings = Settings(_env_file=None, fhir_base_url=None, page_size=4)
    async with client_for(settings) as client:
        assert client.base_url == DEMO_BASE_URL
        result = await fetch_patient(client, PROTOCOL, "p2", TODAY)
    assert result.patient["id"] == "p2"
    assert [r["id"] for r in result.resources] == ["p2-bili"]
