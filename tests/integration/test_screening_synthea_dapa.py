"""DAPA-CKD (NCT03036150) screened over a Synthea population, hand-checked against the raw NDJSON.

Runs when SYNTHEA_CKD_NDJSON names the ``fhir`` folder of ``deploy/synthea/generate OUT 200 2
40-85`` (``make test-synthea``); Synthea needs Java and Maven, so the fast suite skips it.
Synthea's stock modules (chronic kidney disease, diabetes, hypertension) write serum creatinine,
a reported eGFR, urine albumin/creatinine ratios and ACE inhibitor orders: real-shaped data the
protocol was not written against. The screening goes through the CLI (``eligibility screen
--study``); every patient's eGFR, UACR and ACE-i/ARB answers are then recomputed by hand from the
raw resources (``synthea_reading``: no service code) and must agree. SYNTHEA_CKD_REPORT, when
set, receives the run's summary.json (the funnel the closing note quotes).
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from datetime import date, timedelta
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

import fhir_mappings
from service import portfolio
from service.cli import app
from service.portfolio import load_portfolio
from service.protocol import CriterionDef, Protocol
from service.settings import get_settings
from tests.integration import synthea_reading as raw
from tests.screening_population import worklist

SOURCE = os.environ.get("SYNTHEA_CKD_NDJSON")
STUDY = os.environ.get("SYNTHEA_CKD_STUDY", "NCT03036150")
REPORT = os.environ.get("SYNTHEA_CKD_REPORT")
pytestmark = pytest.mark.skipif(
    not SOURCE, reason="set SYNTHEA_CKD_NDJSON to OUT/fhir of deploy/synthea/generate"
)
# Synthea simulates up to its reference date: today, or SYNTHEA_CKD_AS_OF when the population
# was generated with that date (SYNTHEA_REFERENCE_DATE; make test-synthea pins it, so the same
# seed gives the same population on every run and the counts below cannot drift)
AS_OF = date.fromisoformat(os.environ.get("SYNTHEA_CKD_AS_OF") or date.today().isoformat())
MIN_PATIENTS = 200
LOINC = raw.LOINC
SNOMED = "http://snomed.info/sct"
# What Synthea 3.3.0's stock modules write (read from its modules and the export itself).
SYNTHEA_CREATININE = (LOINC, "38483-4")  # Creatinine [Mass/volume] in Blood, mg/dL
SYNTHEA_EGFR = (LOINC, "33914-3")  # GFR/1.73 sq M.predicted by MDRD, mL/min/{1.73_m2}
SYNTHEA_UACR = (LOINC, "14959-1")  # Microalbumin/Creatinine [Mass Ratio] in Urine, mg/g
SYNTHEA_LISINOPRIL = ("http://www.nlm.nih.gov/research/umls/rxnorm", "314076")  # 10 MG tablet
CKD_CONDITIONS = {
    (SNOMED, c) for c in ("431855005", "431856006", "433144002", "431857002", "46177005")
}


# -- the screening (once for the module) ----------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _every_protocol():
    """The product's real default (every folder under fhir_mappings/), not the suite's seed
    alone (tests/conftest.py): DAPA-CKD must be found by its registry number."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(portfolio, "protocol_files", fhir_mappings.protocol_files)
        yield


def _protocol() -> Protocol:
    return load_portfolio(get_settings().protocol_dirs or None).get(STUDY)


def _only(protocol: Protocol, what: str, test) -> CriterionDef:
    found = [c for c in protocol.criteria.values() if test(c)]
    assert len(found) == 1, f"{protocol.id}: expected one {what} criterion, found {found}"
    return found[0]


@pytest.fixture(scope="module")
def protocol() -> Protocol:
    return _protocol()


@pytest.fixture(scope="module")
def export() -> dict:
    return raw.read_export(Path(SOURCE))


