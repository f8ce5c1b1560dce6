"""The agents' resync call over the real broker: `desired_state` on topic `controller`.

A controller runs in this process (SQLite, a private exchange); the test plays the
agents: it asks through `Messaging.controller_client()`, as an agent does on start,
and checks what comes back against what the database holds. Bad input is refused
with a typed error and no traceback; a deployment without a controller says so at
once; another deployment's controller never answers; a call nobody takes expires
from the queue instead of piling up.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agents.controller.db.records import Records
from agents.controller.db.store import CreateRequest, Store
from agents.controller.service import Controller
from agents.lab.broker import BrokerScope, delete
from common.config import Flavor, MessagingSettings
from common.errors import NoAgentForHost, RemoteCallTimeout, RemoteError
from common.messages import (
    AgentHeartbeat,
    DesiredState,
    DesiredStateRequest,
    InstanceEvent,
    PingReply,
)
from common.rpc import Messaging, expect, queue_state
from tests.functional.controller.running import running_controller

pytestmark = pytest.mark.functional

TINY = Flavor(name="m1.tiny", vcpus=1, memory_mb=128)


@pytest.fixture
def controller(broker_scope: BrokerScope, tmp_path: Path) -> Iterator[Controller]:
    with running_controller(broker_scope, tmp_path) as ctl:
        yield ctl


@pytest.fixture
def agent(controller: Controller) -> Iterator[Messaging]:
    """The agents' side: a Messaging of its own on the same deployment."""
    assert controller.messaging is not None
    m = Messaging(controller.messaging.settings)
    yield m
    m.close()


def ask(m: Messaging, host: str, kind: str, timeout: float = 5) -> DesiredState:
    reply = m.controller_client(timeout).call(
        "desired_state",
        DesiredStateRequest(host=host, kind=kind),  # type: ignore[arg-type]
    )
    state = expect(reply, DesiredState)
    assert isinstance(state, DesiredState)
    return state


class World:
    """Instances in every state desired_state must tell apart, on one host."""

    def __init__(self, ctl: Controller, host: str) -> None:
        assert ctl.db is not None
        self.store = Store(ctl.db, agent_down_time=60)
        self.records = Records(self.store)
        self.host = host
        self.net = next(iter(ctl.config.networks.values()))
        self.records.apply(
            "agent.heartbeat",
            AgentHeartbeat(
                host=host,
                kind="compute",
                version="t",
                started_at=datetime.now(UTC),
                uptime_s=1,
                vcpus=16,
                memory_mb=8192,
            ),
        )

    def create(self, name: str) -> tuple[dict[str, Any], str]:
        acc = self.store.create(
            CreateRequest(
                request_id=f"req-{uuid.uuid4()}",
                names=[name],
                flavor=TINY,
                image="tiny",
                networks=[self.net],
                host=self.host,
            )
        )
        return acc.response["instances"][0], acc.response["request_id"]

    def report(self, event_type: str, inst: dict[str, Any], rid: str, **kw: Any) -> None:
        self.records.apply(
            event_type,
            InstanceEvent(
                request_id=rid, host=self.host, instance_uuid=uuid.UUID(inst["uuid"]), **kw
            ),
        )

    def running(self, name: str) -> dict[str, Any]:
        inst, rid = self.create(name)
        self.report("instance.create.end", inst, rid, state="running")
        return inst


def port_ids(inst: dict[str, Any]) -> set[uuid.UUID]:
    return {uuid.UUID(p["id"]) for p in inst["ports"]}


def test_desired_state_of_a_compute_host_and_its_l2_agent(
    controller: Controller, agent: Messaging, broker_scope: BrokerScope
) -> None:
    w = World(controller, broker_scope.host("node1"))
    running = w.running("running")
    building, _ = w.create("building")  # its create is still open: wanted
    deleted = w.running("deleted")
    drid = w.store.delete("deleted").response["request_id"]
    w.report("instance.delete.end", deleted, drid, state="deleted")
    failed, frid = w.create("failed")
    w.report("instance.create.error", failed, frid, reason="no tap")
    deleting = w.running("deleting")
    w.store.delete("deleting")  # asked, not done: in neither list

    compute = ask(agent, w.host, "compute")
    assert (compute.host, compute.kind) == (w.host, "compute")
    assert [str(i.uuid) for i in compute.instances] == [running["uuid"], building["uuid"]]
    spec = compute.instances[0]
    assert (spec.name, spec.flavor, spec.image) == ("running", "m1.tiny", "tiny")
    assert [str(p.id) for p in spec.ports] == [p["id"] for p in running["ports"]]
    assert str(spec.ports[0].fixed_ip) == running["ports"][0]["fixed_ip"]
    assert spec.ports[0].mac == running["ports"][0]["mac"]
    # a failed create released its addresses: a guest built late for it must go too
    assert [str(u) for u in compute.deleted_instances] == [deleted["uuid"], failed["uuid"]]
    assert compute.ports == [] and compute.released_ports == []

    l2 = ask(agent, w.host, "l2")
    assert {p.id for p in l2.ports} == port_ids(running) | port_ids(building) | port_ids(deleting)
    assert all(p.instance_uuid is not None for p in l2.ports)
    assert set(l2.released_ports) == port_ids(deleted) | port_ids(failed)
    assert l2.instances == [] and l2.deleted_instances == []

    # another host has nothing, and nothing known gone
    other = ask(agent, broker_scope.host("node2"), "compute")
    assert other.instances == [] and other.deleted_instances == []


