"""The l2-agent as a real process against the real broker, wiring in a test namespace."""

from __future__ import annotations

import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from common.messages import PingReply, Port, PortCreated, PortList, new_request_id
from common.rpc import L2_TOPIC, EventWatcher, Messaging
from tests.functional.l2.conftest import (
    VXLAN_NET,
    L2Env,
    is_up,
    kind,
    ns_links,
    spawn_agent,
    wait_event,
)
from tests.hosts import wait_for

pytestmark = pytest.mark.functional


def wait_serving(messaging: Messaging, host: str) -> PingReply:
    client = messaging.rpc_client(L2_TOPIC, host, timeout=2)

    def pong() -> PingReply | None:
        try:
            reply = client.call("ping")
            return reply if isinstance(reply, PingReply) else None
        except Exception:
            return None

    result: PingReply = wait_for(pong, 30, interval=0.2, what="l2-agent ping")
    return result


def stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
            return -9
    return proc.returncode


def test_port_created_wires_tap_into_bridge_and_reports_vif_plugged(
    l2env: L2Env, messaging: Messaging, vif_watcher: EventWatcher, tmp_path: Path
) -> None:
    proc = spawn_agent(l2env, tmp_path / "agent.log")
    try:
        pong = wait_serving(messaging, l2env.host)
        assert pong.kind == "l2" and pong.host == l2env.host

        port = Port(
            id=uuid.uuid4(),
            network_id=uuid.UUID(VXLAN_NET),
            mac="fa:16:3e:12:34:56",
            instance_uuid=uuid.uuid4(),
        )
        rid = new_request_id()
        messaging.rpc_client(L2_TOPIC, l2env.host).cast(
            "port_created", PortCreated(request_id=rid, host=l2env.host, port=port), request_id=rid
        )
        event = wait_event(vif_watcher, "port.vif_plugged", port.id)
        tap, bridge = f"tap{str(port.id)[:11]}", f"brq{VXLAN_NET[:11]}"
        assert event.payload.device == tap and event.payload.bridge == bridge
        assert event.payload.request_id == rid and event.payload.instance_uuid == port.instance_uuid
        assert event.publisher_id == f"l2-agent.{l2env.host}"

        links = ns_links(l2env.ns)
        assert kind(links[tap]) == "tun" and is_up(links[tap])
        assert links[tap]["master"] == bridge
        assert links[tap]["address"] == "fe:16:3e:12:34:56"
        assert links[tap]["mtu"] == 1450
        assert kind(links[bridge]) == "bridge" and is_up(links[bridge])
        assert links["vxlan-1001"]["master"] == bridge

        listed = messaging.rpc_client(L2_TOPIC, l2env.host).call("list_ports")
        assert isinstance(listed, PortList)
        assert [(p.port.id, p.state, p.device) for p in listed.ports] == [(port.id, "wired", tap)]
    finally:
        code = stop(proc)
    assert code == 0, (tmp_path / "agent.log").read_text()[-3000:]
