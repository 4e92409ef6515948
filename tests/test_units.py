"""Unit conversion: every path the lab data takes, plus a sweep over the real FHIR samples."""

from __future__ import annotations

import json
import re
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fhir_mappings import DEFAULT_PROTOCOL, UNIT_ALIASES
from service import units
from service.units import (
    UCUM_SYSTEM,
    UnitError,
    convert,
    convert_quantity,
    describe,
    unit_of,
    warm_up,
)

SAMPLES = Path(__file__).parents[2] / "shared" / "fhir-samples"
BILIRUBIN = 584.66
CREATININE = 113.12
HEMOGLOBIN = 16100.0


@pytest.fixture(scope="module", autouse=True)
def _registry_loaded() -> None:
    warm_up()


# -- mass and substance concentrations ---------------------------------------------------


def test_bilirubin_mg_dl_to_umol_l() -> None:
    assert convert(2.5, "mg/dL", "umol/L", BILIRUBIN) == pytest.approx(42.76, abs=0.005)


def test_bilirubin_threshold_back_to_mg_dl() -> None:
    assert convert(51, "umol/L", "mg/dL", BILIRUBIN) == pytest.approx(2.98, abs=0.005)
    assert convert(42.76, "umol/L", "mg/dL", BILIRUBIN) == pytest.approx(2.5, abs=0.001)


def test_creatinine_mg_dl_to_umol_l() -> None:
    assert convert(1, "mg/dL", "umol/L", CREATININE) == pytest.approx(88.40, abs=0.005)
    assert convert(2.0, "mg/dL", "umol/L", CREATININE) == pytest.approx(176.8, abs=0.01)


def test_creatinine_mmol_l_to_umol_l_needs_no_molar_mass() -> None:
    assert convert(0.05, "mmol/L", "umol/L") == pytest.approx(50)
    assert convert(0.05, "mmol/l", "umol/L", CREATININE) == pytest.approx(50)


@pytest.mark.parametrize("spelling", ["umol/L", "µmol/L", "μmol/L", "mcmol/L", "umol/l"])
def test_all_micromole_spellings(spelling: str) -> None:
    assert convert(17.1, spelling, "umol/L") == pytest.approx(17.1)
    assert convert(17.1, spelling, "mg/dL", BILIRUBIN) == pytest.approx(1.0, abs=0.001)


def test_both_micro_signs_are_distinct_alias_rows() -> None:
    assert "\u00b5mol/L" in units._tables().aliases  # MICRO SIGN
    assert "\u03bcmol/L" in units._tables().aliases  # GREEK SMALL LETTER MU


def test_hemoglobin_mmol_l_to_g_l_on_monomer_basis() -> None:
    assert convert(8, "mmol/L", "g/L", HEMOGLOBIN) == pytest.approx(128.8)


@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [(7.2, "g/dL", 72.0), (7.2, "g/dl", 72.0), (176, "g/L", 176.0), (600, "mg/dL", 6.0)],
)
def test_hemoglobin_mass_units_to_g_l(value: float, unit: str, expected: float) -> None:
    assert convert(value, unit, "g/L", HEMOGLOBIN) == pytest.approx(expected)


def test_mass_to_substance_without_molar_mass_is_refused() -> None:
    with pytest.raises(UnitError, match="molar mass"):
        convert(1, "mg/dL", "umol/L")


@pytest.mark.parametrize("bad", [0, -113.12, float("nan"), float("inf")])
def test_invalid_molar_mass_is_refused(bad: float) -> None:
    with pytest.raises(UnitError):
        convert(1, "mg/dL", "umol/L", bad)


def test_case_is_significant() -> None:
    # UCUM `Mg` is a megagram: we must not lowercase the unit into `mg`.
    assert convert(1, "Mg/dL", "g/L") == pytest.approx(1e7)
    assert convert(1, "mg/dL", "g/L") == pytest.approx(0.01)


# -- counts --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [
        (30, "10*3/uL", 30),
        (30, "10*9/L", 30),
        (500, "/uL", 0.5),
        (500, "#/uL", 0.5),
        (500, "cells/uL", 0.5),
        (500, "/mm3", 0.5),
        (500, "#/mm3", 0.5),
        (84, "K/uL", 84),
        (84, "K/ul", 84),
        (189.6, "x10E3/uL", 189.6),
        (189.6, "x10e3/uL", 189.6),
        (189.6, "10^3/uL", 189.6),
        (189.6, "x10*3/uL", 189.6),
        (189.6, "10*3/mm3", 189.6),
        (0.9, "10^9/L", 0.9),
        (0.9, "x10^9/L", 0.9),
        (0.9, "x10*9/L", 0.9),
    ],
)
def test_count_units_to_10_9_per_l(value: float, unit: str, expected: float) -> None:
    assert convert(value, unit, "10*9/L") == pytest.approx(expected)


