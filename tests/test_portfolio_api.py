"""$eligibility for several studies: one Bundle, one part per study, the data read once."""

from __future__ import annotations

import asyncio
from datetime import date

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.bundle import Bundle

from service import lean
from service.api import create_app
from service.demo import load_demo_bundles
from service.fhir.client import FhirClient
from service.fhir.demo_store import DEMO_BASE_URL, DemoStore
from service.portfolio import load_portfolio
from service.portfolio_eval import contexts_for, evaluate_body_portfolio, fetch_portfolio
from service.settings import Settings
from tests.protocol_copies import (
    SECOND_CANONICAL,
    SECOND_ID,
    SECOND_NCT,
    SEED_DIR,
    edit_toml,
    second_protocol,
)
from tests.screening_population import normalise

FHIR = {"Content-Type": "application/fhir+json"}
SEED_ID = "cd19-cart-rr-ball"
SEED_CANONICAL = "https://fhir.cart-eligibility.example.org/ResearchStudy/cd19-cart-rr-ball"
DEMO = load_demo_bundles()


def stricter_second(folder):
    """The seed's criteria under another id and NCT number, with a platelet threshold no
    demo patient reaches and a longer lab window (so one lab search differs)."""
    second_protocol(folder)
    edit_toml(folder, 'threshold = { value = 30, unit = "10*9/L" }',
              'threshold = { value = 2000, unit = "10*9/L" }')  # fmt: skip
    edit_toml(folder, "window_days = 14", "window_days = 60")
    return folder


@pytest.fixture(scope="module")
def second(tmp_path_factory):
    return stricter_second(tmp_path_factory.mktemp("portfolio") / "second")


def _client(**settings):
    app = create_app(Settings(cds_auth_enabled=False, **settings))
    return TestClient(app)


@pytest.fixture(scope="module")
def both(second):
    with _client(protocol_dirs=[SEED_DIR, second]) as c:
        yield c


@pytest.fixture(scope="module")
def seed_alone():
    with _client() as c:
        yield c


@pytest.fixture(scope="module")
def second_alone(second):
    with _client(protocol_path=second / "protocol.toml") as c:
        yield c


def _post(client, body, query=""):
    return client.post(f"/$eligibility?asOf={date.today()}{query}", content=body, headers=FHIR)


def _parts(bundle: dict) -> list[list[dict]]:
    """The Bundle's entries cut at each ResearchSubject: one list per study."""
    parts: list[list[dict]] = []
    for entry in bundle["entry"]:
        if entry["resource"]["resourceType"] == "ResearchSubject":
            parts.append([])
        parts[-1].append(entry)
    return parts


def _references(node) -> list[str]:
    if isinstance(node, dict):
        found = [node["reference"]] if isinstance(node.get("reference"), str) else []
        return found + [r for v in node.values() for r in _references(v)]
    if isinstance(node, list):
        return [r for v in node for r in _references(v)]
    return []


def test_research_study_search_lists_every_loaded_study(both):
    r = both.get("/ResearchStudy")
    assert r.status_code == 200
    body = r.json()
    Bundle.model_validate(body)
    assert body["type"] == "searchset" and body["total"] == 2
    studies = [e["resource"] for e in body["entry"]]
    assert [s["id"] for s in studies] == [SEED_ID, SECOND_ID]
    values = {i["value"] for i in studies[1]["identifier"]}
    assert SECOND_NCT in values
    assert both.get(f"/ResearchStudy/{SECOND_ID}").json()["id"] == SECOND_ID


