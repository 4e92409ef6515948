"""Issue 19 §2 and §4, regressions: each test here said "met" (or chose another filter) on
the code before issue 19, because the newer failing result never reached the engine on
that path: a contained hasMember result, a panel component in NDJSON screening, a merged
record's result in NDJSON screening, and the Bulk ``_typeFilter`` searching only ``code``.
Only APIs the old code had are used, so the file runs against it unchanged.
"""

from __future__ import annotations

from fhir.resources.R4B.bundle import Bundle

from service.clinical.model import Outcome
from service.screening.bulk import export_params
from tests.builders import LOINC, bundle, lab, patient
from tests.relevance_builders import (
    HGB,
    PLT,
    PROTOCOL,
    ago,
    bundle_answer,
    component_panel,
    contained_panel,
    criterion,
    member,
    merged_pair,
    outcome,
    screen,
)
from tests.screening_population import normalise

MET, NOT_MET = Outcome.MET, Outcome.NOT_MET


def test_a_newer_failing_contained_member_decides_over_an_older_result_was_met():
    older = lab(PLT, 100, "10*9/L", day=ago(5))
    panel = contained_panel(member("m1", PLT, 12, "10*9/L"), member("m2", HGB, 100, "g/L"))
    data = bundle(patient(), older, panel)
    Bundle.model_validate(data)  # valid FHIR (R4B model): members need no subject
    r = criterion(data)
    assert r.outcome is NOT_MET
    assert [e.reference for e in r.evidence] == [f"Observation/{panel['id']}#m1"]
    assert criterion(data, "I7-hemoglobin").outcome is MET


def test_the_lean_decoder_keeps_a_container_whose_own_code_no_criterion_reads_was_met():
    older = lab(PLT, 100, "10*9/L", day=ago(5))
    data = bundle(patient(), older, contained_panel(member("m1", PLT, 12, "10*9/L")))
    assert outcome(bundle_answer(data), "I7-platelets") == "not-met"
    assert normalise(bundle_answer(data)) == normalise(bundle_answer(data, generic=True))


def test_a_member_chain_is_followed_was_met():
    older = lab(PLT, 100, "10*9/L", day=ago(5))
    leaf = member("m2", PLT, 12, "10*9/L")
    sub = member("sub", "58410-2", 0, "1", hasMember=[{"reference": "#m2"}])
    del sub["valueQuantity"]
    chained = contained_panel(sub, leaf, named=("sub",))
    assert criterion(bundle(patient(), older, chained)).outcome is NOT_MET


def test_ndjson_reads_a_newer_failing_count_in_a_panel_component_was_met(tmp_path):
    older = lab(PLT, 100, "10*9/L", day=ago(5))
    data = bundle(patient(), older, component_panel(PLT, 12, "10*9/L"))
    assert outcome(bundle_answer(data), "I7-platelets") == "not-met"
    screened = screen({"p1": data}, tmp_path)
    assert outcome(screened["p1"], "I7-platelets") == "not-met"
    assert normalise(screened["p1"]) == normalise(bundle_answer(data))


def test_ndjson_reads_a_contained_member_was_met(tmp_path):
    older = lab(PLT, 100, "10*9/L", day=ago(5))
    data = bundle(patient(), older, contained_panel(member("m1", PLT, 12, "10*9/L")))
    assert outcome(screen({"p1": data}, tmp_path)["p1"], "I7-platelets") == "not-met"


def test_ndjson_merges_a_replaced_record_as_bundle_mode_does_was_met(tmp_path):
    pair = merged_pair()
    together = bundle(*(e["resource"] for b in pair.values() for e in b["entry"]))
    assert outcome(bundle_answer(together), "I7-platelets") == "not-met"
    screened = screen(pair, tmp_path)
    assert outcome(screened["p1"], "I7-platelets") == "not-met"
    assert normalise(screened["p1"]) == normalise(bundle_answer(together))


def test_bulk_type_filter_searches_combo_code_as_pull_mode_does():
    filters = [value for key, value in export_params(PROTOCOL) if key == "_typeFilter"]
    observations = [f for f in filters if f.startswith("Observation?")]
    assert len(observations) == 1 and observations[0].startswith("Observation?combo-code=")
    assert f"{LOINC}|{PLT}" in observations[0]
