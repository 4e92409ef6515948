"""Turn one patient's FHIR data (a Bundle, or resources fetched from a server) into a record
the evaluators can read: relevant resources only, indexed, with the patient's identity checked.

This is the only place input is filtered, so the evaluators never see other patients' data
and one malformed resource is skipped here with a warning instead of sinking the evaluation.

Bundle mode and pull mode go through the same ``build_record``, so they cannot disagree on
the same data: which references name this patient (``_Identity``: relative, the Patient's
fullUrl, or absolute on the server the data came from; Patient.link merges), which of two
differing copies of one resource is current (``_one_version``), and how references between
resources resolve (``PatientRecord.resolve``, one index for every rule).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from service.clinical.dates import parse_moment
from service.clinical.model import Issue, Severity, SourceRef
from service.contained import has_members, member_results
from service.copies import identical
from service.errors import NOT_DATA_ERRORS, InputError
from service.protocol import Code, Protocol, ValueSet
from service.references import (
    ReferenceIndex,
    entry_base,
    normalise_base,
    reference_key,
    referenced_type,
    resource_keys,
)
from service.relevance import Relevance, result_codes_in
from service.resource_kinds import EVALUATED, KINDS, MEDICATION_TYPES
from service.shapes import fitting, shape_error
from service.terminology.table import MappingTable, Recoded, recode

Resource = dict[str, Any]

# The reference element that names the patient, per resource type we evaluate.
SUBJECT_ELEMENT: dict[str, str] = {t: KINDS[t].subject[0] for t in EVALUATED}


@dataclass(slots=True)
class Entry:
    resource: Resource
    full_url: str | None = None
    reference: str | None = None  # how evidence names it, when not Type/id or its fullUrl


@dataclass
class PatientRecord:
    patient: Resource
    patient_id: str
    patient_reference: str
    observations: dict[Code, list[Resource]] = field(default_factory=dict)
    conditions: list[Resource] = field(default_factory=list)
    procedures: list[Resource] = field(default_factory=list)
    consents: list[Resource] = field(default_factory=list)
    questionnaire_responses: list[Resource] = field(default_factory=list)
    # This patient's DiagnosticReports: a result they list may take its method from them
    # (service.clinical.method_context); their Observations are then indexed (``resolve``).
    reports: list[Resource] = field(default_factory=list)
    # This patient's MedicationRequest / -Administration / -Statement / -Dispense, kept only
    # when a criterion's rule reads them (service.relevance); a medicationReference resolves
    # through ``resolve`` (contained, bundled or pulled Medication resources are indexed).
    medications: list[Resource] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    truncated: frozenset[str] = frozenset()  # ValueSet ids / resource types a server search cut
    unreadable: frozenset[str] = frozenset()  # ... that had a malformed or conflicting resource
    held: dict[str, str] = field(default_factory=dict)  # feed -> why it stays undetermined
    superseded: str | None = None  # why no criterion can be decided on this record at all
    index: ReferenceIndex = field(default_factory=lambda: ReferenceIndex(None), repr=False)
    # Site terminology (service.terminology): how a resource's local codes were mapped, by
    # its reference; and the Observations only a non-exact mapping tied to a criterion.
    mapped: dict[str, Recoded] = field(default_factory=dict, repr=False)
    evidence_only: dict[int, ValueSet] = field(default_factory=dict, repr=False)
    _refs: dict[int, SourceRef] = field(default_factory=dict, repr=False)
    _names: dict[int, str] = field(default_factory=dict, repr=False)  # SharedObservations'
    # service.clinical.observations: per ValueSet, its Observations with their result parts
    # and day (read by several criteria); checked against the ValueSet and ``observations``.
    _by_valueset: dict[int, tuple[Any, ...]] = field(default_factory=dict, repr=False)
    # Several studies reading one patient's data: their ValueSets' results, shared
    # (service.clinical.observations); ``shared_view``: ``observations`` when it was built
    # from SharedObservations' groups (while it is not replaced).
    shared_facts: dict[Any, Any] | None = field(default=None, repr=False)
    shared_view: dict[Code, list[Resource]] | None = field(default=None, repr=False)

    def observations_in(self, valueset: ValueSet) -> list[Resource]:
        """Observations coded with any code of ``valueset``, each once."""
        seen: set[int] = set()
        found: list[Resource] = []
        # in code order, not the set's: equal ValueSets of two protocols list one order
        for code in sorted(valueset.codes):
            for obs in self.observations.get(code, ()):
                if id(obs) not in seen:
                    seen.add(id(obs))
                    found.append(obs)
        return found

    def ref(self, resource: Resource) -> SourceRef:
        found = self._refs.get(id(resource))
        if found is None:  # an Observation of shared groups, named when first cited
            found = self._refs[id(resource)] = SourceRef(self._names[id(resource)], "Observation")
        return found

    @property
    def patient_ref(self) -> SourceRef:
        return SourceRef(self.patient_reference, "Patient")

    def is_truncated(self, *feeds: str) -> bool:
        return any(f in self.truncated for f in feeds)

    def is_unreadable(self, *feeds: str) -> bool:
        return any(f in self.unreadable for f in feeds)

    def held_open(self, *feeds: str) -> str | None:
        """Why a criterion reading ``feeds`` cannot be decided on this record, if so."""
        if self.superseded is not None:
            return self.superseded
        return next((self.held[f] for f in feeds if f in self.held), None)

    def resolve(self, reference: Any, source: Resource | None = None) -> Resource | None:
        """The resource a Reference names, found in this patient's data (by fullUrl,
        ``Type/id``, ``#contained``, or identifier); None when it is not here. Rules follow
        every reference through this, so urn:uuid links of transaction Bundles resolve.
        Observations are indexed only when the data holds this patient's DiagnosticReports
        (whose ``result`` names them); otherwise it would cost time on the hot path."""
        return self.index.resolve(reference, source)


def codings(concept: Any) -> Iterator[Code]:
    """(system, code) pairs of a CodeableConcept; tolerant of missing parts."""
    if not isinstance(concept, dict):
        return
    for coding in concept.get("coding") or ():
        if isinstance(coding, dict) and "code" in coding:
            yield (coding.get("system") or "", str(coding["code"]))


def _reference_of(resource: Resource, full_url: str | None) -> str | None:
    rid = resource.get("id")
    if isinstance(rid, str) and rid:
        return f"{resource['resourceType']}/{rid}"
    return full_url


def _iter_entries(
    bundle: Resource, issues: list[Issue], named: set[str] | None = None
) -> Iterator[Entry]:
    """Entries of a Bundle of any type; Bundles nested in a batch-response are opened once.

    ``named`` collects the identities (fullUrl or response location) of the entries that
    hold a nested Bundle: they name servers too (see ``_one_server``)."""
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise InputError("Bundle.entry is not a list")
    # service.lean leaves out entries no rule reads; ``positions`` are the others' indexes
    positions = getattr(bundle, "positions", None) or range(len(entries))
    for position, entry in zip(positions, entries, strict=True):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            if isinstance(entry, dict) and "response" in entry and resource is None:
                continue  # a batch-response entry that carries only a status
            issues.append(
                Issue(Severity.WARNING, "invalid", f"Bundle entry {position} has no resource")
            )
            continue
        full_url = entry_url(entry, resource)
        if resource["resourceType"] == "Bundle":
            if named is not None and full_url is not None:
                named.add(full_url)
            yield from _iter_entries(resource, issues, named)
            continue
        yield Entry(resource, full_url)


def entry_url(entry: dict[str, Any], resource: Resource) -> str | None:
    """An entry's identity: its ``fullUrl``; else, in a batch- or transaction-response, its
    ``response.location`` without the ``_history`` suffix, when that names this resource's
    type (and id, if it has one). A location naming another resource is not trusted."""
    full_url = entry.get("fullUrl")
    if isinstance(full_url, str):
        return full_url
    response = entry.get("response")
    location = response.get("location") if isinstance(response, dict) else None
    if not isinstance(location, str):
        return None
    key = reference_key(location, None)
    if key is None or key.startswith("urn:"):
        return None
    rtype, rid = key.rsplit("/", 2)[-2:]
    own_id = resource.get("id")
    if rtype != resource.get("resourceType") or (own_id is not None and own_id != rid):
        return None
    return key


def select_patient(entries: list[Entry], patient_id: str | None) -> Entry:
    patients = [e for e in entries if e.resource["resourceType"] == "Patient"]
    if patient_id is not None:
        chosen = [e for e in patients if patient_id in (e.resource.get("id"), e.full_url)]
        if not chosen:
            raise InputError(f"no Patient with id {patient_id!r} in the Bundle")
        if len(chosen) > 1:
            raise InputError(f"{len(chosen)} Patient resources match {patient_id!r}: ambiguous")
        return chosen[0]
    if not patients:
        raise InputError("the Bundle holds no Patient resource")
    if len(patients) > 1:
        patients = _survivors(patients)
    if len(patients) > 1:
        raise InputError(
            f"the Bundle holds {len(patients)} Patient resources; say which one to evaluate"
        )
    return patients[0]


def _survivors(patients: list[Entry]) -> list[Entry]:
    """Drop Patients that are ``replaced-by`` another Patient of the same Bundle: a merged
    pair (old and surviving record) is one person, and the survivor is the one to evaluate."""
    keys = [set(resource_keys(p.resource, p.full_url, entry_base(p.full_url))) for p in patients]
    kept: list[Entry] = []
    for n, p in enumerate(patients):
        base = entry_base(p.full_url)
        links = p.resource.get("link")
        targets = {
            reference_key(link["other"]["reference"], base)
            for link in (links if isinstance(links, list) else ())
            if isinstance(link, dict)
            and link.get("type") == "replaced-by"
            and isinstance(link.get("other"), dict)
            and isinstance(link["other"].get("reference"), str)
        }
        if not any(targets & k for m, k in enumerate(keys) if m != n):
            kept.append(p)
    return kept or patients


@dataclass(frozen=True)
class PreparedBundle:
    """A Bundle's entries walked once for several protocols' records (service.portfolio_eval):
    the walk is the same for every protocol, only what each record keeps differs."""

    entries: list[Entry]  # as _iter_entries yields them
    issues: tuple[Issue, ...]  # the walk's own warnings (entries without a resource)
    named: frozenset[str]  # identities of entries that hold a nested Bundle
    members: list[Entry]  # ``entries`` with contained hasMember results (_with_members)
    patients: list[Entry]  # the Patient entries of ``entries``


class SharedObservations:
    """One patient's Observations grouped once for every study that reads them.

    Several studies evaluating one patient (service.portfolio_eval, multi-study screening)
    would each walk the same Observations: read their codes, check whose they are, check
    their shape, name them. None of that depends on the study. Here it is done once, for
    the union of the studies' codes; each study's record then takes the groups of its own
    codes, and its criteria share the results they read (``facts``, keyed by ValueSet codes).

    Grouping is exact only for regular data: every Observation with a wanted code readable,
    this patient's, of a fitting shape, named, and present once. Anything else (a malformed
    or foreign result, two copies of one) makes ``groups`` None and every study builds its
    record the ordinary way, which words each problem for its own criteria.
    """

    def __init__(self, entries: list[Entry], codes: frozenset[Code], fits: set[int] | None):
        self.entries = entries  # with contained members (_with_members)
        self.codes = codes  # the union of the studies' Observation codes
        self.others = [e for e in entries if e.resource["resourceType"] != "Observation"]
        self._fits = fits
        self._groups: dict[tuple[Any, ...], _Groups | None] = {}
        self.facts: dict[Any, Any] = {}  # service.clinical.observations: per ValueSet codes

    @classmethod
    def of_resources(
        cls, resources: Iterable[Resource], codes: frozenset[Code]
    ) -> SharedObservations:
        """For resources read from a server or an export (record_from_resources)."""
        entries = [Entry(r) for r in resources if isinstance(r, dict) and "resourceType" in r]
        return cls(_with_members(entries), codes, None)

    @property
    def fits(self) -> set[int]:
        """The resources known to fit their shape (proved once for every study)."""
        if self._fits is None:
            read = {*SUBJECT_ELEMENT, *MEDICATION_TYPES}
            self._fits = fitting(
                e.resource for e in self.entries if e.resource["resourceType"] in read
            )
        return self._fits

    def groups(self, identity: _Identity) -> _Groups | None:
        """The Observations by code as every study's record would keep them; None when the
        data is not regular (see the class). Once per patient identity."""
        key = identity.signature()
        if key not in self._groups:
            try:
                self._groups[key] = self._group(identity)
            except NOT_DATA_ERRORS:
                raise
            except (AttributeError, TypeError, KeyError, ValueError):
                self._groups[key] = None  # a study's own walk meets it and reports it
        return self._groups[key]

    def _group(self, identity: _Identity) -> _Groups | None:
        by_code: defaultdict[Code, list[Resource]] = defaultdict(list)
        names: dict[int, str] = {}
        kept: list[tuple[Resource, str | None, list[Code]]] = []
        named: set[str] = set()
        fits, element = self.fits, SUBJECT_ELEMENT["Observation"]
        for entry in self.entries:
            resource = entry.resource
            if resource["resourceType"] != "Observation":
                continue
            matched = result_codes_in(resource, self.codes)
            if not matched:
                continue
            if identity.classify(resource.get(element), entry.full_url) is not _OURS:
                return None
            if id(resource) not in fits and shape_error(resource) is not None:
                return None
            reference = entry.reference or _reference_of(resource, entry.full_url)
            if reference is None or reference in named:
                return None  # unnamed, or two copies of one: each study's walk settles it
            named.add(reference)
            names[id(resource)] = reference
            kept.append((resource, entry.full_url, matched))
            for code in matched:
                by_code[code].append(resource)
        return _Groups(dict(by_code), names, kept)


@dataclass(frozen=True)
class _Groups:
    by_code: dict[Code, list[Resource]]
    names: dict[int, str]  # how evidence names each Observation (PatientRecord.ref)
    kept: list[tuple[Resource, str | None, list[Code]]]  # in entry order, with their codes


def _check_bundle(bundle: Any) -> None:
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        kind = bundle.get("resourceType") if isinstance(bundle, dict) else type(bundle).__name__
        raise InputError(f"expected a FHIR Bundle, got {kind!r}")


def prepare_bundle(bundle: Any) -> PreparedBundle:
    """Walk a Bundle once; the same errors as ``record_from_bundle`` would raise."""
    _check_bundle(bundle)
    issues: list[Issue] = []
    named: set[str] = set()
    entries = list(_iter_entries(bundle, issues, named))
    patients = [e for e in entries if e.resource["resourceType"] == "Patient"]
    return PreparedBundle(
        entries, tuple(issues), frozenset(named), _with_members(entries), patients
    )


def record_from_bundle(
    bundle: Any,
    protocol: Protocol,
    patient_id: str | None = None,
    mappings: MappingTable | None = None,
    relevance: Relevance | None = None,
    fits: set[int] | None = None,
    prepared: PreparedBundle | None = None,
    shared: SharedObservations | None = None,
) -> PatientRecord:
    """``fits``: ``bundle_fits(bundle)``, ``prepared``: ``prepare_bundle(bundle)`` and
    ``shared``: its Observations grouped once, when several protocols read one Bundle (each
    record then gets its own copy of the issues)."""
    if prepared is None:
        _check_bundle(bundle)
        issues: list[Issue] = []
        named: set[str] = set()
        entries = list(_iter_entries(bundle, issues, named))
        members = None
        patients = [e for e in entries if e.resource["resourceType"] == "Patient"]
    else:
        issues, named = list(prepared.issues), set(prepared.named)
        entries, members, patients = prepared.entries, prepared.members, prepared.patients
    server = _one_server(bundle, entries, named) if any(map(_baseless, patients)) else None
    patients = _distinct(patients, server)
    patient = select_patient(patients, patient_id)
    if server is not None and _baseless(patient):
        patient = _on_server(patient, server, issues)
    return build_record(
        patient,
        entries,
        protocol,
        issues=issues,
        patients=patients,
        mappings=mappings,
        relevance=relevance,
        fits=fits,
        members=members,
        shared=shared,
    )


def bundle_fits(bundle: Any, prepared: PreparedBundle | None = None) -> set[int]:
    """The ids of the Bundle's resources (contained members too) known to fit their shape,
    found once for several protocols' records (service.portfolio_eval); a resource not in
    it is checked on its own, as always."""
    if prepared is not None:
        entries = prepared.members
    else:
        try:
            entries = _with_members(_iter_entries(bundle, []))
        except Exception:  # noqa: BLE001 - the record builder meets it and says what is wrong
            return set()
    read = {*SUBJECT_ELEMENT, *MEDICATION_TYPES}  # what any protocol's record may read
    return fitting(e.resource for e in entries if e.resource["resourceType"] in read)


def resources_fit(resources: Iterable[Resource]) -> set[int]:
    """``bundle_fits`` for resources read from a server: several studies' records of one
    patient's data (a CDS Hooks prefetch) prove the shapes once."""
    entries = [Entry(r) for r in resources if isinstance(r, dict) and "resourceType" in r]
    read = {*SUBJECT_ELEMENT, *MEDICATION_TYPES}
    return fitting(e.resource for e in _with_members(entries) if e.resource["resourceType"] in read)


