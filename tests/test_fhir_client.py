"""FhirClient against respx-mocked servers: paging, caps, retries, deadline, checked responses."""

from __future__ import annotations

import asyncio
import gzip
import logging
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import orjson
import pytest
import respx
import stamina

from service.fhir.auth import BearerAuth
from service.fhir.client import (
    MAX_RESPONSE_BYTES,
    ClientConfig,
    FhirClient,
    retry_after_seconds,
)
from service.fhir.errors import (
    DeadlineExceeded,
    InvalidPatientId,
    PatientNotFound,
    UpstreamAuthError,
    UpstreamError,
)
from service.fhir.queries import Query
from service.settings import Settings

BASE = "http://fhir.test/fhir"
PID = "pat-7781"
OBS_QUERY = Query(
    "labs",
    "Observation",
    (("patient", PID), ("code", "http://loinc.org|1975-2"), ("_sort", "-date")),
    frozenset({"bilirubin-total"}),
)


@pytest.fixture(autouse=True)
def fast_retries():
    """No backoff sleeps; attempts stay as configured (cap=True keeps ClientConfig's limit)."""
    with stamina.set_testing(True, attempts=100, cap=True):
        yield


def obs(n: int) -> dict:
    return {"resourceType": "Observation", "id": f"o{n}", "status": "final"}


def searchset(resources: list[dict], next_url: str | None = None, extra=()) -> dict:
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": [{"relation": "self", "url": f"{BASE}/Observation"}],
        "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources] + list(extra),
    }
    if next_url:
        bundle["link"].append({"relation": "next", "url": next_url})
    return bundle


def make_client(config: ClientConfig | None = None, auth=None) -> FhirClient:
    return FhirClient(httpx.AsyncClient(), BASE, auth=auth, config=config or ClientConfig())


# -- paging -------------------------------------------------------------------------------


