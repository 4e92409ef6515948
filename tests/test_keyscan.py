"""The C scanner (service/_keyscan.c) against the decoders it stands in for.

The lean path trusts the scanner for three things: the document is JSON that orjson reads
(syntax), no object names a key twice, and every entry it leaves out is an Observation the
record builder would ignore. A wrong "yes" on any of them would change an answer, so each is
checked here against an independent oracle over byte-level corruptions of real Bundles:
orjson for syntax, ``json`` with a pairs hook for duplicates, and a plain Python reading of
the entries for the plan. A wrong "no" only costs speed (the generic path decides); the
tests also check that ordinary documents are proven, or the lean path would never be used.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.synthetic import make_patient
from service import lean
from service.demo import load_demo_bundles
from service.inputs import MAX_FULL_URL
from service.protocol import default_protocol
from tests.test_lean_equivalence import has_duplicate  # json with a pairs hook

pytestmark = pytest.mark.skipif(not lean.available(), reason="service/_keyscan.c not built")

CODES = lean.protocol_codes(default_protocol())
DEMO = load_demo_bundles()
SEEDS = [orjson.dumps(DEMO[name]) for name in sorted(DEMO)][:3] + [make_patient(30, seed=3).body]
FUZZ = settings(
    max_examples=400,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Bytes that matter to a JSON scanner: structure, escapes, control characters, literals.
NASTY = st.sampled_from(
    [
        b'"',
        b"\\",
        b"{",
        b"}",
        b"[",
        b"]",
        b",",
        b":",
        b" ",
        b"\x00",
        b"\x1f",
        b"\n",
        b"0",
        b"-",
        b".",
        b"e",
        b"E",
        b"+",
        b"t",
        b"n",
        b"f",
        b"\\u",
        b"\\ud800",
        b"\\udc00",
        b"1e400",
        b"\xff",
        b"\xc3\xa9",
        b"true",
        b"null",
        b"nul",
        b"01",
        b"-.5",
        b"\\/",
        b"\\x",
    ]
)


def _orjson_reads(body: bytes) -> bool:
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return True


@st.composite
def corrupted(draw: st.DrawFn) -> bytes:
    """A real Bundle with 1-4 byte-level edits (insert, delete, replace) at random places."""
    body = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(body)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = draw(NASTY | st.binary(min_size=1, max_size=3))
        if action == "insert":
            body[at:at] = piece
        elif action == "delete":
            del body[at : at + draw(st.integers(1, 8))]
        else:
            body[at : at + len(piece)] = piece
    return bytes(body)


@given(corrupted())
@FUZZ
def test_proven_documents_are_json_orjson_reads_without_duplicates(body):
    if lean._keyscan.proof(body) and lean._utf8(body):
        assert _orjson_reads(body)
        assert not has_duplicate(body)
    plan = lean._keyscan.plan(body, CODES, MAX_FULL_URL)
    if plan is not None:
        assert lean._keyscan.proof(body)


@pytest.mark.parametrize(
    "text",
    [
        '{"a":1,}',
        "[1,]",
        '{"a" 1}',
        '{"a":01}',
        '["\\ud83d"]',
        '["\\udc00x"]',
        '["\x01"]',
        "[1] x",
        "[tru]",
        "[-]",
        "[1.]",
        "[.5]",
        "[1e]",
        "[1e400]",
        '["a\\qb"]',
        '["\\u12g4"]',
        "",
        "   ",
        "{",
        '{"a"}',
        '{"a":}',
        "[,1]",
        '{,"a":1}',
        '{"a":1 "b":2}',
        "[1 2]",
        '{"a":1}}',
        "[[]",
        "\ufeff[1]",
        "[NaN]",
        "[Infinity]",
        "['a']",
        "[+1]",
        "[0x10]",
    ],
)
def test_refused_syntax_is_never_proven(text):
    body = text.encode()
    assert not _orjson_reads(body)
    assert not lean._keyscan.proof(body)


@pytest.mark.parametrize(
    "text",
    [
        '{"a":[1,-0.5,2E+10,1e-5,0,true,false,null,"x\\"y\\\\z\\/\\b\\f\\n\\r\\t\\u00e9"]}',
        ' \n\t{ "a" : [ 1 , { } , [ ] ] }\r\n',
        '["\\ud83d\\ude00", "\\u0000", "\x7f", "é"]',
        '"just a string"',
        "-12.5e-3",
    ],
)
def test_ordinary_json_is_proven(text):
    body = text.encode()
    assert _orjson_reads(body)
    assert lean._keyscan.proof(body)


def test_an_object_with_very_many_members_takes_the_generic_path():
    """Member names are compared pairwise: past 64 members per object the scanner declines
    (a crafted body of 512-member objects took it 6x as long as parsing). The generic path
    then decides, with the same answer."""
    members = ",".join(f'"k{i:03d}":{i}' for i in range(65))
    assert not lean._keyscan.proof(("{" + members + "}").encode())
    assert lean._keyscan.proof(("{" + members.rsplit(",", 1)[0] + "}").encode())
    doc = orjson.loads(SEEDS[0])
    doc["entry"][0]["resource"]["extension"] = [
        {"url": "urn:x", **{f"_k{i}": {"id": str(i)} for i in range(80)}}
    ]
    body = orjson.dumps(doc)
    assert lean.lean_bundle(body, CODES) is None
    assert lean._keyscan.proof(SEEDS[0])


@pytest.mark.parametrize("seed", range(len(SEEDS)))
def test_real_bundles_are_proven_in_every_layout(seed):
    doc = orjson.loads(SEEDS[seed])
    for body in (
        SEEDS[seed],
        json.dumps(doc, indent=2).encode(),
        json.dumps(doc, ensure_ascii=True).encode(),  # \u escapes, surrogate pairs
    ):
        assert lean._keyscan.proof(body)
        assert lean._keyscan.plan(body, CODES, MAX_FULL_URL) is not None


# -- the plan: an entry left out is one the record builder ignores -----------------------


def _protocol_code(coding: Any) -> bool:
    """Whether a coding could carry a protocol code (a code that is not a string: maybe)."""
    if not isinstance(coding, dict) or "code" not in coding:
        return False
    code = coding["code"]
    return not isinstance(code, str) or code.encode() in CODES


def _concept_may_match(concept: Any) -> bool:
    if concept is None:
        return False
    if not isinstance(concept, dict):
        return True
    coding = concept.get("coding")
    if coding is None:
        return False
    if not isinstance(coding, list):
        return True
    return any(not isinstance(c, dict) or _protocol_code(c) for c in coding)


def must_keep(entry: Any) -> bool:
    """The reference reading: every entry but an Observation whose code and components can
    carry no protocol code (the record builder skips those before any other work)."""
    if not isinstance(entry, dict):
        return True
    full_url = entry.get("fullUrl")
    if full_url is not None and (not isinstance(full_url, str) or len(full_url) > MAX_FULL_URL):
        return True
    resource = entry.get("resource")
    if not isinstance(resource, dict) or resource.get("resourceType") != "Observation":
        return True
    if "code" in resource and _concept_may_match(resource["code"]):
        return True
    components = resource.get("component")
    if components is None:
        return False
    if not isinstance(components, list):
        return True
    return any(
        not isinstance(part, dict) or ("code" in part and _concept_may_match(part["code"]))
        for part in components
    )


def _planned_positions(body: bytes) -> list[int] | None:
    plan = lean._keyscan.plan(body, CODES, MAX_FULL_URL)
    return None if plan is None else plan[::3]


@st.composite
def odd_entries(draw: st.DrawFn) -> bytes:
    """A demo Bundle whose Observations' code paths hold values of odd JSON types."""
    doc = orjson.loads(draw(st.sampled_from(SEEDS)))
    odd = st.sampled_from(
        [None, 1, "718-7", "x", [], {}, [{"code": 718}], [{"code": None}], [1], {"coding": 1}]
    )
    for entry in doc["entry"]:
        resource = entry.get("resource", {})
        if resource.get("resourceType") != "Observation" or not draw(st.booleans()):
            continue
        where = draw(st.sampled_from(["code", "coding", "code.code", "component", "fullUrl"]))
        value = draw(odd)
        if where == "code":
            resource["code"] = value
        elif where == "coding":
            resource["code"] = {"coding": value}
        elif where == "code.code":
            resource["code"] = {"coding": [{"system": "urn:x", "code": value}]}
        elif where == "component":
            resource["component"] = value if draw(st.booleans()) else [{"code": value}]
        else:
            entry["fullUrl"] = value if value is not None else "x" * (MAX_FULL_URL + 1)
    return orjson.dumps(doc)


