"""Issue 15 §1c: a code broader than the criterion's meaning never gives "met".

A general leukemia/lymphoma immunophenotyping report (LOINC 101119-6) is not a CD19 result:
a "positive" flag on it means "abnormal population found". A method-agnostic LVEF (LOINC
10230-1) is not "LVEF by echocardiography" unless its method says so. Such codes live in
evidence-only ValueSets (``context_..._valueset`` in protocol.toml): the result is listed as
evidence and, when it is the newest, makes the criterion undetermined. Tests named
``..._was_met`` said "met" on the old code.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from service.clinical.engine import evaluate
from service.clinical.model import Outcome
from service.protocol import default_protocol, load_protocol
from service.record import record_from_bundle
from tests.builders import (
    AS_OF,
    ICD10CM,
    LOINC,
    SNOMED,
    _id,
    ago,
    bundle,
    coded_observation,
    concept,
    condition,
    lab,
    observation,
    patient,
    result,
    run,
)

MET, NOT_MET, UNDETERMINED = Outcome.MET, Outcome.NOT_MET, Outcome.UNDETERMINED
REPORT, CD19_PERCENT = "101119-6", "8117-4"
V3 = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
PRESENT, ABSENT = "LA9633-4", "LA9634-2"
LVEF_ANY, LVEF_US = "10230-1", "18043-0"
TTE = concept(SNOMED, "433236007", "Transthoracic echocardiography")


# -- I2: the immunophenotyping report --------------------------------------------------------


def flagged_report(day: str = ago(3), flag: str = "POS", **extra) -> dict:
    return coded_observation(REPORT, None, None, day=day, interpretation=(V3, flag), **extra)


def test_a_positive_flag_on_a_general_report_is_undetermined_was_met():
    report = flagged_report()
    r = result(run(report), "I2")
    assert r.outcome is UNDETERMINED
    assert [e.reference for e in r.evidence] == [f"Observation/{report['id']}"]
    assert "broader than the criterion" in r.reason and "evidence" in r.reason


def test_a_present_value_on_a_general_report_is_undetermined_was_met():
    r = result(run(coded_observation(REPORT, LOINC, PRESENT, day=ago(3))), "I2")
    assert r.outcome is UNDETERMINED


def test_a_negative_general_report_does_not_decide_either():
    assert result(run(flagged_report(flag="NEG")), "I2").outcome is UNDETERMINED


def test_a_newer_general_report_blocks_an_older_cd19_result_was_met():
    older = coded_observation(CD19_PERCENT, LOINC, PRESENT, day=ago(30))
    r = result(run(older, flagged_report(day=ago(2))), "I2")
    assert r.outcome is UNDETERMINED
    assert "1 older result(s)" in r.reason


def test_an_older_general_report_does_not_block_a_newer_cd19_result():
    newer = coded_observation(CD19_PERCENT, LOINC, PRESENT, day=ago(2))
    assert result(run(flagged_report(day=ago(30)), newer), "I2").outcome is MET


def test_a_report_coded_both_generally_and_as_cd19_decides_as_cd19():
    obs = coded_observation(REPORT, LOINC, ABSENT, day=ago(3))
    obs["code"]["coding"].append({"system": LOINC, "code": CD19_PERCENT})
    assert result(run(obs), "I2").outcome is NOT_MET


def test_unstated_lineage_all_is_not_confirmed_by_a_general_report_was_met():
    ev = run(condition(ICD10CM, "C91.00", onset="2026-01-01"), flagged_report())
    assert result(ev, "I2").outcome is UNDETERMINED
    assert result(ev, "I3").outcome is not MET


def test_only_a_report_outside_the_window_says_when():
    r = result(run(flagged_report(day=ago(120))), "I2")
    assert r.outcome is UNDETERMINED and ago(120) in r.reason


# -- I8: method-agnostic LVEF ----------------------------------------------------------------


def test_method_agnostic_lvef_without_a_method_is_undetermined_was_met():
    obs = lab(LVEF_ANY, 55, "%", day=ago(5))
    r = result(run(obs), "I8")
    assert r.outcome is UNDETERMINED
    assert [e.reference for e in r.evidence] == [f"Observation/{obs['id']}"]


@pytest.mark.parametrize(
    "method",
    [
        {"text": "Transthoracic echocardiography"},  # text is not read
        concept(SNOMED, "241620005", "Magnetic resonance imaging of heart"),
    ],
)
def test_method_agnostic_lvef_with_another_or_a_text_method_is_undetermined_was_met(method):
    assert result(run(lab(LVEF_ANY, 55, "%", method=method)), "I8").outcome is UNDETERMINED


def test_method_agnostic_lvef_by_echocardiography_decides():
    r = result(run(lab(LVEF_ANY, 55, "%", method=TTE)), "I8")
    assert r.outcome is MET and "(method Transthoracic echocardiography" in r.reason
    assert result(run(lab(LVEF_ANY, 35, "%", method=TTE)), "I8").outcome is NOT_MET


def test_snomed_lvef_observable_is_method_agnostic_too_was_met():
    obs = observation("250908004", system=SNOMED, value={"value": 55, "unit": "%"})
    assert result(run(obs), "I8").outcome is UNDETERMINED


def test_a_newer_method_agnostic_lvef_blocks_an_older_echo_result_was_met():
    ev = run(lab(LVEF_US, 55, "%", day=ago(20)), lab(LVEF_ANY, 30, "%", day=ago(2)))
    assert result(ev, "I8").outcome is UNDETERMINED


# -- the mechanism is generic: a broader code in another criterion's data --------------------


@pytest.fixture(scope="module")
def protocol_with_broad_ecog(tmp_path_factory: pytest.TempPathFactory):
    """The bundled protocol plus an evidence-only 'any performance status' code for I10."""
    src = default_protocol().directory
    dst = Path(tmp_path_factory.mktemp("protocol")) / src.name
    shutil.copytree(src, dst)
    vs = json.loads((dst / "ValueSet-ecog.json").read_text())
    vs.update(id="performance-status-any", url=vs["url"].replace("ecog", "performance-status-any"))
    vs["compose"]["include"] = [
        {"system": "http://example.org/local", "concept": [{"code": "perf", "display": "PS"}]}
    ]
    (dst / "ValueSet-performance-status-any.json").write_text(json.dumps(vs))
    toml = (dst / "protocol.toml").read_text()
    toml = toml.replace(
        'ecog_observation_valueset = "ecog"',
        'ecog_observation_valueset = "ecog"\n'
        'ecog_context_observation_valueset = "performance-status-any"',
    )
    (dst / "protocol.toml").write_text(toml)
    return load_protocol(dst / "protocol.toml")


def _i10(protocol, *resources):
    record = record_from_bundle(bundle(patient(), *resources), protocol)
    return result(evaluate(record, protocol, AS_OF), "I10")


def _ps(value: int, day: str) -> dict:
    obs = observation("perf", system="http://example.org/local", day=day)
    obs["valueInteger"] = value
    return obs


def test_a_broader_performance_code_is_evidence_only(protocol_with_broad_ecog):
    r = _i10(protocol_with_broad_ecog, _ps(1, ago(2)))
    assert r.outcome is UNDETERMINED and "broader than the criterion" in r.reason


def test_a_broader_performance_code_newer_than_an_ecog_blocks_it(protocol_with_broad_ecog):
    ecog = observation("89247-1", day=ago(10))
    ecog["valueInteger"] = 1
    assert _i10(protocol_with_broad_ecog, ecog, _ps(4, ago(2))).outcome is UNDETERMINED
    assert _i10(protocol_with_broad_ecog, ecog, _ps(4, ago(20))).outcome is MET


# -- the data ------------------------------------------------------------------------------


def test_deciding_and_evidence_only_valuesets_do_not_overlap():
    protocol = default_protocol()
    pairs = 0
    for c in protocol.criteria.values():
        for key, vs_id in c.params.items():
            if key.endswith("context_observation_valueset"):
                deciding = protocol.valueset(c.params[key.replace("context_", "")])
                assert not deciding.codes & protocol.valueset(vs_id).codes, c.code
                pairs += 1
    assert pairs >= 2  # I2 and I8


@pytest.mark.parametrize(
    ("valueset", "broader"),
    [
        ("cd19-immunophenotype", (LOINC, REPORT)),
        ("lvef", (LOINC, LVEF_ANY)),
        ("lvef", (SNOMED, "250908004")),
    ],
)
def test_broader_codes_are_not_in_the_deciding_valuesets(valueset, broader):
    assert broader not in default_protocol().valueset(valueset).codes


# -- issue 19 §5: the method from the report or procedure the LVEF belongs to ----------------

ECHO_REPORT = concept(LOINC, "34552-0", "Cardiac 2D echo panel")
ECHO = "40701008"  # Echocardiography (procedure)
CARDIAC_MRI = "241620005"  # Magnetic resonance imaging of heart


def diagnostic_report(code: dict, *results: dict, status: str = "final", **extra) -> dict:
    """A valid R4 DiagnosticReport of the test patient listing ``results``."""
    report = {
        "resourceType": "DiagnosticReport",
        "id": _id("dr"),
        "status": status,
        "code": code,
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": ago(5),
        **extra,
    }
    if results:  # FHIR JSON has no empty arrays
        report["result"] = [{"reference": f"Observation/{r['id']}"} for r in results]
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport

    DiagnosticReport.model_validate(report)
    return report


def echo_procedure(code: str = ECHO, status: str = "completed", **extra) -> dict:
    from fhir.resources.R4B.procedure import Procedure

    from tests.builders import procedure

    proc = procedure(SNOMED, code, performed=ago(5), status=status, **extra)
    Procedure.model_validate(proc)
    return proc


def test_lvef_listed_in_an_echocardiography_report_decides_was_undetermined():
    obs = lab(LVEF_ANY, 55, "%", day=ago(5))
    report = diagnostic_report(ECHO_REPORT, obs)
    r = result(run(obs, report), "I8")
    assert r.outcome is MET
    assert f"method Cardiac 2D echo panel, from DiagnosticReport/{report['id']}" in r.reason
    low = lab(LVEF_ANY, 30, "%", day=ago(5))
    assert result(run(low, diagnostic_report(ECHO_REPORT, low)), "I8").outcome is NOT_MET


def test_lvef_listed_by_urn_uuid_in_an_echocardiography_report_decides():
    # Transaction-Bundle shape (Synthea): the report names its results by fullUrl.
    obs = lab(LVEF_ANY, 55, "%", day=ago(5))
    report = diagnostic_report(ECHO_REPORT)
    report["result"] = [{"reference": "urn:uuid:0f1e2d3c-0000-4000-8000-000000000001"}]
    data = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": f"urn:uuid:{n}", "resource": res, "request": {"method": "POST", "url": t}}
            for n, res, t in (
                ("0f1e2d3c-0000-4000-8000-000000000000", patient(), "Patient"),
                ("0f1e2d3c-0000-4000-8000-000000000001", obs, "Observation"),
                ("0f1e2d3c-0000-4000-8000-000000000002", report, "DiagnosticReport"),
            )
        ],
    }
    for e in data["entry"][1:]:
        e["resource"]["subject"] = {"reference": "urn:uuid:0f1e2d3c-0000-4000-8000-000000000000"}
    protocol = default_protocol()
    r = result(evaluate(record_from_bundle(data, protocol), protocol, AS_OF), "I8")
    assert r.outcome is MET and "from DiagnosticReport/" in r.reason


def test_lvef_part_of_an_echocardiography_procedure_decides_was_undetermined():
    proc = echo_procedure()
    obs = lab(LVEF_ANY, 55, "%", day=ago(5), partOf=[{"reference": f"Procedure/{proc['id']}"}])
    r = result(run(obs, proc), "I8")
    assert r.outcome is MET
    assert f"method Echocardiography (procedure), from Procedure/{proc['id']}" in r.reason


@pytest.mark.parametrize(
    "shared",
    [
        {"encounter": {"reference": "Encounter/e1"}},  # the same encounter
        {},  # the same day only
    ],
)
def test_a_report_or_procedure_sharing_only_encounter_or_date_is_not_the_method(shared):
    obs = lab(LVEF_ANY, 55, "%", day=ago(5), **shared)
    report = diagnostic_report(ECHO_REPORT, **shared)  # lists no result
    proc = echo_procedure(**shared)
    r = result(run(obs, report, proc), "I8")
    assert r.outcome is UNDETERMINED and "evidence" in r.reason


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (concept(LOINC, "24627-2", "Chest CT"), "final"),  # not an echo report
        (ECHO_REPORT, "preliminary"),
        (ECHO_REPORT, "entered-in-error"),
        ({"text": "Echocardiography report"}, "final"),  # text is not read
    ],
)
def test_only_a_final_coded_echocardiography_report_gives_the_method(code, status):
    obs = lab(LVEF_ANY, 55, "%", day=ago(5))
    assert result(run(obs, diagnostic_report(code, obs, status=status)), "I8").outcome is (
        UNDETERMINED
    )


@pytest.mark.parametrize(("code", "status"), [(CARDIAC_MRI, "completed"), (ECHO, "not-done")])
def test_part_of_another_or_an_undone_procedure_is_not_the_method(code, status):
    proc = echo_procedure(code, status)
    obs = lab(LVEF_ANY, 55, "%", day=ago(5), partOf=[{"reference": f"Procedure/{proc['id']}"}])
    assert result(run(obs, proc), "I8").outcome is UNDETERMINED


def test_a_contradicting_method_or_procedure_wins_over_an_echo_report():
    mri = concept(SNOMED, CARDIAC_MRI, "Magnetic resonance imaging of heart")
    obs = lab(LVEF_ANY, 55, "%", day=ago(5), method=mri)
    assert result(run(obs, diagnostic_report(ECHO_REPORT, obs)), "I8").outcome is UNDETERMINED
    proc = echo_procedure(CARDIAC_MRI)
    obs = lab(LVEF_ANY, 55, "%", day=ago(5), partOf=[{"reference": f"Procedure/{proc['id']}"}])
    ev = run(obs, proc, diagnostic_report(ECHO_REPORT, obs))
    assert result(ev, "I8").outcome is UNDETERMINED


def test_another_patients_echocardiography_report_is_not_read():
    obs = lab(LVEF_ANY, 55, "%", day=ago(5))
    report = diagnostic_report(ECHO_REPORT, obs, subject={"reference": "Patient/someone-else"})
    assert result(run(obs, report), "I8").outcome is UNDETERMINED


async def test_pull_mode_fetches_the_echocardiography_report_and_decides_the_same_way():
    import httpx

    from service.fhir.client import FhirClient
    from service.fhir.demo_store import DEMO_BASE_URL, demo_transport
    from service.fhir.fetch import fetch_patient
    from service.record import record_from_resources

    obs = lab(LVEF_ANY, 55, "%", day=ago(5))
    echo = diagnostic_report(ECHO_REPORT, obs)
    other = diagnostic_report(concept(LOINC, "24627-2", "Chest CT"), obs)
    data = bundle(patient(), obs, echo, other)
    protocol = default_protocol()
    http = httpx.AsyncClient(transport=demo_transport({"p1": data}))
    async with FhirClient(http, DEMO_BASE_URL) as client:
        fetched = await fetch_patient(client, protocol, "p1", AS_OF)
    assert [r["id"] for r in fetched.resources if r["resourceType"] == "DiagnosticReport"] == [
        echo["id"]  # searched by the report ValueSet's codes: the CT report is not fetched
    ]
    record = record_from_resources(
        fetched.patient, fetched.resources, protocol, server_base=DEMO_BASE_URL
    )
    pulled = result(evaluate(record, protocol, AS_OF), "I8")
    posted = result(run(obs, echo, other), "I8")
    assert pulled.outcome is posted.outcome is MET
    assert pulled.reason == posted.reason


@pytest.mark.parametrize("status", [403, 400])
def test_a_server_that_will_not_search_reports_leaves_them_out_with_a_warning(status):
    """The echo reports are supporting evidence only: a server that refuses their search
    (403: the SMART scope for DiagnosticReport not granted; 400: the search unsupported)
    does not fail the whole pull. The LVEF is then read without them (undetermined: its
    method is unknown), never decided on their absence; with the reports it is met."""
    import asyncio

    import httpx

    from service.fhir.client import FhirClient
    from service.fhir.demo_store import DEMO_BASE_URL, DemoStore
    from service.fhir.fetch import fetch_patient
    from service.pipeline import evaluate_fetched

    obs = lab(LVEF_ANY, 55, "%", day=ago(5))
    report = diagnostic_report(ECHO_REPORT, obs)
    store = DemoStore({"p1": bundle(patient(), obs, report)})
    protocol = default_protocol()

    def answers(refuse: bool):
        def handle(request: httpx.Request) -> httpx.Response:
            if refuse and request.url.path.endswith("/DiagnosticReport"):
                return httpx.Response(status, json={"resourceType": "OperationOutcome"})
            return store.handle(request)

        async def pull():
            http = httpx.AsyncClient(transport=httpx.MockTransport(handle))
            async with FhirClient(http, DEMO_BASE_URL) as client:
                return await fetch_patient(client, protocol, "p1", AS_OF)

        evaluation, _ = evaluate_fetched(asyncio.run(pull()), protocol, AS_OF)
        return evaluation

    assert result(answers(refuse=False), "I8").outcome is MET
    refused = answers(refuse=True)
    assert result(refused, "I8").outcome is UNDETERMINED
    assert any(
        i.code == "forbidden" and "DiagnosticReport search" in i.message for i in refused.issues
    )