def test_default_is_every_study_one_part_each_referencing_only_its_own(both):
    r = _post(both, orjson.dumps(DEMO["demo-eligible"]))
    assert r.status_code == 200, r.text
    body = r.json()
    Bundle.model_validate(body)
    urls = [e["fullUrl"] for e in body["entry"]]
    assert len(urls) == len(set(urls))  # every fullUrl once
    parts = _parts(body)
    assert [p[0]["resource"]["study"]["reference"] for p in parts] == [
        SEED_CANONICAL,
        SECOND_CANONICAL,
    ]
    assert [p[0]["resource"]["status"] for p in parts] == ["eligible", "ineligible"]
    for part, canonical in zip(parts, (SEED_CANONICAL, SECOND_CANONICAL), strict=True):
        own = {e["fullUrl"] for e in part}
        kinds = [e["resource"]["resourceType"] for e in part]
        assert kinds.count("GuidanceResponse") == kinds.count("Provenance") == 1
        for entry in part:
            resource = entry["resource"]
            inner = [ref for ref in _references(resource) if ref.startswith("urn:uuid:")]
            assert set(inner) <= own, resource["resourceType"]
            if resource["resourceType"] == "Observation":
                assert resource["focus"][0]["reference"] == canonical
            if resource["resourceType"] == "GuidanceResponse":
                assert resource["moduleUri"].startswith(canonical)
        provenance = next(
            e["resource"] for e in part if e["resource"]["resourceType"] == "Provenance"
        )
        observations = {
            e["fullUrl"] for e in part if e["resource"]["resourceType"] == "Observation"
        }
        assert {t["reference"] for t in provenance["target"]} == observations


@pytest.mark.parametrize("name", [SECOND_ID, SECOND_CANONICAL, SECOND_NCT])
def test_one_study_by_id_canonical_or_registry_number_is_todays_output(both, second_alone, name):
    body = orjson.dumps(DEMO["demo-potential"])
    chosen = _post(both, body, f"&study={name}")
    alone = _post(second_alone, body)
    assert chosen.status_code == alone.status_code == 200
    assert orjson.dumps(normalise(chosen.json())) == orjson.dumps(normalise(alone.json()))
    assert SEED_CANONICAL not in chosen.text


def test_seed_alone_through_the_portfolio_is_todays_output(both, seed_alone):
    for pid, data in DEMO.items():
        body = orjson.dumps(data)
        chosen = _post(both, body, f"&study={SEED_ID}")
        today_ = _post(seed_alone, body)
        assert orjson.dumps(normalise(chosen.json())) == orjson.dumps(normalise(today_.json())), pid


def test_repeated_study_keeps_the_order_asked(both):
    r = _post(both, orjson.dumps(DEMO["demo-eligible"]), f"&study={SECOND_NCT}&study={SEED_ID}")
    studies = [p[0]["resource"]["study"]["reference"] for p in _parts(r.json())]
    assert studies == [SECOND_CANONICAL, SEED_CANONICAL]


@pytest.mark.parametrize("path", ["/$eligibility", "/Patient/demo-eligible/$eligibility"])
def test_unknown_study_is_400_naming_it(both, path):
    body = orjson.dumps(DEMO["demo-eligible"])
    if path.startswith("/Patient"):
        r = both.get(f"{path}?study=NCT99999999")
    else:
        r = both.post(f"{path}?study=NCT99999999", content=body, headers=FHIR)
    assert r.status_code == 400
    out = r.json()
    assert out["resourceType"] == "OperationOutcome"
    assert "NCT99999999" in out["issue"][0]["diagnostics"]


def test_every_part_agrees_with_the_single_study_answer_bundle_and_pull(
    both, seed_alone, second_alone
):
    for pid, data in DEMO.items():
        body = orjson.dumps(data)
        singles = [normalise(_post(c, body).json()) for c in (seed_alone, second_alone)]
        together = _parts(_post(both, body).json())
        for part, single in zip(together, singles, strict=True):
            assert normalise({"entry": part})["entry"] == single["entry"], pid
        pulled = _parts(both.get(f"/Patient/{pid}/$eligibility").json())
        alone = [c.get(f"/Patient/{pid}/$eligibility").json() for c in (seed_alone, second_alone)]
        for part, single in zip(pulled, alone, strict=True):
            assert normalise({"entry": part})["entry"] == normalise(single)["entry"], pid


def test_the_body_is_decoded_once_for_every_study(second, monkeypatch):
    calls: list[int] = []
    real = lean.lean_bundle

    def counting(body, codes, max_entries=-1):
        calls.append(len(codes))
        return real(body, codes, max_entries)

    monkeypatch.setattr(lean, "lean_bundle", counting)
    protocols = list(load_portfolio([SEED_DIR, second]))
    answers = evaluate_body_portfolio(orjson.dumps(DEMO["demo-eligible"]), protocols)
    assert len(answers) == 2 and len(calls) == 1
    assert [a.evaluation.status.value for a in answers] == ["eligible", "ineligible"]


