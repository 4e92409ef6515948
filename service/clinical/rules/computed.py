"""Computed values (``computed_value``): eGFR by CKD-EPI 2021, creatinine clearance by
Cockcroft-Gault, compared with ``min`` / ``max``.

Inputs are the newest usable results in the window (``newest_verdict``: an unusable newest
creatinine or weight is not replaced by an older one), serum creatinine read in mg/dL through
the protocol's molar mass, age in whole years on the creatinine's day from Patient.birthDate,
and sex from Patient.gender. Decisions, each said in words in the reason:

* gender other, unknown or absent: undetermined (the equations know female and male only);
* a partial birth date (or creatinine date) gives an age interval: the value is computed at
  both ends; if they fall on different sides of a bound, undetermined; under 18: undetermined;
* a creatinine or weight reported as a bound (``<0.5``) is not put into an equation;
* a reported value (``reported_observation_valueset``, e.g. an eGFR Observation) decides
  alone when there is no creatinine; when both exist they must agree, else undetermined, and
  an unusable reported value leaves the answer undetermined too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from service import units
from service.clinical import equations
from service.clinical.dates import parse_date
from service.clinical.model import (
    CriterionResult,
    DataRequirement,
    Issue,
    Outcome,
    met,
    not_met,
    undetermined,
)
from service.clinical.observations import (
    Dated,
    Judged,
    Unusable,
    candidate_observations,
    newest_verdict,
)
from service.clinical.rules import Context, rule
from service.clinical.rules.age import age_on
from service.clinical.rules.labs import Reading, format_number, read_quantity
from service.clinical.rules.params import ComputedValueParams
from service.clinical.rules.ranges import annotation_mismatch, bounds_text, in_bounds, judged, shown
from service.protocol import CriterionDef

ADULT_YEARS = 18  # both equations were derived in adults
_NAMES = {"ckd-epi-2021": "eGFR", "cockcroft-gault": "creatinine clearance"}
_UNITS = {"ckd-epi-2021": "mL/min/{1.73_m2}", "cockcroft-gault": "mL/min"}
_FORMULAS = {
    "ckd-epi-2021": equations.CKD_EPI_2021,
    "cockcroft-gault": equations.COCKCROFT_GAULT,
}


@dataclass(frozen=True, slots=True)
class _Inputs:
    """What the equation is computed from, each with its source and day."""

    creatinine: tuple[Dated, Reading]
    weight: tuple[Dated, Reading] | None


class _Case:
    """One evaluation of a computed-value criterion (so helpers share its context)."""

    def __init__(self, criterion: CriterionDef, ctx: Context) -> None:
        self.criterion, self.ctx = criterion, ctx
        self.p: ComputedValueParams = criterion.typed
        self.issues: list[Issue] = []
        self.name = _NAMES[self.p.equation]
        self.wanted = bounds_text(self.p)
        self.weights: list[Dated] | None = None

    def needs(self, key: str, what: str) -> list[DataRequirement]:
        vs = self.ctx.protocol.valueset(getattr(self.p, key))
        window = f" within {self.p.window_days} days" if self.p.window_days is not None else ""
        return [DataRequirement("Observation", vs.url, f"{self.criterion.title}: {what}{window}")]

    def candidates(self, key: str) -> list[Dated]:
        vs = self.ctx.protocol.valueset(getattr(self.p, key))
        return candidate_observations(
            self.ctx.record, self.ctx.protocol, vs, self.ctx.as_of, self.p.window_days, self.issues
        )

    def read(self, dated: Dated, target: str, molar, plausible) -> Reading | Unusable:
        if plausible and plausible["unit"] != target:  # said in the protocol's unit
            low, high = (
                units.convert(plausible[k], plausible["unit"], target, molar)
                for k in ("low", "high")
            )
            plausible = {"low": low, "high": high, "unit": target}
        spec = {"molar_mass_g_per_mol": molar, "plausible": plausible}
        reading = read_quantity(dated, spec, target, self.ctx, self.issues)
        if isinstance(reading, Reading) and reading.comparator:
            return Unusable(f"{reading.shown} is a bound, not a value an equation can use")
        return reading

    # -- the computed value ------------------------------------------------------------------
    def computed(self) -> CriterionResult | None:
        """The verdict of the equation on the newest inputs; None when there is no creatinine."""
        p = self.p

        def judge_creatinine(dated: Dated) -> Judged:
            plausible = p.creatinine_plausible.model_dump() if p.creatinine_plausible else None
            reading = self.read(dated, "mg/dL", p.molar_mass_g_per_mol, plausible)
            if isinstance(reading, Unusable):
                return reading
            if p.weight_observation_valueset is None:
                return self.decide(_Inputs((dated, reading), None))
            if self.weights is None:  # once, however many creatinines share the newest day
                self.weights = self.candidates("weight_observation_valueset")
            return newest_verdict(
                self.criterion.code,
                self.ctx.record,
                self.weights,
                lambda w: self.judge_weight((dated, reading), w),
                needs=self.needs("weight_observation_valueset", "a body weight"),
                issues=self.issues,
                what="body weight",
            ) or undetermined(
                self.criterion.code,
                f"no body weight in the window: {self.name} by Cockcroft-Gault needs one "
                f"(serum creatinine {shown(reading)} on {dated.shown})",
                [],
                self.needs("weight_observation_valueset", "a body weight"),
            )

        return newest_verdict(
            self.criterion.code,
            self.ctx.record,
            self.candidates("creatinine_observation_valueset"),
            judge_creatinine,
            needs=self.needs("creatinine_observation_valueset", "a serum creatinine"),
            issues=self.issues,
            what="serum creatinine",
        )

    def judge_weight(self, creatinine: tuple[Dated, Reading], dated: Dated) -> Judged:
        p = self.p
        plausible = p.weight_plausible.model_dump() if p.weight_plausible else None
        reading = self.read(dated, "kg", None, plausible)
        if isinstance(reading, Unusable):
            return reading
        return self.decide(_Inputs(creatinine, (dated, reading)))

    def decide(self, inputs: _Inputs) -> CriterionResult:
        """The equation at both ends of the age interval, against the bounds."""
        code, record = self.criterion.code, self.ctx.record
        dated, scr = inputs.creatinine
        evidence = [record.ref(dated.resource)]
        if inputs.weight is not None:
            evidence.append(record.ref(inputs.weight[0].resource))
        evidence.append(record.patient_ref)
        said = f"serum creatinine {shown(scr)} on {dated.shown} ({evidence[0].reference})"
        if inputs.weight is not None:
            wd, wr = inputs.weight
            said += f", body weight {shown(wr)} on {wd.shown} ({evidence[1].reference})"
        gender = record.patient.get("gender")
        if gender not in ("female", "male"):
            told = f"recorded as {gender!r}" if isinstance(gender, str) else "not recorded"
            return undetermined(
                code,
                f"{self.name} cannot be computed: sex is {told}, and {self.p.equation} is "
                f"defined only for female and male ({said})",
                evidence,
                [DataRequirement("Patient", None, "Patient.gender female or male")],
            )
        ages = self.ages(dated)
        if isinstance(ages, str):
            return undetermined(
                code,
                f"{self.name} cannot be computed: {ages} ({said})",
                evidence,
                [DataRequirement("Patient", None, "a correct Patient.birthDate")],
            )
        youngest, oldest = ages
        said += f", {gender}, age {youngest if youngest == oldest else f'{youngest}–{oldest}'}"
        values = []
        for age in dict.fromkeys((youngest, oldest)):
            weight = inputs.weight[1].value if inputs.weight else None
            values.append(self.equation(scr.value, age, gender, weight))
        verdicts = {in_bounds(v, None, self.p) for v in values}
        value_text = " to ".join(f"{format_number(v)}" for v in sorted(values))
        unit = units.describe(_UNITS[self.p.equation])
        base = (
            f"{self.name} {value_text} {unit} computed by {_FORMULAS[self.p.equation]}, from {said}"
        )
        if len(verdicts) > 1:
            return undetermined(
                code,
                f"{base}: the age is not one number (partial birth date) and the values fall on "
                f"both sides of {self.wanted}",
                evidence,
                [DataRequirement("Patient", None, "a full Patient.birthDate")],
            )
        if verdicts == {True}:
            return met(code, f"{base}: {judged(self.p, True)}", evidence)
        return not_met(code, f"{base}: {judged(self.p, False)}", evidence)

    def equation(self, scr: float, age: int, sex, weight: float | None) -> float:
        if self.p.equation == "ckd-epi-2021":
            return equations.ckd_epi_2021(scr, age, sex)
        assert weight is not None
        return equations.cockcroft_gault(scr, age, weight, sex)

    def ages(self, dated: Dated) -> tuple[int, int] | str:
        """Whole years on the creatinine's day, youngest and oldest; a reason when unknown."""
        raw = self.ctx.record.patient.get("birthDate")
        born = parse_date(raw)
        if born is None:
            return "the birth date is missing or unreadable, so the age is unknown"
        first: date = dated.when.earliest or self.ctx.as_of
        last: date = dated.when.latest or self.ctx.as_of
        if born.earliest > first:
            return f"birth date {raw} is after the creatinine's date {dated.shown}"
        youngest, oldest = age_on(born.latest, first), age_on(born.earliest, last)
        if youngest < ADULT_YEARS:
            return f"the age may be under {ADULT_YEARS} and the equation is for adults"
        if oldest >= 140:
            return f"birth date {raw} implies an implausible age"
        return youngest, oldest

    # -- the reported value ------------------------------------------------------------------
    def reported(self) -> CriterionResult | None:
        p = self.p
        if p.reported_observation_valueset is None:
            return None
        target = p.unit
        plausible = p.reported_plausible.model_dump() if p.reported_plausible else None

        def judge(dated: Dated) -> Judged:
            mismatch = annotation_mismatch(dated, target)
            if mismatch:
                return Unusable(mismatch)
            reading = read_quantity(dated, {"plausible": plausible}, target, self.ctx, self.issues)
            if isinstance(reading, Unusable):
                return reading
            ref = self.ctx.record.ref(dated.resource)
            base = f"reported {self.name} {shown(reading)} on {dated.shown} ({ref.reference})"
            verdict = in_bounds(reading.value, reading.comparator, p)
            if verdict is True:
                return met(self.criterion.code, f"{base}: {judged(self.p, True)}", [ref])
            if verdict is False:
                return not_met(self.criterion.code, f"{base}: {judged(self.p, False)}", [ref])
            return undetermined(
                self.criterion.code,
                f"{base}: the reported bound cannot tell whether it is within {self.wanted}",
                [ref],
            )

        return newest_verdict(
            self.criterion.code,
            self.ctx.record,
            self.candidates("reported_observation_valueset"),
            judge,
            needs=self.needs("reported_observation_valueset", f"a reported {self.name}"),
            issues=self.issues,
            what=f"reported {self.name}",
        )


