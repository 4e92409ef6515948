"""One patient, several studies: the data is read, decoded and fetched once for all of them.

Every surface that answers for several protocols (``$eligibility`` with ``study``, the CLI's
``evaluate --study``, CDS Hooks) calls these, so a study's answer in a portfolio is the
answer it gets alone (tests/test_portfolio_api.py checks it):

* a posted body is decoded once, lean with the UNION of the protocols' codes (an entry one
  protocol reads is decoded for all; each protocol's record builder then keeps only what its
  own selection reads, exactly as the generic path does for a single protocol);
* each protocol builds its own record from the decoded resources: the record's bookkeeping
  (which ValueSets a malformed or cut resource leaves open) is per protocol, so sharing one
  record would let one protocol's ValueSets hold another's criteria open. What does not
  depend on the protocol is shared: the Observations are grouped by code once
  (service.record.SharedObservations) and the criteria of every study read one set of
  per-ValueSet results (service.clinical.observations);
* in pull mode every protocol plans its own queries, and identical queries (same type and
  parameters) are sent once (``SharedQueries``): the requests are the union of what the
  studies need, with no query sent twice.

With one protocol everything delegates to the single-study functions of service.pipeline,
so the output is exactly theirs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from service import entry_cap, lean
from service.clinical.dates import today
from service.clinical.evaluation import Evaluation
from service.evaluation_context import EvaluationContext
from service.fhir.queries import Query
from service.gc_pause import gc_paused
from service.pipeline import (
    evaluate_body,
    evaluate_fetched_off_loop,
    evaluate_from_server,
    evaluate_unwrapped,
    parse_json,
    unwrap_parameters,
)
from service.protocol import Code, Protocol
from service.record import PreparedBundle, SharedObservations, bundle_fits, prepare_bundle
from service.settings import Settings
from service.terminology import runtime as terminology

if TYPE_CHECKING:
    from service.fhir.client import SearchResult

T = TypeVar("T")


@dataclass(frozen=True)
class StudyAnswer:
    """One study's part of a portfolio answer."""

    protocol: Protocol
    evaluation: Evaluation
    bundle: dict[str, Any]


def contexts_for(protocols: Sequence[Protocol]) -> list[EvaluationContext]:
    """One context per protocol, all under ONE snapshot of the site terminology."""
    site = terminology.active()
    return [EvaluationContext(p, site) for p in protocols]


def union_lean_codes(contexts: Sequence[EvaluationContext]) -> tuple[bytes, ...]:
    """The codes the lean plan keeps an Observation for, over every protocol."""
    codes: set[bytes] = set()
    for context in contexts:
        codes.update(context.relevance.lean_codes)
    return tuple(sorted(codes))


def union_protocol_codes(contexts: Sequence[EvaluationContext]) -> frozenset[Code]:
    """Every Observation code any of the protocols' criteria reads."""
    return frozenset().union(*(c.relevance.protocol_codes for c in contexts))


def evaluate_body_portfolio(
    body: bytes | str,
    protocols: Sequence[Protocol],
    *,
    as_of: date | None = None,
    patient_id: str | None = None,
    max_entries: int = entry_cap.DEFAULT_MAX_ENTRIES,
) -> list[StudyAnswer]:
    """A posted Bundle (or Parameters) evaluated against every protocol, decoded once."""
    if not protocols:
        raise ValueError("no protocol to evaluate")
    if len(protocols) == 1:
        evaluation, bundle = evaluate_body(
            body, protocols[0], as_of=as_of, patient_id=patient_id, max_entries=max_entries
        )
        return [StudyAnswer(protocols[0], evaluation, bundle)]
    contexts = contexts_for(protocols)
    with gc_paused():
        resource = None
        if contexts[0].site is None:
            resource = lean.lean_bundle(body, union_lean_codes(contexts), max_entries)
        if resource is None:
            entry_cap.check(body, max_entries)
            resource = parse_json(body)
        bundle, param_as_of, param_patient = unwrap_parameters(resource)  # checked once
        prepared = shared_walk(bundle)  # the entries walked once for every study
        fits = bundle_fits(bundle, prepared)  # the shape proof, once for every study
        shared = (  # the Observations grouped once for every study
            SharedObservations(prepared.members, union_protocol_codes(contexts), fits)
            if prepared is not None
            else None
        )
        answers = []
        for context in contexts:
            evaluation, result = evaluate_unwrapped(
                bundle,
                context.protocol,
                as_of or param_as_of,
                patient_id or param_patient,
                patient_id,
                context,
                fits,
                prepared,
                shared,
            )
            answers.append(StudyAnswer(context.protocol, evaluation, result))
        del resource, bundle, prepared
        return answers


def evaluate_body_portfolio_json(
    body: bytes | str, protocols: Sequence[Protocol], **options: Any
) -> tuple[list[tuple[Protocol, Evaluation]], bytes]:
    """``evaluate_body_portfolio`` with the result Bundle encoded (the HTTP answer): encoded
    and freed inside the collector's pause, as ``evaluate_body_json`` does for one study."""
    with gc_paused():
        answers = evaluate_body_portfolio(body, protocols, **options)
        encoded = orjson.dumps(combined_bundle(answers))
        done = [(a.protocol, a.evaluation) for a in answers]
        del answers
        return done, encoded


