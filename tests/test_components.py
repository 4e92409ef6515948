"""Issue 15 §1b: a result sent as an ``Observation.component`` is a result of that analyte.

Labs often send a CBC or a chemistry panel as one Observation with components. Such a value
used to be dropped by the record's code filter, so an OLDER standalone result decided.
Now a component coded in a criterion's ValueSet is a result with its parent's status and
time, takes part in "the newest result decides", carries its own reference range,
interpretation and dataAbsentReason, and the evidence names the parent Observation.
Tests named ``..._was_met`` said "met" on the old code.
"""

from __future__ import annotations

import pytest

from service.clinical.model import Outcome
from service.protocol import default_protocol
from service.record import record_from_bundle
from tests.builders import (
    LOINC,
    SNOMED,
    UCUM,
    ago,
    bundle,
    concept,
    condition,
    lab,
    observation,
    patient,
    quantity,
    result,
    run,
)

MET, NOT_MET, UNDETERMINED = Outcome.MET, Outcome.NOT_MET, Outcome.UNDETERMINED
CBC_PANEL, CMP_PANEL = "58410-2", "24323-8"  # not in any of the protocol's ValueSets
PLT, HGB, ANC, ALT, BILI, CREA = "777-3", "718-7", "751-8", "1742-6", "14631-6", "14682-9"
CD19_PERCENT, REPORT = "8117-4", "101119-6"
V3 = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"


def component(code: str, value: float | None = None, unit: str | None = None, **extra) -> dict:
    part: dict = {"code": concept(LOINC, code), **extra}
    if value is not None:
        part["valueQuantity"] = quantity(value, unit)
    return part


def panel(code: str, *parts: dict, day: str = ago(1), **extra) -> dict:
    return observation(code, day=day, component=list(parts), **extra)


def test_a_newer_failing_cbc_component_decides_over_an_older_standalone_result_was_met():
    standalone = lab(PLT, 100, "10*9/L", day=ago(5))
    cbc = panel(CBC_PANEL, component(PLT, 12, "10*9/L"), component(HGB, 100, "g/L"))
    r = result(run(standalone, cbc), "I7-platelets")
    assert r.outcome is NOT_MET
    assert [e.reference for e in r.evidence] == [f"Observation/{cbc['id']}"]
    assert f"a component of Observation/{cbc['id']}" in r.reason
    assert result(run(standalone, cbc), "I7-hemoglobin").outcome is MET


def test_a_newer_failing_chemistry_panel_component_decides_was_met():
    standalone = lab(ALT, 60, "U/L", day=ago(6))
    cmp_panel = panel(
        CMP_PANEL,
        component(BILI, 10, "umol/L"),
        component(ALT, 400, "U/L"),
        component(CREA, 80, "umol/L"),
        day=ago(2),
    )
    ev = run(standalone, cmp_panel)
    assert result(ev, "I6-alt").outcome is NOT_MET
    assert result(ev, "I6-bilirubin").outcome is MET
    assert result(ev, "I6-creatinine").outcome is MET
    assert result(ev, "I6").outcome is NOT_MET


def test_a_newer_standalone_result_still_decides_over_an_older_panel():
    cbc = panel(CBC_PANEL, component(PLT, 12, "10*9/L"), day=ago(6))
    r = result(run(cbc, lab(PLT, 100, "10*9/L", day=ago(1))), "I7-platelets")
    assert r.outcome is MET


def test_the_components_own_reference_range_is_its_uln_was_met():
    # default ULN 40 -> limit 120 would pass 100; the component's own ULN 30 -> 90 fails
    part = component(ALT, 100, "U/L", referenceRange=[{"high": quantity(30, "U/L")}])
    r = result(run(panel(CMP_PANEL, part)), "I6-alt")
    assert r.outcome is NOT_MET and "ULN 30 U/L" in r.reason


def test_a_component_with_a_data_absent_reason_blocks_an_older_result_was_met():
    absent = {"coding": [{"system": "x", "code": "error"}]}
    cbc = panel(CBC_PANEL, component(PLT, dataAbsentReason=absent))
    r = result(run(lab(PLT, 100, "10*9/L", day=ago(5)), cbc), "I7-platelets")
    assert r.outcome is UNDETERMINED
    assert "dataAbsentReason 'error'" in r.reason and "(component)" in r.reason


def test_an_unreadable_component_unit_blocks_an_older_result_was_met():
    cbc = panel(CBC_PANEL, component(PLT, 12, "furlongs"))
    r = result(run(lab(PLT, 100, "10*9/L", day=ago(5)), cbc), "I7-platelets")
    assert r.outcome is UNDETERMINED and "furlongs" in r.reason


