"""The walking skeleton, end to end: real agents as processes in a host namespace.

`agentctl send build --host node1 --wait` through agents-controller against a
compute-agent and an l2-agent that run inside a network namespace standing for node1,
over the real RabbitMQ (the lab of agents/lab, via the `lab` fixture). The result is
checked with clients independent of the project and of the controller: `ip -n NS -d -j
link` for the tap and its bridge, an RPC call to the compute-agent for the instance, a
private event watcher for the order of notifications.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest

from agents.lab.lab import Lab
from common.config import BaseConfig, load
from common.messages import InstanceInfo, InstanceRef
from common.rpc import COMPUTE_TOPIC, Messaging, watching

pytestmark = pytest.mark.functional

NET_UUID = "5d3c0f6e-8a3b-4c1e-9f2a-0b7e6d5c4a31"  # net1 in etc/shared.conf


def test_build_over_rabbitmq_wires_tap_and_starts_guest(lab: Lab) -> None:
    node1 = lab.add_host("node1")
    settings = load(BaseConfig, [lab.write_shared()]).messaging
    keys = [f"{settings.events_topic}.#", f"vif_events.{node1.host}.*"]
    with watching(settings, keys) as watcher:
        result = lab.agentctl(
            "--json", "send", "build", "--host", node1.host, "--name", "skel-1", "--wait",
            "--network", "net1", "--timeout", "60",
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        events = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(
            e.event_type == "instance.create.end" for e in events
        ):
            events.extend(watcher.poll(0.5))

    # the instance: found by name in agentctl's answer, confirmed by an RPC call
    (inst,) = json.loads(result.stdout.splitlines()[-1])["instances"]
    instance_uuid = uuid.UUID(inst["uuid"])
    messaging = Messaging(settings)
    try:
        info = messaging.rpc_client(COMPUTE_TOPIC, node1.host, timeout=10).call(
            "get_instance", InstanceRef(instance_uuid=instance_uuid)
        )
    finally:
        messaging.close()
    assert isinstance(info, InstanceInfo)
    assert info.state == "running" and info.name == "skel-1"
    assert len(info.ports) == 1
    port = info.ports[0]
    assert str(port.fixed_ip) == inst["ports"][0]["fixed_ip"]

    # the kernel, through iproute2 rather than our own netlink code
    tap = f"tap{str(port.id)[:11]}"
    bridge = f"brq{NET_UUID[:11]}"
    devices = node1.links()
    assert tap in devices, f"{tap} missing; have {sorted(devices)}"
    assert "UP" in devices[tap]["flags"]
    assert devices[tap].get("master") == bridge
    assert devices[bridge]["linkinfo"]["info_kind"] == "bridge"

    # notifications of this instance, in order
    mine = [
        e.event_type
        for e in events
        if getattr(e.payload, "instance_uuid", None) == instance_uuid
        or getattr(e.payload, "port_id", None) == port.id
    ]
    assert mine[0] == "instance.create.start", mine
    assert mine[-1] == "instance.create.end", mine
    assert "port.vif_plugged" in mine, mine
    assert mine.index("port.vif_plugged") < mine.index("instance.create.end")
    assert "instance.create.error" not in mine


def test_build_fails_on_vif_plugging_timeout_without_l2_agent(lab: Lab) -> None:
    # An l2-agent served this host once (its queue exists) but is not running now: the
    # port_created cast waits in its queue, and the build must fail on the deadline.
    node1 = lab.add_host("node1", compute={"compute": {"vif_plugging_timeout": 4}})
    node1.stop("l2-agent")
    started = time.monotonic()
    result = lab.agentctl(
        "send", "build", "--host", node1.host, "--name", "skel-2", "--wait", "--timeout", "60"
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stdout + result.stderr
    output = (result.stdout + result.stderr).lower()
    assert "vif" in output and ("timed out" in output or "timeout" in output), output
    # vif_plugging_timeout is 4 s: the failure comes from that deadline, not agentctl's 60 s
    assert elapsed < 30, elapsed


def test_build_for_host_nobody_serves_fails_clearly(lab: Lab) -> None:
    ghost = lab.scope.host("ghost")
    result = lab.agentctl("send", "build", "--host", ghost, "--wait", "--timeout", "20")
    assert result.returncode == 5, result.stdout + result.stderr
    assert ghost in result.stdout + result.stderr