def test_10_3_per_ul_is_10_9_per_l_both_ways() -> None:
    assert convert(1, "10*3/uL", "10*9/L") == 1
    assert convert(1, "10*9/L", "10*3/uL") == 1
    assert convert(0.5, "10*9/L", "/uL") == pytest.approx(500)


def test_k_per_ul_is_not_kelvin() -> None:
    # Why the alias table comes first: the UCUM parser alone reads K as kelvin.
    parsed = units._parse("K/uL")
    assert not isinstance(parsed, str)
    assert "[temperature]" in str(parsed.quantity.dimensionality)
    assert convert(84, "K/uL", "10*9/L") == 84
    with pytest.raises(UnitError):
        convert(84, "K", "10*9/L")


# -- enzyme activity -------------------------------------------------------------------------


def test_iu_per_l_compares_with_u_per_l_by_lab_convention() -> None:
    assert convert(142, "IU/L", "U/L") == pytest.approx(142)
    assert convert(142, "[IU]/L", "U/L") == pytest.approx(142)
    assert convert(40, "U/L", "[IU]/L") == pytest.approx(40)
    assert convert(0.142, "[IU]/mL", "U/L") == pytest.approx(142)


def test_u_per_l_is_plain_ucum() -> None:
    assert convert(40, "U/L", "U/L") == 40
    assert convert(60, "U/L", "ukat/L") == pytest.approx(1.0)


def test_arbitrary_units_never_become_counts() -> None:
    # pint gives [IU] no dimension, so without the guard [IU]/L would "convert" to 10*9/L.
    with pytest.raises(UnitError):
        convert(142, "IU/L", "10*9/L")
    with pytest.raises(UnitError):
        convert(500, "/uL", "[IU]/L")
    with pytest.raises(UnitError):
        convert(1, "[arb'U]/mL", "[IU]/L")


def test_equivalence_row_is_documented_as_lab_convention() -> None:
    text = UNIT_ALIASES.read_text(encoding="utf-8")
    section = text.split("[unit_equivalences]", 1)[1].split("[display]", 1)[0]
    assert "LAB CONVENTION" in section
    assert "§6d" in section
    assert units._tables().equivalences == (("[IU]/L", "U/L"),)


# -- percent and fractions -------------------------------------------------------------------


@pytest.mark.parametrize("fraction_unit", ["1", "{ratio}", "{fraction}"])
def test_fraction_to_percent(fraction_unit: str) -> None:
    assert convert(0.55, fraction_unit, "%") == 55


def test_percent_spellings() -> None:
    assert convert(45, "%", "%") == 45
    assert convert(45, "percent", "%") == 45
    assert convert(45, "%", "1") == pytest.approx(0.45)


def test_result_has_no_binary_noise_at_thresholds() -> None:
    assert convert(0.4, "1", "%") == 40.0
    assert convert(0.29, "1", "%") == 29.0


# -- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unit", "target"),
    [
        ("bananas", "g/L"),
        ("mg/dL", "10*9/L"),
        ("g/dL", "%"),
        ("U/L", "umol/L"),
        ("Cel", "K"),  # offset units are refused rather than scaled wrongly
        ("mg/dL", "bananas"),
        ("{rbc}", "1"),  # ucumvert cannot read a bare annotation; must still be a UnitError
    ],
)
def test_unknown_or_inconvertible_units_raise(unit: str, target: str) -> None:
    with pytest.raises(UnitError):
        convert(1, unit, target, BILIRUBIN)


@pytest.mark.parametrize("missing", [None, "", "   "])
def test_missing_unit_raises(missing: str | None) -> None:
    with pytest.raises(UnitError, match="no unit"):
        convert(1, missing, "g/L")


def test_unit_error_is_a_value_error() -> None:
    assert issubclass(UnitError, ValueError)


def test_whitespace_around_a_unit_is_tolerated() -> None:
    assert convert(1, " mg/dl ", "g/L") == pytest.approx(0.01)
    assert convert(1, "mg/dL ", "g/L") == pytest.approx(0.01)


# -- choosing the unit string from a FHIR Quantity --------------------------------------------


def test_ucum_system_uses_code_synthea_k_per_ul() -> None:
    quantity = {"value": 189.6, "unit": "K/uL", "system": UCUM_SYSTEM, "code": "K/uL"}
    assert unit_of(quantity) == "10*3/uL"
    assert convert_quantity(quantity, "10*9/L") == pytest.approx(189.6)


