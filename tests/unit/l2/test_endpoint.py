"""The RPC boundary: whatever arrives, the endpoint answers sensibly and never raises."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from agents.l2.endpoint import L2Endpoint
from common.messages import PingReply, Port, PortCreated, PortDeleted, envelope
from common.rpc import ModelSerializer
from common.workers import KeyedSerialExecutor
from tests.unit.l2.fakes import RecordingSink
from tests.unit.l2.test_manager import HOST, VXLAN, Rig, tap


class Boundary:
    def __init__(self, tmp_path: Path) -> None:
        self.rig = Rig(tmp_path)
        self.executor = KeyedSerialExecutor(2)
        self.agent_events = RecordingSink()
        self.beats = 0
        self.endpoint = L2Endpoint(
            manager=self.rig.manager,
            executor=self.executor,
            vif_events=self.rig.events,
            agent_events=self.agent_events,
            metrics=self.rig.metrics,
            ping=lambda: PingReply(host=HOST, kind="l2", version="t", uptime_s=1.0),
            heartbeat=self._beat,
        )

    def _beat(self) -> None:
        self.beats += 1

    def send(self, method: str, wire: object, request_id: str = "req-x") -> None:
        """As oslo would deliver it: through the project's serializer."""
        payload = ModelSerializer().deserialize_entity({}, wire)
        getattr(self.endpoint, method)({"request_id": request_id}, payload=payload)
        assert self.executor.drain(5)


@pytest.fixture
def b(tmp_path: Path) -> Boundary:
    return Boundary(tmp_path)


def good(port_id: uuid.UUID | None = None, **port: Any) -> dict[str, Any]:
    p = Port(id=port_id or uuid.uuid4(), network_id=VXLAN, mac="fa:16:3e:00:00:01")
    wire = envelope(PortCreated(request_id="req-1", host=HOST, port=p))
    wire["data"]["port"].update(port)
    return wire


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("mac", "fb:16:3e:00:00:01", "multicast"),
        ("mac", "00:00:00:00:00:00", "all-zero"),
        ("mac", "fe:16:3e:00:00:01", "0xfe"),
        ("mtu", 20000, "mtu"),
        ("network_id", "not-a-uuid", "network_id"),
    ],
)
def test_bad_port_fields_are_refused_by_name_and_fail_no_build(
    b: Boundary, field: str, value: object, needle: str
) -> None:
    pid = uuid.uuid4()
    b.send("port_created", good(pid, **{field: value}))
    # No port.plug_failed: a garbled copy may carry the id of a real port whose build is
    # waiting; the refusal is reported, naming the port, and ends nothing.
    assert b.rig.events.sent == []
    [rejected] = b.agent_events.sent
    assert rejected.event_type == "agent.message_rejected"
    assert rejected.payload.port_id == pid and needle in rejected.payload.problem
    assert b.rig.links.calls == []  # nothing made
    assert b.rig.metric("rpc_errors_total", method="port_created", problem="invalid") == 1


@pytest.mark.parametrize(
    "garbage",
    [
        None,
        "garbage",
        42,
        [1, 2],
        {"x": 1},
        {"schema": "port_created", "version": "9.0", "data": {}},
        {"schema": "nope", "data": {}},
    ],
)
def test_garbage_is_logged_and_reported_without_raising(b: Boundary, garbage: object) -> None:
    b.send("port_created", garbage)
    b.send("port_deleted", garbage)
    assert b.rig.events.sent == []  # no port uuid to address
    assert b.agent_events.types() == ["agent.message_rejected"] * 2


def test_message_for_another_host_is_refused(b: Boundary) -> None:
    wire = good()
    wire["data"]["host"] = "elsewhere"
    b.send("port_created", wire)
    # Not reported on this host's vif topic: no build here waits for that port.
    assert b.rig.events.sent == []
    assert b.agent_events.types() == ["agent.message_rejected"]
    assert "elsewhere" in b.agent_events.sent[0].payload.problem
    assert b.rig.links.calls == []


def test_messages_for_one_port_apply_in_arrival_order(b: Boundary) -> None:
    pid = uuid.uuid4()
    for _ in range(5):
        b.endpoint.port_created({}, payload=ModelSerializer().deserialize_entity({}, good(pid)))
        b.endpoint.port_deleted({}, payload=PortDeleted(request_id="req-d", host=HOST, port_id=pid))
    b.endpoint.port_created({}, payload=ModelSerializer().deserialize_entity({}, good(pid)))
    assert b.executor.drain(5)
    assert b.rig.links.by_name[tap(Port(id=pid, network_id=VXLAN, mac="fa:16:3e:00:00:01"))].up
    assert b.rig.events.types()[-1] == "port.vif_plugged"


def test_an_unexpected_error_below_is_reported_not_raised(b: Boundary) -> None:
    def explode(*_: object) -> None:
        raise OSError(28, "No space left on device")

    b.rig.store.put = explode  # type: ignore[method-assign,assignment]
    pid = uuid.uuid4()
    b.send("port_created", good(pid))
    [sent] = b.rig.events.sent
    assert sent.event_type == "port.plug_failed" and "No space left" in sent.payload.reason
    assert b.rig.metric("rpc_errors_total", method="port_created", problem="internal") == 1


def test_calls_and_report_state(b: Boundary) -> None:
    b.send("port_created", good())
    listed = b.endpoint.list_ports({})
    assert [p.state for p in listed.ports] == ["wired"]
    assert b.endpoint.ping({}).kind == "l2"
    b.endpoint.report_state({})
    assert b.beats == 1
