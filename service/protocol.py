"""Load a trial protocol from fhir_mappings/: the protocol file plus its FHIR resources.

The protocol is read once per process and shared; nothing in it changes at run time.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from functools import cache, cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from fhir_mappings import DEFAULT_PROTOCOL
from service.errors import ProtocolError  # re-exported: callers import it from here

if TYPE_CHECKING:
    from service.relevance import Relevance


Code = tuple[str, str]  # (system, code)


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


KINDS = ("inclusion", "exclusion")
REGISTRY_SYSTEM = "https://clinicaltrials.gov"  # ResearchStudy.identifier of a registered trial


@dataclass(frozen=True, slots=True)
class CriterionDef:
    code: str
    title: str
    rule: str
    params: dict[str, Any]  # the raw parameters, as the rule bodies read them
    members: tuple[str, ...] = ()
    kind: str = "inclusion"  # "inclusion" | "exclusion"
    # The parameters validated against the rule's model (service/clinical/rules/params.py).
    typed: Any = field(default=None, compare=False, repr=False)
    member_of: str | None = None  # the criterion whose ``members`` list names this one

    @property
    def is_member(self) -> bool:
        """Named in another criterion's ``members`` (explicit, not guessed from the code)."""
        return self.member_of is not None


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

    def __post_init__(self) -> None:
        # Membership comes from the ``members`` lists, whoever built the protocol.
        parents = {m: c.code for c in self.criteria.values() for m in c.members}
        criteria = {
            code: c if c.member_of == parents.get(code) else replace(c, member_of=parents.get(code))
            for code, c in self.criteria.items()
        }
        object.__setattr__(self, "criteria", criteria)

    # -- convenience -------------------------------------------------------

    @property
    def registry_numbers(self) -> tuple[str, ...]:
        """Trial registry numbers (ClinicalTrials.gov) the ResearchStudy carries, if any."""
        return tuple(
            ident["value"]
            for ident in self.research_study.get("identifier", [])
            if ident.get("system") == REGISTRY_SYSTEM and ident.get("value")
        )

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
        """Criteria no other criterion lists as a member, in protocol order."""
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
    def any_exclusion(self) -> bool:
        """Whether any criterion is an exclusion (outputs name kinds only then)."""
        return any(c.kind == "exclusion" for c in self.criteria.values())

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
    """Read and check one protocol; any inconsistency is a ProtocolError naming file and key."""
    path = Path(path)
    if path.is_dir():
        path = path / "protocol.toml"
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ProtocolError(f"{path}: not valid TOML: {exc}") from None
    try:
        return _build(path, raw)
    except KeyError as exc:
        raise ProtocolError(f"{path}: required key {exc.args[0]!r} is missing") from None


def _build(path: Path, raw: dict[str, Any]) -> Protocol:
    directory = path.parent
    study = raw["study"]

    valuesets: dict[str, ValueSet] = {}
    for vs_path in sorted(directory.glob(study.get("valuesets_glob", "ValueSet-*.json"))):
        vs = _read_valueset(vs_path)
        valuesets[vs.id] = vs

    criteria: dict[str, CriterionDef] = {}
    for code, spec in raw["criteria"].items():
        criteria[code] = _criterion(path, code, dict(spec))

    general = raw.get("general", {})
    shared = [directory / d for d in study.get("shared_valueset_dirs", ["../shared"])]
    for ref in _valueset_refs(general, criteria):
        if ref not in valuesets and _is_canonical(ref):
            valuesets[ref] = _shared_valueset(path, ref, shared)

    research_study = _read_json(directory / study["research_study"])
    try:
        canonical, version = _study_identity(research_study)
    except ProtocolError as exc:
        raise ProtocolError(f"{directory / study['research_study']}: {exc}") from None
    protocol = Protocol(
        id=study["id"],
        directory=directory,
        general=general,
        criteria=criteria,
        valuesets=valuesets,
        research_study=research_study,
        criteria_codesystem=_read_json(directory / study["criteria_codesystem"]),
        result_codesystem=_read_json(directory / study["result_codesystem"]),
        questionnaire=_read_json(directory / study["questionnaire"]),
        canonical=canonical,
        version=version,
    )
    try:
        _check(protocol)
    except ProtocolError as exc:
        raise ProtocolError(f"{path}: {exc}") from None
    return protocol


def _criterion(path: Path, code: str, spec: dict[str, Any]) -> CriterionDef:
    """One ``[criteria.X]`` table: its fixed keys, then the rule's typed parameters."""
    from pydantic import ValidationError

    from service.clinical.rules import load_all  # the rules import this module
    from service.clinical.rules.params import describe_error

    where = f"{path}: [criteria.{code}]"
    for key in ("title", "rule"):
        if key not in spec:
            raise ProtocolError(f"{where} key {key!r}: required but missing")
    title, rule_name = spec.pop("title"), spec.pop("rule")
    members = spec.pop("members", [])
    kind = spec.pop("kind", "inclusion")
    if kind not in KINDS:
        raise ProtocolError(f"{where} key 'kind': {kind!r} is not one of {', '.join(KINDS)}")
    if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
        raise ProtocolError(f"{where} key 'members': a list of criterion codes is required")
    if rule_name in _COMBINING and not members:
        raise ProtocolError(f"{where} key 'members': {rule_name} needs at least one member")
    rule = load_all().get(rule_name)
    if rule is None:
        known = ", ".join(sorted(load_all()))
        raise ProtocolError(f"{where} key 'rule': no rule {rule_name!r} (known: {known})")
    try:
        typed = rule.params.model_validate(spec, context={"kind": kind})
    except ValidationError as exc:
        raise ProtocolError(f"{where} " + "; ".join(describe_error(exc))) from None
    # Criteria a parameter names as members (a conditional's applies_when / then) are
    # members like those of a ``members`` list: evaluated first, nested, not top level.
    members = list(dict.fromkeys([*members, *(v for _, v in typed.references("member"))]))
    return CriterionDef(code, title, rule_name, spec, tuple(members), kind, typed)