def test_ucum_code_wins_over_unit_text() -> None:
    quantity = {"value": 7.2, "unit": "g/dl", "system": UCUM_SYSTEM, "code": "g/dL"}
    assert unit_of(quantity) == "g/dL"
    conflicting = {"value": 1, "unit": "umol/L", "system": UCUM_SYSTEM, "code": "mg/dL"}
    assert unit_of(conflicting) == "mg/dL"
    assert convert_quantity(conflicting, "umol/L", CREATININE) == pytest.approx(88.4, abs=0.01)


def test_no_system_uses_unit_text() -> None:
    assert unit_of({"value": 84, "unit": "K/ul"}) == "10*3/uL"
    assert unit_of({"value": 1, "unit": "umol/L", "code": "mg/dL"}) == "umol/L"


def test_non_ucum_system_code_is_not_a_unit() -> None:
    quantity = {
        "value": 80,
        "unit": "umol/L",
        "system": "http://snomed.info/sct",
        "code": "258814008",
    }
    assert unit_of(quantity) == "umol/L"
    assert convert_quantity(quantity, "umol/L") == 80


def test_ucum_system_without_code_falls_back_to_text() -> None:
    quantity = {"value": 8.6, "unit": "mg/dL", "system": UCUM_SYSTEM}
    assert unit_of(quantity) == "mg/dL"
    assert unit_of({"value": 1, "unit": "mg/dL", "system": UCUM_SYSTEM, "code": ""}) == "mg/dL"


def test_unit_of_returns_original_when_no_alias_and_none_when_absent() -> None:
    assert unit_of({"unit": "bananas"}) == "bananas"
    assert unit_of({"value": 1}) is None
    assert unit_of({"value": 1, "unit": "  "}) is None
    assert unit_of({"value": 1, "system": UCUM_SYSTEM}) is None


@pytest.mark.parametrize(
    "quantity",
    [
        {"value": 1},
        {"value": None, "unit": "mg/dL"},
        {"unit": "mg/dL"},
        {"value": "142", "unit": "U/L"},
        {"value": True, "unit": "U/L"},
        {"value": float("nan"), "unit": "U/L"},
    ],
)
def test_convert_quantity_refuses_missing_unit_or_value(quantity: dict[str, Any]) -> None:
    with pytest.raises(UnitError):
        convert_quantity(quantity, "U/L")


# -- display -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unit", "label"),
    [
        ("10*9/L", "×10⁹/L"),
        ("umol/L", "µmol/L"),
        ("10*3/uL", "×10³/µL"),
        ("K/uL", "×10³/µL"),
        ("[IU]/L", "IU/L"),
        ("mg/dL", "mg/dL"),
        ("bananas", "bananas"),
    ],
)
def test_describe(unit: str, label: str) -> None:
    assert describe(unit) == label


# -- data file sanity ----------------------------------------------------------------------------


def test_every_alias_target_and_display_key_is_valid_ucum() -> None:
    tables = units._tables()
    required = {
        "K/uL", "K/ul", "x10E3/uL", "x10e3/uL", "10^3/uL", "10^9/L", "x10^9/L", "x10*9/L",
        "x10*3/uL", "IU/L", "mcmol/L", "µmol/L", "μmol/L", "umol/l", "mmol/l", "g/dl",
        "mg/dl", "#/uL", "cells/uL", "/mm3", "#/mm3", "10*3/mm3", "percent",
    }  # fmt: skip
    assert required <= tables.aliases.keys()
    assert tables.aliases["IU/L"] == "[IU]/L"
    ucum = {
        *tables.aliases.values(),
        *tables.display,
        *(u for row in tables.equivalences for u in row),
    }
    bad = {u: units._parse(u) for u in ucum if isinstance(units._parse(u), str)}
    assert bad == {}
    assert all(alias != target for alias, target in tables.aliases.items())


# -- caching ------------------------------------------------------------------------------------


def test_registry_is_loaded_once() -> None:
    first = units._registry()
    warm_up()
    assert units._registry() is first
    assert len(units._LOADED) == 1


def test_second_conversion_of_same_pair_hits_the_cache() -> None:
    units._conversion.cache_clear()
    convert(2.5, "mg/dL", "umol/L", BILIRUBIN)
    after_first = units._conversion.cache_info()
    convert(3.1, "mg/dL", "umol/L", BILIRUBIN)
    after_second = units._conversion.cache_info()
    assert (after_first.misses, after_first.hits) == (1, 0)
    assert (after_second.misses, after_second.hits) == (1, 1)
    # Aliases resolve before the cache: "mg/dl" shares the "mg/dL" entry.
    convert(1, "mg/dl", "umol/L", BILIRUBIN)
    assert units._conversion.cache_info().misses == 1


def test_cached_conversion_is_cheap() -> None:
    convert(84, "K/uL", "10*9/L")
    start = time.perf_counter()
    for _ in range(10_000):
        convert(84, "K/uL", "10*9/L")
    assert time.perf_counter() - start < 0.5  # ~2 µs each; a re-parse would be ~2 ms


