"""Typed parameters of each rule kind, validated when a protocol loads.

A protocol file is written by hand; without a schema a misspelt key (``attestation_itme``)
loads fine and only shows up at run time as an undetermined criterion. Each rule kind
therefore declares its parameters here (names, types, units, which ValueSets, criteria and
attestation items it reads) and the loader rejects anything else, naming the key.

The rule bodies still read ``criterion.params`` (the raw dict); the validated model is
``criterion.typed``, for tools (``protocol check`` / ``protocol show``) and new rules.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator


@dataclass(frozen=True)
class Reads:
    """Marks a parameter whose value names something the loader can check exists."""

    what: Literal["valueset", "criterion", "member", "attestation_item"]


ValueSetRef = Annotated[str, Reads("valueset")]
# Optional ones carry the marker outside the union, or pydantic would not keep it on the field.
OptionalValueSetRef = Annotated[str | None, Reads("valueset")]
ValueSetList = Annotated[list[str], Reads("valueset")]
ValueSetMap = Annotated[dict[str, str], Reads("valueset")]
CriterionRef = Annotated[str, Reads("criterion")]
AttestationItem = Annotated[str, Reads("attestation_item")]
OptionalAttestationItem = Annotated[str | None, Reads("attestation_item")]
# A criterion evaluated as a member of this one (nested under it, hidden from the top level).
MemberRef = Annotated[str, Reads("member")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class Quantity(_Strict):
    """A threshold or limit with its UCUM unit."""

    value: float
    unit: str


class QuantityRange(_Strict):
    """Plausible low..high in one UCUM unit: values outside are not believed."""

    low: float
    high: float
    unit: str


class RuleParams(_Strict):
    """Base of every rule's parameters: walks the fields that name other protocol parts."""

    def references(self, what: str) -> Iterator[tuple[str, str]]:
        """(key, name) of every ValueSet / criterion / attestation item this criterion reads."""
        for key, info in type(self).model_fields.items():
            if not any(isinstance(m, Reads) and m.what == what for m in info.metadata):
                continue
            value = getattr(self, key)
            if value is None:
                continue
            if isinstance(value, str):
                yield key, value
            elif isinstance(value, dict):
                yield from ((f"{key}.{k}", v) for k, v in value.items())
            else:
                yield from ((key, v) for v in value)

    def units(self) -> Iterator[tuple[str, str]]:
        """(key, UCUM unit) of every quantity parameter."""
        for key in type(self).model_fields:
            value = getattr(self, key)
            if isinstance(value, Quantity | QuantityRange):
                yield key, value.unit


WindowDays = Annotated[int | None, Field(default=None, ge=0)]


class NoParams(RuleParams):
    """A rule that reads nothing but its members (panel)."""


class MinimumAgeParams(RuleParams):
    min_age_years: int = Field(ge=0)
    max_plausible_age_years: int = Field(ge=1)


class CodedFindingParams(RuleParams):
    analyte: str | None = None
    observation_valueset: ValueSetRef
    context_observation_valueset: OptionalValueSetRef = None
    context_observation_method_valueset: OptionalValueSetRef = None
    # a broader code also counts when a report or procedure of these codes establishes the method
    context_observation_report_valueset: OptionalValueSetRef = None
    context_observation_procedure_valueset: OptionalValueSetRef = None
    positive_valueset: ValueSetRef
    negative_valueset: ValueSetRef
    window_days: WindowDays


class DiagnosisParams(RuleParams):
    confirmed_valueset: ValueSetRef
    lineage_unstated_valueset: ValueSetRef
    lineage_confirmed_by: CriterionRef
    other_lineage_valueset: ValueSetRef
    histology_extension: str | None = None
    disease: str
    confirmed_disease: str | None = None
    confirmed_disease_long: str | None = None
    lineage: str | None = None
    lineage_marker: str | None = None


class RelapsedRefractoryParams(RuleParams):
    histology_extension: str | None = None
    all_condition_valueset: ValueSetRef
    relapse_condition_valueset: ValueSetRef
    remission_condition_valueset: ValueSetRef
    relapse_clinical_status: list[str]
    disease_status_observation_valueset: ValueSetRef
    remission_value_valueset: ValueSetRef
    relapse_value_valueset: ValueSetRef
    refractory_value_valueset: ValueSetRef
    treatment_valueset: ValueSetRef
    short_first_remission_months: int = Field(ge=0)
    min_relapse_episodes: int = Field(ge=1)
    disease: str
    treatment: str | None = None


class AttestationParams(RuleParams):
    attestation_item: AttestationItem
    supporting_procedure_valueset: OptionalValueSetRef = None


class SurvivalParams(RuleParams):
    attestation_item: AttestationItem