def _baseless(entry: Entry) -> bool:
    """The entry names no server: no fullUrl, or only a relative ``Type/id`` (a batch-response
    location). A ``urn:`` fullUrl is an identity of its own, not a missing base."""
    url = entry.full_url
    return url is None or (":" not in url and reference_key(url, None) is not None)


def _one_server(bundle: Resource, entries: list[Entry], named: set[str]) -> str | None:
    """The one server base every absolute fullUrl or location of the data names, or None
    when there is none or more than one. A batch-response's Patient read often has no
    fullUrl while its nested searchsets' entries all do: that Patient is this server's.
    The lean decoder's skipped entries name servers too, so both paths see the same set."""
    urls = [e.full_url for e in entries]
    urls += named
    skipped = getattr(bundle, "skipped", None)
    for entry in skipped() if callable(skipped) else ():
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, dict):
            urls.append(entry_url(entry, resource))
    bases = {base for url in urls if (base := entry_base(url)) is not None}
    return bases.pop() if len(bases) == 1 else None


def _on_server(patient: Entry, server: str, issues: list[Issue]) -> Entry:
    """The base-less Patient as the Patient of ``server`` (see ``_one_server``)."""
    rid = patient.resource.get("id")
    relative = patient.full_url or (f"Patient/{rid}" if isinstance(rid, str) else "")
    key = reference_key(relative, server)
    if key is None:
        return patient
    issues.append(
        Issue(
            Severity.INFORMATION,
            "informational",
            f"the Patient entry names no server; read as {key}, on the only server the data names",
            key,
        )
    )
    return Entry(patient.resource, key)


