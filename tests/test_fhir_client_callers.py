"""Every FHIR caller goes through the one ``FhirClient`` (issue 23, 6): Bulk export, write-back,
the app's FHIR access, the Subscriptions' server and the AuditEvent sink each get its retry on
429/503 with ``Retry-After``, its size cap, and its refusal to send credentials to another
origin. respx stands in for the servers at the httpcore level, under the shared pool."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
import pytest
import respx
from pydantic import SecretStr

from service.app.fhir_access import FhirAccess
from service.fhir.errors import UpstreamAuthError, UpstreamError
from service.fhir.pool import close_clients
from service.ops.audit import AuditSink
from service.protocol import default_protocol
from service.screening import bulk
from service.screening.bulk import Session
from service.screening.writeback import subject_identifier_system, write_back
from service.settings import Settings
from service.subscriptions.server import FhirServer, ServerError

BASE = "http://fhir.test/fhir"
ELSEWHERE = "http://elsewhere.test/fhir"
SERVICE_TOKEN = "service-secret-token"
USER_TOKEN = "user-token-of-the-signed-in-clinician"
SMALL = 2_000  # bytes: the size cap these tests set


def settings(**extra: Any) -> Settings:
    values: dict[str, Any] = {
        "_env_file": None,
        "fhir_base_url": BASE,
        "fhir_auth": "static",
        "fhir_token": SecretStr(SERVICE_TOKEN),
        "retry_attempts": 3,
        "deadline_seconds": 5.0,
        "max_response_bytes": SMALL,
    }
    return Settings(**(values | extra))


@pytest.fixture(autouse=True)
async def pools():
    """Each test's event loop has its own pools: closed at its end."""
    yield
    await close_clients()


@pytest.fixture
def router():
    with respx.mock(assert_all_called=False) as mocked:
        yield mocked


def bearer(request: httpx.Request) -> str | None:
    return request.headers.get("authorization")


def throttled(status: int, then: httpx.Response) -> list[httpx.Response]:
    """One 429/503 asking for a one-second wait, then the real answer."""
    return [httpx.Response(status, headers={"Retry-After": "1"}), then]


def waited(caplog: pytest.LogCaptureFixture, status: int) -> bool:
    """The client's own retry line says it waits the server's Retry-After (1 s)."""
    return any(f"in 1.00 s (HTTP {status})" in r.getMessage() for r in caplog.records)


def big_bundle() -> dict[str, Any]:
    note = "x" * (2 * SMALL)
    entry = {"resource": {"resourceType": "Subscription", "id": "s1", "reason": note}}
    return {"resourceType": "Bundle", "type": "searchset", "entry": [entry]}


def searchset(resources: list[dict[str, Any]], next_url: str | None = None) -> dict[str, Any]:
    links = [{"relation": "next", "url": next_url}] if next_url else []
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources],
        "link": links,
    }


# -- Bulk export ----------------------------------------------------------------------------


async def test_bulk_kick_off_waits_out_a_429_and_sends_the_service_token(router, caplog):
    caplog.set_level(logging.INFO, logger="service.fhir")
    route = router.get(f"{BASE}/Patient/$export").mock(
        side_effect=throttled(
            429, httpx.Response(202, headers={"Content-Location": f"{BASE}/status/1"})
        )
    )
    started = time.monotonic()
    status_url, filtered = await Session(settings()).kick_off(default_protocol(), None)
    assert time.monotonic() - started >= 1.0 and waited(caplog, 429)
    assert (str(status_url), filtered, route.call_count) == (f"{BASE}/status/1", True, 2)
    assert {bearer(c.request) for c in route.calls} == {f"Bearer {SERVICE_TOKEN}"}
    assert route.calls.last.request.headers["prefer"] == "respond-async"


async def test_bulk_status_poll_honours_retry_after_then_returns_the_manifest(router):
    manifest = {"transactionTime": "2026-12-01T00:00:00Z", "output": [], "error": []}
    route = router.get(f"{BASE}/status/1").mock(
        side_effect=[
            httpx.Response(202, headers={"Retry-After": "1", "X-Progress": "half"}),
            httpx.Response(503, headers={"Retry-After": "1"}),  # a blip: waited out too
            httpx.Response(200, json=manifest),
        ]
    )
    started = time.monotonic()
    assert await Session(settings()).wait(httpx.URL(f"{BASE}/status/1")) == manifest
    assert time.monotonic() - started >= 2.0 and route.call_count == 3


