"""HostSync without a broker or database: who is asked, what a failure costs, what is logged."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime
from typing import Any

import pytest
from structlog.testing import capture_logs

from agents.controller.db.records import ListingReport, SyncChange
from agents.controller.hostsync import HostSync
from agents.controller.settings import ControllerSettings
from common.errors import RemoteCallTimeout
from common.messages import InstanceInfo, InstanceList, PingReply


class FakeStore:
    def __init__(self, hosts: list[str]) -> None:
        self.hosts = hosts

    def live_hosts(self, kind: str) -> list[str]:
        assert kind == "compute"
        return self.hosts


class FakeClient:
    def __init__(self, answer: Any) -> None:
        self.answer = answer

    def call(self, method: str, message: Any = None, **kw: Any) -> Any:
        assert method == "list_instances" and message is None
        if isinstance(self.answer, BaseException):
            raise self.answer
        if callable(self.answer):
            return self.answer()
        return self.answer


class FakeHub:
    def __init__(self) -> None:
        self.notified = 0

    def notify(self) -> None:
        self.notified += 1


class FakeBus:
    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.hub = FakeHub()
        self.timeouts: list[float | None] = []

    def client(self, kind: str, host: str, timeout: float | None = None) -> FakeClient:
        assert kind == "compute"
        self.timeouts.append(timeout)
        return FakeClient(self.answers[host])


class FakeRecords:
    def __init__(self, reports: dict[str, ListingReport]) -> None:
        self.reports = reports
        self.applied: list[tuple[str, list[InstanceInfo], datetime]] = []
        self.lock = threading.Lock()

    def apply_listing(self, host: str, listed: Any, asked_at: datetime) -> ListingReport:
        with self.lock:
            self.applied.append((host, list(listed), asked_at))
        return self.reports.get(host, ListingReport())


def sync_for(answers: dict[str, Any], reports: dict[str, ListingReport] | None = None) -> Any:
    bus = FakeBus(answers)
    sync = HostSync(FakeStore(list(answers)), bus, timeout=0.5)  # type: ignore[arg-type]
    records = FakeRecords(reports or {})
    sync.records = records  # type: ignore[assignment]
    return sync, bus, records


def listing(host: str, *uuids: uuid.UUID) -> InstanceList:
    return InstanceList(
        host=host,
        instances=[InstanceInfo(uuid=u, name="x", host=host, state="running") for u in uuids],
    )


def test_a_failing_host_never_stops_the_others() -> None:
    def bug() -> Any:
        raise KeyError("a bug in one host's path")

    sync, bus, records = sync_for(
        {
            "a": listing("a", uuid.uuid4()),
            "b": RemoteCallTimeout(kind="compute-agent", host="b", method="x", timeout=0.5),
            "c": bug,
            "d": PingReply(host="d", kind="compute", version="1", uptime_s=1),  # wrong reply
            "e": listing("someone-else"),
            "f": listing("f"),
        }
    )
    with capture_logs() as logs:
        results = sync.run_once()
    assert {h for h, r in results.items() if r is not None} == {"a", "f"}
    assert sorted(h for h, _, _ in records.applied) == ["a", "f"]
    assert set(bus.timeouts) == {0.5}
    events = {(e["event"], e.get("host")) for e in logs}
    assert ("host_sync_unanswered", "b") in events
    assert ("host_sync_crashed", "c") in events
    assert ("host_sync_unanswered", "d") in events
    assert ("host_sync_wrong_host", "e") in events


def test_hosts_are_asked_in_parallel() -> None:
    def slow(host: str) -> Any:
        def answer() -> InstanceList:
            time.sleep(0.3)
            return listing(host)

        return answer

    sync, _, records = sync_for({h: slow(h) for h in "abcdef"})
    started = time.monotonic()
    sync.run_once()
    assert time.monotonic() - started < 1.0
    assert len(records.applied) == 6


def test_asked_at_is_taken_before_the_call() -> None:
    seen: list[datetime] = []

    def answer() -> InstanceList:
        seen.append(datetime.now().astimezone())
        return listing("a")

    sync, _, records = sync_for({"a": answer})
    sync.run_once()
    assert records.applied[0][2] <= seen[0]


def test_changes_wake_readers_and_findings_are_warned_once() -> None:
    stranger = str(uuid.uuid4())
    report = ListingReport(
        changed=[SyncChange(str(uuid.uuid4()), "web", "running", "shutoff", "stopped")],
        foreign=[stranger],
    )
    sync, bus, _ = sync_for({"a": listing("a")}, {"a": report})
    with capture_logs() as first:
        sync.run_once()
    assert bus.hub.notified == 1
    assert [(e["event"], e["log_level"]) for e in first if e["event"] != "instance_sync"] == [
        ("foreign_instance_on_host", "warning")
    ]
    assert any(e["event"] == "instance_sync" and e["new"] == "shutoff" for e in first)
    report.changed = []
    with capture_logs() as second:
        sync.run_once()
    assert bus.hub.notified == 1  # nothing changed: nobody woken
    assert [(e["event"], e["log_level"]) for e in second] == [("foreign_instance_on_host", "debug")]


def test_no_live_host_means_no_work() -> None:
    sync, _, records = sync_for({})
    assert sync.run_once() == {} and records.applied == []


def test_settings() -> None:
    s = ControllerSettings()
    assert (s.host_sync_interval, s.host_sync_timeout) == (30.0, 5.0)
    assert ControllerSettings(host_sync_interval=0).host_sync_interval == 0
    with pytest.raises(ValueError):
        ControllerSettings(host_sync_interval=-1)
    with pytest.raises(ValueError):
        ControllerSettings(host_sync_timeout=0)