def _patient_key(entry: Entry, server: str | None) -> str | None:
    """Which Patient an entry is, for telling copies apart (None: it cannot be told)."""
    url = entry.full_url
    if url is None:
        rid = entry.resource.get("id")
        url = f"Patient/{rid}" if isinstance(rid, str) else ""
    key = reference_key(url, None) if url else None
    if key is not None and server is not None and ":" not in key:
        key = f"{server}/{key}"
    return key


def _distinct(patients: list[Entry], server: str | None) -> list[Entry]:
    """The Patients with identical copies of one (a searchset's ``match`` and ``include``
    entries) counted once: same identity and the same content as canonical JSON. The copy
    with a server base is kept. Copies that differ stay apart (and stay an error)."""
    if len(patients) < 2:
        return patients
    kept: list[Entry] = []
    first: dict[str, int] = {}
    for entry in patients:
        key = _patient_key(entry, server)
        at = first.get(key) if key is not None else None
        if at is None or not identical(kept[at].resource, entry.resource):
            if key is not None:
                first.setdefault(key, len(kept))
            kept.append(entry)
        elif entry_base(kept[at].full_url) is None and entry_base(entry.full_url) is not None:
            kept[at] = entry
    return kept


def record_from_resources(
    patient: Resource,
    resources: Iterable[Resource],
    protocol: Protocol,
    *,
    issues: Iterable[Issue] = (),
    truncated: frozenset[str] = frozenset(),
    server_base: str | None = None,
    linked_patients: Iterable[Resource] = (),
    mappings: MappingTable | None = None,
    relevance: Relevance | None = None,
    shared: SharedObservations | None = None,
    fits: set[int] | None = None,
    facts: dict[Any, Any] | None = None,
) -> PatientRecord:
    """For data fetched from a server (pull mode, CDS Hooks prefetch); ``server_base`` is
    that server, so absolute references to it are recognised and others are not;
    ``linked_patients`` are the records the Patient links to, as read; ``shared``:
    ``SharedObservations.of_resources(resources)`` when several studies read them; ``fits``
    and ``facts`` what several studies reading overlapping resources share (a CDS Hooks
    prefetch: ``resources_fit`` of them all, and one dict)."""
    entries = (
        []  # the shared entries are these resources'
        if shared is not None
        else [Entry(r) for r in resources if isinstance(r, dict) and "resourceType" in r]
    )
    record = build_record(
        Entry(patient),
        entries,
        protocol,
        issues=list(issues),
        truncated=truncated,
        server_base=server_base,
        patients=[Entry(p) for p in linked_patients if isinstance(p, dict) and p],
        mappings=mappings,
        relevance=relevance,
        shared=shared,
        fits=fits,
    )
    if facts is not None and record.shared_facts is None:
        record.shared_facts = facts
    return record