def test_pull_sends_each_distinct_query_once(second):
    """Counted on the demo FHIR server: the union of both studies' queries, none twice."""
    store = DemoStore(load_demo_bundles(), default_page_size=500, max_page_size=500)
    sent: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(f"{request.method} {request.url}")
        return store.handle(request)

    contexts = contexts_for(list(load_portfolio([SEED_DIR, second])))
    day = date.today()
    plans = [c.relevance.queries("demo-eligible", day) for c in contexts]
    distinct = {(q.resource_type, q.params) for plan in plans for q in plan}
    assert len(distinct) < sum(map(len, plans))  # the studies share queries...
    assert len(distinct) > len(plans[0])  # ...and differ in one (the longer lab window)

    async def run():
        http = httpx.AsyncClient(transport=httpx.MockTransport(handle))
        async with FhirClient(http, DEMO_BASE_URL) as client:
            return await fetch_portfolio(client, contexts, "demo-eligible", day)

    fetched = asyncio.run(run())
    assert len(sent) == len(set(sent)) == len(distinct)
    assert [len(f.resources) > 0 for f in fetched] == [True, True]


def test_every_answer_is_recorded_per_study(both):
    r = _post(both, orjson.dumps(DEMO["demo-ineligible"]), f"&study={SECOND_ID}")
    assert r.status_code == 200
    r = _post(both, orjson.dumps(DEMO["demo-eligible"]))
    assert r.status_code == 200
    store = both.app.state.result_store

    async def rows():
        return [await store.latest("demo-eligible", s) for s in (SEED_ID, SECOND_ID)]

    seed, other = asyncio.run(rows())
    assert seed is not None and other is not None
    assert (seed.source, seed.status) == ("api", "eligible")
    assert other.status == "ineligible" and "I7" in other.failed_criteria


def test_a_malformed_result_reads_the_same_in_the_portfolio_as_alone(both, seed_alone):
    """The shape proof is shared between the studies: a misfit is still found per study."""
    data = orjson.loads(orjson.dumps(DEMO["demo-eligible"]))
    platelets = next(
        e["resource"]
        for e in data["entry"]
        if e["resource"]["resourceType"] == "Observation"
        and any(c.get("code") == "777-3" for c in e["resource"]["code"]["coding"])
    )
    platelets["valueQuantity"]["value"] = "many"  # a string where a number belongs
    body = orjson.dumps(data)
    alone = normalise(_post(seed_alone, body).json())
    part = _parts(_post(both, body).json())[0]
    assert normalise({"entry": part})["entry"] == alone["entry"]
    statuses = [e["resource"]["status"] for e in part if "status" in e["resource"]]
    assert statuses[0] == "potential-candidate"  # not eligible on an unreadable newest count


def test_unknown_patient_in_pull_mode_is_one_404_for_every_study(both):
    r = both.get("/Patient/nobody-here/$eligibility")
    assert r.status_code == 404
    assert r.json()["resourceType"] == "OperationOutcome"


def test_cli_evaluates_every_study_from_one_decode(second, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from service.cli import app
    from service.settings import get_settings

    calls: list[int] = []
    real = lean.lean_bundle
    monkeypatch.setattr(lean, "lean_bundle", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setenv(
        "ELIGIBILITY_PROTOCOL_DIRS", orjson.dumps([str(SEED_DIR), str(second)]).decode()
    )
    get_settings.cache_clear()
    try:
        f = tmp_path / "in.json"
        f.write_bytes(orjson.dumps(DEMO["demo-eligible"]))
        done = CliRunner().invoke(app, ["evaluate", "--bundle", str(f), "--format", "summary"])
    finally:
        get_settings.cache_clear()
    assert done.exit_code == 0, done.output
    assert len(calls) == 1
    summaries = [line for line in done.stdout.splitlines() if line.startswith("Patient/")]
    assert [s.split(": ")[1].split(" ")[0] for s in summaries] == ["eligible", "ineligible"]
