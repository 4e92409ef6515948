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
from datetime import timedelta
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


def ago(n: int) -> str:
    return str(AS_OF - timedelta(days=n))


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