def build_record(
    patient: Entry,
    entries: Iterable[Entry],
    protocol: Protocol,
    *,
    issues: list[Issue],
    truncated: frozenset[str] = frozenset(),
    server_base: str | None = None,
    patients: Iterable[Entry] = (),
    mappings: MappingTable | None = None,
    relevance: Relevance | None = None,
    fits: set[int] | None = None,
    members: list[Entry] | None = None,
    shared: SharedObservations | None = None,
) -> PatientRecord:
    """``members``: ``_with_members(entries)`` when already built (PreparedBundle).
    ``shared``: the Observations of these entries grouped once for several studies
    (``entries`` and ``members`` are then its entries).
    ``mappings``: the site's terminology (service.terminology), None when it has none.
    ``relevance``: the evaluation's selection (service.relevance; default the protocol's).
    ``server_base``: the FHIR server the data came from (pull mode, CDS Hooks); in bundle
    mode the Patient's own RESTful fullUrl names it, if it has one. ``patients``: every
    Patient of the data (linked records, identifier references)."""
    pid = patient.resource.get("id") or patient.full_url
    if not isinstance(pid, str) or not pid:
        raise InputError("the Patient has neither an id nor a fullUrl")
    original = patient.resource
    patient = Entry(_usable_patient(patient.resource, issues), patient.full_url)
    reference = _reference_of(patient.resource, patient.full_url) or pid
    home = normalise_base(server_base) or entry_base(patient.full_url)
    index = ReferenceIndex(home)
    record = PatientRecord(patient.resource, pid, reference, issues=issues, truncated=truncated)
    record._refs[id(patient.resource)] = SourceRef(reference, "Patient")
    record.index = index

    # Every Patient of the data is indexed first, so Patient.link and identifier references
    # resolve; other resources references may point to (Practitioner, PractitionerRole,
    # ResearchStudy, ...) are indexed in the main loop, before any rule runs.
    patient_urls: dict[int, str | None] = {id(patient.resource): patient.full_url}
    index.add(patient.resource, patient.full_url)
    for other in patients:
        if other.resource is not original:
            index.add(other.resource, other.full_url)
            patient_urls[id(other.resource)] = other.full_url
    relevance = relevance if relevance is not None else protocol.relevance
    identity = _Identity.of(record, patient_urls, relevance)

    wanted_codes = relevance.protocol_codes
    observations: defaultdict[Code, list[Resource]] = defaultdict(list)
    targets = {
        "Condition": record.conditions,
        "Procedure": record.procedures,
        "Consent": record.consents,
        "QuestionnaireResponse": record.questionnaire_responses,
        **{rtype: record.medications for rtype in MEDICATION_TYPES},
    }
    # the patient's element per type this evaluation reads (medications only when a rule does)
    subjects = (
        SUBJECT_ELEMENT
        if relevance.types == EVALUATED
        else {t: KINDS[t].subject[0] for t in relevance.types}
    )
    counts: defaultdict[str, Counter[str]] = defaultdict(Counter)

    groups = None
    if shared is not None:
        entries, fits = shared.entries, shared.fits if fits is None else fits
        groups = shared.groups(identity) if mappings is None else None
    elif members is not None:
        entries = members
    else:
        entries = _with_members(entries)
    # Most resources fit their shape: prove that per type in one call, check the rest singly.
    if fits is None:
        fits = fitting(e.resource for e in entries if e.resource["resourceType"] in subjects)
    walked = entries if groups is None or shared is None else shared.others
    kept: dict[tuple[str, str], tuple[Resource, list[Code], str | None]] = {}
    site: dict[int, Recoded] = {}  # site terminology: how a kept resource was recoded
    unreadable: set[str] = set()
    for entry in walked:  # with shared groups: every resource but the Observations
        resource = entry.resource
        rtype = resource["resourceType"]
        if rtype not in subjects:
            if rtype != "Patient":
                index.add(resource, entry.full_url)
            if rtype == "DiagnosticReport":
                _keep_report(record, identity, resource, entry.full_url)
            continue
        matched: list[Code] = []
        try:
            if rtype == "Observation":
                # a panel may carry the result in a component (its contained members are
                # entries of their own: _with_members)
                matched = relevance.result_codes(resource)
                if not matched:
                    if mappings is None:
                        continue  # not an input of this protocol: skip before any other work
                    resource, matched = _site_codes(
                        resource, mappings, wanted_codes, site, record, identity, entry, protocol
                    )
                    if not matched:
                        continue
            elif rtype == "Condition" and mappings is not None:
                resource = _site_condition(resource, mappings, site)
            verdict = identity.classify(resource.get(subjects[rtype]), entry.full_url)
            if verdict is not _OURS:
                counts[verdict][rtype] += 1
                if verdict is _LINKED:
                    for feed in relevance.feeds(rtype, matched):
                        record.held.setdefault(feed, identity.linked_reason)
                continue
            bad = None if id(resource) in fits else shape_error(resource)
            if bad is not None:
                raise _Malformed(bad)
        except NOT_DATA_ERRORS:
            raise  # a protocol or site-mapping bug is not a malformed resource
        except (_Malformed, AttributeError, TypeError, KeyError, ValueError) as exc:
            # Its criteria cannot be decided: an unreadable newer result may be the one
            # that matters, so it is not simply dropped in favour of older data.
            unreadable |= relevance.feeds(rtype, matched)
            where = f" ({exc.args[0]} has the wrong type)" if isinstance(exc, _Malformed) else ""
            issues.append(
                Issue(
                    Severity.WARNING,
                    "invalid",
                    f"malformed {rtype} could not be read{where}",
                    _reference_of(resource, entry.full_url),
                )
            )
            continue
        reference = (
            entry.reference or _reference_of(resource, entry.full_url) or f"{rtype}#{len(kept)}"
        )
        record._refs[id(resource)] = SourceRef(reference, rtype)
        key = (rtype, reference)
        if key in kept:
            old, old_matched, old_url = kept[key]
            # A conflict holds open what either copy feeds (they may be coded differently).
            feeds = relevance.feeds(rtype, old_matched) | relevance.feeds(rtype, matched)
            chosen = _one_version(old, resource, reference, issues, unreadable, feeds)
            if chosen is old:
                continue  # the kept copy stays, with its own codes
        kept[key] = (resource, matched, entry.full_url)

    for (rtype, _), (resource, matched, full_url) in kept.items():
        if rtype == "Observation":
            for code in matched:
                observations[code].append(resource)
            if record.reports:  # a report's result references resolve to them
                index.add(resource, full_url)
        else:
            targets[rtype].append(resource)
            index.add(resource, full_url)  # Observations: only when a report may list them
    record.unreadable = frozenset(unreadable)
    if site:
        _site_register(record, kept, site, protocol)

    record.observations = dict(observations)
    if groups is not None and shared is not None:
        _take_groups(record, groups, relevance.protocol_codes, shared.facts)
    for verdict, what in _IGNORED.items():
        for rtype, n in sorted(counts[verdict].items()):
            issues.append(Issue(Severity.WARNING, "processing", what.format(n=n, rtype=rtype)))
    return record