async def test_paging_follows_next_links_verbatim_across_three_pages():
    page2 = f"{BASE}?_getpages=abc-123&_getpagesoffset=2&_count=2&_bundletype=searchset"
    page3 = f"{BASE}?_getpages=abc-123&_getpagesoffset=4&_count=2&_bundletype=searchset"
    seen: list[str] = []

    def server(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        offset = request.url.params.get("_getpagesoffset")
        if offset is None:
            return httpx.Response(200, json=searchset([obs(1), obs(2)], page2))
        if offset == "2":
            return httpx.Response(200, json=searchset([obs(3), obs(4)], page3))
        return httpx.Response(200, json=searchset([obs(5)]))

    with respx.mock(assert_all_called=False) as router:
        router.route(host="fhir.test").mock(side_effect=server)
        async with make_client() as client:
            result = await client.search(OBS_QUERY)

    assert [r["id"] for r in result.entries] == ["o1", "o2", "o3", "o4", "o5"]
    assert result.pages == 3 and not result.truncated and result.issues == []
    assert seen[1:] == [page2, page3]  # exactly as given, not rebuilt
    first = httpx.URL(seen[0])
    assert first.path == "/fhir/Observation"
    assert first.params.get("code") == "http://loinc.org|1975-2"
    assert first.params.get("_count") == "200"  # page size added by the client


@pytest.mark.parametrize(
    "foreign",
    [
        "http://evil.test/fhir?_getpages=x",
        "https://fhir.test/fhir?_getpages=x",
        "http://fhir.test:8080/fhir?_getpages=x",
    ],
)
async def test_next_link_to_another_origin_is_refused_without_a_request(foreign):
    with respx.mock(assert_all_called=False) as router:
        ours = router.get(f"{BASE}/Observation").respond(200, json=searchset([obs(1)], foreign))
        other = router.route(url__startswith=foreign.split("?")[0]).respond(
            200, json=searchset([obs(2)])
        )
        async with make_client() as client:
            with pytest.raises(UpstreamError, match="next-page link") as err:
                await client.search(OBS_QUERY)
    assert ours.call_count == 1
    assert other.call_count == 0
    assert "evil" not in str(err.value) and PID not in str(err.value)


async def test_relative_next_link_is_resolved_against_the_current_url():
    with respx.mock(assert_all_called=False) as router:
        router.get(f"{BASE}/Observation", params={"page": "2"}).respond(
            200, json=searchset([obs(2)])
        )
        router.get(f"{BASE}/Observation").respond(
            200, json=searchset([obs(1)], "Observation?page=2")
        )
        async with make_client() as client:
            result = await client.search(OBS_QUERY)
    assert [r["id"] for r in result.entries] == ["o1", "o2"]


async def test_page_cap_truncates_and_reports():
    def server(request: httpx.Request) -> httpx.Response:
        n = int(request.url.params.get("p", "0"))
        return httpx.Response(200, json=searchset([obs(n)], f"{BASE}?p={n + 1}"))

    with respx.mock() as router:
        router.route(host="fhir.test").mock(side_effect=server)
        async with make_client(ClientConfig(max_pages=3)) as client:
            result = await client.search(OBS_QUERY)
        assert router.calls.call_count == 3  # the 4th page is never requested
    assert result.truncated and result.pages == 3 and len(result.entries) == 3
    [issue] = result.issues
    assert issue.severity == "warning" and issue.code == "incomplete"
    assert "'labs'" in issue.message and PID not in issue.message


async def test_entry_cap_truncates_and_reports():
    with respx.mock() as router:
        router.get(f"{BASE}/Observation").respond(
            200, json=searchset([obs(i) for i in range(5)], f"{BASE}?p=2")
        )
        async with make_client(ClientConfig(max_entries=3)) as client:
            result = await client.search(OBS_QUERY)
    assert result.truncated and [r["id"] for r in result.entries] == ["o0", "o1", "o2"]
    assert result.issues and result.issues[0].code == "incomplete"


async def test_fewer_entries_than_bundle_total_is_reported_as_truncated():
    bundle = searchset([obs(1), obs(2)])
    bundle["total"] = 5  # but no next link
    with respx.mock() as router:
        router.get(f"{BASE}/Observation").respond(200, json=bundle)
        async with make_client() as client:
            result = await client.search(OBS_QUERY)
    assert result.truncated and "reported 5 matches but returned 2" in result.issues[0].message
    bundle["total"] = 2
    with respx.mock() as router:
        router.get(f"{BASE}/Observation").respond(200, json=bundle)
        async with make_client() as client:
            result = await client.search(OBS_QUERY)
    assert not result.truncated and result.issues == []


async def test_include_and_outcome_entries():
    warning = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "warning", "code": "processing", "diagnostics": "slow search"}],
    }
    extra = [
        {"resource": {"resourceType": "Patient", "id": "x"}, "search": {"mode": "include"}},
        {"resource": warning, "search": {"mode": "outcome"}},
        {"resource": obs(9)},  # no search.mode: a match
    ]
    with respx.mock() as router:
        router.get(f"{BASE}/Observation").respond(200, json=searchset([obs(1)], extra=extra))
        async with make_client() as client:
            result = await client.search(OBS_QUERY)
    assert [r["id"] for r in result.entries] == ["o1", "o9"]
    assert [i.message for i in result.issues] == ["FHIR server, 'labs' Observation search; "
                                                  "parameters: patient, code, _sort, _count: "
                                                  "slow search"]  # fmt: skip


async def test_error_outcome_entry_fails_the_search():
    bad = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "too-costly"}],
    }
    extra = [{"resource": bad, "search": {"mode": "outcome"}}]
    with respx.mock() as router:
        router.get(f"{BASE}/Observation").respond(200, json=searchset([obs(1)], extra=extra))
        async with make_client() as client:
            with pytest.raises(UpstreamError, match="too-costly"):
                await client.search(OBS_QUERY)


# -- long queries ---------------------------------------------------------------------------


async def test_long_query_switches_to_post_search_with_a_form_body():
    codes = ",".join(f"http://loinc.org|{1000 + i}-{i % 10}" for i in range(120))
    query = Query("labs", "Observation", (("patient", PID), ("code", codes)), frozenset({"x"}))
    with respx.mock() as router:
        post = router.post(f"{BASE}/Observation/_search").respond(200, json=searchset([obs(1)]))
        async with make_client() as client:
            result = await client.search(query)
    assert result.entries == [obs(1)]
    request = post.calls.last.request
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.url.query == b""
    form = httpx.QueryParams(request.content.decode())
    assert form.get("patient") == PID and form.get("code") == codes and form.get("_count") == "200"


async def test_short_query_stays_get():
    with respx.mock() as router:
        get = router.get(f"{BASE}/Observation").respond(200, json=searchset([]))
        async with make_client(ClientConfig(max_query_length=10_000)) as client:
            await client.search(OBS_QUERY)
    assert get.call_count == 1