def test_failures_are_cached_too() -> None:
    with pytest.raises(UnitError):
        convert(1, "bananas", "g/L")
    misses = units._conversion.cache_info().misses
    with pytest.raises(UnitError):
        convert(1, "bananas", "g/L")
    assert units._conversion.cache_info().misses == misses


# -- real FHIR samples -----------------------------------------------------------------------------

# SUMMARY.md analyte name -> protocol criterion that holds its target unit and molar mass.
_CRITERION = {
    "bilirubin_total": "I6-bilirubin",
    "alt": "I6-alt",
    "ast": "I6-ast",
    "creatinine": "I6-creatinine",
    "anc": "I7-anc",
    "platelets": "I7-platelets",
    "hemoglobin": "I7-hemoglobin",
    "lvef": "I8",
}


def _summary_analytes() -> tuple[dict[str, str], int]:
    """LOINC -> analyte, and the total n, from SUMMARY.md's "Our analytes" table."""
    text = (SAMPLES / "SUMMARY.md").read_text(encoding="utf-8")
    table = text.split("## Our analytes", 1)[1].split("\n#", 1)[0]
    loinc: dict[str, str] = {}
    total = 0
    for line in table.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) < 4 or not re.fullmatch(r"\d+-\d", cells[1]):
            continue
        if cells[2] == "valueInteger":
            continue  # ECOG / Karnofsky: no quantity
        loinc[cells[1]] = cells[0]
        total += int(cells[3])
    return loinc, total


def _targets() -> dict[str, tuple[str, float | None]]:
    criteria = tomllib.loads(DEFAULT_PROTOCOL.read_text(encoding="utf-8"))["criteria"]
    out: dict[str, tuple[str, float | None]] = {}
    for analyte, key in _CRITERION.items():
        params = criteria[key]
        bound = params.get("threshold") or params["default_uln"]
        out[analyte] = (bound["unit"], params.get("molar_mass_g_per_mol"))
    return out


def _observations(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if node.get("resourceType") == "Observation":
            yield node
        for child in node.values():
            yield from _observations(child)
    elif isinstance(node, list):
        for child in node:
            yield from _observations(child)


@pytest.mark.skipif(not SAMPLES.is_dir(), reason="shared FHIR samples not present")
def test_every_sample_analyte_quantity_converts_or_raises_unit_error() -> None:
    loinc_to_analyte, expected_total = _summary_analytes()
    assert len(loinc_to_analyte) >= 13
    targets = _targets()
    converted: dict[str, list[float]] = {}
    refused: list[tuple[str, str | None, str]] = []
    seen = 0
    for path in sorted(SAMPLES.rglob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        for obs in _observations(data):
            codings = obs.get("code", {}).get("coding", [])
            loincs = {c.get("code") for c in codings if c.get("system") == "http://loinc.org"}
            hits = sorted(loincs & loinc_to_analyte.keys())
            quantity = obs.get("valueQuantity")
            if not hits or not isinstance(quantity, dict):
                continue
            seen += 1
            unit, molar_mass = targets[loinc_to_analyte[hits[0]]]
            try:
                value = convert_quantity(quantity, unit, molar_mass)
            except UnitError as exc:  # allowed; any other exception fails the test
                refused.append((hits[0], unit_of(quantity), str(exc)))
                continue
            converted.setdefault(hits[0], []).append(value)
    assert seen == expected_total  # the walk found every quantity SUMMARY.md counts
    # Every unit string in today's samples is readable; a UnitError here means a new alias row.
    assert refused == []
    assert sorted(converted["26515-7"]) == pytest.approx([84, 189.6], abs=0.05)  # K/ul and K/uL
    assert any(abs(v - 142.3) < 0.05 for v in converted["1742-6"])  # IU/L read as U/L
    assert min(converted["14682-9"]) == pytest.approx(50)  # 0.05 mmol/L creatinine
    assert max(converted["718-7"]) == pytest.approx(176)  # g/L hemoglobin unchanged
    assert max(converted["1975-2"]) == pytest.approx(8.6 * 17.104, rel=1e-3)  # US Core 8.6 mg/dL


def test_overlong_or_odd_units_never_reach_the_parser(monkeypatch):
    registry = units._registry()

    def spy(_unit):
        raise AssertionError("the UCUM parser was called")

    monkeypatch.setattr(registry.ureg, "from_ucum", spy)
    for unit in ("mg/" * 3000 + "dL", "mg /dL", "mg\ndL"):
        with pytest.raises(units.UnitError, match="too long or has characters"):
            units.convert(1.0, unit, "g/L")
