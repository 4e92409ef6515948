"""Continuous screening (issue 22), unit level: criteria from the protocols, idempotent
subscribe, receiver authentication, debounce, exactly-once, watermark catch-up, backpressure,
and what a status change sets off. The real HAPI flow: tests/integration/."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.subscription import Subscription
from fhir.resources.R4B.task import Task

from service.portfolio import load_portfolio
from service.protocol import load_protocol
from service.relevance import Relevance
from service.results import MemoryResultStore
from service.settings import DEFAULT_PROTOCOL, Settings
from service.state.memory import MemoryStore
from service.subscriptions import receiver, subscribe
from service.subscriptions.actions import change_task
from service.subscriptions.changes import Change, change_of, patient_of
from service.subscriptions.criteria import criteria_for, subscribed_types
from service.subscriptions.evaluate import StudyEvaluation
from service.subscriptions.ledger import Ledger
from service.subscriptions.server import FhirServer, ServerError
from service.subscriptions.worker import SubscriptionWorker
from tests.subscription_fakes import BASE, FakeFhir, fake_evaluation

SECRET = "top-secret-value-123"
ENDPOINT = "http://receiver.test/subscription/notify"
HEADER = f"X-Eligibility-Subscription-Secret: {SECRET}"


def settings(**extra: Any) -> Settings:
    base = {
        "subscription_debounce_seconds": 0.05,
        "subscription_secret": SECRET,
        "fhir_base_url": BASE,
    }
    return Settings(_env_file=None, **{**base, **extra})


def observation(pid: str, oid: str, version: str = "1", updated: str | None = None) -> dict:
    res = {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "777-3"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "meta": {"versionId": version},
    }
    if updated:
        res["meta"]["lastUpdated"] = updated
    return res


class Evaluations:
    """A stand-in evaluation core: counts calls per patient, answers a settable status."""

    def __init__(self, status: str = "potential-candidate") -> None:
        self.calls: dict[str, int] = {}
        self.status = status
        self.fail = False
        self.protocol = load_protocol(DEFAULT_PROTOCOL)

    async def __call__(self, settings, protocols, pid) -> list[StudyEvaluation]:
        self.calls[pid] = self.calls.get(pid, 0) + 1
        if self.fail:
            raise RuntimeError("FHIR server down")
        failed = ("I7",) if self.status == "ineligible" else ()
        return [StudyEvaluation(self.protocol, fake_evaluation(pid, self.status, failed), {})]


def worker(
    store: MemoryStore | None = None,
    evaluate: Evaluations | None = None,
    fake: FakeFhir | None = None,
    **extra: Any,
) -> SubscriptionWorker:
    s = settings(**extra)
    return SubscriptionWorker(
        s,
        [],
        Ledger(store if store is not None else MemoryStore(), s.subscription_seen_days),
        MemoryResultStore(),
        types=["Observation"],
        server=fake.server() if fake else None,
        evaluate=evaluate or Evaluations(),
    )


# -- criteria -------------------------------------------------------------------------------
def test_criteria_cover_every_code_and_type_the_protocols_read():
    protocols = load_portfolio().protocols
    criteria = criteria_for(protocols, limit=300)
    obs = [c for c in criteria if c.startswith("Observation?combo-code=")]
    assert len(obs) > 1  # a long code list is split
    assert all(len(c) <= 300 for c in obs)
    listed = {tuple(t.split("|", 1)) for c in obs for t in c.partition("=")[2].split(",")}
    for protocol in protocols:
        rel = Relevance(protocol)
        assert set(rel.codes) <= listed
        for rtype in set(rel.types) - {"Observation", "DiagnosticReport"}:
            assert f"{rtype}?" in criteria
    assert "Patient" in subscribed_types(criteria)
    assert len(criteria) == len(set(criteria))


# -- subscribe ------------------------------------------------------------------------------
async def test_subscribe_is_idempotent_and_touches_only_ours():
    fake = FakeFhir()
    other = fake.put(
        {
            **subscribe.desired("Condition?", "http://other.test/hook", "X: y"),
            "id": "theirs",
        }
    )
    server = fake.server()
    crit = ["Observation?combo-code=http://loinc.org|777-3", "Condition?"]
    first = await subscribe.ensure(server, crit, ENDPOINT, HEADER)
    assert len(first["created"]) == 2 and not first["removed"]
    writes = len(fake.writes)
    again = await subscribe.ensure(server, crit, ENDPOINT, HEADER)
    assert again == {"created": [], "updated": [], "kept": first["created"], "removed": []}
    assert len(fake.writes) == writes  # nothing written the second time
    for sub in subscribe.states(await subscribe.ours(server, ENDPOINT)):
        assert sub.status == "requested"
    for sub in fake.of_type("Subscription"):
        Subscription.model_validate(sub)  # valid R4(B) Subscription
    # a new secret updates in place; a criterion no longer needed is removed
    changed = await subscribe.ensure(
        server, crit[:1], ENDPOINT, "X-Eligibility-Subscription-Secret: new"
    )
    assert len(changed["updated"]) == 1 and len(changed["removed"]) == 1
    assert fake.resources[("Subscription", "theirs")] == other
    assert await subscribe.remove(server, ENDPOINT) == changed["updated"]
    assert [s["id"] for s in fake.of_type("Subscription")] == ["theirs"]


def test_secret_header_refuses_header_injection():
    with pytest.raises(ValueError):
        subscribe.secret_header("X-Secret", "abc\r\nX-Other: 1")


# -- receiver -------------------------------------------------------------------------------
class StubWorker:
    def __init__(self) -> None:
        self.offered: list[Change] = []
        self.pings = 0

    def offer(self, change: Change) -> bool:
        self.offered.append(change)
        return True

    def ping(self) -> None:
        self.pings += 1


def receiver_app(secret: str | None = SECRET) -> tuple[TestClient, StubWorker]:
    app = FastAPI()
    app.state.settings = settings(subscription_secret=secret)
    stub = StubWorker()
    app.state.subscriptions = type("R", (), {"worker": stub})()
    app.include_router(receiver.router)
    return TestClient(app), stub


@pytest.mark.parametrize("headers", [{}, {"X-Eligibility-Subscription-Secret": "wrong"}])
def test_a_wrong_secret_is_refused_and_changes_nothing(headers, caplog):
    client, stub = receiver_app()
    caplog.set_level(logging.DEBUG)
    body = observation("p1", "o1")
    assert (
        client.put("/subscription/notify/Observation/o1", json=body, headers=headers).status_code
        == 401
    )
    assert client.post("/subscription/notify", headers=headers).status_code == 401
    assert stub.offered == [] and stub.pings == 0
    assert SECRET not in caplog.text


def test_no_configured_secret_lets_nobody_in():
    client, stub = receiver_app(secret=None)
    h = {"X-Eligibility-Subscription-Secret": ""}
    assert (
        client.put(
            "/subscription/notify/Observation/o1", json=observation("p", "o1"), headers=h
        ).status_code
        == 401
    )
    assert stub.offered == []


def test_the_right_secret_queues_the_change_and_the_ping():
    client, stub = receiver_app()
    h = {"X-Eligibility-Subscription-Secret": SECRET}
    answer = client.put(
        "/subscription/notify/Observation/o1", json=observation("p1", "o1", "3"), headers=h
    )
    assert answer.status_code == 200
    assert stub.offered == [Change("Observation", "o1", "3", "p1", None)]
    assert client.post("/subscription/notify", headers=h).status_code == 200  # empty-body ping
    assert stub.pings == 1
    bad = client.put("/subscription/notify/Observation/o2", json=observation("p1", "o1"), headers=h)
    assert bad.status_code == 400 and len(stub.offered) == 1  # id differs from the URL


def test_patient_of_follows_subject_and_patient_references():
    assert patient_of(observation("p-1", "o")) == "p-1"
    assert patient_of({"resourceType": "Consent", "patient": {"reference": "Patient/c9"}}) == "c9"
    assert patient_of({"resourceType": "Patient", "id": "x"}) == "x"
    assert patient_of({"resourceType": "Observation", "subject": {"reference": "Group/g"}}) is None
    assert change_of({"resourceType": "Observation", "id": "../x"}) is None


# -- worker: debounce, exactly once, failures, backpressure ----------------------------------
async def test_a_burst_is_one_evaluation_per_patient():
    evaluate = Evaluations()
    w = worker(evaluate=evaluate, subscription_debounce_seconds=0.2)
    w.start(catch_up=False)
    try:
        for i in range(12):
            assert w.offer(change_of(observation("p1", f"o{i}")))
        for i in range(3):
            w.offer(change_of(observation("p2", f"q{i}")))
        await w.idle()
        assert evaluate.calls == {"p1": 1, "p2": 1}
        # a change after the burst is evaluated again
        w.offer(change_of(observation("p1", "late")))
        await w.idle()
        assert evaluate.calls["p1"] == 2
    finally:
        await w.stop()


async def test_the_same_version_is_evaluated_once_across_workers_and_restarts():
    store, evaluate = MemoryStore(), Evaluations()
    first, second = worker(store, evaluate), worker(store, evaluate)
    first.start(catch_up=False)
    second.start(catch_up=False)
    try:
        change = change_of(observation("p1", "o1", "7"))
        first.offer(change)
        second.offer(change)  # a notification and the catch-up, or two workers
        await first.admit(change)
        await asyncio.gather(first.idle(), second.idle())
        assert evaluate.calls == {"p1": 1}
        assert first.stats.duplicates + second.stats.duplicates == 2
        first.offer(change_of(observation("p1", "o1", "8")))  # a new version is a new change
        await first.idle()
        assert evaluate.calls == {"p1": 2}
    finally:
        await first.stop()
        await second.stop()


async def test_a_failed_evaluation_is_released_for_the_catch_up():
    evaluate = Evaluations()
    evaluate.fail = True
    w = worker(evaluate=evaluate)
    w.start(catch_up=False)
    try:
        change = change_of(observation("p1", "o1", updated="2026-12-01T10:00:00Z"))
        assert w.offer(change)  # the notification is accepted even though evaluation fails
        await w.idle()
        assert w.stats.failures == 1 and w._hold  # the watermark may not pass it
        evaluate.fail = False
        w.offer(change)  # seen again (the catch-up): evaluated, not a duplicate
        await w.idle()
        assert evaluate.calls == {"p1": 2} and w.stats.evaluations == 1 and not w._hold
    finally:
        await w.stop()


async def test_a_full_queue_drops_to_the_catch_up_instead_of_growing():
    w = worker(subscription_queue_size=2)  # not started: nothing drains the queue
    assert w.offer(change_of(observation("p1", "a")))
    assert w.offer(change_of(observation("p1", "b")))
    assert not w.offer(change_of(observation("p1", "c")))
    assert w.queue.qsize() == 2 and w.stats.dropped == 1
    assert w._wake.is_set()  # a catch-up is due


# -- catch-up and the watermark --------------------------------------------------------------
def _ms(moment: datetime) -> datetime:
    """To the millisecond, as a FHIR server keeps lastUpdated."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def test_catch_up_pages_through_missed_changes_once_and_moves_the_watermark():
    fake, store, evaluate = FakeFhir(page_size=2), MemoryStore(), Evaluations()
    w = worker(store, evaluate, fake, subscription_catchup_overlap_seconds=1.0)
    w.start(catch_up=False)
    try:
        assert await w.catch_up() == 0  # first start: the watermark is set, nothing read
        mark = await w.ledger.watermark()
        assert mark is not None
        t0 = _ms(mark + timedelta(seconds=5))
        old = mark - timedelta(hours=1)
        fake.put(observation("before", "ob"), updated=_stamp(old))  # before the mark
        for i in range(5):
            pid = f"p{i % 3}"
            fake.put(observation(pid, f"o{i}"), updated=_stamp(t0 + timedelta(seconds=i)))
        assert await w.catch_up() == 5  # three pages
        # evaluations still waiting (debounce): the mark stays before the oldest of them
        assert await w.ledger.watermark() < t0
        await w.idle()
        assert evaluate.calls == {"p0": 1, "p1": 1, "p2": 1}
        await w.catch_up()  # all done: the mark moves to the newest change seen
        assert await w.ledger.watermark() == t0 + timedelta(seconds=4)
        assert evaluate.calls == {"p0": 1, "p1": 1, "p2": 1}
        # restart: a new worker on the same store evaluates nothing again (overlap re-reads)
        again = worker(store, evaluate, fake, subscription_catchup_overlap_seconds=10.0)
        again.start(catch_up=False)
        assert await again.catch_up() >= 1
        await again.idle()
        assert evaluate.calls == {"p0": 1, "p1": 1, "p2": 1}
        assert again.stats.duplicates >= 1
        await again.stop()
    finally:
        await w.stop()


