"""Copies of the seed protocol folder, edited, for the portfolio and authoring-tool tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson

from fhir_mappings import DEFAULT_PROTOCOL

SEED_DIR = DEFAULT_PROTOCOL.parent
SECOND_ID = "second-trial"
SECOND_CANONICAL = "https://example.org/fhir/ResearchStudy/second-trial"
SECOND_NCT = "NCT00000001"


def copy_seed(dest: Path) -> Path:
    """The seed folder, unchanged, at ``dest``."""
    shutil.copytree(SEED_DIR, dest)
    return dest


def edit_toml(folder: Path, old: str, new: str) -> None:
    path = folder / "protocol.toml"
    text = path.read_text(encoding="utf-8")
    assert old in text, old  # the edit must apply, or the test proves nothing
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def edit_json(path: Path, change) -> None:
    data = orjson.loads(path.read_bytes())
    change(data)
    path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))


def second_protocol(dest: Path) -> Path:
    """A second trial: the seed's criteria under another id, canonical and a registry number."""
    copy_seed(dest)
    edit_toml(dest, 'id = "cd19-cart-rr-ball"', f'id = "{SECOND_ID}"')

    def restudy(study: dict) -> None:
        study["id"] = SECOND_ID
        study["identifier"] = [
            {"use": "official", "system": "urn:ietf:rfc:3986", "value": SECOND_CANONICAL},
            {"system": "https://clinicaltrials.gov", "value": SECOND_NCT},
        ]
        for ext in study["extension"]:
            if ext["url"].endswith("ResearchStudy.url"):
                ext["valueUri"] = SECOND_CANONICAL

    edit_json(dest / "ResearchStudy-cd19-cart-rr-ball.json", restudy)
    return dest


# -- a seed copy with exclusion and composition criteria (rules exclusions / composition) -----

TEST_CODES = "https://example.org/fhir/CodeSystem/test-findings"  # test-only local codes
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED = "http://snomed.info/sct"

_COMPOSED_TOML = """

[criteria.E1]
title = "Burkitt lymphoma or leukaemia"
kind = "exclusion"
rule = "condition_absent"
condition = "Burkitt lymphoma"
condition_valueset = "burkitt"
test_observation_valueset = "burkitt-test"
test_positive_valueset = "finding-positive"
test_negative_valueset = "finding-negative"
window_days = 90
attestation_item = "E1"

[criteria.E2]
title = "Myocardial infarction within 12 weeks"
kind = "exclusion"
rule = "condition_absent"
condition = "myocardial infarction"
condition_valueset = "myocardial-infarction"
history = true
within_days = 84
absence_in_record_clears = true

[criteria.I13]
title = "If Ph+: TKI intolerance or two distinct TKIs"
rule = "conditional"
applies_when = "I13-ph"
then = "I13-tki"

[criteria.I13-ph]
title = "Philadelphia chromosome positive"
rule = "coded_finding"
observation_valueset = "ph-test"
positive_valueset = "finding-positive"
negative_valueset = "finding-negative"
window_days = 365

[criteria.I13-tki]
title = "TKI intolerance or two distinct TKIs"
rule = "any_of"
members = ["I13-two-tkis", "I13-intolerant"]

[criteria.I13-two-tkis]
title = "Two distinct TKIs (placeholder)"
rule = "attestation"
attestation_item = "I13-two-tkis"

[criteria.I13-intolerant]
title = "TKI intolerance (investigator)"
rule = "attestation"
attestation_item = "I13-intolerant"

[criteria.I14]
title = "ANC or platelets adequate"
rule = "any_of"
members = ["I14-anc", "I14-platelets"]

[criteria.I14-anc]
title = "ANC >= 0.5 x10^9/L"
rule = "lab_threshold"
observation_valueset = "anc"
comparator = ">="
threshold = { value = 0.5, unit = "10*9/L" }
window_days = 14

[criteria.I14-platelets]
title = "Platelets >= 30 x10^9/L"
rule = "lab_threshold"
observation_valueset = "platelets"
comparator = ">="
threshold = { value = 30, unit = "10*9/L" }
window_days = 14

[criteria.I15]
title = "ANC and hemoglobin adequate"
rule = "all_of"
members = ["I15-anc", "I15-hemoglobin"]

[criteria.I15-anc]
title = "ANC >= 0.5 x10^9/L"
rule = "lab_threshold"
observation_valueset = "anc"
comparator = ">="
threshold = { value = 0.5, unit = "10*9/L" }
window_days = 14

[criteria.I15-hemoglobin]
title = "Hemoglobin >= 60 g/L"
rule = "lab_threshold"
observation_valueset = "hemoglobin"
comparator = ">="
threshold = { value = 60, unit = "g/L" }
window_days = 14
"""