# -- retries --------------------------------------------------------------------------------


async def test_429_with_retry_after_then_success():
    with respx.mock() as router:
        route = router.get(f"{BASE}/Patient/{PID}").mock(
            side_effect=[
                httpx.Response(429, headers={"Retry-After": "1"}),
                httpx.Response(200, json={"resourceType": "Patient", "id": PID}),
            ]
        )
        async with make_client() as client:
            patient = await client.read("Patient", PID)
    assert patient["id"] == PID and route.call_count == 2


async def test_retry_after_is_honoured_as_the_backoff(monkeypatch):
    """Outside stamina's testing mode: the wait before the retry is exactly Retry-After."""
    stamina.set_testing(False)  # the autouse fixture restores testing mode afterwards
    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(delay, *args, **kwargs):
        slept.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    with respx.mock() as router:
        router.get(f"{BASE}/Patient/{PID}").mock(
            side_effect=[
                httpx.Response(429, headers={"Retry-After": "3"}),
                httpx.Response(200, json={"resourceType": "Patient", "id": PID}),
            ]
        )
        async with make_client() as client:
            await client.read("Patient", PID)
    assert slept == [3.0]


async def test_retry_after_beyond_the_deadline_fails_fast():
    with respx.mock() as router:
        route = router.get(f"{BASE}/Patient/{PID}").respond(429, headers={"Retry-After": "120"})
        started = time.perf_counter()
        async with make_client() as client:
            with pytest.raises(DeadlineExceeded, match="retry"):
                await client.read("Patient", PID, key="patient")
    assert route.call_count == 1 and time.perf_counter() - started < 0.5


def test_retry_after_parsing():
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30
    assert retry_after_seconds(format_datetime(now - timedelta(seconds=30), usegmt=True), now) == 0
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


async def test_503_twice_then_success():
    with respx.mock() as router:
        route = router.get(f"{BASE}/Observation").mock(
            side_effect=[
                httpx.Response(503),
                httpx.Response(503),
                httpx.Response(200, json=searchset([obs(1)])),
            ]
        )
        async with make_client() as client:
            result = await client.search(OBS_QUERY)
    assert route.call_count == 3 and result.entries == [obs(1)]


async def test_connection_error_is_retried():
    with respx.mock() as router:
        route = router.get(f"{BASE}/Observation").mock(
            side_effect=[httpx.ConnectError("refused"), httpx.Response(200, json=searchset([]))]
        )
        async with make_client() as client:
            await client.search(OBS_QUERY)
    assert route.call_count == 2


async def test_persistent_502_gives_up_after_the_configured_attempts():
    with respx.mock() as router:
        route = router.get(f"{BASE}/Observation").respond(502)
        async with make_client(ClientConfig(retry_attempts=3)) as client:
            with pytest.raises(UpstreamError, match="HTTP 502") as err:
                await client.search(OBS_QUERY)
    assert route.call_count == 3
    assert err.value.http_status == 502
    assert "'labs'" in err.value.message and "patient, code" in err.value.message
    assert PID not in err.value.message and "1975-2" not in err.value.message


async def test_other_4xx_is_not_retried():
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "processing", "diagnostics": f"bad {PID}"}],
    }
    with respx.mock() as router:
        route = router.get(f"{BASE}/Observation").respond(400, json=outcome)
        async with make_client() as client:
            with pytest.raises(UpstreamError, match="HTTP 400") as err:
                await client.search(OBS_QUERY)
    assert route.call_count == 1
    assert "processing" in err.value.message and PID not in err.value.message


async def test_a_slow_server_hits_the_deadline():
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(2)
        return httpx.Response(200, json=searchset([]))

    with respx.mock(assert_all_called=False) as router:
        router.get(f"{BASE}/Observation").mock(side_effect=slow)
        started = time.perf_counter()
        async with make_client(ClientConfig(deadline_seconds=0.2)) as client:
            with pytest.raises(DeadlineExceeded) as err:
                await client.search(OBS_QUERY)
    elapsed = time.perf_counter() - started
    assert 0.15 < elapsed < 0.6
    assert err.value.http_status == 504 and "'labs' Observation search" in err.value.message


