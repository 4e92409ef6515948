"""The lean decoder (service/lean.py) changes speed, never answers.

``evaluate_body`` decodes a Bundle lean (irrelevant Observations left undecoded, duplicate
keys proven absent by a C scanner); ``evaluate_body_generic`` decodes every field with
``strict_json`` as before. Over the demo patients, bundles built with the test builders, the
bench's synthetic patients, ../shared/fhir-samples and hypothesis mutations of the demo
patients (values of other JSON types, dropped and doubled elements, duplicate keys written
into the bytes, whitespace, escapes, truncation), both must give the same bytes or the same
error. Results differ only in what is random per call (urn:uuid ids, the time of the run).
"""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.synthetic import make_patient
from service import lean, shapes
from service.demo import load_demo_bundles
from service.pipeline import evaluate_body, evaluate_body_generic
from service.protocol import default_protocol
from tests import builders as b
from tests.test_fuzz_inputs import mutate

AS_OF = date(2026, 11, 27)
PROTOCOL = default_protocol()
SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "fhir-samples"
DEMO = load_demo_bundles()
_UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
FUZZ = settings(
    max_examples=60,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _canonical(evaluation: Any, result: dict[str, Any]) -> bytes:
    """The result Bundle's bytes, with this run's time and random urn:uuid ids numbered."""
    out = orjson.dumps(result)
    out = out.replace(evaluation.evaluated_at.isoformat(timespec="seconds").encode(), b"NOW")
    seen: dict[bytes, int] = {}
    return _UUID.sub(lambda m: b"uuid-%d" % seen.setdefault(m.group(0), len(seen)), out)


def _outcome(evaluate: Any, body: bytes, patient_id: str | None = None) -> tuple:
    try:
        evaluation, result = evaluate(body, PROTOCOL, as_of=AS_OF, patient_id=patient_id)
    except Exception as exc:  # the same error, of the same type, with the same words
        return ("error", type(exc).__name__, str(exc))
    return ("ok", _canonical(evaluation, result))


def assert_same(body: bytes, patient_id: str | None = None) -> tuple:
    lean_out = _outcome(evaluate_body, body, patient_id)
    generic_out = _outcome(evaluate_body_generic, body, patient_id)
    assert lean_out == generic_out
    return lean_out


def _codes() -> frozenset[str]:
    return lean.protocol_codes(PROTOCOL)


# -- the lean path is really taken (else the comparisons below prove nothing) --------------


def test_compiled_scanner_is_built():
    assert lean._keyscan is not None, "service/_keyscan.c was not built (pip install -e .)"


@pytest.mark.parametrize("name", sorted(DEMO))
def test_demo_patients_same_bytes_and_lean(name):
    body = orjson.dumps(DEMO[name])
    assert lean.lean_bundle(body, _codes()) is not None
    assert assert_same(body)[0] == "ok"


def test_synthetic_patient_skips_most_observations():
    body = make_patient(400, anchor=AS_OF).body
    bundle = lean.lean_bundle(body, _codes())
    assert bundle is not None
    total = len(orjson.loads(body)["entry"])
    assert len(bundle["entry"]) < total / 2  # most background Observations left undecoded
    assert bundle.positions == sorted(bundle.positions)
    assert assert_same(body)[0] == "ok"


@pytest.mark.parametrize("n", [20, 150, 1000])
def test_synthetic_patients_same_bytes(n):
    assert_same(make_patient(n, anchor=AS_OF, seed=n).body)


# -- bundles built with the test builders ------------------------------------------------


def _builder_bundles() -> list[tuple[str, dict]]:
    codes = sorted(PROTOCOL.observation_codes())
    pid = {"reference": f"Patient/{b.PATIENT_ID}"}
    cases = [
        ("labs", b.bundle(b.patient(), *(b.lab(code, 1.0, "g/dL") for _, code in codes))),
        ("irrelevant", b.bundle(b.patient(), b.lab("0000-0", 1, "g/dL"), b.lab("1-8", 2, None))),
        # a protocol code on another system: decoded, then not matched
        ("other system", b.bundle(b.patient(), b.observation(codes[0][1], system="urn:x"))),
        ("malformed relevant", b.bundle(b.patient(), b.observation(codes[1][1], status=["x"]))),
        (
            "numeric code",
            b.bundle(b.patient(), {**b.observation("x"), "code": {"coding": [{"code": 718}]}}),
        ),
        (
            "coding not a list",
            b.bundle(b.patient(), {**b.observation("x"), "code": {"coding": {"code": "718-7"}}}),
        ),
        (
            "code null",
            b.bundle(b.patient(), {**b.observation("x"), "code": {"coding": [{"code": None}]}}),
        ),
        (
            "component",
            b.bundle(
                b.patient(),
                {
                    **b.observation("55284-4"),
                    "component": [
                        {
                            "code": b.concept(b.LOINC, codes[2][1]),
                            "valueQuantity": b.quantity(3, "g/dL"),
                        }
                    ],
                },
            ),
        ),
        ("component odd", b.bundle(b.patient(), {**b.observation("x"), "component": {"code": 1}})),
        (
            "long fullUrl",
            {
                "resourceType": "Bundle",
                "entry": [
                    {"resource": b.patient()},
                    {"fullUrl": "u" * 5000, "resource": b.observation("x")},
                ],
            },
        ),
        (
            "entry without resource",
            {
                "resourceType": "Bundle",
                "entry": [
                    {"resource": b.patient()},
                    {"fullUrl": "x"},
                    {"resource": b.observation("x")},
                    {"resource": 3},
                ],
            },
        ),
        ("entry scalar", {"resourceType": "Bundle", "entry": [{"resource": b.patient()}, 7]}),
        ("no patient", b.bundle(b.lab(codes[0][1], 1, "g/dL"))),
        ("two patients", b.bundle(b.patient(), b.patient(pid="p2"))),
        ("bad patient id", b.bundle(b.patient(pid="no spaces allowed"))),
        ("not a bundle", b.patient()),
        ("entry not list", {"resourceType": "Bundle", "entry": {"resource": b.patient()}}),
        ("no entry", {"resourceType": "Bundle"}),
        (
            "other patient",
            b.bundle(
                b.patient(),
                {**b.lab(codes[0][1], 1, "g/dL"), "subject": {"reference": "Patient/zz"}},
            ),
        ),
        (
            "conditions",
            b.bundle(
                b.patient(),
                b.condition("http://snomed.info/sct", "91857003", onset="2026-01-01"),
                b.procedure("http://snomed.info/sct", "1", performed="2026-01-01"),
            ),
        ),
        (
            "nested batch",
            {
                "resourceType": "Bundle",
                "type": "batch-response",
                "entry": [
                    {"resource": b.bundle(b.patient(), b.lab(codes[0][1], 1, "g/dL"))},
                    {"response": {"status": "200"}},
                ],
            },
        ),
        (
            "subject on obs",
            b.bundle(b.patient(), {**b.observation("x"), "subject": pid, "status": 3}),
        ),
    ]
    return cases


@pytest.mark.parametrize(
    ("label", "data"), _builder_bundles(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_builder_bundles_same_bytes(label, data):
    for body in (orjson.dumps(data), json.dumps(data, indent=1).encode()):
        assert_same(body)


# -- bytes the generic decoder refuses or reads differently -----------------------------


def _demo_bytes() -> bytes:
    return orjson.dumps(DEMO[sorted(DEMO)[0]])


@pytest.mark.parametrize(
    "edit",
    [
        lambda s: s.replace(
            b'"resourceType":"Patient"', b'"resourceType":"Patient","resourceType":"Patient"', 1
        ),
        lambda s: s.replace(b'"status":"final"', b'"status":"final","status":"final"', 1),
        lambda s: s.replace(b'"status":"final"', b'"status":"final","st\\u0061tus":"x"', 1),
        lambda s: s.replace(b'"status":"final"', b'"status":1e400', 1),
        lambda s: s.replace(b'"status":"final"', b'"status":' + b"9" * 320, 1),
        lambda s: s.replace(b'"status":"final"', b'"status":"\xff"', 1),
        lambda s: s.replace(b'"status":"final"', b'"status":"\\ud800"', 1),
        lambda s: s.replace(b'"status":"final"', b'"status":' + b"[" * 600 + b"]" * 600, 1),
        lambda s: s[: len(s) // 2],
        lambda s: s + b"x",
        lambda s: s.replace(b"{", b"{ ", 50),
    ],
)
def test_refused_or_odd_bytes_same_outcome(edit):
    assert_same(edit(_demo_bytes()))


def test_duplicate_key_in_a_skipped_observation_is_refused():
    body = make_patient(60, anchor=AS_OF).body
    bundle = orjson.loads(body)
    codes = _codes()
    skipped = [
        i
        for i, e in enumerate(bundle["entry"])
        if e["resource"]["resourceType"] == "Observation"
        and not any(c["code"] in codes for c in e["resource"]["code"]["coding"])
    ]
    assert skipped
    one = orjson.dumps(bundle["entry"][skipped[-1]])
    doubled = one.replace(b'"status":', b'"status":"x","status":', 1)
    outcome = assert_same(body.replace(one, doubled))
    assert outcome[0] == "error" and "ambiguous JSON" in outcome[2]


@given(st.sampled_from(sorted(DEMO)).flatmap(lambda n: mutate(DEMO[n])), st.integers(0, 3))
@FUZZ
def test_mutated_demo_patients_same_outcome(doc, style):
    body = orjson.dumps(doc)
    if style == 1:
        body = json.dumps(doc, indent=1).encode()
    elif style == 2:
        body = json.dumps(doc, ensure_ascii=True).encode()
    elif style == 3:  # a member written twice, somewhere in the document
        at = body.find(b'":', len(body) // 3)
        if at != -1:
            start = body.rfind(b'"', 0, at) + 1
            key = body[start:at]
            body = body[:start] + key + b'":null,"' + body[start:]
    assert_same(body)


# -- real third-party data ---------------------------------------------------------------


def _sample_files() -> list[Path]:
    if not SAMPLES.is_dir():
        return []
    return [p for p in sorted(SAMPLES.rglob("*.json")) if b'"Bundle"' in p.read_bytes()[:400]]


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="../shared/fhir-samples not present")
def test_samples_are_there():
    assert len(_sample_files()) >= 10


@pytest.mark.parametrize("path", _sample_files(), ids=lambda p: p.name)
def test_fhir_samples_same_bytes(path):
    body = path.read_bytes()
    bundle = orjson.loads(body)
    patients = [
        e["resource"].get("id")
        for e in bundle.get("entry") or []
        if isinstance(e.get("resource"), dict) and e["resource"].get("resourceType") == "Patient"
    ]
    for pid in patients[:3] or [None]:
        assert_same(body, pid if len(patients) > 1 else None)


# -- shapes: msgspec's fast acceptance never accepts what the Python walk refuses ----------

FIELD_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=3),
    lambda inner: (
        st.lists(inner, max_size=2)
        | st.dictionaries(
            st.sampled_from(
                ["value", "code", "coding", "system", "start", "low", "high", "text", "answer"]
            ),
            inner,
            max_size=3,
        )
    ),
    max_leaves=8,
)


@given(
    st.sampled_from(sorted(shapes.RESOURCE_SHAPES)),
    st.dictionaries(
        st.sampled_from(
            [
                "status",
                "code",
                "valueQuantity",
                "effectivePeriod",
                "component",
                "meta",
                "referenceRange",
                "interpretation",
                "birthDate",
                "deceasedBoolean",
                "provision",
                "clinicalStatus",
                "extension",
                "valueInteger",
                "item",
                "performedPeriod",
            ]
        ),  # fmt: skip
        FIELD_VALUES,
        max_size=4,
    ),
)
@settings(max_examples=400, derandomize=True, database=None, deadline=None)
def test_shape_fast_path_agrees_with_the_walk(rtype, fields):
    resource = {"resourceType": rtype, **fields}
    walked = shapes.RESOURCE_SHAPES[rtype](resource)
    expected = walked.lstrip(".") if walked is not None else None
    assert shapes.shape_error(resource) == expected


# -- the C scanner: "proven" only when no object names a key twice -----------------------

PAIR_KEYS = st.sampled_from(["a", "b", "code", "é", "a\\u0062", "", " a"])
SCALARS = st.sampled_from(["1", "-0.5", "1e5", "1e400", "true", "null", '"x"', '"a\\"b:c,}"'])
DOCS = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3).map(lambda items: "[" + ",".join(items) + "]")
        | st.lists(st.tuples(PAIR_KEYS, inner), max_size=4).map(
            lambda pairs: "{" + ",".join(f'"{k}" : {v}' for k, v in pairs) + "}"
        )
    ),
    max_leaves=10,
)


def has_duplicate(text: str) -> bool:
    found = False

    def hook(pairs: list) -> dict:
        nonlocal found
        found = found or len({k for k, _ in pairs}) != len(pairs)
        return dict(pairs)

    json.loads(text, object_pairs_hook=hook)
    return found


@given(DOCS)
@settings(max_examples=500, derandomize=True, database=None, deadline=None)
def test_scanner_proves_only_documents_without_duplicates(text):
    body = text.encode()
    proven = lean._keyscan.proof(body)
    if proven:
        assert not has_duplicate(text)
    elif not has_duplicate(text) and b"\\" not in body and b"e400" not in body:
        raise AssertionError(f"no duplicate, no escape, no overflow, yet unproven: {text}")
    spans = lean._keyscan.entry_spans(body)
    assert (spans is not None) == proven


def test_scanner_spans_are_the_entries():
    body = orjson.dumps(DEMO[sorted(DEMO)[0]])
    spans = lean._keyscan.entry_spans(body)
    entries = orjson.loads(body)["entry"]
    assert [
        orjson.loads(body[s:e]) for s, e in zip(spans[::2], spans[1::2], strict=True)
    ] == entries