def test_the_parents_status_applies_to_its_components():
    cbc = panel(CBC_PANEL, component(PLT, 12, "10*9/L"), status="preliminary")
    r = result(run(lab(PLT, 100, "10*9/L", day=ago(5)), cbc), "I7-platelets")
    assert r.outcome is MET  # the preliminary panel is not a result yet (with a warning)
    assert any("preliminary" in i.message for i in r.issues)


def test_a_cd19_negative_component_of_a_flagged_report_is_not_met_was_met():
    # The report's "POS" flag means "abnormal population found"; its CD19 component is negative.
    report = observation(
        REPORT,
        day=ago(3),
        interpretation=[concept(V3, "POS")],
        component=[{"code": concept(LOINC, CD19_PERCENT), **_coded(LOINC, "LA9634-2")}],
    )
    r = result(run(report), "I2")
    assert r.outcome is NOT_MET
    assert [e.reference for e in r.evidence] == [f"Observation/{report['id']}"]
    assert "component" in r.reason


def test_a_cd19_positive_component_is_met():
    report = observation(
        REPORT,
        day=ago(3),
        component=[{"code": concept(LOINC, CD19_PERCENT), **_coded(LOINC, "LA9633-4")}],
    )
    assert result(run(report), "I2").outcome is MET


def test_a_newer_cd19_negative_component_beats_an_older_positive_result_was_met():
    older = observation(CD19_PERCENT, day=ago(40), **_coded(LOINC, "LA9633-4"))
    newer = panel(REPORT, {"code": concept(LOINC, CD19_PERCENT), **_coded(LOINC, "LA9634-2")})
    assert result(run(older, newer), "I2").outcome is NOT_MET


def test_an_ecog_component_is_read():
    obs = panel("x-assessment-panel", {"code": concept(LOINC, "89247-1"), "valueInteger": 3})
    r = result(run(obs), "I10")
    assert r.outcome is NOT_MET and "component" in r.reason


def test_record_indexes_a_parent_whose_only_matching_code_is_in_a_component():
    protocol = default_protocol()
    cbc = panel(CBC_PANEL, component(PLT, 12, "10*9/L"))
    other = panel(CBC_PANEL, component("6690-2", 5, "10*9/L"))  # WBC: not an input
    record = record_from_bundle(bundle(patient(), cbc, other), protocol)
    assert record.observations_in(protocol.valueset("platelets")) == [cbc]
    assert all(other not in found for found in record.observations.values())


@pytest.mark.parametrize(
    "bad",
    [
        "not a list",
        [{"code": concept(LOINC, PLT), "valueQuantity": "12"}],
        [{"code": concept(LOINC, PLT), "referenceRange": {"high": 1}}],
    ],
)
def test_a_malformed_component_list_makes_its_criteria_undetermined(bad):
    obs = observation(CBC_PANEL, day=ago(1), component=bad)
    obs["code"]["coding"].append({"system": LOINC, "code": PLT})  # so the record sees it
    r = result(run(lab(PLT, 100, "10*9/L", day=ago(5)), obs), "I7-platelets")
    assert r.outcome is UNDETERMINED


def _coded(system: str, code: str) -> dict:
    return {"valueCodeableConcept": concept(system, code)}


def test_component_quantity_uses_its_own_unit():
    part = component(HGB, 6.5, "g/dL")
    part["valueQuantity"]["system"] = UCUM
    assert result(run(panel(CBC_PANEL, part)), "I7-hemoglobin").outcome is MET


def test_disease_status_components_build_the_relapse_timeline():
    remission, relapse, refractory = "103338009", "263855007", "266721009"

    def status(day: str, value: str) -> dict:
        # the parent's own value is not a disease status and must not be read as one
        return panel(
            "x-assessment-panel",
            {"code": concept(LOINC, "97509-4"), "valueCodeableConcept": concept(SNOMED, value)},
            day=day,
            valueCodeableConcept=concept(SNOMED, refractory),
        )

    all_dx = condition(SNOMED, "277571004", onset="2022-01-01")
    ev = run(
        all_dx,
        status("2022-03-01", remission),
        status("2023-06-01", relapse),
        status("2024-01-01", remission),
        status("2026-10-01", relapse),
    )
    r = result(ev, "I4")
    assert r.outcome is MET and "2 relapse episodes" in r.reason
    assert "No response" not in r.reason  # the parent's own value was not read
