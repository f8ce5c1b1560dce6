"""reporter.py: events are published off the caller's thread, in order per instance."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence

import pytest

from agents.compute.reporter import Reporter
from common.errors import BrokerUnreachable
from common.messages import InstanceEvent, Message, PingReply


class SlowNotifier:
    """Records what was sent; each send takes a while, like a broker publish."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.sent: list[tuple[str, str, Message]] = []
        self.fail_on = fail_on
        self.lock = threading.Lock()
        self.threads: set[str] = set()

    def _send(self, priority: str, event_type: str, payload: Message) -> None:
        threading.Event().wait(0.001)
        if event_type == self.fail_on:
            raise ConnectionError("broker went away")
        with self.lock:
            self.sent.append((priority, event_type, payload))
            self.threads.add(threading.current_thread().name)

    def info(self, event_type: str, payload: Message, request_id: str | None = None) -> None:
        self._send("info", event_type, payload)

    def error(self, event_type: str, payload: Message, request_id: str | None = None) -> None:
        self._send("error", event_type, payload)


def test_events_of_one_instance_keep_their_order_across_senders() -> None:
    notifier = SlowNotifier()
    reporter = Reporter(notifier, "node1", senders=4)
    instances = [uuid.uuid4() for _ in range(12)]
    steps = ["start", "p1", "p2", "p3", "end"]
    for step in steps:
        for iid in instances:
            reporter.instance(f"instance.create.{step}", iid, "req-1", step=step)
    assert reporter.flush(10)
    for iid in instances:
        seen = [
            p.step
            for _, _, p in notifier.sent
            if isinstance(p, InstanceEvent) and p.instance_uuid == iid
        ]
        assert seen == steps
    assert len(notifier.threads) > 1  # really spread over senders
    reporter.close()


def test_error_priority_state_and_elapsed() -> None:
    notifier = SlowNotifier()
    now = [10.0]
    reporter = Reporter(notifier, "node1", senders=1, clock=lambda: now[0])
    iid = uuid.uuid4()
    now[0] = 10.25
    reporter.instance("instance.create.error", iid, "req-1", error=True, reason="x", since=10.0)
    reporter.agent(
        "agent.heartbeat", PingReply(host="node1", kind="compute", version="1", uptime_s=1)
    )
    reporter.flush(5)
    (priority, event_type, payload), (p2, t2, _) = notifier.sent
    assert (priority, event_type) == ("error", "instance.create.error")
    assert isinstance(payload, InstanceEvent)
    assert payload.state == "error" and payload.reason == "x" and payload.elapsed_ms == 250.0
    assert payload.host == "node1"
    assert (p2, t2) == ("info", "agent.heartbeat")
    reporter.close()


def test_a_failing_publish_does_not_stop_the_sender() -> None:
    notifier = SlowNotifier(fail_on="instance.create.start")
    reporter = Reporter(notifier, "node1", senders=1)
    iid = uuid.uuid4()
    reporter.instance("instance.create.start", iid, None)
    reporter.instance("instance.create.end", iid, None, state="running")
    assert reporter.flush(5)
    assert [t for _, t, _ in notifier.sent] == ["instance.create.end"]
    reporter.close()


class BatchRecorder:
    """A batch publisher that takes a while per batch (one confirm round trip)."""

    def __init__(self, fail_first: bool = False) -> None:
        self.batches: list[list[tuple[str, str, Message, str | None]]] = []
        self.fail_first = fail_first
        self.closed = False

    def publish(
        self, batch: Sequence[tuple[str, str, Message, str | None]], timeout: float = 10.0
    ) -> None:
        threading.Event().wait(0.005)
        if self.fail_first:
            self.fail_first = False
            raise ConnectionError("broker went away")
        self.batches.append(list(batch))

    def close(self) -> None:
        self.closed = True


def test_batch_publishers_send_what_queued_up_together_in_order() -> None:
    publishers = [BatchRecorder(), BatchRecorder()]
    reporter = Reporter(None, "node1", batch_publishers=publishers)
    instances = [uuid.uuid4() for _ in range(10)]
    steps = ["start", "p1", "p2", "p3", "end"]
    for step in steps:
        for iid in instances:
            reporter.instance(f"instance.create.{step}", iid, "req-1", step=step)
    assert reporter.flush(10)
    for iid in instances:
        seen = [
            p.step
            for pub in publishers
            for batch in pub.batches
            for _, _, p, _ in batch
            if isinstance(p, InstanceEvent) and p.instance_uuid == iid
        ]
        assert seen == steps
    assert all(pub.batches for pub in publishers)  # both senders used
    # 50 events queued faster than a publish takes: far fewer round trips than events
    assert sum(len(pub.batches) for pub in publishers) < 25
    reporter.close()
    assert all(pub.closed for pub in publishers)


def test_a_failed_batch_is_logged_and_the_sender_goes_on() -> None:
    publisher = BatchRecorder(fail_first=True)
    reporter = Reporter(None, "node1", batch_publishers=[publisher])
    iid = uuid.uuid4()
    reporter.instance("instance.create.start", iid, None)
    assert reporter.flush(5)
    reporter.instance("instance.create.end", iid, None, state="running")
    assert reporter.flush(5)
    assert [t for b in publisher.batches for _, t, _, _ in b] == ["instance.create.end"]
    reporter.close()


def test_a_reporter_needs_somewhere_to_send() -> None:
    with pytest.raises(ValueError):
        Reporter(None, "node1")


class UnreachableFor:
    """A broker away for the first `outages` publishes (what BatchNotifier raises once
    its own retries are spent), then back."""

    def __init__(self, outages: int) -> None:
        self.outages = outages
        self.batches: list[list[str]] = []
        self.closed = False

    def publish(
        self, batch: Sequence[tuple[str, str, Message, str | None]], timeout: float = 10.0
    ) -> None:
        if self.outages:
            self.outages -= 1
            raise BrokerUnreachable(url="127.0.0.1:5672", problem="connection refused")
        self.batches.append([t for _, t, _, _ in batch])

    def close(self) -> None:
        self.closed = True


def test_events_are_held_in_order_while_the_broker_is_unreachable() -> None:
    publisher = UnreachableFor(outages=2)
    reporter = Reporter(None, "node1", batch_publishers=[publisher])
    iid = uuid.uuid4()
    reporter.instance("instance.create.start", iid, None)
    threading.Event().wait(0.2)  # the sender holds that one; more queue up behind it
    reporter.instance("instance.create.end", iid, None, state="running")
    assert reporter.flush(10)
    sent = [t for b in publisher.batches for t in b]
    assert sent == ["instance.create.start", "instance.create.end"]  # none lost, in order
    reporter.close()


def test_close_gives_up_what_an_unreachable_broker_never_took() -> None:
    publisher = UnreachableFor(outages=1_000)
    reporter = Reporter(None, "node1", batch_publishers=[publisher])
    reporter.instance("instance.create.start", uuid.uuid4(), None)
    assert not reporter.flush(0.3)
    reporter.close(timeout=0.1)  # returns: the held batch is given up (and logged)
    assert publisher.batches == [] and publisher.closed