_VALUESETS = {
    "burkitt": [
        (SNOMED, "118617000", "Burkitt lymphoma"),
        (ICD10CM, "C83.7", "Burkitt lymphoma"),
    ],
    "myocardial-infarction": [
        (SNOMED, "22298006", "Myocardial infarction"),
        (ICD10CM, "I21.9", "Acute myocardial infarction, unspecified"),
    ],
    "burkitt-test": [(TEST_CODES, "myc-fish", "MYC rearrangement by FISH (test code)")],
    "ph-test": [(TEST_CODES, "bcr-abl1", "BCR-ABL1 fusion (test code)")],
}

_ITEMS = {
    "E1": "None of: Burkitt lymphoma or leukaemia (investigator)",
    "I13-two-tkis": "Two distinct TKIs received (placeholder)",
    "I13-intolerant": "Intolerant of TKIs (investigator)",
}


def _valueset(vs_id: str, codes: list[tuple[str, str, str]]) -> dict:
    systems: dict[str, list[dict]] = {}
    for system, code, display in codes:
        systems.setdefault(system, []).append({"code": code, "display": display})
    return {
        "resourceType": "ValueSet",
        "id": vs_id,
        "url": f"https://example.org/fhir/ValueSet/{vs_id}",
        "version": "1.0.0",
        "name": vs_id.title().replace("-", ""),
        "title": vs_id.replace("-", " ").capitalize(),
        "status": "active",
        "compose": {"include": [{"system": s, "concept": c} for s, c in systems.items()]},
    }


def composed_protocol(dest: Path) -> Path:
    """The seed folder plus exclusions E1 (with a test and an attestation) and E2 (history,
    12-week window, absence in the record clears), a conditional I13 (Ph+ -> any_of of two
    attestations), and an any_of I14 / all_of I15 over lab members."""
    copy_seed(dest)
    with (dest / "protocol.toml").open("a", encoding="utf-8") as f:
        f.write(_COMPOSED_TOML)
    for vs_id, codes in _VALUESETS.items():
        path = dest / f"ValueSet-{vs_id}.json"
        path.write_bytes(orjson.dumps(_valueset(vs_id, codes), option=orjson.OPT_INDENT_2))
    codes = [line.split("]")[0] for line in _COMPOSED_TOML.split("[criteria.")[1:]]
    kinds = {"E1": "exclusion", "E2": "exclusion"}

    def add_concepts(cs: dict) -> None:
        for code in codes:
            kind = kinds.get(code, "inclusion")
            cs["concept"].append(
                {"code": code, "display": code, "property": [{"code": "kind", "valueCode": kind}]}
            )
        cs["count"] = cs.get("count", 0) + len(codes)

    edit_json(dest / "CodeSystem-cd19-cart-rr-ball-criteria.json", add_concepts)

    def add_items(q: dict) -> None:
        for link_id, text in _ITEMS.items():
            q["item"].append({"linkId": link_id, "text": text, "type": "boolean"})

    edit_json(dest / "Questionnaire-cd19-cart-rr-ball-attestation.json", add_items)
    return dest


# -- a seed copy with medication criteria (rules medications: washout, required therapy,
# distinct agents); small test-only ValueSets of RxNorm and ATC codes ---------------------------

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ATC = "http://www.whocc.no/atc"

