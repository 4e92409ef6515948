"""Outputs tell inclusions and exclusions apart: an exclusion not met says it *applies*.

Through the seed copy with exclusions (tests/protocol_copies.composed_protocol); the seed
trial's own outputs stay byte-for-byte the same (test_output, test_cds_cards, tests/app and
the screening tests prove that).
"""

from __future__ import annotations

import csv
from datetime import timedelta

import pytest
from fhir.resources.R4B.bundle import Bundle

from service.app.fhir_access import Evaluated
from service.app.router import _TEMPLATES
from service.app.view import review_view
from service.cds.cards import patient_view_cards
from service.clinical.engine import evaluate
from service.clinical.model import Outcome
from service.criterion_kind import KIND_SYSTEM
from service.fhir.fetch import FetchResult
from service.output import result_bundle
from service.protocol import load_protocol
from service.record import record_from_bundle
from service.screening.report import summarise, write_report
from service.screening.rows import evaluation_row, header
from service.settings import Settings
from tests.builders import AS_OF, bundle, concept, condition, patient
from tests.protocol_copies import SNOMED, composed_protocol

CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"


@pytest.fixture(scope="module")
def protocol(tmp_path_factory):
    return load_protocol(composed_protocol(tmp_path_factory.mktemp("p") / "composed"))


@pytest.fixture(scope="module")
def excluded(protocol):
    """A patient with active Burkitt lymphoma: exclusion E1 applies."""
    burkitt = condition(
        SNOMED,
        "118617000",
        onset=str(AS_OF - timedelta(days=30)),
        clinicalStatus=concept(CLINICAL, "active"),
    )
    data = bundle(patient(), burkitt)
    evaluation = evaluate(record_from_bundle(data, protocol), protocol, AS_OF)
    assert next(r for r in evaluation.results if r.code == "E1").outcome is Outcome.NOT_MET
    return evaluation, data


def _kind(observation: dict) -> str:
    codings = [c for cat in observation.get("category", []) for c in cat["coding"]]
    return next(c["code"] for c in codings if c["system"] == KIND_SYSTEM)


def test_criterion_observations_carry_their_kind(protocol, excluded):
    evaluation, _ = excluded
    out = result_bundle(evaluation, protocol)
    Bundle.model_validate(out)
    observations = {
        e["resource"]["code"]["coding"][0]["code"]: e["resource"]
        for e in out["entry"]
        if e["resource"]["resourceType"] == "Observation"
    }
    assert _kind(observations["E1"]) == "exclusion"
    assert _kind(observations["E2"]) == "exclusion"
    assert _kind(observations["I1"]) == "inclusion"
    assert _kind(observations["I13-ph"]) == "inclusion"  # members too
    value = observations["E1"]["valueCodeableConcept"]
    assert value["coding"][0]["code"] == "not-met"  # one tri-state for every criterion
    assert value["text"] == "exclusion applies"
    guidance = next(
        e["resource"] for e in out["entry"] if e["resource"]["resourceType"] == "GuidanceResponse"
    )
    notes = [n["text"] for n in guidance["note"]]
    assert "Exclusions that apply: E1" in notes
    assert any(
        t.startswith("inclusion criteria: ") and "exclusion criteria: 1 of 2 apply" in t
        for t in notes
    )


def test_card_says_the_exclusion_applies(protocol, excluded):
    evaluation, _ = excluded
    response = patient_view_cards(
        evaluation, protocol, Settings(cds_show_ineligible=True), service_base_url=""
    )
    card = response["cards"][0]
    assert (
        "**Exclusion E1 applies** — Burkitt lymphoma or leukaemia: "
        "Burkitt lymphoma is recorded: Condition/" in card["detail"]
    )
    assert "**Not met** — E1" not in card["detail"]
    assert "exclusion E2" in card["detail"]  # the other exclusion is named as one, too


def test_review_page_says_the_exclusion_applies_and_shows_the_kind(protocol, excluded):
    evaluation, data = excluded
    resources = [e["resource"] for e in data["entry"]]
    fetched = FetchResult(patient=resources[0], resources=resources[1:])
    view = review_view(
        Evaluated(evaluation, result_bundle(evaluation, protocol), fetched), protocol
    )
    row = next(r for r in view.rows if r.code == "E1")
    assert (row.kind, row.result_text) == ("exclusion", "Exclusion applies")
    assert (
        view.status_hint == "At least one inclusion criterion is not met, or an exclusion applies."
    )
    page = _TEMPLATES.get_template("review.html").render(
        trial="t",
        study_title="t",
        demo=False,
        session=None,
        user="",
        csrf="",
        flash=[],
        view=view,
        can_attest=False,
        enrolment_on=False,
        enrolment=None,
        eligible=False,
        study_context=None,
    )
    assert "<strong>Exclusion E1 applies</strong>: Burkitt lymphoma is recorded" in page
    assert 'data-criterion="E1" data-result="not-met" data-kind="exclusion"' in page
    assert (
        'data-criterion="I1" data-result' in page
        and 'data-criterion="I1" data-result="met" data-kind' not in page
    )


def test_screening_report_names_exclusions_apart(protocol, excluded, tmp_path):
    evaluation, _ = excluded
    worklist = tmp_path / "worklist.csv"
    with worklist.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header(protocol))
        writer.writerow(evaluation_row(evaluation, protocol))
    summary = summarise(worklist, protocol)
    steps = {s["criterion"]: s for s in summary["funnel"]}
    assert steps["E1"]["kind"] == "exclusion" and steps["I1"]["kind"] == "inclusion"
    report = tmp_path / "report.html"
    write_report(report, summary, protocol)
    page = report.read_text(encoding="utf-8")
    assert "Exclusion E1 applies: 1 patients" in page
    assert "<td>E1</td><td>exclusion</td>" in page
    assert "Exclusion E1 Burkitt lymphoma" in page  # the funnel label names the kind


def test_terminal_summary_says_the_exclusion_applies(protocol, excluded):
    from rich.console import Console

    from service.summary import render_summary

    evaluation, _ = excluded
    console = Console(record=True, width=200)
    render_summary(evaluation, protocol, console)
    text = console.export_text()
    line = next(ln for ln in text.splitlines() if "E1 Burkitt" in ln)
    assert "exclusion applies" in line and "not-met" not in line
