"""Issue 19 §2 and §4: the registry of resource kinds, the one selection of a patient's data
(service.relevance) every path asks, and contained hasMember results (service.contained).
Regressions against the old code are in test_relevance_regressions.py."""

from __future__ import annotations

from service import lean
from service.clinical.model import Outcome
from service.contained import MAX_DEPTH, member_results
from service.relevance import Relevance
from service.resource_kinds import EVALUATED, KINDS
from service.screening.bulk import export_params
from tests.builders import AS_OF, LOINC, bundle, concept, lab, observation, patient
from tests.relevance_builders import (
    CBC,
    PLT,
    PROTOCOL,
    ago,
    contained_panel,
    criterion,
    member,
)

MET = Outcome.MET


def test_every_kind_names_its_patient_and_its_searches():
    assert EVALUATED == (
        "Observation", "Condition", "Procedure", "Consent", "QuestionnaireResponse"
    )  # fmt: skip
    assert KINDS["Consent"].subject == ("patient",)
    assert KINDS["Observation"].code_param == "combo-code"
    assert KINDS["Condition"].code_param == "code"
    assert KINDS["Medication"].patient_param is None  # no patient of its own
    assert KINDS["MedicationRequest"].times == ("authoredOn",)
    assert KINDS["Observation"].times[0] == "effectiveDateTime"
    assert KINDS["Observation"].times[-1] == "issued"
    for name in ("DiagnosticReport", "MedicationStatement", "MedicationDispense"):
        assert not KINDS[name].evaluated  # listed for the next rule kinds, not read yet


def test_relevance_matches_components_contained_members_and_whole_types():
    rel = Relevance(PROTOCOL)
    assert rel.matches(lab(PLT, 100, "10*9/L"))
    assert not rel.matches(observation("8867-4"))  # heart rate
    assert rel.matches(observation(CBC, component=[{"code": concept(LOINC, PLT)}]))
    assert rel.matches(contained_panel(member("m1", PLT, 12, "10*9/L")))
    # a contained resource no hasMember names is not a result
    assert not rel.matches(contained_panel(member("m1", PLT, 12, "10*9/L"), named=()))
    assert rel.matches({"resourceType": "Condition"})
    assert not rel.matches({"resourceType": "Device"})
    assert rel.matches({"resourceType": "Observation", "code": {"coding": 7}})  # malformed


def test_every_source_takes_its_parameters_from_the_one_relevance():
    rel = PROTOCOL.relevance
    plan = rel.queries("p1", AS_OF)
    assert [q.key for q in plan][-5:] == [
        "conditions", "procedures", "consents", "attestations", "reports",
    ]  # fmt: skip
    obs = [q for q in plan if q.resource_type == "Observation"]
    assert obs and all("combo-code" in dict(q.params) for q in obs)
    assert lean.protocol_codes(PROTOCOL) == rel.lean_codes
    assert PLT.encode() in rel.lean_codes
    params = dict(export_params(PROTOCOL))
    assert params["_type"].split(",") == ["Patient", *EVALUATED, "DiagnosticReport"]
    filters = [value for key, value in export_params(PROTOCOL) if key == "_typeFilter"]
    assert filters == rel.type_filters()
    # the prefetch has no date filters, so it needs no search for undated results
    assert set(rel.prefetch_templates()) == {q.key for q in plan} - {"undated"}


def test_members_take_the_container_subject_time_and_status():
    panel = contained_panel(member("m1", PLT, 12, "10*9/L"), day=ago(2), status="amended")
    [(local, m1)] = list(member_results(panel))
    assert local == "#m1"
    assert m1["subject"] == panel["subject"]
    assert m1["effectiveDateTime"] == ago(2)
    assert m1["status"] == "final"  # its own status stays
    no_status = member("m3", PLT, 12, "10*9/L")
    del no_status["status"]
    [(_, m3)] = list(member_results(contained_panel(no_status, status="amended")))
    assert m3["status"] == "amended"
    own_day = member("m2", PLT, 12, "10*9/L", effectiveDateTime=ago(9))
    [(_, m2)] = list(member_results(contained_panel(own_day)))
    assert m2["effectiveDateTime"] == ago(9)  # its own time stays


def test_an_unnamed_contained_resource_is_not_a_result():
    older = lab(PLT, 100, "10*9/L", day=ago(5))
    loose = contained_panel(member("m1", PLT, 12, "10*9/L"), named=())
    assert criterion(bundle(patient(), older, loose)).outcome is MET


def test_a_member_of_another_patients_panel_is_not_ours():
    older = lab(PLT, 100, "10*9/L", day=ago(5))
    panel = contained_panel(member("m1", PLT, 12, "10*9/L"), subject="Patient/someone-else")
    assert criterion(bundle(patient(), older, panel)).outcome is MET


def test_a_member_cycle_and_deep_chains_end():
    a = member("a", PLT, 12, "10*9/L", hasMember=[{"reference": "#b"}])
    b = member("b", PLT, 13, "10*9/L", hasMember=[{"reference": "#a"}])
    assert [n for n, _ in member_results(contained_panel(a, b, named=("a",)))] == ["#a", "#b"]
    chain = [member(f"c{n}", PLT, 12, "10*9/L", hasMember=[{"reference": f"#c{n + 1}"}])
             for n in range(MAX_DEPTH + 3)]  # fmt: skip
    assert len(list(member_results(contained_panel(*chain, named=("c0",))))) == MAX_DEPTH


class _Site:
    """A site terminology as the Relevance reads it: local codes for protocol codes."""

    translator = None

    def local_codes(self, codes):
        return {("urn:site:lab", "PLT-LOCAL")} if ("http://loinc.org", PLT) in codes else set()


def test_the_site_terminology_is_passed_down_not_read_from_the_process():
    from service.evaluation_context import EvaluationContext
    from service.terminology import runtime

    assert runtime.active() is None  # nothing configured in the process
    context = EvaluationContext(PROTOCOL, _Site())  # type: ignore[arg-type]
    rel = context.relevance
    labs = next(q for q in rel.queries("p1", AS_OF) if q.key == "labs")
    assert "urn:site:lab|PLT-LOCAL" in dict(labs.params)["combo-code"]
    local = observation("PLT-LOCAL", system="urn:site:lab")
    assert rel.matches(local) and not PROTOCOL.relevance.matches(local)
    assert EvaluationContext.current(PROTOCOL).relevance is PROTOCOL.relevance