_MEDICATION_TOML = """

[criteria.W1]
title = "No blinatumomab within 28 days"
rule = "washout"
medication = "blinatumomab"
medication_valueset = "washout-agents"
within_days = 28
attestation_item = "W1"

[criteria.R1]
title = "On a TKI for at least 28 days"
rule = "required_therapy"
medication = "TKI"
medication_valueset = "tkis"
min_days = 28
max_gap_days = 7

[criteria.D1]
title = "At least two distinct TKIs"
rule = "distinct_agents"
medication = "TKIs"
medication_valueset = "tkis"
min_agents = 2
"""

_MEDICATION_VALUESETS = {
    "washout-agents": [
        (RXNORM, "1599664", "blinatumomab"),
        (ATC, "L01FX07", "blinatumomab"),
    ],
    "tkis": [
        (RXNORM, "282388", "imatinib"),
        (RXNORM, "475342", "dasatinib"),
        (RXNORM, "1364347", "ponatinib"),
        (ATC, "L01EA01", "imatinib"),
        (ATC, "L01EA02", "dasatinib"),
    ],
}


# -- a seed copy with computed values, ranges, history and time since an event ------------

LOINC = "http://loinc.org"
REPORTED_EGFR_CODES = [  # eGFR Observations a lab may send (CKD-EPI 2021 first)
    (
        "98979-8",
        "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] by CKD-EPI 2021",
    ),
    ("62238-1", "Glomerular filtration rate/1.73 sq M.predicted by CKD-EPI"),
    ("33914-3", "Glomerular filtration rate/1.73 sq M.predicted by MDRD"),
    ("48642-3", "GFR/1.73 sq M.predicted among non-blacks"),
    ("48643-1", "GFR/1.73 sq M.predicted among blacks"),
    ("50044-7", "GFR/1.73 sq M.predicted among females"),
    ("69405-9", "GFR/1.73 sq M.predicted"),
    ("88293-6", "GFR/1.73 sq M.predicted among blacks by CKD-EPI"),
    ("88294-4", "GFR/1.73 sq M.predicted among non-blacks by CKD-EPI"),
]

_MEASURES_TOML = """

[criteria.C1]
title = "eGFR 25-75 mL/min/1.73 m2 (CKD-EPI 2021)"
rule = "computed_value"
equation = "ckd-epi-2021"
creatinine_observation_valueset = "creatinine"
molar_mass_g_per_mol = 113.12
creatinine_plausible = { low = 5, high = 3000, unit = "umol/L" }
reported_observation_valueset = "egfr-reported"
min = { value = 25, unit = "mL/min/{1.73_m2}" }
max = { value = 75, unit = "mL/min/{1.73_m2}" }
window_days = 30

[criteria.C2]
title = "Creatinine clearance >= 60 mL/min (Cockcroft-Gault)"
rule = "computed_value"
equation = "cockcroft-gault"
creatinine_observation_valueset = "creatinine"
molar_mass_g_per_mol = 113.12
weight_observation_valueset = "body-weight"
weight_plausible = { low = 20, high = 400, unit = "kg" }
min = { value = 60, unit = "mL/min" }
window_days = 30

[criteria.R1]
title = "UACR 200-5000 mg/g"
analyte = "UACR"
rule = "lab_range"
observation_valueset = "uacr"
molar_mass_g_per_mol = 113.12
min = { value = 200, unit = "mg/g" }
max = { value = 5000, unit = "mg/g" }
window_days = 30

[criteria.H1]
title = "Albuminuria (UACR >= 30 mg/g) documented 90 days or more before"
analyte = "UACR"
rule = "documented_before"
observation_valueset = "uacr"
molar_mass_g_per_mol = 113.12
min = { value = 30, unit = "mg/g" }
min_days_before = 90
window_days = 730

[criteria.T1]
title = "At least 100 days after allogeneic HSCT"
rule = "time_since_event"
event = "allogeneic HSCT"
procedure_valueset = "allo-hsct"
at_least_days = 100

[criteria.E3]
title = "MI, unstable angina, stroke or TIA within 12 weeks"
kind = "exclusion"
rule = "time_since_event"
event = "myocardial infarction, unstable angina, stroke or TIA"
condition_valueset = "cardiovascular-event"
procedure_valueset = "coronary-revascularisation"
within_days = 84
attestation_item = "E3"

[criteria.E4]
title = "MI within 12 weeks (absence in the record clears)"
kind = "exclusion"
rule = "time_since_event"
event = "myocardial infarction"
condition_valueset = "myocardial-infarction"
within_days = 84
absence_in_record_clears = true
"""