@pytest.fixture(scope="module")
def screening(tmp_path_factory, protocol):
    out = tmp_path_factory.mktemp("dapa") / "screening"
    args = ["screen", "--ndjson", SOURCE, "--out", str(out), "--study", STUDY]
    args += ["--as-of", AS_OF.isoformat(), "--workers", "2", "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = orjson.loads((out / "summary.json").read_bytes())
    if REPORT:
        shutil.copyfile(out / "summary.json", REPORT)
    return summary, worklist(out / "worklist.csv"), out / "results.ndjson"


def _criterion(protocol: Protocol, which: str) -> CriterionDef:
    if which == "egfr":
        return _only(
            protocol,
            "CKD-EPI 2021 eGFR",
            lambda c: c.rule == "computed_value" and c.typed.equation == "ckd-epi-2021",
        )
    if which == "uacr":
        return _only(
            protocol,
            "UACR range",
            lambda c: (
                c.rule == "lab_range"
                and SYNTHEA_UACR in protocol.valueset(c.typed.observation_valueset).codes
            ),
        )
    return _only(protocol, "ACE-i/ARB therapy", lambda c: c.rule == "required_therapy")


# -- the population and the summary --------------------------------------------------------


def test_population_has_ckd_and_the_summary_shows_candidates(protocol, export, screening):
    summary, rows, _ = screening
    assert len(export) >= MIN_PATIENTS
    assert set(rows) == set(export), "every patient of the export has one worklist row"
    assert summary["failed"] == 0 and all(r["error"] == "" for r in rows.values())
    assert sum(summary["byStatus"].values()) == len(rows)
    with_ckd = {
        pid
        for pid, res in export.items()
        if any(raw.codes_of(c.get("code")) & CKD_CONDITIONS for c in res["Condition"])
    }
    assert len(with_ckd) >= 10, f"only {len(with_ckd)} patients with chronic kidney disease"
    candidates = {p for p, r in rows.items() if r["status"] == "potential-candidate"}
    assert summary["byStatus"]["potential-candidate"] == len(candidates) > 0
    # Synthea records no consent and no investigator's word: nobody can be eligible.
    assert summary["byStatus"]["eligible"] == 0
    # A candidate on the strength of kidney data in the record, not merely of missing data.
    egfr = _criterion(protocol, "egfr").code
    assert {p for p in candidates if rows[p][egfr] == "met"}, "no candidate with eGFR in range"
    print(_funnel_text(protocol, summary))


def _funnel_text(protocol: Protocol, summary: dict) -> str:
    lines = [f"{protocol.id} on {summary['patients']} Synthea patients: {summary['byStatus']}"]
    for step in summary["funnel"]:
        lines.append(
            f"  {step['criterion']:>4} {step.get('kind', ''):9} before {step['before']:>4} "
            f"excluded {step['excluded']:>4} open {step['open']:>4}  {step['title']}"
        )
    for code, counts in summary["criteria"].items():
        lines.append(f"  {code:>6}: {counts}")
    return "\n".join(lines)


def test_the_protocol_reads_the_codes_synthea_writes(protocol):
    """Else the hand check below would compare empty answers with empty answers."""
    egfr = _criterion(protocol, "egfr").typed
    assert SYNTHEA_CREATININE in protocol.valueset(egfr.creatinine_observation_valueset).codes
    assert egfr.reported_observation_valueset is not None
    assert SYNTHEA_EGFR in protocol.valueset(egfr.reported_observation_valueset).codes
    therapy = _criterion(protocol, "acei").typed
    assert SYNTHEA_LISINOPRIL in protocol.valueset(therapy.medication_valueset).codes


# -- hand checks ---------------------------------------------------------------------------


def _hand_egfr(patient: dict, observations: list[dict], c: CriterionDef, p: Protocol) -> str:
    """The newest creatinine in the window through CKD-EPI 2021 and the newest reported eGFR,
    each against the bounds; both must agree (computed in words in synthea_reading)."""
    t = c.typed
    low, high = t.min.value, t.max.value
    female = patient.get("gender") == "female"
    assert patient.get("gender") in ("female", "male"), "Synthea writes female or male"
    born = date.fromisoformat(patient["birthDate"])
    creat_codes = set(p.valueset(t.creatinine_observation_valueset).codes)
    computed = None
    newest = raw.newest_in_window(raw.results(observations, creat_codes), AS_OF, t.window_days)
    if newest:
        values = [
            raw.egfr_ckd_epi_2021(raw.creatinine_mg_dl(r), raw.whole_years(born, r.day), female)
            for r in newest
        ]
        computed = raw.tri([low <= v <= high for v in values])
    reported = None
    egfr_codes = set(p.valueset(t.reported_observation_valueset).codes)
    newest = raw.newest_in_window(raw.results(observations, egfr_codes), AS_OF, t.window_days)
    if newest:
        # Synthea writes some MDRD eGFRs in mL/min: not per 1.73 m², so not comparable.
        per_area = all(r.unit == "mL/min/{1.73_m2}" for r in newest)
        reported = raw.tri([low <= r.value <= high for r in newest]) if per_area else "undetermined"
    return raw.combine(computed, reported)


def test_egfr_by_hand_matches_every_answer(protocol, export, screening):
    _, rows, _ = screening
    c = _criterion(protocol, "egfr")
    assert (c.typed.min.value, c.typed.max.value) == (25, 75), "DAPA-CKD: eGFR 25-75"
    seen: Counter[str] = Counter()
    for pid, res in sorted(export.items()):
        expected = _hand_egfr(res["Patient"][0], res["Observation"], c, protocol)
        assert rows[pid][c.code] == expected, (pid, rows[pid][c.code], expected)
        seen[expected] += 1
    assert seen["met"] and seen["not-met"], f"the hand check never decided both ways: {seen}"


def test_uacr_by_hand_matches_every_answer(protocol, export, screening):
    _, rows, _ = screening
    c = _criterion(protocol, "uacr")
    t = c.typed
    assert (t.min.value, t.max.value, t.unit) == (200, 5000, "mg/g"), "DAPA-CKD: 200-5000 mg/g"
    codes = set(protocol.valueset(t.observation_valueset).codes)
    seen: Counter[str] = Counter()
    for pid, res in sorted(export.items()):
        newest = raw.newest_in_window(raw.results(res["Observation"], codes), AS_OF, t.window_days)
        expected = raw.tri([200 <= raw.uacr_mg_g(r) <= 5000 for r in newest])
        assert rows[pid][c.code] == expected, (pid, rows[pid][c.code], expected)
        seen[expected] += 1
    assert seen["met"] and seen["not-met"], f"the hand check never decided both ways: {seen}"


def test_ace_inhibitor_or_arb_by_hand(protocol, export, screening):
    """Met exactly when an active order began at least ``min_days`` before; never met without
    an order in the ValueSet; no order at all is not evidence of no therapy (undetermined)."""
    _, rows, _ = screening
    c = _criterion(protocol, "acei")
    t = c.typed
    since = AS_OF - timedelta(days=t.min_days)
    codes = set(protocol.valueset(t.medication_valueset).codes)
    seen: Counter[str] = Counter()
    for pid, res in sorted(export.items()):
        found = raw.exposures(res["MedicationRequest"], codes)
        answer = rows[pid][c.code]
        running = [
            e
            for e in found
            if e.status == "active" and e.intent == "order" and e.authored and e.authored <= since
        ]
        if running:
            assert answer == "met", (pid, answer, running)
        elif not found:
            assert answer == "undetermined", (pid, answer)
        else:
            assert answer != "met", (pid, answer, found)
        seen["running" if running else "ordered" if found else "none"] += 1
    assert seen["running"] and seen["none"], f"the hand check saw no contrast: {seen}"


def test_a_sample_of_egfr_reasons_shows_the_hand_computed_value(protocol, export, screening):
    """Five patients with a creatinine in the window: the result Bundle names that newest
    creatinine and the eGFR computed here by hand, to the three digits the reason shows."""
    _, rows, results = screening
    c = _criterion(protocol, "egfr")
    t = c.typed
    codes = set(protocol.valueset(t.creatinine_observation_valueset).codes)
    bundles = {}
    for line in results.read_bytes().splitlines():
        bundle = orjson.loads(line)
        subject = bundle["entry"][0]["resource"]["individual"]["reference"]
        bundles[subject.removeprefix("Patient/")] = line.decode()
    checked = 0
    for pid, res in sorted(export.items()):
        newest = raw.newest_in_window(raw.results(res["Observation"], codes), AS_OF, t.window_days)
        if len(newest) != 1:
            continue
        (scr,) = newest
        patient = res["Patient"][0]
        age = raw.whole_years(date.fromisoformat(patient["birthDate"]), scr.day)
        value = raw.egfr_ckd_epi_2021(scr.value, age, patient["gender"] == "female")
        text = bundles[pid]
        assert f"eGFR {value:.3g} mL/min/1.73 m² computed by CKD-EPI 2021" in text, pid
        assert f"Observation/{scr.resource['id']}" in text, pid
        assert f"{patient['gender']}, age {age}" in text, pid
        checked += 1
        if checked == 5:
            break
    assert checked == 5, f"only {checked} patients with one newest creatinine in the window"