async def test_the_watermark_waits_for_a_failed_change():
    fake, evaluate = FakeFhir(), Evaluations()
    w = worker(MemoryStore(), evaluate, fake)
    w.start(catch_up=False)
    try:
        await w.catch_up()
        mark = await w.ledger.watermark()
        failing = _ms(mark + timedelta(seconds=2))
        fake.put(observation("p1", "o1"), updated=_stamp(failing))
        evaluate.fail = True
        await w.catch_up()
        await w.idle()
        assert await w.ledger.watermark() < failing  # not passed: the next run retries
        evaluate.fail = False
        await w.catch_up()
        await w.idle()
        assert evaluate.calls == {"p1": 2}
        await w.catch_up()
        assert await w.ledger.watermark() == failing
        assert evaluate.calls == {"p1": 2}
    finally:
        await w.stop()


# -- a status change ------------------------------------------------------------------------
async def test_a_status_change_writes_one_task_and_one_audit_event():
    fake, evaluate = FakeFhir(), Evaluations()
    events: list[dict] = []
    w = worker(MemoryStore(), evaluate, fake, subscription_tasks_enabled=True)
    w.audit = type("Sink", (), {"record": lambda self, e: events.append(e)})()
    w.start(catch_up=False)
    try:
        w.offer(change_of(observation("p1", "o1")))
        await w.idle()
        assert fake.of_type("Task") == [] and events == []  # a first answer is not a change
        evaluate.status = "ineligible"
        w.offer(change_of(observation("p1", "o2")))
        await w.idle()
        w.offer(change_of(observation("p1", "o3")))  # still ineligible: no noise
        await w.idle()
        tasks = fake.of_type("Task")
        assert len(tasks) == 1 and len(events) == 1
        task = tasks[0]
        Task.model_validate(task)
        assert task["status"] == "requested" and task["intent"] == "order"
        assert task["focus"] == {"reference": "Patient/p1"}
        assert task["reasonCode"]["text"].startswith("potential-candidate -> ineligible")
        assert "I7" in task["reasonCode"]["text"]
        AuditEvent.model_validate(events[0])
        stored = await w.results.latest("p1", evaluate.protocol.id)
        assert stored.previous_status == "potential-candidate" and stored.status == "ineligible"
    finally:
        await w.stop()


