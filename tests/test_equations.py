"""The equations, against values worked by hand from the published formulas.

CKD-EPI 2021 (Inker et al., NEJM 2021;385:1737-49), race-free:
142 × min(Scr/κ,1)^α × max(Scr/κ,1)^-1.200 × 0.9938^age [× 1.012 female];
κ 0.7 / 0.9, α -0.241 / -0.302 (female / male). Cockcroft-Gault (Nephron 1976;16:31-41):
(140 - age) × weight / (72 × Scr) [× 0.85 female].
"""

from __future__ import annotations

import pytest

from service.clinical.equations import ckd_epi_2021, cockcroft_gault


def test_ckd_epi_female_60_scr_1_0():
    # Scr/κ = 1/0.7 = 1.428571; 1.428571^-1.2 = e^(-1.2 × 0.356675) = 0.651864;
    # 0.9938^60 = e^(60 × -0.0062193) = 0.688546; 142 × 0.651864 × 0.688546 × 1.012 = 64.50
    # (the brief's "64.7" is a rounding slip; MDCalc/NKF print 65 for these inputs)
    assert ckd_epi_2021(1.0, 60, "female") == pytest.approx(64.50, abs=0.01)


def test_ckd_epi_male_50_scr_1_2():
    # 1.2/0.9 = 1.333333; ^-1.2 = e^(-1.2 × 0.287682) = 0.708083; 0.9938^50 = 0.732773
    # 142 × 0.708083 × 0.732773 = 73.68
    assert ckd_epi_2021(1.2, 50, "male") == pytest.approx(73.68, abs=0.01)


def test_ckd_epi_below_kappa_uses_alpha():
    # female 40, Scr 0.6: (0.6/0.7)^-0.241 = e^(0.241 × 0.154151) = 1.037849;
    # 0.9938^40 = 0.779774; 142 × 1.037849 × 0.779774 × 1.012 = 116.30
    assert ckd_epi_2021(0.6, 40, "female") == pytest.approx(116.30, abs=0.01)
    # male 50, Scr 0.8: (0.8/0.9)^-0.302 = e^(0.302 × 0.117783) = 1.036213; × 0.732773 × 142
    assert ckd_epi_2021(0.8, 50, "male") == pytest.approx(107.82, abs=0.01)


def test_ckd_epi_female_factor_and_age_direction():
    assert ckd_epi_2021(1.0, 60, "female") > ckd_epi_2021(1.0, 61, "female")
    assert ckd_epi_2021(2.0, 60, "male") < ckd_epi_2021(1.0, 60, "male")


def test_cockcroft_gault():
    assert cockcroft_gault(1.0, 60, 70, "male") == pytest.approx(80 * 70 / 72)  # 77.78
    assert cockcroft_gault(1.2, 50, 60, "female") == pytest.approx(90 * 60 / 86.4 * 0.85)  # 53.13


@pytest.mark.parametrize(
    "call",
    [
        lambda: ckd_epi_2021(0, 60, "male"),
        lambda: ckd_epi_2021(1.0, 0, "male"),
        lambda: cockcroft_gault(1.0, 60, 0, "male"),
        lambda: cockcroft_gault(1.0, 140, 70, "male"),
        lambda: cockcroft_gault(-1.0, 60, 70, "female"),
    ],
)
def test_inputs_outside_the_equation_raise(call):
    with pytest.raises(ValueError):
        call()
