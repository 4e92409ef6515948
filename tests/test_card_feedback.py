"""Card lifecycle: override reasons on the card, feedback that hides it for that patient,
and the card coming back when the result changes."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.cds.models import CdsServiceResponse
from service.settings import Settings, TrustedIssuer
from tests.ops_support import ISSUER, JWK, jwt_for
from tests.test_cds_service import EHR, SID, call, full_prefetch

SERVICE = f"http://testserver/cds-services/{SID}"
REASONS = "https://fhir.cart-eligibility.example.org/CodeSystem/cds-override-reason"


@pytest.fixture()
def client(tmp_path):
    settings = Settings(
        _env_file=None,
        cds_auth_enabled=True,
        cds_issuers=[TrustedIssuer(iss=ISSUER, jwks={"keys": [JWK]})],
        cds_allowed_fhir_servers=[EHR],
        state_sqlite_path=tmp_path / "state.sqlite3",
        audit_sink="none",
    )
    with TestClient(create_app(settings)) as c:
        yield c


def _auth(url: str, sub: str = "ehr-client") -> dict[str, str]:
    return {"Authorization": f"Bearer {jwt_for(url, sub=sub)}"}


def _cards(client: TestClient, prefetch: dict, sub: str = "ehr-client") -> list[dict]:
    r = client.post(
        f"/cds-services/{SID}", json=call("demo-potential", prefetch), headers=_auth(SERVICE, sub)
    )
    assert r.status_code == 200
    CdsServiceResponse.model_validate(r.json())
    return r.json()["cards"]


def _feedback(
    client, card_uuid: str, reason: dict | None, sub: str = "ehr-client", outcome="overridden"
):
    item = {"card": card_uuid, "outcome": outcome, "outcomeTimestamp": "2026-11-27T10:00:00Z"}
    if reason is not None:
        item["overrideReason"] = {"reason": reason, "userComment": "seen last week"}
    return client.post(
        f"{SERVICE}/feedback", json={"feedback": [item]}, headers=_auth(f"{SERVICE}/feedback", sub)
    )


def test_card_offers_override_reasons_with_display(client):
    (card,) = _cards(client, full_prefetch("demo-potential"))
    codes = {(r["system"], r["code"]) for r in card["overrideReasons"]}
    assert codes == {(REASONS, "already-screened"), (REASONS, "not-candidate-now")}
    assert all(r["display"] for r in card["overrideReasons"])


def test_override_with_a_reason_hides_the_card_until_the_result_changes(client):
    prefetch = full_prefetch("demo-potential")
    (card,) = _cards(client, prefetch)
    assert _feedback(client, card["uuid"], card["overrideReasons"][0]).status_code == 200
    assert _cards(client, prefetch) == []  # same result: hidden
    assert _cards(client, prefetch, sub="another-ehr") != []  # another client still sees it

    # New data changes criteria outcomes (no recent labs: I6/I7 now undetermined): shown again.
    assert prefetch["labs"]["entry"]
    changed = prefetch | {"labs": {"resourceType": "Bundle", "type": "searchset", "entry": []}}
    cards = _cards(client, changed)
    assert len(cards) == 1


def test_feedback_without_a_reason_or_with_a_foreign_reason_hides_nothing(client):
    prefetch = full_prefetch("demo-potential")
    (card,) = _cards(client, prefetch)
    assert _feedback(client, card["uuid"], None).status_code == 200
    foreign = {"system": "http://example.org/reasons", "code": "already-screened"}
    assert _feedback(client, card["uuid"], foreign).status_code == 200
    assert len(_cards(client, prefetch)) == 1


def test_only_the_client_shown_the_card_can_dismiss_it(client):
    prefetch = full_prefetch("demo-potential")
    (card,) = _cards(client, prefetch)
    assert (
        _feedback(client, card["uuid"], card["overrideReasons"][0], sub="other").status_code == 200
    )
    assert len(_cards(client, prefetch)) == 1


def test_feedback_needs_the_client_jwt(client):
    (card,) = _cards(client, full_prefetch("demo-potential"))
    item = {
        "card": card["uuid"],
        "outcome": "overridden",
        "overrideReason": {"reason": card["overrideReasons"][0]},
        "outcomeTimestamp": "2026-11-27T10:00:00Z",
    }
    r = client.post(f"{SERVICE}/feedback", json={"feedback": [item]})
    assert r.status_code == 401
    assert len(_cards(client, full_prefetch("demo-potential"))) == 1


def test_unknown_card_is_accepted_and_ignored(client):
    reason = {"system": REASONS, "code": "already-screened", "display": "x"}
    assert _feedback(client, str(uuid.uuid4()), reason).status_code == 200
