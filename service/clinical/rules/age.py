"""Minimum age at the evaluation date, from Patient.birthDate.

A partial birth date (year, or year-month) is a range of possible birthdays: the criterion is
met only if even the latest possible birthday gives the minimum age, not met only if even the
earliest one does not, and undetermined in between. A birth date after the evaluation date,
or one implying an age above the protocol's plausible maximum (a placeholder such as
0001-01-01), is not believed: the age is undetermined, with a warning.
"""

from __future__ import annotations

from datetime import date

from service.clinical.dates import parse_date
from service.clinical.model import (
    CriterionResult,
    DataRequirement,
    Issue,
    Severity,
    met,
    not_met,
    undetermined,
)
from service.clinical.rules import Context, rule
from service.clinical.rules.params import MinimumAgeParams
from service.protocol import CriterionDef


def age_on(birth: date, day: date) -> int:
    """Completed years of life on ``day``.

    Someone born on 29 February completes a year on 1 March in common years (their
    (month, day) is not reached before then): the later of the two readings, so a minimum
    age is never reached a day early.
    """
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


def _years(n: int) -> str:
    return f"{n} year" if n == 1 else f"{n} years"


def _implausible(criterion: CriterionDef, ctx: Context, why: str, warning: str) -> CriterionResult:
    """A birth date that cannot be true: never guess an age from it, and say so."""
    result = undetermined(
        criterion.code,
        f"{why}: implausible",
        [ctx.record.patient_ref],
        [DataRequirement("Patient", None, "a correct Patient.birthDate")],
    )
    result.issues.append(Issue(Severity.WARNING, "value", warning, ctx.record.patient_reference))
    return result


@rule("minimum_age", params=MinimumAgeParams)
def minimum_age(criterion: CriterionDef, ctx: Context) -> CriterionResult:
    minimum = int(criterion.params["min_age_years"])
    evidence = [ctx.record.patient_ref]
    raw = ctx.record.patient.get("birthDate")
    born = parse_date(raw)
    needs = [DataRequirement("Patient", None, "Patient.birthDate (at least year and month)")]
    if born is None:
        why = "the Patient has no birth date" if raw is None else "the birth date is unreadable"
        return undetermined(criterion.code, f"{why}, so the age is unknown", evidence, needs)
    if born.earliest > ctx.as_of:
        why = f"birth date {raw} is after the evaluation date {ctx.as_of}"
        return _implausible(criterion, ctx, why, "birth date after the evaluation date")

    youngest = age_on(born.latest, ctx.as_of)
    oldest = age_on(born.earliest, ctx.as_of)
    maximum = int(criterion.params["max_plausible_age_years"])
    if oldest > maximum:
        why = (
            f"birth date {raw} implies an age of up to {_years(oldest)} on {ctx.as_of}, above "
            f"the plausible maximum of {maximum} (a placeholder date?)"
        )
        return _implausible(criterion, ctx, why, f"birth date implies an age over {maximum} years")
    if born.exact:
        stated = f"born {born.earliest}; {_years(oldest)} old on {ctx.as_of}"
    else:
        span = _years(oldest) if youngest == oldest else f"{youngest} or {_years(oldest)}"
        stated = f"birth date given only as {raw}, so on {ctx.as_of} the age is {span}"
    if youngest >= minimum:
        return met(criterion.code, f"{stated} (minimum {minimum})", evidence)
    if oldest < minimum:
        return not_met(criterion.code, f"{stated}: under the minimum of {minimum}", evidence)
    return undetermined(
        criterion.code,
        f"{stated}: a full birth date is needed to tell whether the minimum of {minimum} is "
        "reached",
        evidence,
        needs,
    )