def _take_groups(
    record: PatientRecord, groups: _Groups, codes: frozenset[Code], facts: dict[Any, Any]
) -> None:
    """A study's Observations from the shared groups: exactly those its own walk keeps."""
    record.observations = {c: found for c, found in groups.by_code.items() if c in codes}
    record._names = groups.names
    if record.reports:  # a report's result references resolve to them
        for resource, full_url, matched in groups.kept:
            if any(c in codes for c in matched):
                record.index.add(resource, full_url)
    record.shared_facts, record.shared_view = facts, record.observations


def _keep_report(
    record: PatientRecord, identity: _Identity, report: Resource, full_url: str | None
) -> None:
    """Keep a DiagnosticReport of this patient (only its ``result`` links are read)."""
    if identity.classify(report.get("subject"), full_url) is _OURS:
        reference = _reference_of(report, full_url) or f"DiagnosticReport#{len(record.reports)}"
        record._refs[id(report)] = SourceRef(reference, "DiagnosticReport")
        record.reports.append(report)


# -- site terminology (service.terminology): local codes mapped before evaluation ----------


def _site_codes(
    resource: Resource,
    mappings: MappingTable,
    wanted: frozenset[Code],
    site: dict[int, Recoded],
    record: PatientRecord,
    identity: _Identity,
    entry: Entry,
    protocol: Protocol,
) -> tuple[Resource, list[Code]]:
    """An Observation no protocol code matched, read through the site's mappings."""
    recoded = recode(resource, mappings, wanted)
    # A local code the terminology server could not translate may be the result that
    # matters: every Observation criterion stays undetermined (never met).
    if recoded.failed and identity.classify(resource.get("subject"), entry.full_url) is _OURS:
        for feed in protocol.observation_valuesets():
            record.held.setdefault(feed, recoded.failed[0])
    if not recoded.matched:
        return resource, []
    site[id(recoded.resource)] = recoded
    return recoded.resource, recoded.matched


