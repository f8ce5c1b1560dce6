"""Presentation: tables align, durations read well, event lines carry the facts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from agents.ctl import output
from agents.ctl.progress import Update
from tests.unit.ctl.fakeapi import event, instance


def test_table_aligns_columns() -> None:
    text = output.table(("A", "LONGER"), [["x", 1], ["yyyy", None]])
    assert text.splitlines() == ["A     LONGER", "x     1", "yyyy"]


def test_durations() -> None:
    assert output.duration(None) == "-"
    assert output.duration(0.25) == "0.2s"
    assert output.duration(42) == "42s"
    assert output.duration(125) == "2m05s"
    assert output.duration(3 * 3600 + 120) == "3h02m"
    assert output.duration(2 * 86400 + 3600) == "2d01h"
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert output.ago((now - timedelta(seconds=5)).isoformat(), now) == "5s ago"
    assert output.ago("2025-12-31T23:59:00Z", now) == "1m00s ago"
    assert output.ago(None, now) == "-" and output.ago("soon", now) == "-"


def test_update_line() -> None:
    u = Update("u1", "web", "port_wired", "tapA in brqB", port_id="p1")
    assert output.update_line(u) == "web port_wired tapA in brqB"
    assert output.update_line(Update("0123456789", "", "guest_started")) == "01234567 guest_started"


def test_event_line_for_instance_and_port_events() -> None:
    inst = instance("web")
    ev = event(1, "instance.create.error", inst, 5, source="compute-agent", reason="vif timeout")
    line = output.event_line(ev)
    assert line.startswith("22:01:02.128  instance.create.error       compute-agent  node1  web (")
    assert line.endswith("reason='vif timeout'")
    port = event(2, "port.vif_unplugged", None, 6, port_id="abcdef0123", device="tapA", host="n2")
    assert output.event_line(port).split()[1:] == [
        "port.vif_unplugged",
        "controller",
        "n2",
        "port",
        "abcdef01",
        "device=tapA",
    ]


def test_event_text_says_what_each_hop_did() -> None:
    inst = instance("web")
    assert output.event_text(event(1, "casts.sent", inst, 0)) == "casts.sent to node1"
    assert (
        output.event_text(event(2, "port.vif_plugged", inst, 0, device="tap1", bridge="brq2"))
        == "port.vif_plugged tap1 in brq2"
    )
    assert (
        output.event_text(
            event(3, "operation.error", inst, 0, state="error", reason="no host", final=True)
        )
        == "operation.error error (no host)"
    )
    assert output.timeline_lines([]) == []


def test_instance_details_show_ports_and_operations() -> None:
    inst = instance("web", fault="disk full")
    inst["ports"][0].update(state="wired", device="tap1", bridge="brq1")
    inst["operations"] = [
        {"kind": "create", "state": "error", "request_id": "req-9", "attempts": 2, "fault": "x"}
    ]
    text = output.instance_details(inst)
    assert "fault:      disk full" in text
    assert "wired  mac fa:16:3e:00:00:01  ip 10.10.0.11  network net1  tap1 in brq1" in text
    assert "operation:  create  error  req-9  attempts 2  -  (x)" in text