class ConsentParams(RuleParams):
    attestation_item: AttestationItem
    consent_scope_valueset: ValueSetRef


class _LabParams(RuleParams):
    analyte: str | None = None
    observation_valueset: ValueSetRef
    context_observation_valueset: OptionalValueSetRef = None
    context_observation_method_valueset: OptionalValueSetRef = None
    # a broader code also counts when a report or procedure of these codes establishes the method
    context_observation_report_valueset: OptionalValueSetRef = None
    context_observation_procedure_valueset: OptionalValueSetRef = None
    plausible: QuantityRange | None = None
    window_days: WindowDays


class LabThresholdParams(_LabParams):
    comparator: Literal["<", "<=", ">", ">="]
    threshold: Quantity
    molar_mass_g_per_mol: float | None = Field(default=None, gt=0)
    compare_decimals: int | None = Field(default=None, ge=0)
    fraction_as_percent: bool = False
    unitless_fraction_max: float | None = None


class LabUlnMultipleParams(_LabParams):
    max_uln_multiple: float = Field(gt=0)
    default_uln: Quantity
    uln_plausible: QuantityRange | None = None


class PerformanceStatusParams(RuleParams):
    ecog_observation_valueset: ValueSetRef
    ecog_context_observation_valueset: OptionalValueSetRef = None  # broader: evidence only
    ecog_context_observation_method_valueset: OptionalValueSetRef = None
    ecog_context_observation_report_valueset: OptionalValueSetRef = None
    ecog_context_observation_procedure_valueset: OptionalValueSetRef = None
    ecog_grade_valuesets: ValueSetList
    ecog_max: int = Field(ge=0)
    ecog_range: tuple[int, int]
    karnofsky_observation_valueset: ValueSetRef
    karnofsky_context_observation_valueset: OptionalValueSetRef = None
    karnofsky_context_observation_method_valueset: OptionalValueSetRef = None
    karnofsky_context_observation_report_valueset: OptionalValueSetRef = None
    karnofsky_context_observation_procedure_valueset: OptionalValueSetRef = None
    karnofsky_met_min: int
    karnofsky_not_met_max: int
    karnofsky_range: tuple[int, int]
    window_days: WindowDays


class ConditionAbsentParams(RuleParams):
    """An exclusion: the patient satisfies it when the excluding Condition is known absent.

    ``within_days`` bounds the Condition's onset (else recorded) date; ``window_days`` is the
    look-back of the named negative test (``test_*``), as for every Observation rule.
    """

    condition: str  # how reasons name the excluding condition ("Burkitt lymphoma")
    condition_valueset: ValueSetRef
    history: bool = False  # any clinicalStatus counts ("history of ..."), not only active ones
    within_days: WindowDays
    test_observation_valueset: OptionalValueSetRef = None
    test_positive_valueset: OptionalValueSetRef = None
    test_negative_valueset: OptionalValueSetRef = None
    window_days: WindowDays
    attestation_item: OptionalAttestationItem = None  # "yes" means "none of these apply"
    absence_in_record_clears: bool = False

    @model_validator(mode="after")
    def _test_complete(self) -> ConditionAbsentParams:
        test = (
            self.test_observation_valueset,
            self.test_positive_valueset,
            self.test_negative_valueset,
        )
        if any(test) and not all(test):
            raise ValueError(
                "test_observation_valueset, test_positive_valueset and test_negative_valueset "
                "go together"
            )
        return self


class ConditionalParams(RuleParams):
    """Applies only when another finding holds: met when it is known not to hold."""

    applies_when: MemberRef
    then: MemberRef


class WashoutParams(RuleParams):
    """No exposure to the ValueSet's agents within ``within_days`` before the evaluation date.

    Met only on evidence: every recorded exposure certainly ended before the window, and
    either the protocol accepts the record as complete (``absence_in_record_clears``) or the
    investigator attests ``attestation_item`` ("yes": none given in the window).
    """

    medication: str  # how reasons name the agents ("prior CD19-directed therapy")
    medication_valueset: ValueSetRef
    within_days: int = Field(ge=0)
    attestation_item: OptionalAttestationItem = None
    absence_in_record_clears: bool = False


class RequiredTherapyParams(RuleParams):
    """Exposure continuous for at least ``min_days`` up to the evaluation date."""

    medication: str
    medication_valueset: ValueSetRef
    min_days: int = Field(ge=1)
    max_gap_days: int = Field(default=0, ge=0)  # a longer gap between exposures breaks it


class DistinctAgentsParams(RuleParams):
    """At least ``min_agents`` different agents (ingredients) of the ValueSet, ever."""

    medication: str
    medication_valueset: ValueSetRef
    min_agents: int = Field(ge=1)
    within_days: WindowDays  # only exposures that may fall in this look-back (None: all)
    absence_in_record_clears: bool = False  # fewer recorded is "not met" (record complete)