def _site_condition(resource: Resource, mappings: MappingTable, site: dict[int, Recoded]):
    """A Condition with its local codes' exact mappings added (any target system)."""
    recoded = recode(resource, mappings, None)
    if not recoded.uses and not recoded.failed:
        return resource
    if recoded.evidence_only is not None:
        site[id(resource)] = recoded  # only non-exact mappings: checked in _site_register
        return resource
    site[id(recoded.resource)] = recoded
    return recoded.resource


def _site_register(
    record: PatientRecord,
    kept: dict[tuple[str, str], tuple[Resource, list[Code], str | None]],
    site: dict[int, Recoded],
    protocol: Protocol,
) -> None:
    """Remember how each kept resource was mapped (for its criteria's notes); hold open the
    Condition criteria when a Condition reaches a protocol code only through a non-exact
    mapping or an untranslatable code."""
    protocol_codes: frozenset[Code] | None = None
    for (rtype, reference), (resource, _, _) in kept.items():
        recoded = site.get(id(resource))
        if recoded is None:
            continue
        if rtype == "Observation":
            record.mapped[reference] = recoded
            if recoded.evidence_only is not None:
                record.evidence_only[id(resource)] = recoded.evidence_only
            continue
        if recoded.evidence_only is None and not recoded.failed:
            record.mapped[reference] = recoded
            continue
        if protocol_codes is None:
            protocol_codes = frozenset(c for vs in protocol.valuesets.values() for c in vs.codes)
        if recoded.failed:
            record.held.setdefault(rtype, f"{reference}: {recoded.failed[0]}")
        elif protocol_codes.intersection(recoded.matched):
            mapping = next(m for m in recoded.uses if m.target in protocol_codes)
            record.held.setdefault(
                rtype,
                f"{reference} is coded only with a {mapping.describe()}, and a mapping that is "
                "not equivalent never decides",
            )


# Why resources were not used, by the verdict of their patient reference.
_OURS, _OTHER, _FOREIGN, _LINKED, _UNLINKED = "ours", "other", "foreign", "linked", "unlinked"
_IGNORED = {
    _OTHER: "{n} {rtype}(s) of another patient ignored",
    _FOREIGN: (
        "{n} {rtype}(s) of another patient ignored: they name this patient's id on another "
        "server (or on a server this data does not name)"
    ),
    _LINKED: (
        "{n} {rtype}(s) of a linked patient record (Patient.link seealso/refer) not merged; "
        "criteria they feed are undetermined"
    ),
    _UNLINKED: "{n} {rtype} resource(s) without a patient reference ignored",
}


def _with_members(entries: Iterable[Entry]) -> list[Entry]:
    """The entries, each Observation followed by the contained results its hasMember names
    (service.contained): results of the container's patient and time, named
    ``{container}#{id}`` so evidence tells them apart."""
    out: list[Entry] = []
    for entry in entries:
        out.append(entry)
        resource = entry.resource
        if resource["resourceType"] == "Observation" and has_members(resource):
            base = _reference_of(resource, entry.full_url) or "Observation"
            for local, member in member_results(resource):
                out.append(Entry(member, entry.full_url, f"{base}{local}"))
    return out


