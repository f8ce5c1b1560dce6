"""Following an operation through its EVENTs: order, retries, failures, other instances ignored."""

from __future__ import annotations

from agents.ctl.progress import Tracker
from tests.unit.ctl.fakeapi import build_events, event, instance


def test_a_build_of_two_where_one_fails_after_a_retry() -> None:
    a, b = instance("a"), instance("b")
    t = Tracker("create", [(a["uuid"], "a", [a["ports"][0]["id"]]), (b["uuid"], "b", [])])
    lines = [(u.name, u.what, u.detail) for ev in build_events(a) for u in t.feed(ev)]
    assert lines == [
        ("a", "port_wired", "tap123 in brq456"),
        ("a", "create_started", ""),
        ("a", "guest_started", ""),
        ("a", "running", "12 ms"),
    ]
    assert not t.finished and [i.name for i in t.succeeded] == ["a"]
    (err,) = t.feed(event(20, "instance.create.error", b, 20, reason="vif timeout"))
    assert (err.what, err.detail, err.ok, err.final) == (
        "create_error",
        "vif timeout",
        False,
        False,
    )
    assert not t.finished  # not the end: the controller may retry
    (retry,) = t.feed(event(21, "operation.retried", b, 21, reason="vif timeout"))
    assert retry.what == "retried"
    (final,) = t.feed(
        event(22, "operation.error", b, 30, state="error", reason="gave up", final=True)
    )
    assert (final.what, final.detail, final.final, final.ok) == ("failed", "gave up", True, False)
    assert t.finished
    assert [(i.name, i.reason, i.end_state) for i in t.failed] == [("b", "gave up", "error")]
    assert t.instances[a["uuid"]].elapsed_ms == 12.4


def test_events_of_other_instances_and_late_ones_are_ignored() -> None:
    a, other = instance("a"), instance("other")
    t = Tracker("delete", [(a["uuid"], "a", [])])
    assert t.feed(event(1, "instance.delete.start", other, 1)) == []
    assert t.feed(event(2, "api.received", None, 0)) == []  # request-wide: no instance
    assert t.feed(event(3, "instance.delete.end", a, 5)) == []  # the final event says it
    (done,) = t.feed(event(4, "operation.done", a, 6, operation="delete", final=True))
    assert done.what == "deleted"  # no state given: what a delete leaves
    assert t.feed(event(5, "operation.error", a, 7, final=True)) == []
    assert t.succeeded and not t.failed


def test_port_events_find_their_instance_by_port_id() -> None:
    a = instance("a")
    pid = a["ports"][0]["id"]
    t = Tracker("create", [(a["uuid"], "a", [pid])])
    plugged = event(1, "port.vif_plugged", None, 1, port_id=pid, device="tapX", bridge="brqY")
    assert [u.detail for u in t.feed(plugged)] == ["tapX in brqY"]
    assert t.feed(plugged) == []  # the same port wired twice is one line
    (failed,) = t.feed(event(2, "port.plug_failed", None, 2, port_id=pid, reason="EEXIST"))
    assert (failed.what, failed.detail, failed.ok, failed.port_id) == (
        "port_failed",
        "EEXIST",
        False,
        pid,
    )
    assert not t.finished  # the compute-agent decides


def test_an_unreadable_time_loses_only_the_duration() -> None:
    a = instance("a")
    t = Tracker("reboot", [(a["uuid"], "a", [])])
    (done,) = t.feed(event(1, "operation.done", a, 1, at="yesterday", state="running", final=True))
    assert (done.what, done.detail) == ("running", "")


def test_an_unnamed_event_with_a_reason_is_shown_once_per_reason() -> None:
    a = instance("a")
    t = Tracker("create", [(a["uuid"], "a", [])])
    failed = event(1, "casts.failed", a, 1, reason="no l2-agent serves host 'node1'")
    (u,) = t.feed(failed)
    assert (u.what, u.detail, u.ok) == ("casts_failed", "no l2-agent serves host 'node1'", False)
    assert t.feed({**failed, "id": 2}) == []  # the controller retries: said once
    assert t.feed(event(3, "casts.sent", a, 2)) == []
