"""CDS Hooks with several studies: one card per study that fits, ranked, capped, overridable
study by study; the prefetch is the union of the studies' templates, each once."""

from __future__ import annotations

import uuid
from datetime import date

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.cds.models import CdsServiceResponse
from service.cds.portfolio import PORTFOLIO_SERVICE_ID, prefetch_plan
from service.demo import load_demo_bundles
from service.fhir.demo_store import DemoStore
from service.portfolio import load_portfolio
from service.portfolio_eval import contexts_for
from service.settings import Settings, TrustedIssuer
from tests.ops_support import ISSUER, JWK, jwt_for
from tests.protocol_copies import SEED_DIR, copy_seed, edit_json, edit_toml
from tests.test_cds_service import EHR, call
from tests.test_portfolio_api import stricter_second

SEED_ID = "cd19-cart-rr-ball"
PLATELETS_WINDOW = 'plausible = { low = 0, high = 3000, unit = "10*9/L" }\nwindow_days = 14'


def variant(dest, study_id: str, nct: str, *edits: tuple[str, str]):
    """A seed copy under another id, canonical and registry number, with ``edits``."""
    copy_seed(dest)
    edit_toml(dest, 'id = "cd19-cart-rr-ball"', f'id = "{study_id}"')
    canonical = f"https://example.org/fhir/ResearchStudy/{study_id}"

    def restudy(study: dict) -> None:
        study["id"] = study_id
        study["identifier"] = [
            {"use": "official", "system": "urn:ietf:rfc:3986", "value": canonical},
            {"system": "https://clinicaltrials.gov", "value": nct},
        ]
        for ext in study["extension"]:
            if ext["url"].endswith("ResearchStudy.url"):
                ext["valueUri"] = canonical

    edit_json(dest / "ResearchStudy-cd19-cart-rr-ball.json", restudy)
    for old, new in edits:
        edit_toml(dest, old, new)
    return dest


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """In portfolio order: two-open (I6, I7 stale), one-open (I6 stale), ineligible, seed."""
    root = tmp_path_factory.mktemp("cds-portfolio")
    two_open = variant(
        root / "two",
        "two-open",
        "NCT00000004",
        ("window_days = 14", "window_days = 1"),
        (PLATELETS_WINDOW, PLATELETS_WINDOW.replace("14", "1")),
    )
    one_open = variant(
        root / "one", "one-open", "NCT00000003", ("window_days = 14", "window_days = 1")
    )
    return [two_open, one_open, stricter_second(root / "second"), SEED_DIR]


def _settings(folders, **extra) -> Settings:
    return Settings(
        _env_file=None,
        cds_auth_enabled=True,
        cds_issuers=[TrustedIssuer(iss=ISSUER, jwks={"keys": [JWK]})],
        cds_allowed_fhir_servers=[EHR],
        audit_sink="none",
        protocol_dirs=folders,
        **extra,
    )


@pytest.fixture()
def client(folders, tmp_path):
    # Both stores in this test's folder: the default results file is shared by every run here.
    app = create_app(
        _settings(
            folders,
            state_sqlite_path=tmp_path / "s.sqlite3",
            results_sqlite_path=tmp_path / "r.sqlite3",
        )
    )
    with TestClient(app) as c:
        yield c


SERVICE = f"http://testserver/cds-services/{PORTFOLIO_SERVICE_ID}"


