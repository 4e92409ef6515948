"""The per-record caches of the clinical evaluation (each Observation's day, each ValueSet's
results) must never go stale: a record evaluated twice, at two dates or after its
Observations were replaced, gives what a fresh record gives."""

from __future__ import annotations

from datetime import timedelta

from service.clinical.engine import evaluate
from service.clinical.model import Outcome
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


def test_a_cached_day_of_another_resource_under_the_same_id_is_not_used():
    obs = lab(PLT, 150, "10*9/L", day=str(AS_OF))
    record = _record(obs)
    impostor = {"resourceType": "Observation"}
    record._days[id(obs)] = (impostor, AS_OF - timedelta(days=999))  # as if the id were reused
    assert record.effective_day(obs) == AS_OF
    assert record.effective_day(obs) == AS_OF  # and the cache now holds the right resource
    assert record._days[id(obs)][0] is obs