async def test_bulk_file_on_another_origin_gets_no_credentials(router, tmp_path: Path):
    elsewhere = router.get(f"{ELSEWHERE}/files/Patient.ndjson").respond(200, text="{}\n")
    manifest = {"output": [{"type": "Patient", "url": f"{ELSEWHERE}/files/Patient.ndjson"}]}
    with pytest.raises(UpstreamError, match="away from the FHIR base.*credentials are not sent"):
        await Session(settings()).download(manifest, tmp_path / "export")
    assert not elsewhere.called


async def test_bulk_file_download_retries_a_503_and_refuses_a_file_over_the_cap(
    router, tmp_path: Path, monkeypatch
):
    lines = b"".join(
        orjson.dumps({"resourceType": "Patient", "id": f"p{n}"}) + b"\n" for n in range(3)
    )
    route = router.get(f"{BASE}/files/Patient.ndjson").mock(
        side_effect=throttled(503, httpx.Response(200, content=lines))
    )
    manifest = {"output": [{"type": "Patient", "url": f"{BASE}/files/Patient.ndjson"}]}
    assert await Session(settings()).download(manifest, tmp_path / "export") == 1
    assert (tmp_path / "export" / "Patient.0000.ndjson").read_bytes() == lines
    assert route.call_count == 2 and bearer(route.calls.last.request) == f"Bearer {SERVICE_TOKEN}"

    monkeypatch.setattr(bulk, "MAX_FILE_BYTES", len(lines) - 1)
    route.side_effect = None
    route.return_value = httpx.Response(200, content=lines)
    with pytest.raises(UpstreamError, match=r"too large \(limit \d+ bytes\)"):
        await Session(settings()).download(manifest, tmp_path / "export")


# -- write-back -----------------------------------------------------------------------------


def screened(tmp_path: Path, rows: list[tuple[str, str]]) -> Any:
    """What write_back reads of an OutputFolder: its worklist and as-of date."""
    text = "patient,status,error\n" + "".join(f"{p},{s},\n" for p, s in rows)
    (tmp_path / "worklist.csv").write_text(text)
    return SimpleNamespace(path=tmp_path, as_of=None)


async def test_write_back_retries_a_503_on_its_conditional_update(router, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="service.fhir")
    protocol = default_protocol()
    route = router.put(f"{BASE}/ResearchSubject").mock(
        side_effect=throttled(503, httpx.Response(201, json={"resourceType": "ResearchSubject"}))
    )
    out = screened(tmp_path, [("p1", "eligible")])
    written = await write_back(settings(), protocol, out, group=False, results=True)
    assert written == {"researchSubjects": {"created": 1, "updated": 0}}
    assert route.call_count == 2 and waited(caplog, 503)
    sent = route.calls.last.request
    assert sent.url.params["identifier"] == f"{subject_identifier_system(protocol)}|p1"
    assert bearer(sent) == f"Bearer {SERVICE_TOKEN}"


async def test_write_back_refuses_an_oversized_answer(router, tmp_path):
    router.put(url__regex=rf"{BASE}/Group/.+").respond(200, content=b"{" + b" " * SMALL + b"}")
    out = screened(tmp_path, [("p1", "eligible")])
    with pytest.raises(UpstreamError, match="Group update was refused: response too large"):
        await write_back(settings(), default_protocol(), out, group=True, results=False)


async def test_write_back_does_not_follow_a_redirect_to_another_origin(router, tmp_path):
    router.put(url__regex=rf"{BASE}/Group/.+").respond(307, headers={"Location": ELSEWHERE})
    elsewhere = router.route(host="elsewhere.test").respond(200)
    out = screened(tmp_path, [("p1", "eligible")])
    with pytest.raises(UpstreamError, match="HTTP 307 to the Group update"):
        await write_back(settings(), default_protocol(), out, group=True, results=False)
    assert not elsewhere.called


# -- the app's FHIR access ------------------------------------------------------------------


def as_user() -> FhirAccess:
    """The signed-in user on the configured base: the user's token, never the service's."""
    return FhirAccess(settings(), base_url=BASE, token=USER_TOKEN)


async def test_app_upsert_retries_a_429_with_the_users_token_only(router, caplog):
    caplog.set_level(logging.INFO, logger="service.fhir")
    subject = {"resourceType": "ResearchSubject", "status": "candidate"}
    route = router.put(f"{BASE}/ResearchSubject").mock(
        side_effect=throttled(429, httpx.Response(200, json={**subject, "id": "rs-1"}))
    )
    stored = await as_user().upsert(subject, "urn:sys|p1")
    assert stored["id"] == "rs-1" and route.call_count == 2 and waited(caplog, 429)
    assert {bearer(c.request) for c in route.calls} == {f"Bearer {USER_TOKEN}"}