_COMBINING = ("panel", "any_of", "all_of")  # rules that read nothing but their ``members``


def _valueset_refs(general: dict[str, Any], criteria: dict[str, CriterionDef]) -> list[str]:
    """Every ValueSet named by the general section (by key suffix) or a criterion's model."""
    refs: list[str] = []
    for key, value in general.items():
        if key.endswith("valueset"):
            refs.append(value)
        elif key.endswith("valuesets"):
            refs.extend(value.values() if isinstance(value, dict) else value)
    for c in criteria.values():
        if c.typed is not None:
            refs.extend(v for _, v in c.typed.references("valueset"))
    return refs


def _is_canonical(ref: str) -> bool:
    return "://" in ref or ref.startswith("urn:")


def _read_valueset(vs_path: Path) -> ValueSet:
    resource = _read_json(vs_path)
    concepts = _valueset_concepts(resource)
    return ValueSet(resource["id"], resource["url"], frozenset(concepts), resource, concepts)


def _shared_valueset(path: Path, url: str, folders: list[Path]) -> ValueSet:
    """A ValueSet referenced by canonical, from the shared folders (keyed by that canonical)."""
    for folder in folders:
        for vs_path in sorted(folder.glob("ValueSet-*.json")):
            resource = _read_json(vs_path)
            if resource.get("url") == url:
                vs = _read_valueset(vs_path)
                return replace(vs, id=url)
    where = ", ".join(str(f) for f in folders) or "(none)"
    raise ProtocolError(f"{path}: ValueSet {url!r} is not in the shared folders {where}")


def _check(protocol: Protocol) -> None:
    """Fail at load time, not mid-evaluation, when the data contradicts itself."""
    for key, value in protocol.general.items():
        if key.endswith("valueset"):
            _known_valueset(protocol, "[general]", key, value)
        elif key.endswith("valuesets"):
            for v in value.values() if isinstance(value, dict) else value:
                _known_valueset(protocol, "[general]", key, v)
    items = set(_link_ids(protocol.questionnaire.get("item", [])))
    for c in protocol.criteria.values():
        where = f"[criteria.{c.code}]"
        if c.typed is not None:
            for key, value in c.typed.references("valueset"):
                _known_valueset(protocol, where, key, value)
            for key, value in c.typed.references("criterion"):
                if value not in protocol.criteria:
                    raise ProtocolError(f"{where} key {key!r}: no criterion {value!r}")
            for key, value in c.typed.references("attestation_item"):
                if value not in items:
                    raise ProtocolError(
                        f"{where} key {key!r}: the Questionnaire has no item {value!r}"
                    )
        for m in c.members:
            if m not in protocol.criteria:
                raise ProtocolError(f"{where} key 'members': {c.code} lists unknown member {m}")
    parents: dict[str, str] = {}
    for c in protocol.criteria.values():
        for m in c.members:
            if m in parents or m == c.code:
                raise ProtocolError(
                    f"[criteria.{c.code}] key 'members': {m} must be a criterion named "
                    "by one parent only"
                )
            parents[m] = c.code
    _check_nesting(protocol, parents)
    defined = dict(_concept_kinds(protocol.criteria_codesystem.get("concept", [])))
    missing = set(protocol.criteria) - set(defined)
    if missing:
        raise ProtocolError(f"criteria missing from the criteria CodeSystem: {sorted(missing)}")
    for code, kind in defined.items():
        if kind is not None and code in protocol.criteria and protocol.criteria[code].kind != kind:
            raise ProtocolError(
                f"[criteria.{code}] key 'kind': {protocol.criteria[code].kind!r} but the "
                f"criteria CodeSystem says {kind!r}"
            )


def _check_nesting(protocol: Protocol, parents: dict[str, str]) -> None:
    """Members may have members (a conditional of an any_of), but never form a cycle, and only
    combining rules nest: a panel's members stay plain results, as its outputs expect."""
    for code in protocol.criteria:
        seen = {code}
        parent = parents.get(code)
        while parent is not None:
            if parent in seen:
                raise ProtocolError(f"[criteria.{code}] key 'members': members form a cycle")
            seen.add(parent)
            parent = parents.get(parent)
    for c in protocol.criteria.values():
        if c.rule != "panel":
            continue
        for m in c.members:
            if protocol.criteria[m].members:
                raise ProtocolError(
                    f"[criteria.{c.code}] key 'members': {m} must be a plain criterion "
                    "(a panel's members have no members)"
                )


def _known_valueset(protocol: Protocol, where: str, key: str, vs_id: str) -> None:
    if vs_id not in protocol.valuesets:
        raise ProtocolError(f"{where} key {key!r}: no ValueSet {vs_id!r} in the protocol folder")


def _link_ids(items: list[dict[str, Any]]) -> Iterable[str]:
    for item in items:
        yield item.get("linkId", "")
        yield from _link_ids(item.get("item", []))


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


def _concept_kinds(concepts: list[dict[str, Any]]) -> Iterable[tuple[str, str | None]]:
    """(code, its ``kind`` property or None) of a CodeSystem's concepts, nested ones included."""
    for concept in concepts:
        kind = next(
            (p.get("valueCode") for p in concept.get("property", []) if p.get("code") == "kind"),
            None,
        )
        yield concept["code"], kind
        yield from _concept_kinds(concept.get("concept", []))


@cache
def default_protocol() -> Protocol:
    return load_protocol(DEFAULT_PROTOCOL)