async def test_the_deadline_is_shared_by_all_requests_of_a_client():
    async def slowish(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.15)
        return httpx.Response(200, json={"resourceType": "Patient", "id": PID})

    with respx.mock() as router:
        router.get(f"{BASE}/Patient/{PID}").mock(side_effect=slowish)
        async with make_client(ClientConfig(deadline_seconds=0.25)) as client:
            await client.read("Patient", PID)
            with pytest.raises(DeadlineExceeded):
                await client.read("Patient", PID)


# -- checked responses ----------------------------------------------------------------------


async def test_404_patient_is_patient_not_found():
    with respx.mock() as router:
        router.get(f"{BASE}/Patient/{PID}").respond(
            404, json={"resourceType": "OperationOutcome", "issue": [{"severity": "error"}]}
        )
        async with make_client() as client:
            with pytest.raises(PatientNotFound) as err:
                await client.read("Patient", PID)
    assert err.value.http_status == 404 and PID not in str(err.value)


async def test_401_is_upstream_auth_error():
    with respx.mock() as router:
        route = router.get(f"{BASE}/Patient/{PID}").respond(401)
        async with make_client(auth=BearerAuth("tok-abc")) as client:
            with pytest.raises(UpstreamAuthError, match="refused our credentials") as err:
                await client.read("Patient", PID, key="patient")
    assert err.value.http_status == 502 and route.call_count == 1
    assert route.calls.last.request.headers["authorization"] == "Bearer tok-abc"


async def test_403_is_upstream_auth_error():
    with respx.mock() as router:
        router.get(f"{BASE}/Observation").respond(403)
        async with make_client() as client:
            with pytest.raises(UpstreamAuthError, match="HTTP 403"):
                await client.search(OBS_QUERY)


async def test_non_json_body_is_a_failure():
    with respx.mock() as router:
        router.get(f"{BASE}/Patient/{PID}").respond(
            200, text="<html>Login</html>", headers={"content-type": "text/html"}
        )
        async with make_client() as client:
            with pytest.raises(UpstreamError, match="not a JSON resource.*text/html"):
                await client.read("Patient", PID)


async def test_operation_outcome_with_error_severity_is_a_failure():
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "fatal", "code": "exception", "diagnostics": "db down"}],
    }
    with respx.mock() as router:
        router.get(f"{BASE}/Observation").respond(200, json=outcome)
        async with make_client() as client:
            with pytest.raises(UpstreamError, match="with an error.*exception") as err:
                await client.search(OBS_QUERY)
    assert "db down" not in err.value.message


async def test_wrong_resource_type_is_a_failure():
    with respx.mock() as router:
        router.get(f"{BASE}/Patient/{PID}").respond(200, json=obs(1))
        router.get(f"{BASE}/Observation").respond(
            200, json={"resourceType": "Bundle", "type": "batch-response"}
        )
        async with make_client() as client:
            with pytest.raises(UpstreamError, match="a Observation, not a Patient"):
                await client.read("Patient", PID)
            with pytest.raises(UpstreamError, match="non-searchset"):
                await client.search(OBS_QUERY)


async def test_a_different_patient_is_a_failure():
    with respx.mock() as router:
        router.get(f"{BASE}/Patient/{PID}").respond(
            200, json={"resourceType": "Patient", "id": "other"}
        )
        async with make_client() as client:
            with pytest.raises(UpstreamError, match="different resource"):
                await client.read("Patient", PID)


async def test_invalid_ids_never_reach_the_server():
    with respx.mock(assert_all_called=False) as router:
        route = router.route().respond(200)
        async with make_client() as client:
            for bad in ("../Observation", "a b", "x" * 65, ""):
                with pytest.raises(InvalidPatientId):
                    await client.read("Patient", bad)
    assert route.call_count == 0


# -- logs -----------------------------------------------------------------------------------