class Bounds(RuleParams):
    """``min`` and/or ``max`` in one UCUM unit, each inclusive unless ``*_exclusive``."""

    min: Quantity | None = None
    max: Quantity | None = None
    min_exclusive: bool = False
    max_exclusive: bool = False

    @model_validator(mode="after")
    def _bounds(self) -> Bounds:
        if self.min is None and self.max is None:
            raise ValueError("at least one of min and max is required")
        if self.min is not None and self.max is not None:
            if self.min.unit != self.max.unit:
                raise ValueError("min and max must be in the same unit")
            if self.min.value > self.max.value:
                raise ValueError("min is above max")
        return self

    @property
    def unit(self) -> str:
        """The unit results are converted to before they are compared."""
        bound = self.min if self.min is not None else self.max
        if bound is None:  # pragma: no cover - the model validator requires min or max
            raise ValueError("at least one of min and max is required")
        return bound.unit


class LabRangeParams(Bounds):
    """One result between ``min`` and ``max`` (the newest in the window decides)."""

    analyte: str | None = None
    observation_valueset: ValueSetRef
    plausible: QuantityRange | None = None
    molar_mass_g_per_mol: float | None = Field(default=None, gt=0)
    window_days: WindowDays


class DocumentedBeforeParams(LabRangeParams):
    """A qualifying result dated certainly at least ``min_days_before`` days before as-of.

    ``window_days`` (optional) is how far back a result may be; None is all history.
    """

    min_days_before: int = Field(ge=1)


class ComputedValueParams(Bounds):
    """A value computed by a named equation from the newest usable inputs in the window."""

    equation: Literal["ckd-epi-2021", "cockcroft-gault"]
    creatinine_observation_valueset: ValueSetRef
    molar_mass_g_per_mol: float = Field(gt=0)  # creatinine's, to read µmol/L as mg/dL
    creatinine_plausible: QuantityRange | None = None
    weight_observation_valueset: OptionalValueSetRef = None  # Cockcroft-Gault only
    weight_plausible: QuantityRange | None = None
    # a reported value (an eGFR Observation) that may decide too; it must agree
    reported_observation_valueset: OptionalValueSetRef = None
    reported_plausible: QuantityRange | None = None
    window_days: WindowDays

    @model_validator(mode="after")
    def _weight(self) -> ComputedValueParams:
        if self.equation == "cockcroft-gault" and self.weight_observation_valueset is None:
            raise ValueError("cockcroft-gault needs weight_observation_valueset")
        if self.equation != "cockcroft-gault" and self.weight_observation_valueset is not None:
            raise ValueError(f"{self.equation} reads no weight_observation_valueset")
        return self


class TimeSinceEventParams(RuleParams):
    """Days since a Procedure or Condition of a ValueSet.

    ``at_least_days``: the newest event is certainly at least N days before as-of (an
    inclusion). ``within_days``: an event in the last N days; an exclusion then reads it as
    the excluding finding, with the evidence-of-absence semantics of ``condition_absent``.
    """

    event: str  # how reasons name the event ("allogeneic HSCT")
    procedure_valueset: OptionalValueSetRef = None
    condition_valueset: OptionalValueSetRef = None
    at_least_days: int | None = Field(default=None, ge=0)
    within_days: int | None = Field(default=None, ge=0)
    attestation_item: OptionalAttestationItem = None  # exclusion: "yes" = none of these
    absence_in_record_clears: bool = False

    @model_validator(mode="after")
    def _one_bound(self, info: ValidationInfo) -> TimeSinceEventParams:
        if self.procedure_valueset is None and self.condition_valueset is None:
            raise ValueError("procedure_valueset or condition_valueset is required")
        if (self.at_least_days is None) == (self.within_days is None):
            raise ValueError("exactly one of at_least_days and within_days is required")
        kind = (info.context or {}).get("kind", "inclusion")
        if kind == "exclusion" and self.at_least_days is not None:
            raise ValueError("an exclusion reads within_days (the excluding recent event)")
        if kind == "inclusion" and (self.attestation_item or self.absence_in_record_clears):
            raise ValueError(
                "attestation_item and absence_in_record_clears clear an exclusion only"
            )
        return self


def describe_error(exc: Any) -> list[str]:
    """One line per problem of a pydantic ValidationError: the key, then what is wrong."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err.get("loc", ())) or "(criterion)"
        if err.get("type") == "extra_forbidden":
            lines.append(f"key {key!r}: not a parameter of this rule (misspelt?)")
        elif err.get("type") == "missing":
            lines.append(f"key {key!r}: required by this rule but missing")
        else:
            lines.append(f"key {key!r}: {err.get('msg')}")
    return lines