def _auth(url: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {jwt_for(url, sub='ehr-client')}"}


def _prefetch(templates: dict[str, str], patient_id: str) -> dict:
    store = DemoStore(load_demo_bundles(), base_url=EHR, default_page_size=500, max_page_size=500)
    return {
        key: store.handle(
            httpx.Request("GET", f"{EHR}/{t.replace('{{context.patientId}}', patient_id)}")
        ).json()
        for key, t in templates.items()
    }


def _cards(client, patient_id: str, prefetch: dict | None = None) -> list[dict]:
    templates = client.get("/cds-services", headers=_auth("http://testserver/cds-services"))
    service = next(s for s in templates.json()["services"] if s["id"] == PORTFOLIO_SERVICE_ID)
    prefetch = prefetch if prefetch is not None else _prefetch(service["prefetch"], patient_id)
    r = client.post(SERVICE, json=call(patient_id, prefetch), headers=_auth(SERVICE))
    assert r.status_code == 200, r.text
    CdsServiceResponse.model_validate(r.json())
    return r.json()["cards"]


def _study(card: dict) -> str:
    return card["source"]["url"].rsplit("/", 1)[-1]


def test_discovery_lists_the_portfolio_and_each_study(client):
    services = client.get("/cds-services", headers=_auth("http://testserver/cds-services"))
    ids = [s["id"] for s in services.json()["services"]]
    assert ids[0] == PORTFOLIO_SERVICE_ID
    assert f"{SEED_ID}-screening" in ids and "two-open-screening" in ids


def test_prefetch_is_the_union_of_the_studies_templates_each_once(folders):
    relevances = [c.relevance for c in contexts_for(list(load_portfolio(folders)))]
    plan = prefetch_plan(relevances)
    assert len(set(plan.templates.values())) == len(plan.templates)  # no template twice
    every = {t for r in relevances for t in r.prefetch_templates().values()}
    assert set(plan.templates.values()) == every  # nothing any study needs is left out
    for relevance, keys in zip(relevances, plan.keys, strict=True):
        own = relevance.prefetch_templates()
        assert {k: plan.templates[keys[k]] for k in own} == own  # each reads its own searches
    # copies of one trial ask the same searches (no dates in a prefetch): one set for all
    assert plan.templates == relevances[0].prefetch_templates()


class _Fake:
    def __init__(self, study: str, templates: dict[str, str]) -> None:
        self.protocol = type("P", (), {"id": study})()
        self._templates = templates

    def prefetch_templates(self) -> dict[str, str]:
        return self._templates


def test_a_key_two_studies_use_for_different_searches_is_told_apart():
    a = _Fake("a", {"patient": "Patient/{{context.patientId}}", "labs": "Observation?code=1"})
    b = _Fake("b", {"patient": "Patient/{{context.patientId}}", "labs": "Observation?code=2"})
    c = _Fake("c", {"ecog": "Observation?code=1", "labs": "Observation?code=3"})
    plan = prefetch_plan([a, b, c])
    assert plan.templates == {
        "patient": "Patient/{{context.patientId}}",
        "labs": "Observation?code=1",
        "labs-b": "Observation?code=2",
        "labs-c": "Observation?code=3",
    }
    assert plan.keys == [
        {"patient": "patient", "labs": "labs"},
        {"patient": "patient", "labs": "labs-b"},
        {"ecog": "labs", "labs": "labs-c"},  # the same search under another key: read once
    ]


def test_one_card_per_fitting_study_eligible_first_then_fewest_open(client):
    cards = _cards(client, "demo-eligible")
    # the stricter second trial is ineligible: no card; the rest ranked, not in folder order
    assert [_study(c) for c in cards] == [SEED_ID, "one-open", "two-open"]
    assert cards[0]["detail"].startswith("Nothing missing")
    assert cards[1]["detail"].splitlines()[0].startswith("Missing: I6 ")
    assert "I7" in cards[2]["detail"].splitlines()[0]
    for card in cards:
        review = card["links"][0]
        assert review["url"].endswith(f"/app/patients/demo-eligible?study={_study(card)}")


def test_at_most_n_cards_and_k_more_links_to_the_patient_page(folders, tmp_path):
    settings = _settings(folders, state_sqlite_path=tmp_path / "s.sqlite3", cds_max_cards=2)
    with TestClient(create_app(settings)) as client:
        cards = _cards(client, "demo-eligible")
    assert [_study(c) for c in cards] == [SEED_ID, "one-open"]
    more = cards[-1]["links"][-1]
    assert more["label"] == "and 1 more trial"
    assert more["url"].endswith("/app/patients/demo-eligible")
    assert all("more trial" not in link["label"] for link in cards[0]["links"])


def test_smart_launch_names_the_study_in_app_context(folders, tmp_path):
    settings = _settings(
        folders,
        state_sqlite_path=tmp_path / "s.sqlite3",
        app_smart_launch_url="https://app.example.org/launch",
    )
    with TestClient(create_app(settings)) as client:
        cards = _cards(client, "demo-eligible")
    for card in cards:
        assert card["links"][0]["type"] == "smart"
        assert f'"studyId": "{_study(card)}"' in card["links"][0]["appContext"]


def test_override_hides_only_that_studys_card(client):
    first = _cards(client, "demo-eligible")
    target = first[1]
    item = {
        "card": target["uuid"],
        "outcome": "overridden",
        "outcomeTimestamp": "2026-11-27T10:00:00Z",
        "overrideReason": {"reason": target["overrideReasons"][0]},
    }
    url = f"{SERVICE}/feedback"
    assert client.post(url, json={"feedback": [item]}, headers=_auth(url)).status_code == 200
    after = _cards(client, "demo-eligible")
    assert [_study(c) for c in after] == [SEED_ID, "two-open"]


def test_every_study_is_recorded_with_source_cds(client):
    _cards(client, "demo-potential")
    store = client.app.state.result_store
    import asyncio

    async def rows():
        return await store.query(patient_id="demo-potential", limit=10)

    found, total = asyncio.run(rows())
    assert total == 4 and {r.source for r in found} == {"cds"}
    assert {r.study_id: r.status for r in found}["second-trial"] == "ineligible"


def test_missing_prefetch_is_fetched_once_for_every_study(client, folders, monkeypatch):
    """No prefetch: each distinct search goes to the EHR once, whichever studies need it."""
    store = DemoStore(load_demo_bundles(), base_url=EHR, default_page_size=500, max_page_size=500)
    sent: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(str(request.url))
        return store.handle(request)

    import service.fhir.pool as fhir_pool

    real = fhir_pool.http_for
    monkeypatch.setattr(
        fhir_pool,
        "http_for",
        lambda base, s: (
            httpx.AsyncClient(transport=httpx.MockTransport(handle))
            if base == EHR
            else real(base, s)
        ),
    )
    body = call("demo-eligible", None, fhirServer=EHR)
    body["hookInstance"] = str(uuid.uuid4())
    r = client.post(SERVICE, json=body, headers=_auth(SERVICE))
    assert r.status_code == 200, r.text
    with_prefetch = _cards(client, "demo-eligible")
    assert [_study(c) for c in r.json()["cards"]] == [_study(c) for c in with_prefetch]
    assert sent and len(sent) == len(set(sent))
    relevances = [c.relevance for c in contexts_for(list(load_portfolio(folders)))]
    # what a missing prefetch is fetched with: the prefetch keys' searches, dated, and the
    # search for undated results that dated lab searches need (service.cds.prefetch)
    keys = [set(r.prefetch_templates()) | {"undated"} for r in relevances]
    plans = [
        [q for q in r.queries("demo-eligible", date.today()) if q.key in own]
        for r, own in zip(relevances, keys, strict=True)
    ]
    distinct = {(q.resource_type, q.params) for plan in plans for q in plan}
    assert len(sent) == len(distinct) < sum(map(len, plans))


@pytest.mark.parametrize("sid", [PORTFOLIO_SERVICE_ID, f"{SEED_ID}-screening"])
def test_a_body_that_names_a_key_twice_is_refused_on_the_fast_decoder_too(client, sid):
    body = orjson.dumps(call("demo-eligible", {}))
    twice = body.replace(b'"patientId":', b'"patientId":"demo-potential","patientId":', 1)
    url = f"http://testserver/cds-services/{sid}"
    ctype = {"content-type": "application/json"}
    r = client.post(url, content=twice, headers={**_auth(url), **ctype})
    assert r.status_code == 400 and "more than once" in r.json()["issue"][0]["diagnostics"]
    r = client.post(url, content=body[:-1], headers={**_auth(url), **ctype})
    assert r.status_code == 400 and "not JSON" in r.json()["issue"][0]["diagnostics"]