def test_bad_requests_are_refused_with_a_typed_error_and_no_traceback(
    controller: Controller,
    agent: Messaging,
    broker_scope: BrokerScope,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    client = agent.controller_client(5)
    with pytest.raises(RemoteError) as err:
        client.call("desired_state", PingReply(host="h", kind="l2", version="1", uptime_s=1))
    assert err.value.fields["remote_type"] == "InvalidMessage"
    assert "expected desired_state_request" in err.value.reason
    with pytest.raises(RemoteError, match="InvalidMessage") as err:
        client.call("desired_state")  # no payload at all
    # a request that no model on this side would build: a raw envelope with a bad host
    raw = {
        "schema": "desired_state_request",
        "version": "1.0",
        "data": {"host": "not a host!", "kind": "compute"},
    }
    with pytest.raises(Exception, match="host") as raw_err:
        client._client.prepare(timeout=5).call({}, "desired_state", payload=raw)
    assert "InvalidMessage" in type(raw_err.value).__name__ + str(raw_err.value)
    # the controller still answers after all that
    assert ask(agent, broker_scope.host("node1"), "l2").ports == []
    out, errout = capfd.readouterr()
    assert "Traceback" not in out + errout
    assert "desired_state_refused" in out + errout
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_no_controller_in_the_deployment_is_said_at_once(broker_scope: BrokerScope) -> None:
    # a deployment where no controller ever ran
    m = Messaging(MessagingSettings(control_exchange=f"{broker_scope.exchange}-none", send_retry=1))
    try:
        started = time.monotonic()
        with pytest.raises(NoAgentForHost, match="agents-controller"):
            m.controller_client(5).call(
                "desired_state", DesiredStateRequest(host="node1", kind="compute")
            )
        assert time.monotonic() - started < 3
    finally:
        m.close()
        delete([], exchange=f"{broker_scope.exchange}-none")


def test_another_deployments_controller_never_answers(
    controller: Controller, broker_scope: BrokerScope, tmp_path: Path
) -> None:
    """Two deployments on one broker: each controller serves only its own exchange."""
    other_scope = BrokerScope.new("test-")
    try:
        with running_controller(other_scope, tmp_path / "other") as other:
            w = World(controller, broker_scope.host("node1"))
            mine = w.running("mine")
            assert other.messaging is not None
            theirs = Messaging(other.messaging.settings)
            try:
                for _ in range(6):  # round-robin would hand some of these to the wrong one
                    assert ask(theirs, w.host, "compute").instances == []
            finally:
                theirs.close()
            assert controller.messaging is not None
            ours = Messaging(controller.messaging.settings)
            try:
                for _ in range(6):
                    got = ask(ours, w.host, "compute").instances
                    assert [str(i.uuid) for i in got] == [mine["uuid"]]
            finally:
                ours.close()
    finally:
        other_scope.cleanup()


def test_a_stopped_controller_times_out_and_the_call_expires(
    broker_scope: BrokerScope, tmp_path: Path
) -> None:
    with running_controller(broker_scope, tmp_path) as ctl:
        assert ctl.messaging is not None
        settings = ctl.messaging.settings
    m = Messaging(settings)
    try:
        with pytest.raises(RemoteCallTimeout, match="agents-controller"):
            m.controller_client(1).call(
                "desired_state", DesiredStateRequest(host="node1", kind="l2")
            )
        # oslo gives a call a per-message TTL of its timeout: the queue does not keep it
        queue = f"controller.{broker_scope.exchange}"
        deadline = time.monotonic() + 5
        while queue_state(settings, queue).messages and time.monotonic() < deadline:
            time.sleep(0.1)
        state = queue_state(settings, queue)
        assert state.exists and state.consumers == 0 and state.messages == 0
    finally:
        m.close()