def _combine(case: _Case, computed, reported) -> CriterionResult:
    """Both sources must agree; one alone decides; neither: undetermined."""
    code = case.criterion.code
    if computed is None and reported is None:
        needs = case.needs("creatinine_observation_valueset", "a serum creatinine")
        if case.p.reported_observation_valueset is not None:
            needs += case.needs("reported_observation_valueset", f"a reported {case.name}")
        return undetermined(
            code, f"no serum creatinine (nor reported {case.name}) in the window", [], needs
        )
    if computed is None or reported is None:
        only = computed or reported
        assert only is not None
        if reported is None or case.p.reported_observation_valueset is None:
            return only
        only.reason += "; no serum creatinine in the window to compute it from"
        return only
    evidence = list(dict.fromkeys([*computed.evidence, *reported.evidence]))
    needs = computed.needs + reported.needs
    both = f"{computed.reason}; {reported.reason}"
    if computed.outcome is reported.outcome:
        return CriterionResult(code, computed.outcome, both, evidence, needs=needs)
    if Outcome.UNDETERMINED in (computed.outcome, reported.outcome):
        return undetermined(code, f"{both}: one of the two cannot decide", evidence, needs)
    return undetermined(
        code,
        f"{both}: the computed and the reported value fall on different sides of {case.wanted}",
        evidence,
        needs,
    )


@rule("computed_value", params=ComputedValueParams)
def computed_value(criterion: CriterionDef, ctx: Context) -> CriterionResult:
    """An equation's value from the newest inputs (and a reported value) against bounds."""
    case = _Case(criterion, ctx)
    result = _combine(case, case.computed(), case.reported())
    result.issues[:0] = case.issues
    return result
