"""The controller applies agent events in batches: one transaction, then every ack.

Real broker (the test's own queue on its private exchange), real database (SQLite and
PostgreSQL), the controller's real Bus and Records. A mock only injects the faults: a
poison event, and a crash between the commit and the acks.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select

from agents.controller.bus import Bus, Hub
from agents.controller.db.engine import Database
from agents.controller.db.models import Event as EventRow
from agents.controller.db.records import Records
from agents.controller.db.store import Store
from agents.lab.broker import BrokerScope
from common.config import MessagingSettings
from common.messages import Message, VifEvent
from common.rpc import Event, EventConsumer, Messaging, agent_events_topic


class Crash(BaseException):
    """The process dying between the commit and the acks (not an Exception: nothing
    in the consumer catches it, as nothing survives a real crash)."""


@pytest.fixture
def settings(broker_scope: BrokerScope) -> MessagingSettings:
    return MessagingSettings(
        transport_url=broker_scope.transport_url,
        control_exchange=broker_scope.exchange,
        events_topic=f"ev-{broker_scope.suffix}",
        rpc_timeout=5,
        send_retry=1,
    )


@pytest.fixture
def bus(database_url: str, settings: MessagingSettings) -> Iterator[Bus]:
    db = Database(database_url)
    db.upgrade()
    messaging = Messaging(settings)
    try:
        yield Bus(messaging, Store(db, agent_down_time=60), Hub(), call_timeout=5)
    finally:
        messaging.close()
        db.close()


class Run:
    """A test's events queue, what was reported, and the agent that publishes."""

    def __init__(self, scope: BrokerScope, settings: MessagingSettings) -> None:
        self.scope = scope
        self.settings = settings
        self.queue = scope.queue(f"{scope.exchange}.batch-events")
        self.host = scope.host("node1")
        self.agent = Messaging(settings)
        self.notifier = self.agent.notifier(
            f"l2-agent.{self.host}", agent_events_topic(settings, self.host), declare=False
        )
        self.errors: list[tuple[BaseException, Any]] = []
        self.batches: list[list[Event]] = []

    def consumer(self, bus: Bus, batch_handler: Any = None, gather_s: float = 0.2) -> EventConsumer:
        def on_events(events: list[Event]) -> None:
            self.batches.append(list(events))
            (batch_handler or bus.on_events)(events)

        return EventConsumer(
            self.settings,
            self.queue,
            [f"{self.settings.events_topic}.#"],
            bus.on_event,
            lambda err, what: self.errors.append((err, what)),
            batch_handler=on_events,
            gather_s=gather_s,
        )

    def publish(self, n: int) -> list[str]:
        ports = [str(uuid.uuid4()) for _ in range(n)]
        for port in ports:
            self.notifier.info(
                "port.vif_plugged",
                VifEvent(request_id="req-batch", host=self.host, port_id=port, device="tap0"),
            )
        return ports


@pytest.fixture
def run(broker_scope: BrokerScope, settings: MessagingSettings) -> Iterator[Run]:
    r = Run(broker_scope, settings)
    try:
        yield r
    finally:
        r.agent.close()


def rows(bus: Bus, port_ids: list[str]) -> dict[str, int]:
    """Timeline rows per port."""
    with bus.store.db.reading() as s:
        got = s.execute(
            select(EventRow.port_id, func.count())
            .where(EventRow.port_id.in_(port_ids))
            .group_by(EventRow.port_id)
        ).all()
    return {str(port): int(n) for port, n in got}


def wait_for(predicate: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def declare(consumer: EventConsumer) -> None:
    """The queue and its bindings exist before the events are published (so they wait
    for the consumer, all of them at once)."""
    consumer.start(ready_timeout=10)
    consumer.stop()


def test_a_poison_event_in_a_batch_is_reported_alone_and_the_others_applied(
    bus: Bus, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    declare(run.consumer(bus))
    ports = run.publish(9)
    poison = ports[4]
    real = Records._apply

    def apply(self: Records, s: Any, event_type: str, payload: Message) -> Any:
        if isinstance(payload, VifEvent) and str(payload.port_id) == poison:
            raise ValueError("cannot apply this one")
        return real(self, s, event_type, payload)

    monkeypatch.setattr(Records, "_apply", apply)
    consumer = run.consumer(bus)
    consumer.start(ready_timeout=10)
    try:
        wait_for(lambda: len(rows(bus, ports)) == 8 and len(run.errors) == 1)
    finally:
        consumer.stop()
    # the poison one was in a batch with others: that batch fell back to one by one
    assert any(len(b) > 1 and poison in {str(e.payload.port_id) for e in b} for b in run.batches)
    assert rows(bus, ports) == {p: 1 for p in ports if p != poison}
    err, what = run.errors[0]
    assert isinstance(err, ValueError) and str(what.payload.port_id) == poison
    # every message acknowledged, the poison one too: nothing comes back
    again = run.consumer(bus)
    again.start(ready_timeout=10)
    try:
        time.sleep(1.0)
    finally:
        again.stop()
    assert len(run.errors) == 1
    assert rows(bus, ports) == {p: 1 for p in ports if p != poison}


def test_a_batch_redelivered_after_a_crash_between_commit_and_ack_changes_nothing(
    bus: Bus, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    declare(run.consumer(bus))
    ports = run.publish(12)
    crashed: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: crashed.append(args.exc_value))

    def commit_then_crash(events: list[Event]) -> None:
        bus.on_events(events)  # committed
        raise Crash()  # ... and the process dies before any ack

    first = run.consumer(bus, commit_then_crash)
    first.start(ready_timeout=10)
    wait_for(lambda: bool(crashed))
    first.stop()  # the connection closes: the broker hands the unacked batch out again
    committed = rows(bus, ports)
    assert committed and set(committed.values()) == {1}
    assert isinstance(crashed[0], Crash)
    second = run.consumer(bus)
    second.start(ready_timeout=10)
    try:
        wait_for(lambda: len(rows(bus, ports)) == len(ports))
        time.sleep(0.5)  # anything applied twice would be there by now
    finally:
        second.stop()
    assert rows(bus, ports) == {p: 1 for p in ports}  # one timeline row each, no more
    again = [e for b in run.batches[1:] for e in b]
    assert {str(e.payload.port_id) for e in again if e.redelivered} >= set(committed)
    assert not run.errors


def test_a_lone_event_is_applied_at_once(bus: Bus, run: Run) -> None:
    consumer = run.consumer(bus, gather_s=0.005)
    consumer.start(ready_timeout=10)
    try:
        for _ in range(3):
            t0 = time.monotonic()
            [port] = run.publish(1)
            wait_for(lambda p=port: p in rows(bus, [p]), timeout=5)
            # not held back to fill a batch (nor until the consumer's 1 s safety wait)
            assert time.monotonic() - t0 < 0.5
            time.sleep(0.3)
    finally:
        consumer.stop()