def test_the_task_is_valid_r4_and_names_the_study():
    protocol = load_protocol(DEFAULT_PROTOCOL)
    from service.results.model import StudyResult

    stored = StudyResult(
        "p1",
        protocol.id,
        "eligible",
        datetime.now(UTC),
        "2026-12-01",
        "subscription",
        previous_status="potential-candidate",
        change="potential-candidate -> eligible",
    )
    task = change_task(stored, protocol, "clinical research coordinator")
    Task.model_validate(task)
    assert task["performerType"] == [{"text": "clinical research coordinator"}]
    assert task["basedOn"][0]["display"]


async def test_paging_never_follows_a_next_link_off_the_base():
    """The catch-up sends the service's credentials only to the configured base."""
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": [{"relation": "next", "url": "http://evil.test/x"}],
    }
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=bundle))
    server = FhirServer(BASE, httpx.AsyncClient(transport=transport))
    with pytest.raises(ServerError, match="away from the FHIR base"):
        async for _ in server.pages("Observation", {}):
            pass


# -- the command ----------------------------------------------------------------------------
def test_subscribe_command_refuses_incomplete_settings(monkeypatch):
    from typer.testing import CliRunner

    from service.cli import app
    from service.settings import get_settings

    for name in ("FHIR_BASE_URL", "SUBSCRIPTION_ENDPOINT", "SUBSCRIPTION_SECRET"):
        monkeypatch.delenv(f"ELIGIBILITY_{name}", raising=False)
    get_settings.cache_clear()
    runner = CliRunner()
    try:
        no_endpoint = runner.invoke(app, ["subscribe", "--fhir-base", BASE])
        assert no_endpoint.exit_code == 2 and "--endpoint" in no_endpoint.output
        no_secret = runner.invoke(app, ["subscribe", "--fhir-base", BASE, "--endpoint", ENDPOINT])
        assert no_secret.exit_code == 2 and "SUBSCRIPTION_SECRET" in no_secret.output
    finally:
        get_settings.cache_clear()


