"""Property-based fuzzing of every request body and header the HTTP API reads: no input is a 5xx.

Real demo bundles are mutated at random paths (a value swapped for one of another JSON type,
an element dropped or doubled) and posted to ``POST /$eligibility`` as a Bundle or inside a
``Parameters``; CDS Hooks calls get random types in ``context``, ``prefetch``,
``fhirAuthorization`` and ``fhirServer``. Every answer must be a 2xx or a 4xx OperationOutcome
of bounded size (errors never echo unbounded input).

Deterministic (``derandomize``) and bounded, so CI is fast and stable; set FUZZ_EXAMPLES to
explore more locally (e.g. ``FUZZ_EXAMPLES=3000 pytest tests/test_fuzz_inputs.py``).
"""

from __future__ import annotations

import copy
import os
import uuid
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
import respx
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.api import create_app
from service.demo import load_demo_bundles
from service.fhir.demo_store import DemoStore
from service.fhir.queries import prefetch_templates
from service.protocol import default_protocol
from service.settings import Settings

EHR = "https://ehr.example.org/fhir"
SID = f"{default_protocol().id}-screening"
FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "40")),
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MAX_ERROR_BYTES = 2048  # an error answer never grows with the input

KEYS = st.sampled_from(
    [
        "resourceType", "entry", "resource", "fullUrl", "id", "coding", "code", "system",
        "value", "valueQuantity", "reference", "subject", "parameter", "name", "status",
        "birthDate", "link", "relation", "url", "issue", "severity", "meta", "lastUpdated",
    ]
)  # fmt: skip
ODD_STRINGS = st.sampled_from(
    [
        "", " ", "Bundle", "Patient", "Parameters", "Observation", "OperationOutcome",
        "searchset", "next", "2026-11-20", "2026-13-45", "0000-00-00", "-1", "1e999",
        ".", "..", "x" * 5000, "\x00", "a\nb", "é\u202e", "\ud7ff", "Patient/..",
        "urn:uuid:x", "http://loinc.org", "777-3", "patientData", "asOf", "patient",
    ]
)  # fmt: skip
LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    ODD_STRINGS,
)
JSON = st.recursive(
    LEAVES,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(KEYS | st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def _kind(value: Any) -> type:
    return type(value)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value inside ``node`` (the root itself excluded)."""
    out: list[tuple] = []
    if isinstance(node, dict | list):
        for key, child in node.items() if isinstance(node, dict) else enumerate(node):
            out.append((*prefix, key))
            out.extend(_paths(child, (*prefix, key)))
    return out


@st.composite
def mutate(draw: st.DrawFn, doc: Any, max_edits: int = 4) -> Any:
    """``doc`` with 1..max_edits random edits at random paths (deep-copied first).

    Half the paths are drawn uniformly over the whole tree (mostly deep, inside resources),
    half by a walk from the root that stops early (envelope elements).
    """
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, max_edits))):
        if draw(st.booleans()):
            paths = _paths(doc)
            if not paths:
                continue
            path = draw(st.sampled_from(paths))
        else:
            path, node = (), doc
            while isinstance(node, dict | list) and node and (not path or draw(st.booleans())):
                key = draw(
                    st.sampled_from(list(node) if isinstance(node, dict) else range(len(node)))
                )
                path, node = (*path, key), node[key]
            if not path:
                continue
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        node = parent[key]
        action = draw(st.sampled_from(["swap", "swap", "swap", "drop", "double"]))
        if action == "swap":
            parent[key] = draw(JSON.filter(lambda v, old=node: _kind(v) is not _kind(old)))
        elif action == "drop":
            del parent[key]
        elif isinstance(parent, list):
            parent.append(copy.deepcopy(node))
        else:
            parent[draw(KEYS)] = copy.deepcopy(node)
    return doc


DEMO = load_demo_bundles()
DEMO_IDS = sorted(DEMO)


def _assert_no_5xx(r: httpx.Response) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:500])
    assert r.status_code != 429  # rate limits are off: each example reaches the code
    if r.status_code >= 400 and r.status_code != 401:
        assert len(r.content) <= MAX_ERROR_BYTES, len(r.content)
        out = r.json()
        assert out["resourceType"] == "OperationOutcome"


@pytest.fixture(scope="module")
def client():
    app = create_app(
        Settings(
            cds_auth_enabled=False,
            cds_allowed_fhir_servers=[EHR],
            rate_limit_enabled=False,  # every example must reach the code under test
            retry_attempts=1,
            deadline_seconds=5,
        )
    )
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@st.composite
def eligibility_bodies(draw: st.DrawFn) -> tuple[Any, str]:
    bundle = DEMO[draw(st.sampled_from(DEMO_IDS))]
    form = draw(st.sampled_from(["bundle", "parameters"]))
    if form == "bundle":
        return draw(mutate(bundle)), draw(st.sampled_from(["", "?asOf=2026-11-20"]))
    params = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "patientData", "resource": bundle},
            {"name": "asOf", "valueDate": "2026-11-20"},
        ],
    }
    return draw(mutate(params, max_edits=3)), ""


@FUZZ
@given(case=eligibility_bodies())
def test_eligibility_bodies_never_5xx(client, case):
    body, query = case
    r = client.post(
        f"/$eligibility{query}",
        content=orjson.dumps(body),
        headers={"Content-Type": "application/fhir+json"},
    )
    _assert_no_5xx(r)


@FUZZ
@given(patient=st.one_of(st.text(max_size=80), ODD_STRINGS), as_of=st.text(max_size=30))
def test_eligibility_query_parameters_never_5xx(client, patient, as_of):
    r = client.post(
        "/$eligibility",
        params={"patient": patient, "asOf": as_of},
        content=orjson.dumps(DEMO["demo-eligible"]),
        headers={"Content-Type": "application/fhir+json"},
    )
    _assert_no_5xx(r)


@FUZZ
@given(patient_id=st.one_of(st.text(min_size=1, max_size=80), ODD_STRINGS))
def test_pull_mode_patient_ids_never_5xx(client, patient_id):
    r = client.get(f"/Patient/{quote(patient_id, safe='')}/$eligibility")
    if r.status_code == 404 and not r.content.startswith(b"{"):
        return  # a path that no longer matches the route (a '/' in the id)
    _assert_no_5xx(r)
    assert patient_id not in r.text or len(patient_id) <= 64


HEADER_BYTES = st.binary(min_size=0, max_size=40).filter(
    lambda b: b"\r" not in b and b"\n" not in b and b"\x00" not in b
)


@FUZZ
@given(
    authorization=st.one_of(HEADER_BYTES, HEADER_BYTES.map(lambda b: b"Bearer " + b)),
    request_id=HEADER_BYTES,
    content_type=st.one_of(HEADER_BYTES, st.just(b"application/fhir+json")),
)
def test_odd_header_bytes_never_5xx(client, authorization, request_id, content_type):
    headers = {
        "Authorization": authorization,
        "X-Request-Id": request_id,
        "Content-Type": content_type,
    }
    r = client.post("/$eligibility", content=orjson.dumps(DEMO["demo-eligible"]), headers=headers)
    _assert_no_5xx(r)
    r = client.post(f"/cds-services/{SID}", content=b"{}", headers=headers)
    _assert_no_5xx(r)


def _full_prefetch(patient_id: str) -> dict:
    store = DemoStore(DEMO, base_url=EHR, default_page_size=500, max_page_size=500)
    out = {}
    for key, template in prefetch_templates(default_protocol()).items():
        url = f"{EHR}/{template.replace('{{context.patientId}}', patient_id)}"
        out[key] = store.handle(httpx.Request("GET", url)).json()
    return out


PREFETCH = {pid: _full_prefetch(pid) for pid in ("demo-eligible", "demo-potential")}


@st.composite
def cds_bodies(draw: st.DrawFn) -> dict:
    pid = draw(st.sampled_from(sorted(PREFETCH)))
    body: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/dr-1", "patientId": pid},
        "prefetch": PREFETCH[pid],
    }
    if draw(st.booleans()):
        body["fhirServer"] = EHR
        body["fhirAuthorization"] = {
            "access_token": "secret-token-123",
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": "cds-client",
        }
        if draw(st.booleans()):
            body["prefetch"] = {k: v for k, v in body["prefetch"].items() if draw(st.booleans())}
    return draw(mutate(body))


def _ehr_answer(request: httpx.Request) -> httpx.Response:
    store = DemoStore(DEMO, base_url=EHR, default_page_size=500, max_page_size=500)
    return store.handle(request)


@FUZZ
@given(body=cds_bodies())
def test_cds_bodies_never_5xx(client, body):
    with respx.mock(assert_all_called=False) as mock:
        mock.route(url__startswith=EHR).mock(side_effect=_ehr_answer)
        r = client.post(f"/cds-services/{SID}", content=orjson.dumps(body), headers=_JSON)
    _assert_no_5xx(r)


_JSON = {"Content-Type": "application/json"}


@FUZZ
@given(
    token=st.one_of(st.text(min_size=1, max_size=40), ODD_STRINGS),
    server=st.one_of(JSON, st.just(EHR), st.just(EHR + "/")),
)
def test_cds_authorization_and_server_never_5xx(client, token, server):
    body = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/dr-1", "patientId": "demo-eligible"},
        "fhirServer": server,
        "fhirAuthorization": {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": "cds-client",
        },
    }
    with respx.mock(assert_all_called=False) as mock:
        mock.route(url__startswith=EHR).mock(side_effect=_ehr_answer)
        r = client.post(f"/cds-services/{SID}", content=orjson.dumps(body), headers=_JSON)
    _assert_no_5xx(r)
    assert r.status_code != 502  # a token we cannot send is the caller's error: 400


@pytest.fixture(scope="module")
def authenticating_client():
    from service.settings import TrustedIssuer

    app = create_app(
        Settings(
            cds_issuers=[TrustedIssuer(iss="https://ehr.example.org", jwks={"keys": []})],
            api_keys=["key-1"],
            rate_limit_enabled=False,
        )
    )
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _b64(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@FUZZ
@given(
    header=st.one_of(JSON, st.dictionaries(st.sampled_from(["alg", "kid", "jku", "typ"]), JSON)),
    claims=st.one_of(JSON, st.dictionaries(st.sampled_from(["iss", "aud", "exp", "jti"]), JSON)),
    signature=st.binary(max_size=8),
)
def test_odd_jwts_and_api_keys_are_401_never_5xx(authenticating_client, header, claims, signature):
    token = ".".join([_b64(orjson.dumps(header)), _b64(orjson.dumps(claims)), _b64(signature)])
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    for r in (
        authenticating_client.get("/cds-services", headers=headers),
        authenticating_client.post(f"/cds-services/{SID}", content=b"{}", headers=headers),
        authenticating_client.get("/Patient/demo-eligible/$eligibility", headers=headers),
    ):
        assert r.status_code == 401, (r.status_code, r.text[:200])