_MEASURE_VALUESETS = {
    "egfr-reported": [(LOINC, code, display) for code, display in REPORTED_EGFR_CODES],
    "body-weight": [(LOINC, "29463-7", "Body weight"), (LOINC, "3141-9", "Body weight Measured")],
    "uacr": [
        (LOINC, "9318-7", "Albumin/Creatinine [Mass Ratio] in Urine"),
        (LOINC, "14959-1", "Microalbumin/Creatinine [Mass Ratio] in Urine"),
        (LOINC, "14958-3", "Microalbumin/Creatinine [Molar ratio] in Urine"),
    ],
    "allo-hsct": [
        (SNOMED, "425843001", "Allogeneic peripheral blood stem cell transplant"),
        (SNOMED, "58390007", "Allogeneic bone marrow transplantation"),
    ],
    "cardiovascular-event": [
        (SNOMED, "22298006", "Myocardial infarction"),
        (SNOMED, "4557003", "Preinfarction syndrome (unstable angina)"),
        (SNOMED, "230690007", "Cerebrovascular accident"),
        (SNOMED, "266257000", "Transient ischemic attack"),
    ],
    "coronary-revascularisation": [(SNOMED, "415070008", "Percutaneous coronary intervention")],
    "myocardial-infarction": _VALUESETS["myocardial-infarction"],
}


def extend_seed(
    dest: Path,
    toml: str,
    valuesets: dict[str, list[tuple[str, str, str]]],
    items: dict[str, str],
    kinds: dict[str, str] | None = None,
) -> Path:
    """The seed folder plus the criteria of ``toml`` (with CodeSystem concepts), ValueSets
    and attestation items."""
    copy_seed(dest)
    with (dest / "protocol.toml").open("a", encoding="utf-8") as f:
        f.write(toml)
    for vs_id, codes in valuesets.items():
        path = dest / f"ValueSet-{vs_id}.json"
        path.write_bytes(orjson.dumps(_valueset(vs_id, codes), option=orjson.OPT_INDENT_2))
    codes = [line.split("]")[0] for line in toml.split("[criteria.")[1:]]

    def add_concepts(cs: dict) -> None:
        for code in codes:
            kind = (kinds or {}).get(code, "inclusion")
            cs["concept"].append(
                {"code": code, "display": code, "property": [{"code": "kind", "valueCode": kind}]}
            )
        cs["count"] = cs.get("count", 0) + len(codes)

    edit_json(dest / "CodeSystem-cd19-cart-rr-ball-criteria.json", add_concepts)

    def add_items(q: dict) -> None:
        for link_id, text in items.items():
            q["item"].append({"linkId": link_id, "text": text, "type": "boolean"})

    edit_json(dest / "Questionnaire-cd19-cart-rr-ball-attestation.json", add_items)
    return dest


def medication_protocol(dest: Path) -> Path:
    """The seed folder plus W1 (washout of blinatumomab, 28 days, attestation W1), R1 (a TKI
    for 28 days, gaps up to 7 days) and D1 (two distinct TKIs)."""
    items = {"W1": "No blinatumomab in the last 28 days (investigator)"}
    return extend_seed(dest, _MEDICATION_TOML, _MEDICATION_VALUESETS, items)


def measures_protocol(dest: Path) -> Path:
    """The seed folder plus computed values C1 (eGFR 25-75, reported eGFR may decide) and C2
    (CrCl >= 60), range R1 (UACR 200-5000 mg/g), history H1 (UACR >= 30 mg/g 90 days before),
    time since event T1 (>= 100 days after allo-HSCT) and exclusions E3 (cardiovascular event
    within 12 weeks, attestation clears) and E4 (MI within 12 weeks, absence clears)."""
    return extend_seed(
        dest,
        _MEASURES_TOML,
        _MEASURE_VALUESETS,
        {"E3": "None of: MI, unstable angina, stroke or TIA within 12 weeks (investigator)"},
        kinds={"E3": "exclusion", "E4": "exclusion"},
    )
