"""Ambiguous JSON (an object naming a key twice) is refused everywhere we read JSON.

orjson keeps the last value of a repeated key and other parsers the first, so a validator in
front of us and our engine could read two different birthDates from one document. The fast
check (service/strict_json.py) proves uniqueness from byte counts; the property test below
compares it with the standard library's pair-by-pair check on random documents built to
contain repeated keys, escaped keys and escaped colons.

Cost, measured with benchmarks's synthetic generator (CPU time, medians, interleaved, on
the shared 2-core dev machine): decoding alone, compact input (orjson-encoded, the memcmp
path) +6.9 ms at 5,000 Observations (4.3 MB; 33.1 -> 40.0 ms) and +21.9 ms at 20,000 (17.3 MB;
143.9 -> 165.8 ms); indented input (the byte-count path) +12.6 ms (7.6 MB) and +42.3 ms
(30.6 MB). Whole engine (evaluate_body), compact: 66.6 -> 76.2 ms at 5,000 (+14 %) and
278.8 -> 304.3 ms at 20,000 (+9 %).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import orjson
import pytest
import respx
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from service import strict_json
from service.api import create_app
from service.cli import app as cli
from service.fhir.client import ClientConfig, FhirClient
from service.fhir.errors import UpstreamError
from service.protocol import default_protocol
from service.settings import Settings

TWO_BIRTH_DATES = (
    b'{"resourceType":"Bundle","type":"collection","entry":[{"resource":'
    b'{"resourceType":"Patient","id":"p1","birthDate":"1990-01-01","birthDate":"2015-01-01"}}]}'
)


@pytest.mark.parametrize(
    "doc",
    [
        b'{"a":1,"a":2}',
        b'{"a":1,"a":1}',  # the same value twice is still two keys
        b'[{"x":{"b":[1,{"c":1,"c":2}]}}]',
        b'{"a":1,"\\u0061":2}',  # the same key, spelled with an escape
        b'{"a":1,"a":2,"s":"\\u003a"}',  # an escaped colon must not hide the dropped member
        b'{"a":{"k:":1},"a":{"k:":1},"s":"\\u003A\\u003a"}',
        b'{"k":"x:y","k":"x:y"}',
        TWO_BIRTH_DATES,
    ],
)
def test_duplicate_keys_are_refused(doc):
    with pytest.raises(strict_json.DuplicateKeyError):
        strict_json.loads(doc)
    with pytest.raises(strict_json.DuplicateKeyError):
        strict_json.loads(doc.decode())


@pytest.mark.parametrize(
    "doc",
    [
        b"{}",
        b"[]",
        b'"a:b"',
        b'{"a":1,"b":{"a":1}}',  # the same key in different objects
        b'[{"a":1},{"a":2}]',
        b'{"a:b":"c:d","s":"\\u003a","t":"\\\\u003a"}',
        b'{"a":"\\u0061","\\u0062":1}',
    ],
)
def test_unique_keys_are_read_as_orjson_reads_them(doc):
    assert strict_json.loads(doc) == orjson.loads(doc)


def test_deep_documents_are_checked_too():
    deep = b'{"a":' * 300 + b"1" + b"}" * 300  # deeper than orjson re-encodes
    assert strict_json.loads(deep) is not None
    bad = b'{"a":' * 300 + b'{"z":1,"z":2}' + b"}" * 300
    with pytest.raises(strict_json.DuplicateKeyError):
        strict_json.loads(bad)


def test_the_message_names_a_plain_key_and_never_an_odd_one():
    with pytest.raises(strict_json.DuplicateKeyError, match="'birthDate'"):
        strict_json.loads(TWO_BIRTH_DATES)
    odd = "x" * 500
    with pytest.raises(strict_json.DuplicateKeyError) as exc:
        strict_json.loads(f'{{"{odd}":1,"{odd}":2}}')
    assert odd not in str(exc.value) and exc.value.key is None


# -- the property: strict_json agrees with a pair-by-pair check ---------------------------------
KEYS = st.sampled_from(["a", "b", "a:", ":", "\\u0061", "\\u003a", "\\\\u003a", "k\\n", "é"])
SCALARS = st.sampled_from(["1", '"x"', '":"', '"\\u003a"', '"a:b"', "null", "true", "[]", "{}"])


def _obj(pairs: list[tuple[str, str]]) -> str:
    return "{" + ",".join(f'"{k}":{v}' for k, v in pairs) + "}"


DOCS = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]")
        | st.lists(st.tuples(KEYS, inner), max_size=4).map(_obj)
    ),
    max_leaves=12,
)


def _reference_has_duplicates(doc: str) -> bool:
    found = False

    def hook(pairs: list[tuple[str, Any]]) -> dict:
        nonlocal found
        found = found or len({k for k, _ in pairs}) != len(pairs)
        return dict(pairs)

    json.loads(doc, object_pairs_hook=hook)
    return found


@settings(max_examples=400, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(doc=DOCS)
def test_strict_loads_refuses_exactly_the_documents_with_a_repeated_key(doc):
    if _reference_has_duplicates(doc):
        with pytest.raises(strict_json.DuplicateKeyError):
            strict_json.loads(doc.encode())
    else:
        assert strict_json.loads(doc.encode()) == orjson.loads(doc)


# -- every entry point ----------------------------------------------------------------------
def test_http_refuses_two_birth_dates_with_a_400():
    with TestClient(create_app(Settings(cds_auth_enabled=False))) as client:
        r = client.post("/$eligibility", content=TWO_BIRTH_DATES,
                        headers={"Content-Type": "application/fhir+json"})  # fmt: skip
        assert r.status_code == 400
        out = r.json()
        assert out["resourceType"] == "OperationOutcome"
        assert "ambiguous JSON" in out["issue"][0]["diagnostics"]
        cds = (
            b'{"hook":"patient-view","hook":"order-sign","hookInstance":'
            b'"d1577c69-dfbe-44ad-ba6d-3e05e953b2ea","context":{"userId":"Practitioner/1",'
            b'"patientId":"p1","patientId":"p2"}}'
        )
        sid = f"{default_protocol().id}-screening"
        r = client.post(f"/cds-services/{sid}", content=cds,
                        headers={"Content-Type": "application/json"})  # fmt: skip
        assert r.status_code == 400 and "ambiguous JSON" in r.text
        prefetch = (
            b'{"hook":"patient-view","hookInstance":"d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",'
            b'"context":{"userId":"Practitioner/1","patientId":"p1"},"prefetch":{"patient":'
            b'{"resourceType":"Patient","id":"p1","birthDate":"1990-01-01","birthDate":"2015-01-01"}}}'
        )
        r = client.post(f"/cds-services/{sid}", content=prefetch,
                        headers={"Content-Type": "application/json"})  # fmt: skip
        assert r.status_code == 400 and "'birthDate'" in r.text


def test_cli_refuses_two_birth_dates_with_exit_2(tmp_path):
    path = tmp_path / "in.json"
    path.write_bytes(TWO_BIRTH_DATES)
    result = CliRunner().invoke(cli, ["evaluate", "--bundle", str(path)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "ambiguous JSON" in lines[0]


async def test_fhir_server_answers_with_a_repeated_key_are_refused():
    base = "http://fhir.test/fhir"
    body = b'{"resourceType":"Patient","id":"p1","birthDate":"1990-01-01","birthDate":"2015-01-01"}'
    with respx.mock() as router:
        router.get(f"{base}/Patient/p1").mock(return_value=httpx.Response(200, content=body))
        async with httpx.AsyncClient() as http:
            client = FhirClient(http, base, config=ClientConfig(retry_attempts=1))
            with pytest.raises(UpstreamError, match="ambiguous JSON"):
                await client.read("Patient", "p1", key="patient")
