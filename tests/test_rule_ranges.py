"""lab_range (R1: UACR 200-5000 mg/g inclusive, mg/mmol converted through creatinine's molar
mass) and documented_before (H1: UACR >= 30 mg/g dated 90 days or more before as-of)."""

from __future__ import annotations

import pytest

from service.clinical.model import Outcome
from service.protocol import ProtocolError, load_protocol
from tests.builders import quantity
from tests.measure_cases import ago, run, uacr
from tests.protocol_copies import edit_toml, measures_protocol


@pytest.fixture(scope="module")
def protocol(tmp_path_factory):
    return load_protocol(measures_protocol(tmp_path_factory.mktemp("p") / "measures"))


# -- lab_range -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "outcome"),
    [
        (300, Outcome.MET),
        (200, Outcome.MET),  # both bounds inclusive
        (5000, Outcome.MET),
        (199.9, Outcome.NOT_MET),
        (5001, Outcome.NOT_MET),
    ],
)
def test_range_bounds_are_inclusive(protocol, value, outcome):
    r = run(protocol, "R1", uacr(value))
    assert r.outcome is outcome and "200–5000 mg/g (inclusive)" in r.reason


def test_mg_per_mmol_is_converted_through_the_molar_mass(protocol):
    # 45 mg/mmol × 1000 / 113.12 = 397.8 mg/g (≈ × 8.84)
    r = run(protocol, "R1", uacr(45, "mg/mmol"))
    assert r.outcome is Outcome.MET and "45 mg/mmol (398 mg/g)" in r.reason
    low = run(protocol, "R1", uacr(20, "mg/mmol"))  # 176.8 mg/g
    assert low.outcome is Outcome.NOT_MET and "177 mg/g" in low.reason


def test_exclusive_bounds(tmp_path):
    folder = measures_protocol(tmp_path / "p")
    edit_toml(folder, "min_days_before = 90", "min_days_before = 90\nmin_exclusive = true")
    edit_toml(
        folder,
        'max = { value = 5000, unit = "mg/g" }',
        'max = { value = 5000, unit = "mg/g" }\nmax_exclusive = true',
    )
    protocol = load_protocol(folder)
    assert run(protocol, "R1", uacr(5000)).outcome is Outcome.NOT_MET
    assert run(protocol, "R1", uacr(200)).outcome is Outcome.MET
    assert run(protocol, "H1", uacr(30, day=ago(120))).outcome is Outcome.NOT_MET


@pytest.mark.parametrize(
    ("comparator", "value", "outcome"),
    [("<", 300, Outcome.UNDETERMINED), (">", 6000, Outcome.NOT_MET), ("<", 150, Outcome.NOT_MET)],
)
def test_reported_bound(protocol, comparator, value, outcome):
    obs = uacr(value)
    obs["valueQuantity"] = quantity(value, "mg/g", comparator=comparator)
    assert run(protocol, "R1", obs).outcome is outcome


def test_unusable_newest_result_is_not_replaced_by_an_older_one(protocol):
    newest = uacr(300, day=ago(1))
    newest["valueQuantity"] = quantity(300, "mg", system=None)  # not a ratio
    r = run(protocol, "R1", newest, uacr(300, day=ago(10)))
    assert r.outcome is Outcome.UNDETERMINED and "cannot be used" in r.reason


def test_newest_decides_over_an_older_qualifying_one(protocol):
    r = run(protocol, "R1", uacr(150, day=ago(2)), uacr(300, day=ago(10)))
    assert r.outcome is Outcome.NOT_MET and str(ago(2)) in r.reason


def test_no_result_in_the_window(protocol):
    r = run(protocol, "R1", uacr(300, day=ago(40)))
    assert r.outcome is Outcome.UNDETERMINED and "most recent is from" in r.reason


# -- documented_before ---------------------------------------------------------------------


def test_documented_long_enough_before_is_met(protocol):
    old = uacr(100, day=ago(120))
    r = run(protocol, "H1", old)
    assert r.outcome is Outcome.MET and f"Observation/{old['id']}" in r.reason
    assert "90 days or more" in r.reason and str(ago(90)) in r.reason


def test_exactly_n_days_before_counts(protocol):
    assert run(protocol, "H1", uacr(100, day=ago(90))).outcome is Outcome.MET
    assert run(protocol, "H1", uacr(100, day=ago(89))).outcome is Outcome.UNDETERMINED


def test_a_later_result_does_not_undo_the_documentation(protocol):
    r = run(protocol, "H1", uacr(10, day=ago(5)), uacr(100, day=ago(120)))
    assert r.outcome is Outcome.MET


def test_only_recent_results_is_undetermined(protocol):
    r = run(protocol, "H1", uacr(100, day=ago(30)))
    assert r.outcome is Outcome.UNDETERMINED and "no result" in r.reason


def test_old_results_all_outside_the_bounds_is_not_met(protocol):
    r = run(protocol, "H1", uacr(10, day=ago(120)), uacr(2, "mg/mmol", day=ago(200)))
    assert r.outcome is Outcome.NOT_MET and "outside the bounds" in r.reason
    assert len(r.evidence) == 2


def test_partial_date_that_may_be_too_recent_is_undetermined(protocol):
    # as-of 2026-11-20: the cut-off is 2026-08-22; "2026-08" may be 1..31 August
    r = run(protocol, "H1", uacr(100, day="2026-08"))
    assert r.outcome is Outcome.UNDETERMINED and "may be after 2026-08-22" in r.reason
    assert run(protocol, "H1", uacr(100, day="2026-07")).outcome is Outcome.MET


def test_an_unreadable_old_result_beside_failing_ones_is_undetermined(protocol):
    unread = uacr(100, day=ago(150))
    unread["valueQuantity"] = quantity(100, "mg", system=None)
    r = run(protocol, "H1", unread, uacr(10, day=ago(120)))
    assert r.outcome is Outcome.UNDETERMINED and "may qualify" in r.reason


def test_a_bound_that_cannot_decide_is_undetermined(protocol):
    obs = uacr(100, day=ago(120))
    obs["valueQuantity"] = quantity(100, "mg/g", comparator="<")
    assert run(protocol, "H1", obs).outcome is Outcome.UNDETERMINED


def test_results_before_the_look_back_are_not_read(protocol):
    r = run(protocol, "H1", uacr(100, day=ago(800)))
    assert r.outcome is Outcome.UNDETERMINED and "no result" in r.reason


def test_results_not_final_are_not_counted(protocol):
    r = run(protocol, "H1", uacr(100, day=ago(120), status="preliminary"))
    assert r.outcome is Outcome.UNDETERMINED
    assert any("preliminary" in i.message for i in r.issues)


@pytest.mark.parametrize(
    ("old", "new", "words"),
    [
        ("min_days_before = 90", "min_days_before = 0", "min_days_before"),
        (
            'min = { value = 200, unit = "mg/g" }',
            'min = { value = 200, unit = "mg/mmol" }',
            "same unit",
        ),
        ('min = { value = 200, unit = "mg/g" }\n', "", "R1"),  # still valid: max alone
    ],
)
def test_range_parameter_errors(tmp_path, old, new, words):
    folder = measures_protocol(tmp_path / "p")
    edit_toml(folder, old, new)
    if words == "R1":
        protocol = load_protocol(folder)
        assert protocol.criteria["R1"].typed.min is None
        return
    with pytest.raises(ProtocolError, match=words):
        load_protocol(folder)
