"""Composition rules: ``any_of``, ``all_of`` and ``conditional`` over member criteria.

Through a seed copy with I13 (if Ph+: TKI intolerance or two distinct TKIs, a conditional
whose ``then`` is an any_of), I14 (any_of ANC / platelets) and I15 (all_of ANC / hemoglobin).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from fhir.resources.R4B.bundle import Bundle

from service.clinical.engine import evaluate
from service.clinical.evaluation import Evaluation
from service.clinical.model import CriterionResult, Outcome
from service.clinical.rules import RULES, Rule
from service.protocol import ProtocolError, load_protocol
from service.record import record_from_bundle
from tests.builders import AS_OF, bundle, coded_observation, lab, patient
from tests.builders import questionnaire_response as qr
from tests.protocol_copies import TEST_CODES, composed_protocol, edit_toml

NEG = ("http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "NEG")
POS = ("http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "POS")
STALE = AS_OF - timedelta(days=20)  # outside the members' 14-day window


@pytest.fixture(scope="module")
def protocol(tmp_path_factory):
    return load_protocol(composed_protocol(tmp_path_factory.mktemp("p") / "composed"))


def run_all(protocol, *resources: dict) -> Evaluation:
    data = bundle(patient(), *resources)
    Bundle.model_validate(data)  # test data is valid R4
    return evaluate(record_from_bundle(data, protocol), protocol, AS_OF)


def run(protocol, code: str, *resources: dict) -> CriterionResult:
    return next(r for r in run_all(protocol, *resources).results if r.code == code)


def outcomes(r: CriterionResult) -> dict[str, Outcome]:
    return {m.code: m.outcome for m in r.members}


def anc(value, day=AS_OF):
    return lab("751-8", value, "10*9/L", day)


def platelets(value, day=AS_OF):
    return lab("777-3", value, "10*9/L", day)


def hemoglobin(value, day=AS_OF):
    return lab("718-7", value, "g/L", day)


def ph(reading, day=AS_OF):
    return coded_observation(
        "bcr-abl1", None, None, system=TEST_CODES, day=day, interpretation=reading
    )


# -- any_of ------------------------------------------------------------------------------------


def test_any_of_is_met_through_one_met_member_and_names_it(protocol):
    r = run(protocol, "I14", anc(1.0), platelets(10))
    assert r.outcome is Outcome.MET
    assert r.reason == "met through I14-anc (ANC >= 0.5 x10^9/L)"
    assert outcomes(r) == {"I14-anc": Outcome.MET, "I14-platelets": Outcome.NOT_MET}


def test_any_of_is_not_met_only_when_every_member_is_not_met(protocol):
    r = run(protocol, "I14", anc(0.1), platelets(10))
    assert r.outcome is Outcome.NOT_MET
    assert r.reason.startswith("no alternative is met: I14-anc")


def test_any_of_with_an_open_member_and_none_met_is_undetermined(protocol):
    r = run(protocol, "I14", platelets(10))
    assert r.outcome is Outcome.UNDETERMINED
    assert r.reason == (
        "none met; still open: I14-anc (ANC >= 0.5 x10^9/L); "
        "not met: I14-platelets (Platelets >= 30 x10^9/L)"
    )
    assert r.needs  # what would resolve the open member


def test_any_of_is_not_met_through_a_stale_result(protocol):
    # The only member whose value would pass is out of its window: undetermined, never met.
    r = run(protocol, "I14", anc(5.0, STALE), platelets(10))
    assert outcomes(r)["I14-anc"] is Outcome.UNDETERMINED
    assert r.outcome is Outcome.UNDETERMINED


# -- all_of ------------------------------------------------------------------------------------


def test_all_of_is_met_when_every_member_is_met(protocol):
    r = run(protocol, "I15", anc(1.0), hemoglobin(100))
    assert r.outcome is Outcome.MET
    assert r.reason.startswith("every part is met:")


def test_all_of_is_not_met_when_any_member_is_not_met_even_with_one_open(protocol):
    r = run(protocol, "I15", hemoglobin(40))
    assert r.outcome is Outcome.NOT_MET
    assert r.reason == "not met: I15-hemoglobin (Hemoglobin >= 60 g/L)"


def test_all_of_with_an_open_member_is_undetermined(protocol):
    r = run(protocol, "I15", anc(1.0, STALE), hemoglobin(100))
    assert r.outcome is Outcome.UNDETERMINED
    assert r.reason == "still open: I15-anc (ANC >= 0.5 x10^9/L)"


# -- conditional ---------------------------------------------------------------------------


def test_conditional_is_met_when_the_condition_is_known_not_to_hold(protocol):
    r = run(protocol, "I13", ph(NEG))
    assert r.outcome is Outcome.MET
    assert r.reason == "does not apply: I13-ph (Philadelphia chromosome positive) is not met"
    assert outcomes(r) == {"I13-ph": Outcome.NOT_MET, "I13-tki": Outcome.UNDETERMINED}


def test_conditional_takes_the_then_outcome_when_the_condition_holds(protocol):
    met = run(protocol, "I13", ph(POS), qr({"I13-intolerant": True}))
    assert met.outcome is Outcome.MET
    assert "applies (I13-ph (Philadelphia chromosome positive) is met)" in met.reason
    refused = run(protocol, "I13", ph(POS), qr({"I13-intolerant": False, "I13-two-tkis": False}))
    assert refused.outcome is Outcome.NOT_MET
    open_ = run(protocol, "I13", ph(POS))
    assert open_.outcome is Outcome.UNDETERMINED


def test_conditional_with_an_undetermined_condition_is_undetermined(protocol):
    # The requirement would be met, but it may not even apply: never met through it.
    r = run(protocol, "I13", qr({"I13-intolerant": True}))
    assert outcomes(r) == {"I13-ph": Outcome.UNDETERMINED, "I13-tki": Outcome.MET}
    assert r.outcome is Outcome.UNDETERMINED
    assert r.reason.startswith("may apply: I13-ph")
    stale = run(protocol, "I13", ph(NEG, AS_OF - timedelta(days=400)))
    assert stale.outcome is Outcome.UNDETERMINED


# -- structure: nesting, evaluated once, hidden from the top level ---------------------------


def test_members_nest_and_are_hidden_from_the_top_level(protocol):
    evaluation = run_all(protocol, ph(POS), qr({"I13-two-tkis": True}))
    top = [r.code for r in evaluation.results]
    assert top == [*(f"I{n}" for n in range(1, 13)), "E1", "E2", "I13", "I14", "I15"]
    i13 = next(r for r in evaluation.results if r.code == "I13")
    tki = i13.members[1]
    assert [m.code for m in tki.members] == ["I13-two-tkis", "I13-intolerant"]
    assert protocol.criteria["I13-ph"].member_of == "I13"
    assert protocol.criteria["I13-two-tkis"].member_of == "I13-tki"


def test_each_member_is_evaluated_once(protocol, monkeypatch):
    calls: list[str] = []
    original = RULES["attestation"]

    def counting(criterion, ctx):
        calls.append(criterion.code)
        return original.evaluate(criterion, ctx)

    monkeypatch.setitem(RULES, "attestation", Rule(counting, original.reads, original.params))
    run_all(protocol)
    assert sorted(calls) == ["I11", "I13-intolerant", "I13-two-tkis", "I5"]


def test_a_member_cycle_is_a_load_error(tmp_path):
    folder = composed_protocol(tmp_path / "p")
    edit_toml(folder, 'members = ["I14-anc", "I14-platelets"]', 'members = ["I14-anc", "I15"]')
    edit_toml(folder, 'members = ["I15-anc", "I15-hemoglobin"]', 'members = ["I15-anc", "I14"]')
    with pytest.raises(ProtocolError, match="cycle"):
        load_protocol(folder)


def test_any_of_without_members_is_a_load_error(tmp_path):
    folder = composed_protocol(tmp_path / "p")
    edit_toml(folder, 'members = ["I14-anc", "I14-platelets"]', "")
    with pytest.raises(ProtocolError, match=r"\[criteria\.I14\] key 'members'"):
        load_protocol(folder)


def test_conditional_naming_an_unknown_criterion_is_a_load_error(tmp_path):
    folder = composed_protocol(tmp_path / "p")
    edit_toml(folder, 'then = "I13-tki"', 'then = "I13-tkis"')
    with pytest.raises(ProtocolError, match="I13-tkis"):
        load_protocol(folder)


def test_a_panel_member_still_cannot_have_members(tmp_path):
    folder = composed_protocol(tmp_path / "p")
    edit_toml(
        folder,
        'members = ["I6-bilirubin", "I6-alt", "I6-ast", "I6-creatinine"]',
        'members = ["I6-bilirubin", "I6-alt", "I6-ast", "I6-creatinine", "I15"]',
    )
    with pytest.raises(ProtocolError, match="a panel's members have no members"):
        load_protocol(folder)
