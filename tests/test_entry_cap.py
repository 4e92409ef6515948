"""The cap on Bundle entries per request (issue 19, 6): refused before anything is decoded.

A 20 MB body of empty entries made the lean path build 20 million plan rows (1.2 GB) and
the generic path 0.58 GB. The scanner now stops counting at the cap (``_keyscan.plan``) and
the generic path counts first (``_keyscan.entry_count``); both must refuse exactly the same
bodies with the same error, so these tests compare them with each other and with a count
over the decoded document.
"""

from __future__ import annotations

import tracemalloc

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service import entry_cap, lean
from service.entry_cap import TooManyEntries, count_decoded
from service.inputs import MAX_FULL_URL
from service.pipeline import evaluate_body, evaluate_body_generic
from service.protocol import default_protocol
from tests.builders import bundle, lab, patient

pytestmark = pytest.mark.skipif(not lean.available(), reason="service/_keyscan.c not built")

PROTOCOL = default_protocol()
CODES = lean.protocol_codes(PROTOCOL)
FUZZ = settings(
    max_examples=300,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _empties(n: int, extra: bytes = b"") -> bytes:
    """The amplification body: ``n`` empty entries (``extra`` members before ``entry``)."""
    return b'{"resourceType":"Bundle",' + extra + b'"entry":[' + b",".join([b"{}"] * n) + b"]}"


def _real(n_labs: int) -> bytes:
    labs = [lab("777-3", 100 + i, "10*9/L") for i in range(n_labs)]
    return orjson.dumps(bundle(patient(), *labs))


def test_plan_stops_past_the_cap_and_keeps_its_answer_at_the_cap():
    body = _empties(5)
    assert lean._keyscan.plan(body, CODES, MAX_FULL_URL, 5) is not None
    assert lean._keyscan.plan(body, CODES, MAX_FULL_URL) is not None  # no cap: as before
    with pytest.raises(lean._keyscan.TooManyEntries):
        lean._keyscan.plan(body, CODES, MAX_FULL_URL, 4)


def test_nested_bundles_count_too():
    """A batch-response's searchset Bundles and a Parameters' patientData are entries too:
    one outer entry must not carry an unbounded inner array past the cap."""
    inner = {"resourceType": "Bundle", "type": "searchset", "entry": [{}] * 6}
    response = {"resourceType": "Bundle", "type": "batch-response", "entry": [{"resource": inner}]}
    params = {
        "resourceType": "Parameters",
        "parameter": [{"name": "patientData", "resource": inner}],
    }
    for doc, count in ((response, 7), (params, 6)):
        raw = orjson.dumps(doc)
        assert lean._keyscan.entry_count(raw, 100) == count == count_decoded(doc, 100)
        with pytest.raises(TooManyEntries):
            entry_cap.check(raw, count - 1)
        entry_cap.check(raw, count)  # at the cap: accepted
    with pytest.raises(TooManyEntries):
        lean.lean_bundle(orjson.dumps(response), CODES, 6)
    assert lean.lean_bundle(orjson.dumps(response), CODES, 7) is not None


def test_an_escaped_name_that_could_spell_entry_counts():
    raw = b'{"resourceType":"Bundle","entr\\u0079":[{},{},{}]}'
    assert orjson.loads(raw)["entry"] == [{}, {}, {}]  # what the generic path would decode
    with pytest.raises(TooManyEntries):
        entry_cap.check(raw, 2)


@pytest.mark.parametrize("extra", [b"", b'"id":"a","id":"b",', b'"x":1e999,'])
def test_lean_and_generic_paths_refuse_the_same_body_with_the_same_error(extra):
    """``extra``: nothing (the lean path decides), a duplicate key or an unsure number
    (the scanner gives up and the generic path decides)."""
    body = _empties(50, extra)
    with pytest.raises(TooManyEntries) as lean_error:
        evaluate_body(body, PROTOCOL, max_entries=49)
    with pytest.raises(TooManyEntries) as generic_error:
        evaluate_body_generic(body, PROTOCOL, max_entries=49)
    assert str(lean_error.value) == str(generic_error.value)
    assert "more than 49 Bundle entries" in str(lean_error.value)


def test_a_real_bundle_at_the_cap_is_evaluated_as_without_a_cap():
    body = _real(3)  # Patient + 3 Observations
    capped, _ = evaluate_body(body, PROTOCOL, max_entries=4)
    uncapped, _ = evaluate_body(body, PROTOCOL, max_entries=10**9)
    assert capped.results == uncapped.results  # (the result Bundle's ids are random)
    assert any(r.evidence for r in capped.results)  # the labs were read
    with pytest.raises(TooManyEntries):
        evaluate_body(body, PROTOCOL, max_entries=3)


def test_the_refusal_allocates_nothing_per_entry():
    """2 million empty entries (4 MB): refused with a small fraction of what the old plan
    built (3 ints per entry, about 170 MB), on both paths."""
    body = _empties(2_000_000)
    for run in (evaluate_body, evaluate_body_generic):
        tracemalloc.start()
        try:
            with pytest.raises(TooManyEntries):
                run(body, PROTOCOL, max_entries=200_000)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 20 * 1024 * 1024, f"{run.__name__}: {peak} bytes"


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.sampled_from(["entry", "x", 'a"b', "\\"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(["entry", "resource", "x", "entr\\y"]), inner, max_size=3)
    ),
    max_leaves=25,
)


@FUZZ
@given(doc=_JSON)
def test_the_byte_count_is_the_decoded_count(doc):
    """Exact, except that a member name with an escape counts as "entry" (never fewer)."""
    raw = orjson.dumps(doc)
    counted, decoded = lean._keyscan.entry_count(raw, 10**6), count_decoded(doc, 10**6)
    assert counted == decoded if b"\\" not in raw else counted >= decoded


@FUZZ
@given(doc=_JSON, cut=st.integers(0, 400), byte=st.integers(0, 255), cap=st.integers(0, 6))
def test_the_scanner_refuses_only_what_the_counter_refuses(doc, cut, byte, cap):
    """On corrupted bytes too: the lean path raises only when the tolerant count is past the
    cap, and returns a plan only when it is not; so both paths refuse the same bodies."""
    raw = bytearray(orjson.dumps({"resourceType": "Bundle", "entry": [doc, {}, doc]}))
    raw[cut % len(raw)] = byte
    raw = bytes(raw)
    count = lean._keyscan.entry_count(raw, cap)
    try:
        planned = lean._keyscan.plan(raw, CODES, MAX_FULL_URL, cap)
    except lean._keyscan.TooManyEntries:
        assert count > cap
    else:
        if planned is not None:
            assert count <= cap


def test_the_cli_applies_the_configured_cap(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from service.cli import app
    from service.settings import get_settings

    path = tmp_path / "in.json"
    path.write_bytes(_real(3))  # 4 entries
    monkeypatch.setenv("ELIGIBILITY_MAX_BUNDLE_ENTRIES", "3")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["evaluate", "--bundle", str(path)])
    finally:
        monkeypatch.delenv("ELIGIBILITY_MAX_BUNDLE_ENTRIES")
        get_settings.cache_clear()
    assert result.exit_code == 2
    assert "more than 3 Bundle entries" in result.stderr
    assert CliRunner().invoke(app, ["evaluate", "--bundle", str(path)]).exit_code == 0
