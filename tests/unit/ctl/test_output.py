"""Presentation: tables align, durations read well, event lines carry the facts."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

from agents.ctl import output
from agents.ctl.progress import Update
from common.messages import AgentHeartbeat, InstanceEvent, VifEvent, utcnow
from common.rpc import Event


def test_table_aligns_columns() -> None:
    text = output.table(("A", "LONGER"), [["x", 1], ["yyyy", None]])
    lines = text.splitlines()
    assert lines[0] == "A     LONGER"
    assert lines[1] == "x     1"
    assert lines[2] == "yyyy"


def test_durations() -> None:
    assert output.duration(None) == "-"
    assert output.duration(0.25) == "0.2s"
    assert output.duration(42) == "42s"
    assert output.duration(125) == "2m05s"
    assert output.duration(3 * 3600 + 120) == "3h02m"
    assert output.duration(2 * 86400 + 3600) == "2d01h"
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert output.ago(now - timedelta(seconds=5), now) == "5s ago"


def test_event_line_and_json_for_instance_and_port_events() -> None:
    inst = uuid.uuid4()
    ev = Event(
        event_type="instance.create.error",
        priority="error",
        publisher_id="compute.node1",
        timestamp="2026-11-25 01:02:03.456789",
        payload=InstanceEvent(host="node1", instance_uuid=inst, name="web", reason="vif timeout"),
        request_id="req-1",
    )
    line = output.event_line(ev)
    assert line.startswith("01:02:03.456  instance.create.error")
    assert "node1" in line and "web" in line and str(inst)[:8] in line and "vif timeout" in line
    data = json.loads(output.to_json(output.event_json(ev)))
    assert data["payload"]["instance_uuid"] == str(inst) and data["request_id"] == "req-1"
    port = uuid.uuid4()
    vif = Event(
        "port.vif_plugged",
        "info",
        "l2-agent.node1",
        "2026-11-25 01:02:03.5",
        VifEvent(host="node1", port_id=port, device="tapA"),
        None,
    )
    assert "port " + str(port)[:8] in output.event_line(vif) and "device=tapA" in output.event_line(
        vif
    )


def test_update_line() -> None:
    port = uuid.uuid4()
    u = Update(uuid.uuid4(), "web", "port_wired", "tapA in brqB", port_id=port)
    assert output.update_line(u) == f"web: port {str(port)[:8]} wired (tapA in brqB)"
    assert output.update_line(Update(None, "web", "guest_started")) == "web: guest started"


def test_heartbeat_line_is_compact() -> None:
    hb = AgentHeartbeat(
        host="node1",
        kind="l2",
        version="0.1.0",
        started_at=utcnow(),
        uptime_s=75.3,
        counts={"wired": 2},
    )
    line = output.event_line(
        Event("agent.heartbeat", "info", "l2-agent.node1", "2026-11-25 01:02:03.5", hb, None)
    )
    assert line.endswith("node1  kind=l2  version=0.1.0  uptime=1m15s  wired=2"), line
