"""The per-record cache of the clinical evaluation (each ValueSet's results, with each
Observation's day) must never go stale: a record evaluated twice, at two dates or after its
Observations were replaced, gives what a fresh record gives."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.clinical.dates import parse_date
from service.clinical.engine import evaluate
from service.clinical.model import Outcome
from service.clinical.timing import clinical_time, time_of
from service.protocol import default_protocol
from service.record import record_from_bundle
from tests.builders import AS_OF, bundle, lab, patient, result

PLT = "777-3"


def _verdicts(evaluation) -> list:
    def flat(r):
        return (r.code, r.outcome, r.reason, [e.reference for e in r.evidence], len(r.issues))

    out, stack = [], list(evaluation.results)
    while stack:
        r = stack.pop()
        out.append(flat(r))
        stack.extend(r.members)
    return out


def _record(*resources):
    return record_from_bundle(bundle(patient(), *resources), default_protocol())


def test_one_record_evaluated_at_two_dates_matches_fresh_records():
    protocol = default_protocol()
    old = lab(PLT, 12, "10*9/L", day=str(AS_OF - timedelta(days=40)))  # fails, outside 14 d
    new = lab(PLT, 150, "10*9/L", day=str(AS_OF - timedelta(days=2)))  # passes
    later = AS_OF - timedelta(days=30)  # only the old result is in the window then
    reused = _record(old, new)
    first = evaluate(reused, protocol, AS_OF)
    second = evaluate(reused, protocol, later)
    assert result(first, "I7-platelets").outcome is Outcome.MET
    assert result(second, "I7-platelets").outcome is Outcome.NOT_MET
    assert _verdicts(first) == _verdicts(evaluate(_record(old, new), protocol, AS_OF))
    assert _verdicts(second) == _verdicts(evaluate(_record(old, new), protocol, later))


def test_replacing_the_records_observations_is_seen_by_the_next_evaluation():
    protocol = default_protocol()
    failing = lab(PLT, 12, "10*9/L", day=str(AS_OF - timedelta(days=1)))
    record = _record(failing)
    assert result(evaluate(record, protocol, AS_OF), "I7-platelets").outcome is Outcome.NOT_MET
    passing = _record(lab(PLT, 150, "10*9/L", day=str(AS_OF - timedelta(days=1))))
    record.observations = passing.observations
    record._refs.update(passing._refs)
    assert result(evaluate(record, protocol, AS_OF), "I7-platelets").outcome is Outcome.MET


# -- the cached time reading gives parse_date's answer, and full days as before intervals -----

_ODD_DATES = [
    "2024-02-29",
    "2023-02-29",
    "2024-13-01",
    "2024-00-10",
    "2024-01-32",
    "2024-01",
    "2024",
    "2024-1-05",
    "0000-01-01",
    "2024-01-05T10:00:00Z",
    "2024-01-05garbage",
    "٢٠٢٤-٠١-٠٥",
    "20240105",
    " 2024-01-05",
    "",
    "2024-01-5",
    "9999-12-31",
]


@pytest.mark.parametrize("value", [*_ODD_DATES, None, 20240105, ["2024-01-05"]])
def test_time_of_is_parse_dates_range(value):
    parsed = parse_date(value)
    found = time_of(value)
    assert (found.earliest, found.latest) == (tuple(parsed) if parsed else (None, None))


@settings(max_examples=400, deadline=None)
@given(st.from_regex(r"\A[0-9٠-٩]{4}(-[0-9]{1,2}(-[0-9]{1,3})?)?.{0,4}\Z") | st.text(max_size=12))
def test_time_of_agrees_with_parse_date_on_generated_values(value):
    parsed = parse_date(value)
    found = clinical_time({"effectiveDateTime": value})
    assert (found.earliest, found.latest) == (tuple(parsed) if parsed else (None, None))


def _effective_date_before(resource):
    """The full day a result's time was read as before intervals (the reference)."""
    candidates = (
        resource.get("effectiveDateTime"),
        (resource.get("effectivePeriod") or {}).get("end"),
        (resource.get("effectivePeriod") or {}).get("start"),
        resource.get("effectiveInstant"),
        resource.get("issued"),
    )
    for value in candidates:
        if value is None:
            continue
        parsed = parse_date(value)
        return parsed.latest if parsed and parsed.exact else None
    return None


_DAY = st.sampled_from([*_ODD_DATES, None, 5, {}])
_TIME_ELEMENTS = st.fixed_dictionaries(
    {},
    optional={
        "effectiveDateTime": _DAY,
        "effectivePeriod": st.fixed_dictionaries({}, optional={"start": _DAY, "end": _DAY})
        | st.none(),
        "effectiveInstant": _DAY,
        "issued": _DAY,
    },
)


@settings(max_examples=400, deadline=None)
@given(_TIME_ELEMENTS)
def test_a_full_day_reads_as_it_did_before_intervals(resource):
    """Where a full day was read before, the same day is read now, except from a Period with
    no end (it may still be running: from its start on). Nothing else becomes one day."""
    before, now = _effective_date_before(resource), clinical_time(resource).day
    period = resource.get("effectivePeriod")
    open_ended = isinstance(period, dict) and period.get("end") is None
    # an element given as JSON null is absent (the old reading skipped it too)
    if before is not None and not (open_ended and resource.get("effectiveDateTime") is None):
        assert now == before
    else:
        assert now is None or now == before
