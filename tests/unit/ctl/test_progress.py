"""Following an operation through its events: order, failures, other instances ignored."""

from __future__ import annotations

import uuid

from agents.ctl.progress import EventFilter, PortTracker, Tracker
from common.messages import AgentHeartbeat, InstanceEvent, VifEvent, utcnow

I1, I2, OTHER = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
P1, P2 = uuid.uuid4(), uuid.uuid4()


def iev(instance: uuid.UUID, **kw: object) -> InstanceEvent:
    return InstanceEvent(host="node1", instance_uuid=instance, **kw)


def test_build_of_two_instances_one_fails() -> None:
    t = Tracker("create", [(I1, "a", [P1]), (I2, "b", [P2])])
    assert [u.what for u in t.feed("instance.create.start", iev(I1))] == ["create_started"]
    wired = t.feed(
        "port.vif_plugged", VifEvent(host="node1", port_id=P1, device="tapX", bridge="brqY")
    )
    assert wired[0].what == "port_wired" and wired[0].detail == "tapX in brqY"
    assert (
        t.feed("instance.create.progress", iev(I1, step="guest_defined"))[0].what == "guest_defined"
    )
    end = t.feed("instance.create.end", iev(I1, state="running", elapsed_ms=12.4))
    assert end[0].final and end[0].ok and end[0].detail == "12 ms"
    assert not t.finished
    err = t.feed("instance.create.error", iev(I2, reason="vif plugging timed out"))
    assert err[0].what == "failed" and not err[0].ok
    assert t.finished
    assert [i.name for i in t.succeeded] == ["a"]
    assert [(i.name, i.reason) for i in t.failed] == [("b", "vif plugging timed out")]


def test_events_of_other_instances_and_kinds_are_ignored() -> None:
    t = Tracker("create", [(I1, "a", [P1])])
    assert t.feed("instance.create.end", iev(OTHER)) == []
    assert t.feed("instance.delete.end", iev(I1)) == []  # another operation
    assert t.feed("port.vif_plugged", VifEvent(host="node1", port_id=P2)) == []
    hb = AgentHeartbeat(host="n", kind="l2", version="1", started_at=utcnow(), uptime_s=1)
    assert t.feed("agent.heartbeat", hb) == []
    assert t.feed("instance.create.end", {"raw": "unreadable"}) == []
    assert not t.finished


def test_a_late_event_after_the_end_changes_nothing() -> None:
    t = Tracker("delete", [(I1, "a", [])])
    t.feed("instance.delete.end", iev(I1))
    assert t.feed("instance.delete.error", iev(I1, reason="late")) == []
    assert t.succeeded and not t.failed


def test_plug_failed_is_reported_but_the_compute_agent_decides() -> None:
    t = Tracker("create", [(I1, "a", [P1])])
    upd = t.feed("port.plug_failed", VifEvent(host="node1", port_id=P1, reason="EEXIST"))
    assert upd[0].what == "port_failed" and not upd[0].ok
    assert not t.finished


def test_port_tracker_waits_for_each_unplug() -> None:
    t = PortTracker([P1, P2], name="web")
    (upd,) = t.feed("port.vif_unplugged", VifEvent(host="node1", port_id=P1, device="tapA"))
    assert (upd.name, upd.what, upd.detail, upd.port_id) == ("web", "port_unwired", "tapA", P1)
    assert not t.finished
    t.feed("port.vif_plugged", VifEvent(host="node1", port_id=P2))
    assert not t.finished
    t.feed("port.vif_unplugged", VifEvent(host="node1", port_id=P2))
    assert t.finished


def test_event_filter_by_name_learns_the_uuid_for_events_without_a_name() -> None:
    keep = EventFilter(instance="web")
    assert not keep.matches(iev(I1))  # no name, uuid not learned yet
    assert keep.matches(iev(I1, name="web"))
    assert keep.matches(iev(I1))  # delete/reboot events carry only the uuid
    assert keep.matches(VifEvent(host="node1", port_id=P1, instance_uuid=I1))
    assert keep.matches(VifEvent(host="node1", port_id=P1))  # unplugged: port id learned
    assert not keep.matches(iev(I2, name="other"))
    assert not keep.matches(VifEvent(host="node1", port_id=P2))


def test_event_filter_by_uuid_and_host() -> None:
    keep = EventFilter(host="node1", instance=str(I2))
    assert keep.matches(iev(I2))
    assert not keep.matches(iev(I1, name="web"))
    assert not keep.matches(InstanceEvent(host="node2", instance_uuid=I2))
    assert EventFilter().matches({"raw": 1})  # no filter: everything, even unreadable
    assert not EventFilter(host="node1").matches({"raw": 1})
