"""time_since_event: T1 (inclusion, >= 100 days after allogeneic HSCT), E3 (exclusion: MI,
unstable angina, stroke or TIA, or a PCI, within 12 weeks; the investigator's attestation
clears it) and E4 (exclusion: MI within 12 weeks; absence in the record clears it)."""

from __future__ import annotations

import pytest

from service.clinical.model import Outcome
from service.protocol import ProtocolError, load_protocol
from tests.builders import concept, condition, procedure
from tests.builders import questionnaire_response as qr
from tests.measure_cases import ago, run
from tests.protocol_copies import SNOMED, edit_toml, measures_protocol

CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"


@pytest.fixture(scope="module")
def protocol(tmp_path_factory):
    return load_protocol(measures_protocol(tmp_path_factory.mktemp("p") / "measures"))


def hsct(performed: str | None, status: str = "completed") -> dict:
    proc = procedure(SNOMED, "425843001", performed=performed or "x", status=status)
    if performed is None:
        del proc["performedDateTime"]
    return proc


def mi(onset: str | None, verification: str = "confirmed", clinical: str = "resolved") -> dict:
    return condition(
        SNOMED,
        "22298006",
        onset=onset,
        clinicalStatus=concept(CLINICAL, clinical),
        verificationStatus=concept(VERIFICATION, verification),
    )


def refs(r):
    return [e.reference for e in r.evidence]


# -- T1: at least 100 days since (inclusion) -----------------------------------------------


def test_at_least_met_when_certainly_old_enough(protocol):
    proc = hsct(str(ago(200)))
    r = run(protocol, "T1", proc)
    assert r.outcome is Outcome.MET and "at least 200 days" in r.reason
    assert f"Procedure/{proc['id']}" in refs(r)


def test_exactly_n_days_counts(protocol):
    assert run(protocol, "T1", hsct(str(ago(100)))).outcome is Outcome.MET
    assert run(protocol, "T1", hsct(str(ago(99)))).outcome is Outcome.NOT_MET


def test_too_recent_is_not_met(protocol):
    r = run(protocol, "T1", hsct(str(ago(50))))
    assert r.outcome is Outcome.NOT_MET and "is not at least 100 days" in r.reason


def test_the_newest_event_decides(protocol):
    r = run(protocol, "T1", hsct(str(ago(300))), hsct(str(ago(50))))
    assert r.outcome is Outcome.NOT_MET


def test_partial_date_across_the_cut_off_is_undetermined(protocol):
    # cut-off 2026-08-12: "2026-08" may be before or after it
    r = run(protocol, "T1", hsct("2026-08"))
    assert r.outcome is Outcome.UNDETERMINED and "may or may not" in r.reason
    assert run(protocol, "T1", hsct("2026-07")).outcome is Outcome.MET


def test_undated_newer_event_blocks_an_old_one(protocol):
    r = run(protocol, "T1", hsct(str(ago(300))), hsct(None))
    assert r.outcome is Outcome.UNDETERMINED and "no recorded time" in r.reason
    assert str(ago(300)) in r.reason  # both listed: they cannot be ordered


def test_status_not_done_is_not_counted_and_unknown_is_doubtful(protocol):
    r = run(protocol, "T1", hsct(str(ago(300))), hsct(str(ago(50)), status="not-done"))
    assert r.outcome is Outcome.MET and "not counted" in r.reason and "not-done" in r.reason
    doubt = run(protocol, "T1", hsct(str(ago(300)), status="unknown"))
    assert doubt.outcome is Outcome.UNDETERMINED and "status unknown" in doubt.reason
    # a doubtful recent event cannot make it "not met", but it blocks "met"
    mixed = run(protocol, "T1", hsct(str(ago(300))), hsct(str(ago(50)), status="unknown"))
    assert mixed.outcome is Outcome.UNDETERMINED


def test_no_event_is_undetermined(protocol):
    r = run(protocol, "T1")
    assert r.outcome is Outcome.UNDETERMINED and "no allogeneic HSCT is recorded" in r.reason
    assert [n.resource_type for n in r.needs] == ["Procedure"]


def test_event_after_as_of_is_not_part_of_the_evaluation(protocol):
    r = run(protocol, "T1", hsct(str(ago(200))), hsct(str(ago(-10))))
    assert r.outcome is Outcome.MET


# -- E3: an excluding event within 12 weeks (attestation clears) ------------------------------


