"""Medication rule kinds (washout, required_therapy, distinct_agents): every branch of the
tri-state, the unsafe directions first, through a seed copy with W1 / R1 / D1.

W1: no blinatumomab within 28 days (attestation W1); R1: a TKI for 28 days, gaps up to 7 days;
D1: two distinct TKIs. AS_OF is 2026-11-20, so the washout window starts 2026-10-23.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from fhir.resources.R4B.bundle import Bundle

from service.clinical.engine import evaluate
from service.clinical.model import CriterionResult, Outcome
from service.protocol import ProtocolError, load_protocol
from service.record import record_from_bundle
from tests.builders import AS_OF, ago, bundle, patient
from tests.builders import questionnaire_response as qr
from tests.protocol_copies import ATC, RXNORM, edit_toml, medication_protocol

BLINA = (RXNORM, "1599664")
IMATINIB = (RXNORM, "282388")
DASATINIB = (RXNORM, "475342")
IMATINIB_ATC = (ATC, "L01EA01")
OTHER = (RXNORM, "197361")  # amlodipine: in no ValueSet of the protocol
SUBJECT = {"reference": "Patient/p1"}


def med(code: tuple[str, str]) -> dict:
    return {"coding": [{"system": code[0], "code": code[1]}]}


def request(code=None, *, status="active", intent="order", rid="mr1", **extra) -> dict:
    res = {"resourceType": "MedicationRequest", "id": rid, "status": status, "intent": intent}
    res["subject"] = SUBJECT
    if code is not None:
        res["medicationCodeableConcept"] = med(code)
    return {**res, **extra}


def bounds(start: str | None, end: str | None = None) -> list[dict]:
    period = {k: v for k, v in (("start", start), ("end", end)) if v}
    return [{"timing": {"repeat": {"boundsPeriod": period}}}]


def administration(code, day: str, *, status="completed", rid="ma1", **extra) -> dict:
    return {
        "resourceType": "MedicationAdministration",
        "id": rid,
        "status": status,
        "medicationCodeableConcept": med(code),
        "subject": SUBJECT,
        "effectiveDateTime": day,
        **extra,
    }


def statement(code, *, status="active", rid="ms1", **extra) -> dict:
    return {
        "resourceType": "MedicationStatement",
        "id": rid,
        "status": status,
        "medicationCodeableConcept": med(code),
        "subject": SUBJECT,
        **extra,
    }


def dispense(code, handed: str | None, days: int | None, *, status="completed", rid="md1"):
    res = {
        "resourceType": "MedicationDispense",
        "id": rid,
        "status": status,
        "medicationCodeableConcept": med(code),
        "subject": SUBJECT,
    }
    if handed:
        res["whenHandedOver"] = handed
    if days is not None:
        res["daysSupply"] = {
            "value": days,
            "unit": "days",
            "system": "http://unitsofmeasure.org",
            "code": "d",
        }
    return res


@pytest.fixture(scope="module")
def protocol(tmp_path_factory):
    return load_protocol(medication_protocol(tmp_path_factory.mktemp("p") / "meds"))


def run(protocol, code: str, *resources: dict) -> CriterionResult:
    data = bundle(patient(), *resources)
    Bundle.model_validate(data)  # test data is valid R4
    record = record_from_bundle(data, protocol)
    found = [r for r in evaluate(record, protocol, AS_OF).results if r.code == code]
    return found[0]


def refs(result: CriterionResult) -> set[str]:
    return {e.reference for e in result.evidence}


# -- washout ------------------------------------------------------------------------------------


def test_washout_an_administration_in_the_window_is_not_met(protocol):
    r = run(protocol, "W1", administration(BLINA, ago(10)))
    assert r.outcome is Outcome.NOT_MET
    assert refs(r) == {"MedicationAdministration/ma1"}
    assert "within 28 days" in r.reason


def test_washout_an_undated_exposure_is_undetermined(protocol):
    # a statement with no effective time and no date asserted: any time, maybe yesterday
    r = run(protocol, "W1", statement(BLINA, status="completed"), qr({"W1": True}))
    assert r.outcome is Outcome.UNDETERMINED, "an attestation does not answer a record"
    assert "no usable date" in r.reason and "MedicationStatement/ms1" in refs(r)


def test_washout_a_partial_date_straddling_the_window_is_undetermined(protocol):
    # October 2026: may be before 2026-10-23 or after it
    r = run(protocol, "W1", administration(BLINA, "2026-10"))
    assert r.outcome is Outcome.UNDETERMINED
    assert "2026-10" in r.reason


def test_washout_an_order_with_no_recorded_end_is_undetermined(protocol):
    # authored a year ago, completed, but when the last dose was is not recorded
    r = run(protocol, "W1", request(BLINA, status="completed", authoredOn=ago(365)))
    assert r.outcome is Outcome.UNDETERMINED
    assert "end not recorded" in r.reason


def test_washout_a_current_order_is_not_met_whatever_its_start(protocol):
    r = run(protocol, "W1", request(BLINA, status="active", authoredOn=ago(400)))
    assert r.outcome is Outcome.NOT_MET


def test_washout_exposures_before_the_window_need_the_attestation(protocol):
    old = administration(BLINA, ago(60))
    r = run(protocol, "W1", old)
    assert r.outcome is Outcome.UNDETERMINED, "no record in the window is not evidence"
    assert "not evidence" in r.reason and "not counted" in r.reason
    r = run(protocol, "W1", old, qr({"W1": True}))
    assert r.outcome is Outcome.MET
    assert r.reason.startswith("attestation that no blinatumomab was given")
    assert "MedicationAdministration/ma1" in refs(r)  # the older exposure is listed, not hidden
    r = run(protocol, "W1", old, qr({"W1": False}))
    assert r.outcome is Outcome.NOT_MET


def test_washout_absence_in_record_clears_when_the_protocol_opts_in(tmp_path):
    folder = medication_protocol(tmp_path / "meds")
    edit_toml(folder, 'attestation_item = "W1"', "absence_in_record_clears = true")
    opted = load_protocol(folder)
    r = run(opted, "W1", administration(BLINA, ago(60)))
    assert r.outcome is Outcome.MET
    assert "accepts the absence in the record" in r.reason
    assert run(opted, "W1").outcome is Outcome.MET
    assert run(opted, "W1", administration(BLINA, ago(3))).outcome is Outcome.NOT_MET


@pytest.mark.parametrize(
    "never",
    [
        administration(BLINA, ago(5), status="not-done"),
        administration(BLINA, ago(5), status="entered-in-error"),
        statement(BLINA, status="not-taken", effectiveDateTime=ago(5)),
        statement(BLINA, status="entered-in-error", effectiveDateTime=ago(5)),
        request(BLINA, status="entered-in-error", authoredOn=ago(5)),
        request(BLINA, status="cancelled", authoredOn=ago(5)),
        request(BLINA, intent="plan", authoredOn=ago(5)),
        request(BLINA, intent="proposal", authoredOn=ago(5)),
        dispense(BLINA, None, None, status="declined"),
        dispense(BLINA, None, None, status="stopped"),
    ],
    ids=lambda r: f"{r['resourceType']}-{r['status']}-{r.get('intent', '')}",
)
def test_washout_never_given_is_not_exposure(protocol, never):
    r = run(protocol, "W1", never, qr({"W1": True}))
    assert r.outcome is Outcome.MET, r.reason  # the attestation decides; the record is not it
    assert "not counted" in r.reason


def test_washout_unknown_status_in_the_window_is_undetermined(protocol):
    r = run(protocol, "W1", administration(BLINA, ago(5), status="unknown"), qr({"W1": True}))
    assert r.outcome is Outcome.UNDETERMINED


def test_washout_other_medications_do_not_count(protocol):
    r = run(protocol, "W1", administration(OTHER, ago(5)), qr({"W1": True}))
    assert r.outcome is Outcome.MET


@pytest.mark.parametrize("shape", ["contained", "bundled", "urn"])
def test_washout_reads_a_referenced_medication(protocol, shape):
    medication = {
        "resourceType": "Medication",
        "id": "blina",
        "code": {"coding": [{"system": ATC, "code": "L01FX07", "display": "blinatumomab"}]},
    }
    given = administration(BLINA, ago(4))
    del given["medicationCodeableConcept"]
    extra: list[dict] = []
    if shape == "contained":
        given["contained"] = [medication]
        given["medicationReference"] = {"reference": "#blina"}
    elif shape == "bundled":
        given["medicationReference"] = {"reference": "Medication/blina"}
        extra.append(medication)
    data = bundle(patient(), given, *extra)
    if shape == "urn":
        data["entry"].append({"fullUrl": "urn:uuid:6f0b7b5e-1111-4c1e-9d5c-9a1f1b2c3d4e"})
        data["entry"][-1]["resource"] = medication
        given["medicationReference"] = {
            "reference": "urn:uuid:6f0b7b5e-1111-4c1e-9d5c-9a1f1b2c3d4e"
        }
    Bundle.model_validate(data)
    record = record_from_bundle(data, protocol)
    r = [x for x in evaluate(record, protocol, AS_OF).results if x.code == "W1"][0]
    assert r.outcome is Outcome.NOT_MET, r.reason
    assert "ATC L01FX07" in r.reason or "blinatumomab" in r.reason


def test_washout_an_unresolvable_medication_in_the_window_is_undetermined(protocol):
    given = administration(BLINA, ago(4))
    del given["medicationCodeableConcept"]
    given["medicationReference"] = {"reference": "Medication/not-here"}
    r = run(protocol, "W1", given, qr({"W1": True}))
    assert r.outcome is Outcome.UNDETERMINED
    assert "not in the data" in r.reason


# -- required therapy ---------------------------------------------------------------------------


def test_required_therapy_a_current_order_started_long_enough_ago_is_met(protocol):
    r = run(protocol, "R1", request(IMATINIB, status="active", dosageInstruction=bounds(ago(60))))
    assert r.outcome is Outcome.MET
    assert refs(r) == {"MedicationRequest/mr1"}


def test_required_therapy_started_too_recently_is_not_met(protocol):
    r = run(protocol, "R1", request(IMATINIB, status="active", dosageInstruction=bounds(ago(10))))
    assert r.outcome is Outcome.NOT_MET


def test_required_therapy_dispenses_with_a_short_gap_are_continuous(protocol):
    # supply 50..20 days ago, then a 5-day gap, then 14..0 days ago: continuous (gap <= 7)
    first = dispense(IMATINIB, ago(50), 30, rid="d1")
    second = dispense(IMATINIB, ago(14), 14, rid="d2")
    r = run(protocol, "R1", first, second)
    assert r.outcome is Outcome.MET, r.reason
    assert refs(r) == {"MedicationDispense/d1", "MedicationDispense/d2"}


def test_required_therapy_a_gap_longer_than_allowed_breaks_it(protocol):
    # supply 60..40 days ago, then 20 days without, then 20..0 days ago
    first = dispense(IMATINIB, ago(60), 20, rid="d1")
    second = dispense(IMATINIB, ago(20), 20, rid="d2")
    r = run(protocol, "R1", first, second)
    assert r.outcome is Outcome.NOT_MET, r.reason
    assert "gaps of more than 7 days" in r.reason


def test_required_therapy_an_uncertain_start_is_undetermined(protocol):
    # active statement, started "2026" (any day of the year): may be 28 days or not
    r = run(protocol, "R1", statement(IMATINIB, effectivePeriod={"start": "2026"}))
    assert r.outcome is Outcome.UNDETERMINED


def test_required_therapy_no_evidence_of_being_current_is_undetermined(protocol):
    # an order 60 days ago whose end is not recorded and that is no longer active
    r = run(protocol, "R1", request(IMATINIB, status="completed", authoredOn=ago(60)))
    assert r.outcome is Outcome.UNDETERMINED
    assert "uncertain" in r.reason


def test_required_therapy_nothing_recorded_is_undetermined(protocol):
    r = run(protocol, "R1")
    assert r.outcome is Outcome.UNDETERMINED and "no TKI is recorded" in r.reason


def test_required_therapy_a_plan_is_not_exposure(protocol):
    plan = request(IMATINIB, intent="plan", dosageInstruction=bounds(ago(60)))
    r = run(protocol, "R1", plan)
    assert r.outcome is Outcome.UNDETERMINED
    assert "not counted" in r.reason and "intent plan" in r.reason


# -- distinct agents ----------------------------------------------------------------------------


def test_distinct_agents_two_ingredients_are_met(protocol):
    r = run(
        protocol,
        "D1",
        administration(IMATINIB, ago(200), rid="a1"),
        administration(DASATINIB, ago(100), rid="a2"),
    )
    assert r.outcome is Outcome.MET
    assert "imatinib" in r.reason and "dasatinib" in r.reason


def test_distinct_agents_two_codes_of_one_ingredient_are_one_agent(protocol):
    r = run(
        protocol,
        "D1",
        administration(IMATINIB, ago(200), rid="a1"),
        administration(IMATINIB_ATC, ago(100), rid="a2"),
    )
    assert r.outcome is Outcome.UNDETERMINED
    assert "only 1 recorded (imatinib)" in r.reason


def test_distinct_agents_an_uncertain_second_agent_is_undetermined(protocol):
    r = run(
        protocol,
        "D1",
        administration(IMATINIB, ago(200), rid="a1"),
        administration(DASATINIB, ago(100), rid="a2", status="unknown"),
    )
    assert r.outcome is Outcome.UNDETERMINED and "may add more" in r.reason


def test_distinct_agents_entered_in_error_does_not_count(protocol):
    r = run(
        protocol,
        "D1",
        administration(IMATINIB, ago(200), rid="a1"),
        administration(DASATINIB, ago(100), rid="a2", status="entered-in-error"),
    )
    assert r.outcome is Outcome.UNDETERMINED and "not counted" in r.reason


def test_distinct_agents_fewer_with_a_complete_record_is_not_met(tmp_path):
    folder = medication_protocol(tmp_path / "meds")
    edit_toml(folder, "min_agents = 2", "min_agents = 2\nabsence_in_record_clears = true")
    opted = load_protocol(folder)
    r = run(opted, "D1", administration(IMATINIB, ago(200)))
    assert r.outcome is Outcome.NOT_MET and "complete" in r.reason


# -- parameters ---------------------------------------------------------------------------------


def test_a_misspelt_medication_parameter_is_a_load_error(tmp_path):
    folder = medication_protocol(tmp_path / "meds")
    edit_toml(folder, "max_gap_days = 7", "max_gap_day = 7")
    with pytest.raises(ProtocolError, match="max_gap_day"):
        load_protocol(folder)


def test_an_unknown_medication_valueset_is_a_load_error(tmp_path):
    folder = medication_protocol(tmp_path / "meds")
    edit_toml(folder, 'medication_valueset = "tkis"', 'medication_valueset = "tki"')
    with pytest.raises(ProtocolError, match="tki"):
        load_protocol(folder)


def test_protocol_check_passes_the_medication_copy(tmp_path):
    """RxNorm and ATC are known systems; the medication ValueSets count as used."""
    from service.protocol_tools import check_folder

    report = check_folder(medication_protocol(tmp_path / "meds"))
    assert report.errors == [] and report.warnings == []


# -- exposure times (service.clinical.medications, pure) ----------------------------------------


def test_exposure_time_of_each_shape():
    from service.clinical.medications import exposure_time

    validity = request(
        BLINA,
        dispenseRequest={
            "validityPeriod": {"start": ago(90), "end": ago(60)},
            "expectedSupplyDuration": {
                "value": 30,
                "unit": "days",
                "system": "http://unitsofmeasure.org",
                "code": "d",
            },
        },
    )
    start, end = exposure_time(validity)
    assert start.day == AS_OF - timedelta(days=90)
    # dispensed on the last valid day at the latest, then 30 days of supply
    assert (end.earliest, end.latest) == (AS_OF - timedelta(days=60), AS_OF - timedelta(days=30))
    start, end = exposure_time(statement(BLINA, dateAsserted=ago(3)))
    assert start.earliest is None and start.latest == AS_OF - timedelta(days=3)
    start, end = exposure_time(dispense(BLINA, ago(20), 10))
    assert (end.earliest, end.latest) == (AS_OF - timedelta(days=11), AS_OF - timedelta(days=10))
    start, end = exposure_time(request(BLINA))  # no date at all
    assert start.unknown and end is None


def test_washout_a_statement_asserted_in_the_window_is_undetermined(protocol):
    # taken "some time up to" 3 days ago: may be inside the window
    r = run(protocol, "W1", statement(BLINA, status="completed", dateAsserted=ago(3)))
    assert r.outcome is Outcome.UNDETERMINED
    # asserted 60 days ago: whenever it was taken, it was before the window
    old = statement(BLINA, status="completed", dateAsserted=ago(60))
    assert run(protocol, "W1", old, qr({"W1": True})).outcome is Outcome.MET


def test_washout_a_dispense_whose_supply_reaches_the_window_is_not_met(protocol):
    # handed over 40 days ago with 30 days of supply: taken up to ~10 days ago
    r = run(protocol, "W1", dispense(BLINA, ago(40), 30))
    assert r.outcome is Outcome.NOT_MET
    # 60 days ago with 10 days: over before the window
    r = run(protocol, "W1", dispense(BLINA, ago(60), 10), qr({"W1": True}))
    assert r.outcome is Outcome.MET


def test_a_malformed_medication_resource_holds_the_washout_open(protocol):
    """One unreadable administration is skipped with a warning; the washout it may decide is
    undetermined, not met (and the rest of the evaluation goes on)."""
    bad = administration(BLINA, ago(5))
    bad["status"] = ["completed"]  # wrong JSON type (not valid R4: built without validation)
    data = bundle(patient(), bad, qr({"W1": True}))
    record = record_from_bundle(data, protocol)
    assert record.medications == []
    assert any("malformed MedicationAdministration" in i.message for i in record.issues)
    results = {r.code: r for r in evaluate(record, protocol, AS_OF).results}
    assert results["W1"].outcome is Outcome.UNDETERMINED
    assert "could not be read" in results["W1"].reason