async def test_app_conditional_create_is_retried_and_reads_the_id_from_location(router):
    route = router.post(f"{BASE}/QuestionnaireResponse").mock(
        side_effect=throttled(
            503, httpx.Response(201, headers={"Location": f"{BASE}/QuestionnaireResponse/q9"})
        )
    )
    qr = {"resourceType": "QuestionnaireResponse", "status": "completed"}
    assert (await as_user().create_once(qr, "urn:sys|v1"))["id"] == "q9"
    assert route.call_count == 2  # If-None-Exist makes the repeat safe
    assert route.calls.last.request.headers["if-none-exist"] == "identifier=urn%3Asys%7Cv1"


async def test_app_refused_write_says_the_user_may_lack_write_access(router):
    router.put(f"{BASE}/ResearchSubject").respond(403)
    with pytest.raises(UpstreamAuthError, match="signed-in user may lack write access"):
        await as_user().upsert({"resourceType": "ResearchSubject"}, "urn:sys|p1")


async def test_app_search_is_capped_and_stays_on_the_launch_origin(router):
    route = router.get(f"{BASE}/QuestionnaireResponse").respond(200, json=big_bundle())
    with pytest.raises(UpstreamError, match="response too large"):
        await as_user().find("QuestionnaireResponse", "urn:sys|v1")

    elsewhere = router.route(host="elsewhere.test").respond(200, json=searchset([]))
    route.return_value = httpx.Response(200, json=searchset([], f"{ELSEWHERE}/page2"))
    with pytest.raises(UpstreamError, match="away from the FHIR base"):
        await as_user().find("QuestionnaireResponse", "urn:sys|v1")
    assert not elsewhere.called


# -- Subscriptions --------------------------------------------------------------------------


async def test_subscriptions_catch_up_retries_a_503_and_sends_the_service_token(router, caplog):
    caplog.set_level(logging.INFO, logger="service.fhir")
    route = router.get(f"{BASE}/Observation").mock(
        side_effect=throttled(
            503, httpx.Response(200, json=searchset([{"resourceType": "Observation", "id": "o1"}]))
        )
    )
    server = FhirServer.from_settings(settings())
    pages = [page async for page in server.pages("Observation", {"_count": "10"})]
    assert pages == [[{"resourceType": "Observation", "id": "o1"}]]
    assert route.call_count == 2 and waited(caplog, 503)
    assert bearer(route.calls.last.request) == f"Bearer {SERVICE_TOKEN}"


async def test_subscriptions_update_is_retried_but_a_task_create_is_sent_once(router):
    sub = {"resourceType": "Subscription", "id": "s1", "status": "requested"}
    put = router.put(f"{BASE}/Subscription/s1").mock(
        side_effect=throttled(429, httpx.Response(200, json=sub))
    )
    post = router.post(f"{BASE}/Task").respond(503, headers={"Retry-After": "1"})
    server = FhirServer.from_settings(settings())
    await server.update(sub)
    assert put.call_count == 2
    with pytest.raises(ServerError, match="HTTP 503 to the Task create"):
        await server.create({"resourceType": "Task", "status": "requested"})
    assert post.call_count == 1  # a create may have been carried out: never repeated


async def test_subscriptions_listing_is_capped_and_stays_on_the_base_origin(router):
    route = router.get(f"{BASE}/Subscription").respond(200, json=big_bundle())
    server = FhirServer.from_settings(settings())
    with pytest.raises(ServerError, match="response too large"):
        [page async for page in server.pages("Subscription", {})]

    elsewhere = router.route(host="elsewhere.test").respond(200, json=searchset([]))
    route.return_value = httpx.Response(200, json=searchset([], f"{ELSEWHERE}/Subscription"))
    with pytest.raises(ServerError, match="away from the FHIR base"):
        [page async for page in server.pages("Subscription", {})]
    assert not elsewhere.called


# -- the AuditEvent sink --------------------------------------------------------------------


@pytest.mark.parametrize("same_base", [True, False])
async def test_audit_sink_sends_the_service_token_only_to_the_configured_base(router, same_base):
    audit_base = BASE if same_base else ELSEWHERE
    route = router.post(f"{audit_base}/AuditEvent").respond(201)
    sink = AuditSink(settings(audit_sink="fhir", audit_fhir_base_url=audit_base))
    sink.record({"resourceType": "AuditEvent", "recorded": "2026-12-01T00:00:00Z"})
    await sink.aclose()
    assert route.call_count == 1
    expected = f"Bearer {SERVICE_TOKEN}" if same_base else None
    assert bearer(route.calls.last.request) == expected