def test_exclusion_not_met_on_a_certain_event_in_the_window(protocol):
    event = mi(str(ago(30)))
    r = run(protocol, "E3", event, qr({"E3": True}))
    assert r.outcome is Outcome.NOT_MET and f"Condition/{event['id']}" in refs(r)
    assert "within 84 days" in r.reason


def test_exclusion_procedure_counts_too(protocol):
    pci = procedure(SNOMED, "415070008", performed=str(ago(10)))
    r = run(protocol, "E3", pci)
    assert r.outcome is Outcome.NOT_MET and f"Procedure/{pci['id']}" in refs(r)


def test_exclusion_missing_record_is_not_evidence_of_absence(protocol):
    r = run(protocol, "E3", mi(str(ago(200))))
    assert r.outcome is Outcome.UNDETERMINED
    assert "not evidence" in r.reason and "earlier:" in r.reason
    assert any(n.resource_type == "QuestionnaireResponse" for n in r.needs)


def test_exclusion_attestation_clears_and_can_apply(protocol):
    ok = run(protocol, "E3", mi(str(ago(200))), qr({"E3": True}))
    assert ok.outcome is Outcome.MET and "attestation" in ok.reason
    no = run(protocol, "E3", qr({"E3": False}))
    assert no.outcome is Outcome.NOT_MET


@pytest.mark.parametrize(
    ("event", "words"),
    [
        (lambda: mi(str(ago(30)), verification="provisional"), "verification status provisional"),
        (lambda: mi("2026-08"), "may or may not be in the window"),  # window from 2026-08-28
        (lambda: mi(None), "may or may not be in the window"),
    ],
)
def test_exclusion_possible_event_is_undetermined_even_with_attestation(protocol, event, words):
    r = run(protocol, "E3", event(), qr({"E3": True}))
    assert r.outcome is Outcome.UNDETERMINED and words in r.reason


def test_exclusion_refuted_event_is_not_counted(protocol):
    r = run(protocol, "E3", mi(str(ago(10)), verification="refuted"), qr({"E3": True}))
    assert r.outcome is Outcome.MET and "not counted" in r.reason


# -- E4: absence in the record clears --------------------------------------------------------


def test_absence_clears_when_the_protocol_says_so(protocol):
    r = run(protocol, "E4")
    assert r.outcome is Outcome.MET
    assert "the protocol accepts the absence in the record as evidence" in r.reason
    old = run(protocol, "E4", mi(str(ago(100))))
    assert old.outcome is Outcome.MET and "earlier:" in old.reason


def test_absence_clearing_does_not_clear_a_recent_or_possible_event(protocol):
    assert run(protocol, "E4", mi(str(ago(84)))).outcome is Outcome.NOT_MET
    assert run(protocol, "E4", mi(None)).outcome is Outcome.UNDETERMINED


# -- load errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "words"),
    [
        (
            "within_days = 84\nattestation_item",
            "at_least_days = 84\nattestation_item",
            "exclusion reads within_days",
        ),
        ("at_least_days = 100", "at_least_days = 100\nwithin_days = 5", "exactly one"),
        ('procedure_valueset = "allo-hsct"\n', "", "procedure_valueset or condition_valueset"),
        ("at_least_days = 100", 'at_least_days = 100\nattestation_item = "E3"', "exclusion only"),
        ('event = "allogeneic HSCT"', 'event = "allogeneic HSCT"\nwindow_days = 3', "window_days"),
    ],
)
def test_parameter_errors_are_load_errors(tmp_path, old, new, words):
    folder = measures_protocol(tmp_path / "p")
    edit_toml(folder, old, new)
    with pytest.raises(ProtocolError, match=words):
        load_protocol(folder)


def test_an_older_certain_event_cannot_decide_for_a_newer_doubtful_one(protocol):
    r = run(protocol, "T1", hsct(str(ago(400))), hsct("2026-08"))
    assert r.outcome is Outcome.UNDETERMINED and "1 older record(s) cannot decide" in r.reason


def test_a_condition_with_only_a_recorded_date_happened_on_or_before_it(protocol):
    recorded = mi(None)
    recorded["recordedDate"] = str(ago(10))
    # recorded 10 days ago: the MI itself may be older than 12 weeks, so it cannot exclude
    r = run(protocol, "E4", recorded)
    assert r.outcome is Outcome.UNDETERMINED and "on or before" in r.reason
    old = mi(None)
    old["recordedDate"] = str(ago(100))  # recorded before the window: certainly before it
    assert run(protocol, "E4", old).outcome is Outcome.MET
