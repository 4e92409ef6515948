"""Load a trial protocol from fhir_mappings/: the protocol file plus its FHIR resources.

The protocol is read once per process and shared; nothing in it changes at run time.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache, cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from fhir_mappings import DEFAULT_PROTOCOL

if TYPE_CHECKING:
    from service.relevance import Relevance

Code = tuple[str, str]  # (system, code)


class ProtocolError(ValueError):
    """The protocol files are inconsistent (a bug in the data, found at load time)."""


@dataclass(frozen=True, slots=True)
class ValueSet:
    id: str
    url: str
    codes: frozenset[Code]
    resource: dict[str, Any] = field(repr=False, compare=False, hash=False)
    displays: dict[Code, str] = field(default_factory=dict, repr=False, compare=False, hash=False)

    def matches(self, codings: Iterable[Code]) -> bool:
        return any(c in self.codes for c in codings)

    def display(self, code: Code) -> str | None:
        return self.displays.get(code) or None


@dataclass(frozen=True, slots=True)
class CriterionDef:
    code: str
    title: str
    rule: str
    params: dict[str, Any]
    members: tuple[str, ...] = ()

    @property
    def is_member(self) -> bool:
        return "-" in self.code


@dataclass(frozen=True)
class Protocol:
    id: str
    directory: Path
    general: dict[str, Any]
    criteria: dict[str, CriterionDef]  # top-level and member criteria, protocol order
    valuesets: dict[str, ValueSet]  # by ValueSet.id
    research_study: dict[str, Any]
    criteria_codesystem: dict[str, Any]
    result_codesystem: dict[str, Any]
    questionnaire: dict[str, Any]

    canonical: str  # the ResearchStudy's canonical URL
    version: str  # the protocol version

    # -- convenience -------------------------------------------------------

    @property
    def versioned_canonical(self) -> str:
        return f"{self.canonical}|{self.version}"

    @property
    def criteria_system(self) -> str:
        return self.criteria_codesystem["url"]

    @property
    def result_system(self) -> str:
        return self.result_codesystem["url"]

    @property
    def questionnaire_url(self) -> str:
        return self.questionnaire["url"]

    @property
    def top_level(self) -> list[CriterionDef]:
        return [c for c in self.criteria.values() if not c.is_member]

    def valueset(self, vs_id: str) -> ValueSet:
        try:
            return self.valuesets[vs_id]
        except KeyError:
            raise ProtocolError(f"protocol names unknown ValueSet {vs_id!r}") from None

    def criterion_display(self, code: str) -> str:
        return self.criteria[code].title

    def observation_valuesets(self) -> dict[str, int | None]:
        """ValueSets that select Observations, with the look-back (days; None = all history).

        By convention a criterion parameter ending in ``observation_valueset`` selects
        Observations; its criterion's ``window_days`` (if any) bounds the look-back.
        """
        return dict(self._observation_windows)

    @cached_property
    def _observation_windows(self) -> dict[str, int | None]:
        # Worked out once per protocol object (dataclasses.replace makes a new one).
        windows: dict[str, int | None] = {}
        for c in self.criteria.values():
            window = c.params.get("window_days")
            for key, vs_id in c.params.items():
                if not key.endswith("observation_valueset"):
                    continue
                if window is None or windows.get(vs_id, 0) is None:
                    windows[vs_id] = None
                else:
                    windows[vs_id] = max(windows.get(vs_id, 0) or 0, int(window))
        return windows

    @cached_property
    def relevance(self) -> Relevance:
        """Which of a patient's resources an evaluation of this protocol reads (no site
        terminology; service.evaluation_context adds one)."""
        from service.relevance import Relevance

        return Relevance(self)

    def observation_codes(self) -> frozenset[Code]:
        """Every Observation code any criterion looks at: the pre-filter for input resources."""
        return self._observation_codes

    @cached_property
    def _observation_codes(self) -> frozenset[Code]:
        codes: set[Code] = set()
        for vs_id in self._observation_windows:
            codes |= self.valueset(vs_id).codes
        return frozenset(codes)


def _read_json(path: Path) -> dict[str, Any]:
    return orjson.loads(path.read_bytes())


def _valueset_concepts(resource: dict[str, Any]) -> dict[Code, str]:
    """Code -> display of an enumerated ValueSet (compose.include[].concept[]); no expansion."""
    concepts: dict[Code, str] = {}
    for include in resource.get("compose", {}).get("include", []):
        if "filter" in include or "valueSet" in include:
            raise ProtocolError(
                f"ValueSet {resource.get('id')}: only enumerated concepts are supported"
            )
        system = include["system"]
        for concept in include.get("concept", []):
            concepts[(system, concept["code"])] = concept.get("display", "")
    return concepts


def load_protocol(path: Path | str = DEFAULT_PROTOCOL) -> Protocol:
    path = Path(path)
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    directory = path.parent
    study = raw["study"]

    valuesets: dict[str, ValueSet] = {}
    for vs_path in sorted(directory.glob(study.get("valuesets_glob", "ValueSet-*.json"))):
        resource = _read_json(vs_path)
        concepts = _valueset_concepts(resource)
        valuesets[resource["id"]] = ValueSet(
            resource["id"], resource["url"], frozenset(concepts), resource, concepts
        )

    criteria: dict[str, CriterionDef] = {}
    for code, spec in raw["criteria"].items():
        spec = dict(spec)
        title = spec.pop("title")
        rule = spec.pop("rule")
        members = tuple(spec.pop("members", ()))
        criteria[code] = CriterionDef(code, title, rule, spec, members)

    research_study = _read_json(directory / study["research_study"])
    canonical, version = _study_identity(research_study)
    protocol = Protocol(
        id=study["id"],
        directory=directory,
        general=raw.get("general", {}),
        criteria=criteria,
        valuesets=valuesets,
        research_study=research_study,
        criteria_codesystem=_read_json(directory / study["criteria_codesystem"]),
        result_codesystem=_read_json(directory / study["result_codesystem"]),
        questionnaire=_read_json(directory / study["questionnaire"]),
        canonical=canonical,
        version=version,
    )
    _check(protocol)
    return protocol


def _check(protocol: Protocol) -> None:
    """Fail at load time, not mid-evaluation, when the data contradicts itself."""
    for key, value in protocol.general.items():
        if key.endswith("valueset"):
            protocol.valueset(value)
        elif key.endswith("valuesets"):
            for v in value.values() if isinstance(value, dict) else value:
                protocol.valueset(v)
    for c in protocol.criteria.values():
        for key, value in c.params.items():
            if key.endswith("valueset"):
                protocol.valueset(value)
            elif key.endswith("valuesets"):
                for v in value:
                    protocol.valueset(v)
        for m in c.members:
            if m not in protocol.criteria:
                raise ProtocolError(f"{c.code} lists unknown member {m}")
    defined = set(_concept_codes(protocol.criteria_codesystem.get("concept", [])))
    missing = set(protocol.criteria) - defined
    if missing:
        raise ProtocolError(f"criteria missing from the criteria CodeSystem: {sorted(missing)}")


def _study_identity(study: dict[str, Any]) -> tuple[str, str]:
    """Canonical URL and version of the ResearchStudy.

    R4 ResearchStudy has neither element, so they travel in the R5 cross-version
    extensions (…/extension-ResearchStudy.url and .version); R5 data carries them directly.
    """
    found = {"url": study.get("url"), "version": study.get("version")}
    for ext in study.get("extension", []):
        for element in ("url", "version"):
            if ext.get("url", "").endswith(f"extension-ResearchStudy.{element}"):
                found[element] = ext.get("valueUri") or ext.get("valueString")
    if not found["url"] or not found["version"]:
        raise ProtocolError("the ResearchStudy needs a canonical url and a version")
    return found["url"], found["version"]


def _concept_codes(concepts: list[dict[str, Any]]) -> Iterable[str]:
    """Codes of a CodeSystem's concepts, nested ones (panel members) included."""
    for concept in concepts:
        yield concept["code"]
        yield from _concept_codes(concept.get("concept", []))


@cache
def default_protocol() -> Protocol:
    return load_protocol(DEFAULT_PROTOCOL)