def shared_walk(bundle: Any) -> PreparedBundle | None:
    """The Bundle walked once; None when the walk fails, so each study's record builder
    meets the problem itself and reports it exactly as it does alone."""
    try:
        return prepare_bundle(bundle)
    except Exception:  # noqa: BLE001 - re-raised by the first study's record builder
        return None


class SharedQueries:
    """A FhirClient seen by several fetches at once: an identical read or search (same type
    and parameters, whatever its key) is sent once and every asker gets its answer.

    Each fetch (service.fhir.fetch.fetch_patient) still plans and reads its own protocol's
    queries, so truncation and linked records are accounted per protocol exactly as alone.
    A waiter's cancellation (its fetch failed) never cancels the shared request."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._pending: dict[tuple[Any, ...], asyncio.Task[Any]] = {}
        self.sent: list[tuple[Any, ...]] = []  # the distinct interactions, in order

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    @property
    def base_url(self) -> str:
        return self._client.base_url

    async def _once(self, key: tuple[Any, ...], make: Any) -> Any:
        task = self._pending.get(key)
        if task is None:
            self.sent.append(key)
            task = asyncio.ensure_future(make())
            task.add_done_callback(_retrieve)
            self._pending[key] = task
        return await asyncio.shield(task)

    async def read(self, resource_type: str, id: str, *, key: str | None = None) -> dict:
        return await self._once(
            ("read", resource_type, id),
            lambda: self._client.read(resource_type, id, key=key),
        )

    async def search(self, query: Query | tuple[str, Sequence[tuple[str, str]]]) -> SearchResult:
        if isinstance(query, Query):
            rtype, params = query.resource_type, tuple(query.params)
        else:
            rtype, params = query[0], tuple(query[1])
        return await self._once(("search", rtype, params), lambda: self._client.search(query))


def _retrieve(task: asyncio.Task[Any]) -> None:
    """A shared request's failure is seen by its waiters; never 'exception never retrieved'."""
    if not task.cancelled():
        task.exception()


async def fetch_portfolio(
    client: Any,
    contexts: Sequence[EvaluationContext],
    patient_id: str,
    day: date,
) -> list[Any]:
    """Every protocol's FetchResult for one patient, identical queries sent once."""
    from service.fhir.fetch import fetch_patient

    shared = SharedQueries(client)
    return await all_or_none(
        [
            fetch_patient(shared, c.protocol, patient_id, day, relevance=c.relevance)
            for c in contexts
        ]
    )


async def all_or_none(coros: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    """Run the studies' fetches together; one failure cancels the rest and is raised (the
    most specific FhirError, as service.fhir.fetch does): no study is answered on data
    another study's fetch found incomplete."""
    from service.fhir.errors import FhirError
    from service.fhir.fetch import most_specific_error

    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(c) for c in coros]
    except BaseExceptionGroup as group:
        fhir_errors, others = group.split(FhirError)
        if fhir_errors is None or others is not None:
            raise
        raise most_specific_error(fhir_errors.exceptions) from None
    return [task.result() for task in tasks]


async def evaluate_portfolio_from_server(
    settings: Settings,
    protocols: Sequence[Protocol],
    patient_id: str,
    as_of: date | None,
) -> list[StudyAnswer]:
    """Pull mode for several protocols: the union of their queries, each sent once."""
    if len(protocols) == 1:
        evaluation, bundle = await evaluate_from_server(settings, protocols[0], patient_id, as_of)
        return [StudyAnswer(protocols[0], evaluation, bundle)]
    from service.fhir.pool import client_for

    day = as_of or today()
    contexts = contexts_for(protocols)
    async with client_for(settings) as client:
        fetched = await fetch_portfolio(client, contexts, patient_id, day)
    answers = []
    for context, data in zip(contexts, fetched, strict=True):
        mappings = await terminology.table_for(data.resources, context.protocol, context.site)
        evaluation, bundle = await evaluate_fetched_off_loop(
            data, context.protocol, day, mappings, context
        )
        answers.append(StudyAnswer(context.protocol, evaluation, bundle))
    return answers


def combined_bundle(answers: Sequence[StudyAnswer]) -> dict[str, Any]:
    """One result Bundle: a single study's exactly as alone; several studies' parts one after
    the other (each part's references point only at its own entries: every fullUrl is a
    fresh urn:uuid, and each ResearchSubject, Observation and GuidanceResponse names its
    study in ``study`` / ``focus`` / ``moduleUri``)."""
    if len(answers) == 1:
        return answers[0].bundle
    entries: list[dict[str, Any]] = []
    for answer in answers:
        entries.extend(answer.bundle["entry"])
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": answers[0].bundle["timestamp"],
        "entry": entries,
    }