async def test_request_logs_are_structured_and_carry_no_values(caplog):
    caplog.set_level(logging.DEBUG)
    with respx.mock() as router:
        router.get(f"{BASE}/Patient/{PID}").respond(
            200, json={"resourceType": "Patient", "id": PID}
        )
        router.get(f"{BASE}/Observation").mock(
            side_effect=[httpx.Response(503), httpx.Response(200, json=searchset([obs(1)]))]
        )
        async with make_client() as client:
            await client.read("Patient", PID, key="patient")
            await client.search(OBS_QUERY)
    records = [r for r in caplog.records if r.name == "service.fhir" and hasattr(r, "status")]
    assert [r.status for r in records] == [200, 503, 200]
    # The retry is one INFO line of ours naming the query, not stamina's WARNING.
    (retry,) = [r for r in caplog.records if hasattr(r, "retry_num")]
    assert retry.name == "service.fhir" and retry.levelno == logging.INFO
    assert retry.fhir_query == "labs" and retry.retry_cause == "HTTP 503"
    assert "'labs' Observation search" in retry.getMessage()
    assert not any(r.name == "stamina" for r in caplog.records)
    read, _, search = records
    assert read.fhir_resource == "Patient" and read.fhir_params == [] and read.status == 200
    assert search.fhir_resource == "Observation"
    assert search.fhir_params == ["patient", "code", "_sort", "_count"]
    assert isinstance(search.elapsed_ms, float) and search.fhir_query == "labs"
    for record in caplog.records:  # httpx's own URL logging is silenced as well
        text = record.getMessage() + repr(record.__dict__)
        assert PID not in text and "1975-2" not in text


# -- malformed Bundles ----------------------------------------------------------------------


def _with_entry(entry) -> dict:
    return {**searchset([]), "entry": entry}


def _with_link(link) -> dict:
    return {**searchset([obs(1)]), "link": link}


def _next_to(url) -> dict:
    return searchset([obs(1)], next_url="placeholder") | {
        "link": [{"relation": "next", "url": url}]
    }


MALFORMED = {
    "entry is a number": (_with_entry(5), "Bundle.entry"),
    "entry item is a number": (_with_entry([5]), "Bundle.entry"),
    "resource is a string": (_with_entry([{"resource": "x"}]), "Bundle.entry.resource"),
    "search is a string": (
        _with_entry([{"resource": obs(1), "search": "match"}]),
        "Bundle.entry.search",
    ),
    "search.mode is a number": (
        _with_entry([{"resource": obs(1), "search": {"mode": 5}}]),
        "Bundle.entry.search.mode",
    ),
    "id is a list": (
        _with_entry([{"resource": {**obs(1), "id": [PID]}}]),
        "Bundle.entry.resource.id",
    ),
    "outcome issue is a number": (
        _with_entry([{"resource": {"resourceType": "OperationOutcome", "issue": 5}}]),
        "Bundle.entry.resource.issue",
    ),
    "link is a number": (_with_link(5), "Bundle.link"),
    "link item is a string": (_with_link(["next"]), "Bundle.link"),
    "next url is a number": (_next_to(5), "Bundle.link.url"),
    "next url is empty": (_next_to(""), "Bundle.link.url"),
    "next url, bad IPv6 (ValueError)": (_next_to(f"http://[{PID}/x"), "Bundle.link.url"),
    "next url, bad port (InvalidURL)": (_next_to(f"http://fhir.test:{PID}/x"), "Bundle.link.url"),
}


