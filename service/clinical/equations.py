"""Clinical equations as pure functions: numbers in, number out, no FHIR and no units.

Callers convert every input to the unit named in the argument (``scr_mg_dl`` is serum
creatinine in mg/dL) and decide which sex and age to pass; an equation never guesses either.
"""

from __future__ import annotations

from typing import Literal

Sex = Literal["female", "male"]

CKD_EPI_2021 = (
    "CKD-EPI 2021 (race-free): 142 × min(Scr/κ, 1)^α × max(Scr/κ, 1)^-1.200 × 0.9938^age "
    "[× 1.012 if female]; κ 0.7 (F) / 0.9 (M), α -0.241 (F) / -0.302 (M)"
)
COCKCROFT_GAULT = "Cockcroft-Gault: (140 - age) × weight kg / (72 × Scr mg/dL) [× 0.85 if female]"

# (kappa, alpha, factor) of CKD-EPI 2021 by sex (Inker et al., NEJM 2021;385:1737-49)
_CKD_EPI: dict[str, tuple[float, float, float]] = {
    "female": (0.7, -0.241, 1.012),
    "male": (0.9, -0.302, 1.0),
}


def _positive(**values: float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value!r}")


def ckd_epi_2021(scr_mg_dl: float, age_years: float, sex: Sex) -> float:
    """eGFR in mL/min/1.73 m² by the 2021 race-free CKD-EPI creatinine equation."""
    _positive(scr_mg_dl=scr_mg_dl, age_years=age_years)
    kappa, alpha, factor = _CKD_EPI[sex]
    ratio = scr_mg_dl / kappa
    return 142.0 * min(ratio, 1.0) ** alpha * max(ratio, 1.0) ** -1.200 * 0.9938**age_years * factor


def cockcroft_gault(scr_mg_dl: float, age_years: float, weight_kg: float, sex: Sex) -> float:
    """Creatinine clearance in mL/min by Cockcroft-Gault (actual body weight)."""
    _positive(scr_mg_dl=scr_mg_dl, age_years=age_years, weight_kg=weight_kg)
    if age_years >= 140:
        raise ValueError(f"age {age_years!r} is outside the equation (under 140 years)")
    value = (140.0 - age_years) * weight_kg / (72.0 * scr_mg_dl)
    return value * 0.85 if sex == "female" else value