def _one_version(
    old: Resource,
    new: Resource,
    reference: str,
    issues: list[Issue],
    unreadable: set[str],
    feeds: set[str],
) -> Resource:
    """Two copies of one resource: keep the later version, or flag a conflict we cannot order.

    Identical copies are one. Otherwise ``meta.versionId`` (when both are numbers) and
    ``meta.lastUpdated`` (as instants) order them; when neither does, or they disagree, the
    criteria the resource feeds are undetermined. Pull mode and bundle mode both come here.
    """
    if identical(old, new):
        return old
    later = _later(old, new)
    if later is not None:
        return later
    unreadable |= feeds
    issues.append(
        Issue(
            Severity.WARNING,
            "duplicate",
            "two different versions of this resource and no way to tell which is current",
            reference,
        )
    )
    return new


def _later(old: Resource, new: Resource) -> Resource | None:
    """The later of two versions by meta.versionId / meta.lastUpdated; None if unknown."""
    meta_old, meta_new = old.get("meta"), new.get("meta")
    meta_old = meta_old if isinstance(meta_old, dict) else {}
    meta_new = meta_new if isinstance(meta_new, dict) else {}
    votes: set[bool] = set()  # True: new is later
    v_old, v_new = meta_old.get("versionId"), meta_new.get("versionId")
    if isinstance(v_old, str) and isinstance(v_new, str):
        if v_old == v_new:
            return None  # one version with two contents
        if v_old.isdigit() and v_new.isdigit():
            votes.add(int(v_new) > int(v_old))
    t_old, t_new = (
        parse_moment(meta_old.get("lastUpdated")),
        parse_moment(meta_new.get("lastUpdated")),
    )
    if t_old is not None and t_new is not None and t_old != t_new:
        votes.add(t_new > t_old)
    if len(votes) != 1:
        return None
    return new if votes.pop() else old


class _Malformed(ValueError):
    """A resource element we read has the wrong JSON type (args[0] names it)."""


def _usable_patient(resource: Resource, issues: list[Issue]) -> Resource:
    """The Patient with each wrongly typed element made present-but-unreadable.

    The patient is the subject, so it is never skipped. An unreadable element is not the
    same as a missing one: an unreadable death record must not read as "alive", so it makes
    the criteria it feeds undetermined.
    """
    patient = resource
    while (bad := shape_error(patient)) is not None:
        element = bad.split(".")[0].split("[")[0]
        patient = {k: v for k, v in patient.items() if k != element}
        patient["deceasedDateTime" if element.startswith("deceased") else element] = ""
        issues.append(
            Issue(Severity.WARNING, "invalid", f"Patient.{element} has the wrong type; unreadable")
        )
    return patient