async def test_a_catch_up_over_several_types_is_one_evaluation_per_patient():
    fake, evaluate = FakeFhir(page_size=2), Evaluations()
    w = worker(MemoryStore(), evaluate, fake, subscription_debounce_seconds=0.0)
    w.types = ["Observation", "Patient"]
    fake.delay = 0.05  # pages take time: evaluations may start before the read ends
    w.start(catch_up=False)
    try:
        await w.catch_up()
        t0 = _ms(await w.ledger.watermark() + timedelta(seconds=1))
        for i in range(3):
            fake.put(observation("p1", f"o{i}"), updated=_stamp(t0 + timedelta(seconds=i)))
        fake.put({"resourceType": "Patient", "id": "p1"}, updated=_stamp(t0))
        assert await w.catch_up() == 4  # two pages of Observations, then the Patient
        await w.idle()
        assert evaluate.calls == {"p1": 1}
    finally:
        await w.stop()


# -- deletions ------------------------------------------------------------------------------
async def test_a_deleted_result_re_evaluates_the_patient_its_history_names():
    """A search no longer finds a deleted result; its history does, and its patient's answer
    (which may have rested on it) is evaluated again, once however often it is notified."""
    fake = FakeFhir()
    fake.put(observation("p7", "o1"))
    server = fake.server()
    await server.delete("Observation", "o1")
    evaluate = Evaluations()
    w = worker(evaluate=evaluate, fake=fake)
    w.start(catch_up=False)
    try:
        w.deleted("Observation", "o1")
        w.deleted("Observation", "o1")  # notified twice: one version, one evaluation
        await w.idle()
    finally:
        await w.stop()
    assert evaluate.calls == {"p7": 1}


@pytest.mark.parametrize("case", ["unknown", "no-patient"])
async def test_a_deletion_whose_owner_cannot_be_told_falls_back_to_a_catch_up(case):
    fake = FakeFhir()
    if case == "no-patient":
        fake.put({"resourceType": "Observation", "id": "o2", "status": "final"})
        await fake.server().delete("Observation", "o2")
    evaluate = Evaluations()
    w = worker(evaluate=evaluate, fake=fake)
    w.start(catch_up=False)
    try:
        w.deleted("Observation", "o2")
        await w.idle()
        assert w._wake.is_set()  # the catch-up is asked to read
    finally:
        await w.stop()
    assert evaluate.calls == {}