@given(odd_entries() | corrupted())
@FUZZ
def test_plan_keeps_every_entry_the_record_builder_may_read(body):
    positions = _planned_positions(body)
    if positions is None or not lean._utf8(body):
        return  # the generic path decides (lean_bundle checks UTF-8 apart)
    doc = orjson.loads(body)
    entries = doc["entry"]
    for position, entry in enumerate(entries):
        if must_keep(entry):
            assert position in positions, entry
    assert positions == sorted(set(positions))
    assert all(0 <= p < len(entries) for p in positions)


def test_plan_leaves_out_exactly_the_irrelevant_observations():
    body = make_patient(400, seed=5).body
    entries = orjson.loads(body)["entry"]
    positions = _planned_positions(body)
    assert positions == [p for p, e in enumerate(entries) if must_keep(e)]
    assert len(positions) < len(entries) / 2


def test_plan_spans_decode_to_the_entries():
    body = json.dumps(orjson.loads(SEEDS[0]), indent=1).encode()
    plan = lean._keyscan.plan(body, CODES, MAX_FULL_URL)
    entries = orjson.loads(body)["entry"]
    for position, start, end in zip(plan[::3], plan[1::3], plan[2::3], strict=True):
        assert orjson.loads(body[start:end]) == entries[position]


@pytest.mark.parametrize(
    "text",
    [
        '{"resourceType":"Parameters","entry":[]}',
        '{"resourceType":"Bundle"}',
        '{"resourceType":"Bundle","entry":{}}',
        '{"resourceType":"Bundle","entry":null}',
        '{"resourceType":"Bundle","entry":[1]}',
        '{"resourceType":"Bundle","entry":[[]]}',
        '{"resourceType":"B\\u0075ndle","entry":[]}',
        '[{"resourceType":"Bundle","entry":[]}]',
    ],
)
def test_plan_declines_what_is_not_a_plain_bundle(text):
    assert lean._keyscan.plan(text.encode(), CODES, MAX_FULL_URL) is None


def test_plan_keeps_an_observation_named_with_an_escape():
    entry = b'{"resource":{"resourceType":"Obs\\u0065rvation","code":{"coding":[{"code":"1"}]}}}'
    body = b'{"resourceType":"Bundle","entry":[' + entry + b"]}"
    assert _planned_positions(body) == [0]
    coded = b'{"resource":{"resourceType":"Observation","code":{"coding":[{"code":"%s"}]}}}'
    escaped = CODES[0].replace(b"-", b"\\u002d")
    body = b'{"resourceType":"Bundle","entry":[' + coded % escaped + b"]}"
    assert _planned_positions(body) == [0]