class _Identity:
    """Which patient references name the patient we evaluate (or a record merged into it).

    A reference is this patient's when its key (see service.references) is the Patient's own
    fullUrl or ``{server}/Patient/{id}`` on the server the data came from; a relative
    ``Patient/{id}`` is read against its entry's server. ``Patient?identifier=s|v`` and
    identifier-only references count when exactly one Patient in the data carries that
    identifier and it is this one. Anything else is another patient's.

    ``Patient.link``: ``replaces`` merges the old record (its resources are this patient's);
    ``seealso``/``refer`` records are not merged, and the criteria their resources feed are
    held undetermined; ``replaced-by`` holds every criterion undetermined (the caller asked
    for a record that must no longer be used; the warning names the surviving one).
    """

    __slots__ = (
        "index",
        "id",
        "own",
        "ours",
        "our_resources",
        "linked",
        "linked_resources",
        "linked_reason",
        "_cache",
        "_home_prefix",
        "_depth",
    )

    def __init__(self, index: ReferenceIndex, rid: Any) -> None:
        self.index = index
        self.id = rid if isinstance(rid, str) else None
        self.own: set[str] = set()  # keys of the evaluated Patient itself
        self.ours: set[str] = set()  # ... and of the records merged into it
        self.our_resources: set[int] = set()
        self.linked: set[str] = set()
        self.linked_resources: set[int] = set()
        self.linked_reason = ""
        self._cache: dict[object, str] = {}  # reference (and entry server) -> verdict
        self._home_prefix = f"{index.home}/" if index.home else ""
        self._depth = self._home_prefix.count("/") + 1

    @classmethod
    def of(
        cls, record: PatientRecord, urls: dict[int, str | None], relevance: Relevance
    ) -> _Identity:
        patient = record.patient
        ident = cls(record.index, patient.get("id"))
        ident.own.update(resource_keys(patient, urls[id(patient)], record.index.home))
        ident.ours.update(ident.own)
        ident.our_resources.add(id(patient))
        links = patient.get("link")
        for link in links if isinstance(links, list) else ():
            if isinstance(link, dict):
                ident._link(record, link, urls, relevance)
        return ident

    def signature(self) -> tuple[Any, ...]:
        """What a verdict depends on: equal signatures classify every reference alike."""
        return (
            self.id,
            self.index.home,
            frozenset(self.ours),
            frozenset(self.our_resources),
            frozenset(self.linked),
            frozenset(self.linked_resources),
        )

    def _link(
        self, record: PatientRecord, link: dict, urls: dict[int, str | None], relevance: Relevance
    ) -> None:
        kind, other = link.get("type"), link.get("other")
        label = other.get("reference") if isinstance(other, dict) else None
        if isinstance(label, str) and referenced_type(label) not in (None, "Patient"):
            return  # e.g. a RelatedPerson (seealso): not a record of this patient's data
        label = label if isinstance(label, str) else "a record named by identifier"
        keys, target = self._target(other, urls)
        warn = record.issues.append
        if kind == "replaced-by":
            record.superseded = (
                f"this Patient record was replaced by {label} (Patient.link replaced-by); "
                "evaluate the surviving record"
            )
            warn(Issue(Severity.WARNING, "business-rule", record.superseded, label))
        elif kind == "replaces":
            if keys is None:
                why = (
                    f"the record merged into this patient ({label}, Patient.link replaces) "
                    "cannot be read from this data (another server, or not resolvable)"
                )
                for feed in relevance.all_feeds():
                    record.held.setdefault(feed, why)
                warn(Issue(Severity.WARNING, "incomplete", why, label))
                return
            self.ours |= keys
            if target is not None:
                self.our_resources.add(id(target))
            message = f"resources of {label}, merged into this patient (Patient.link replaces)"
            warn(Issue(Severity.INFORMATION, "informational", message, label))
            not_plain = self._not_plain_merge(target, label)
            if not_plain is not None:
                for feed in relevance.all_feeds():
                    record.held.setdefault(feed, not_plain)
                warn(Issue(Severity.WARNING, "business-rule", not_plain, label))
        elif kind in ("seealso", "refer"):
            self.linked |= keys or set()
            if target is not None:
                self.linked_resources.add(id(target))
            self.linked_reason = (
                f"a linked record ({label}, Patient.link {kind}) that may be the same person "
                "holds data for it and is not merged"
            )
            message = (
                f"Patient.link {kind} to {label}: that record is not merged; criteria with data "
                "on it are undetermined"
            )
            warn(Issue(Severity.WARNING, "business-rule", message, label))

    def _not_plain_merge(self, merged: Resource | None, label: str) -> str | None:
        """Why a merged record (when its Patient is in the data) cannot simply be folded in:
        it links on to further records (a chain of merges is not followed), or it says it was
        replaced by a record other than this one."""
        links = merged.get("link") if isinstance(merged, dict) else None
        for link in links if isinstance(links, list) else ():
            if not isinstance(link, dict):
                continue
            kind, other = link.get("type"), link.get("other")
            ref = other.get("reference") if isinstance(other, dict) else None
            key = self.index.key(ref, merged) if isinstance(ref, str) else None
            if key is not None and key in self.own:
                continue  # points back to this patient
            if kind == "replaced-by":
                return f"the merged record {label} says it was replaced by another record"
            if kind in ("replaces", "seealso", "refer"):
                return (
                    f"the merged record {label} links on to another record (Patient.link "
                    f"{kind}), which is not followed"
                )
        return None

    def _target(self, other: Any, urls: dict[int, str | None]) -> tuple[set[str] | None, Any]:
        """Keys of a linked record and its Patient resource when present; keys None when it
        cannot be tied to this data (another server, unresolvable)."""
        if not isinstance(other, dict):
            return None, None
        index = self.index
        ref = other.get("reference")
        key = index.key(ref) if isinstance(ref, str) else None
        if (
            key is not None
            and key.startswith(("http://", "https://"))
            and (index.home is None or not key.startswith(index.home + "/"))
        ):
            return None, None  # not on the server the data came from
        if isinstance(ref, str):
            target = index.resolve(ref)
        else:
            target = index.by_identifier(other.get("type") or "Patient", other.get("identifier"))
        if target is not None and target.get("resourceType") != "Patient":
            return None, None
        if target is None and (key is None or key.startswith("urn:")):
            return None, None  # a urn: or identifier link names a record only if it is here
        keys = {key} if key is not None else set()
        if target is not None:
            keys.update(resource_keys(target, urls.get(id(target)), index.home))
        return (keys or None), target

    def classify(self, subject: Any, full_url: str | None) -> str:
        """_OURS, _LINKED, _FOREIGN, _OTHER or _UNLINKED for a resource's patient reference."""
        if not isinstance(subject, dict):
            return _UNLINKED
        ref = subject.get("reference")
        if not isinstance(ref, str):
            if isinstance(subject.get("identifier"), dict):
                rtype = subject.get("type") or "Patient"
                return self._of(self.index.by_identifier(rtype, subject["identifier"]))
            return _UNLINKED
        prefix = self._home_prefix
        if (
            full_url is None
            or ":" in ref  # absolute or urn: the entry's server does not matter
            or (prefix and full_url.startswith(prefix) and full_url.count("/") == self._depth)
        ):
            verdict = self._cache.get(ref)
            if verdict is None:
                verdict = self._cache[ref] = self._classify(ref, None)
            return verdict
        # A relative reference in an entry of another server (or of none): read against it.
        head, type_part, _ = (full_url.rsplit("/", 2) + ["", ""])[:3]
        cache_key = (ref, head, type_part)
        verdict = self._cache.get(cache_key)
        if verdict is None:
            verdict = self._cache[cache_key] = self._classify(ref, full_url)
        return verdict

    def _classify(self, ref: str, full_url: str | None) -> str:
        base = entry_base(full_url) if full_url and ":" not in ref else None
        key = reference_key(ref, base or self.index.home)
        if key is None:
            return self._of(self.index.resolve(ref))  # Patient?identifier=...
        if key in self.ours:
            return _OURS
        if key in self.linked:
            return _LINKED
        if self.id is not None and key.endswith(f"/Patient/{self.id}"):
            return _FOREIGN
        return _OTHER

    def _of(self, target: Resource | None) -> str:
        if target is not None and id(target) in self.our_resources:
            return _OURS
        if target is not None and id(target) in self.linked_resources:
            return _LINKED
        return _OTHER


def all_feeds(protocol: Protocol) -> set[str]:
    """Every feed a criterion can read: Observation ValueSets and the other resource types."""
    return protocol.relevance.all_feeds()