@pytest.mark.parametrize(("bundle", "element"), MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_malformed_searchset_is_an_upstream_error(bundle, element):
    with respx.mock() as router:
        router.get(f"{BASE}/Observation").respond(200, json=bundle)
        async with make_client() as client:
            with pytest.raises(UpstreamError) as err:
                await client.search(OBS_QUERY)
    message = err.value.message
    assert f"malformed Bundle ({element}" in message
    assert "'labs' Observation search; parameters: patient, code, _sort, _count" in message
    assert PID not in message and "1975-2" not in message  # names only, never values


async def test_absent_or_null_entry_and_link_are_an_empty_last_page():
    bundle = {"resourceType": "Bundle", "type": "searchset", "entry": None, "link": None}
    with respx.mock() as router:
        router.get(f"{BASE}/Observation").respond(200, json=bundle)
        async with make_client() as client:
            result = await client.search(OBS_QUERY)
    assert result.entries == [] and result.pages == 1 and not result.truncated


async def test_server_values_are_not_echoed_in_type_names_or_issue_codes():
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": PID}]}
    with respx.mock() as router:
        router.get(f"{BASE}/Patient/{PID}").respond(200, json={"resourceType": {"x": PID}})
        router.get(f"{BASE}/Observation").respond(500, json=outcome)
        async with make_client() as client:
            with pytest.raises(UpstreamError, match="resource of unknown type") as read_err:
                await client.read("Patient", PID)
            with pytest.raises(UpstreamError, match=r"HTTP 500.*unknown") as search_err:
                await client.search(OBS_QUERY)
    assert PID not in read_err.value.message and PID not in search_err.value.message


def test_retry_after_with_non_ascii_digits_is_ignored():
    assert retry_after_seconds("²") is None
    assert retry_after_seconds("Mon, 01 Jan 99999 00:00:00 GMT") is None


async def test_a_patient_without_id_is_a_failure():
    with respx.mock() as router:
        router.get(f"{BASE}/Patient/{PID}").respond(200, json={"resourceType": "Patient"})
        async with make_client() as client:
            with pytest.raises(UpstreamError, match="without id"):
                await client.read("Patient", PID)


# -- response size cap ----------------------------------------------------------------------


def gzipped_stream(raw: bytes) -> httpx.Response:
    """A gzip-labelled body that httpx decodes while streaming (not up front)."""

    async def body():
        yield raw

    return httpx.Response(200, content=body(), headers={"content-encoding": "gzip"})


async def test_a_declared_oversized_response_is_refused():
    big = searchset([obs(i) for i in range(100)])
    with respx.mock() as router:
        router.get(f"{BASE}/Observation").respond(200, json=big)
        async with make_client(ClientConfig(max_response_bytes=1000)) as client:
            with pytest.raises(UpstreamError, match="response too large") as err:
                await client.search(OBS_QUERY)
    assert "'labs' Observation search" in err.value.message


async def test_an_undeclared_oversized_response_is_refused_while_streaming():
    seen: list[int] = []

    async def endless():
        for i in range(10_000):
            seen.append(i)
            yield b" " * 1000

    with respx.mock() as router:
        router.get(f"{BASE}/Patient/{PID}").mock(
            return_value=httpx.Response(200, content=endless())
        )
        async with make_client(ClientConfig(max_response_bytes=10_000)) as client:
            with pytest.raises(UpstreamError, match="response too large"):
                await client.read("Patient", PID)
    assert len(seen) < 20  # stopped reading soon after the cap, not at the end


async def test_the_cap_counts_decompressed_bytes():
    bomb = gzip.compress(b'{"resourceType": "Patient", "id": "pat-7781", "x": "' + b" " * 200_000)
    with respx.mock() as router:
        router.get(f"{BASE}/Patient/{PID}").mock(return_value=gzipped_stream(bomb))
        async with make_client(ClientConfig(max_response_bytes=100_000)) as client:
            assert len(bomb) < 100_000
            with pytest.raises(UpstreamError, match="response too large"):
                await client.read("Patient", PID)


async def test_a_response_within_the_cap_is_read():
    body = {"resourceType": "Patient", "id": PID}
    with respx.mock() as router:
        router.get(f"{BASE}/Patient/{PID}").respond(200, json=body)
        async with make_client(ClientConfig(max_response_bytes=len(orjson.dumps(body)))) as c:
            assert await c.read("Patient", PID) == body


async def test_a_corrupt_compressed_body_is_an_upstream_error():
    with respx.mock() as router:
        router.get(f"{BASE}/Patient/{PID}").mock(return_value=gzipped_stream(b"not gzip"))
        async with make_client() as client:
            with pytest.raises(UpstreamError, match="could not be decoded.*gzip"):
                await client.read("Patient", PID)


def test_the_size_cap_defaults_to_50_mb_and_follows_settings():
    settings = Settings(_env_file=None)
    assert ClientConfig().max_response_bytes == MAX_RESPONSE_BYTES == 50 * 1024 * 1024
    assert ClientConfig.from_settings(settings).max_response_bytes == MAX_RESPONSE_BYTES
    custom = Settings(_env_file=None, max_response_bytes=1234)
    assert ClientConfig.from_settings(custom).max_response_bytes == 1234


async def test_a_500_is_retried_once_for_reads_and_searches_only():
    """One retry of a transient 500 (HAPI) for idempotent requests; never for others."""
    with respx.mock() as router:
        route = router.get(f"{BASE}/Observation").mock(
            side_effect=[httpx.Response(500), httpx.Response(200, json=searchset([obs(1)]))]
        )
        async with make_client() as client:
            assert len((await client.search(OBS_QUERY)).entries) == 1
        assert route.call_count == 2

        post = router.post(f"{BASE}/Task").respond(500)
        async with make_client() as client:
            with pytest.raises(UpstreamError, match=r"HTTP 500 to the Task create"):
                await client.create({"resourceType": "Task", "status": "requested"})
        assert post.call_count == 1  # a plain create may have been carried out: sent once
