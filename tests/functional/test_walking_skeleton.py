"""The walking skeleton, end to end: real agents as processes in a host namespace.

`agentctl send build --host node1 --wait` against a compute-agent and an l2-agent
that run inside a network namespace standing for node1, over the real RabbitMQ. The
result is checked with clients independent of the project: `ip -n NS -d -j link` for
the tap and its bridge, an RPC call for the instance, a private event watcher for the
order of notifications.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.config import MessagingSettings
from common.messages import InstanceInfo, InstanceRef
from common.rpc import COMPUTE_TOPIC, Messaging, watching
from tests.conftest import BrokerScope
from tests.hosts import REPO, NamespaceHost, console_script, run, wait_for

pytestmark = pytest.mark.functional

NET_UUID = "5d3c0f6e-8a3b-4c1e-9f2a-0b7e6d5c4a31"  # net1 in etc/shared.conf


@dataclass
class Node:
    ns: NamespaceHost
    host: str
    shared: Path
    compute_conf: Path
    l2_conf: Path
    log_dir: Path

    def start(self, agent: str) -> subprocess.Popen[bytes]:
        conf = self.compute_conf if agent == "compute-agent" else self.l2_conf
        cmd = [console_script(agent), "--config-file", str(self.shared), "--config-file", str(conf)]
        return self.ns.spawn(cmd, self.log_dir / f"{agent}.log")

    def agentctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [console_script("agentctl"), "--config-file", str(self.shared), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}"
            for p in sorted(self.log_dir.glob("*.log"))
        )


@pytest.fixture
def node1(root: None, broker_scope: BrokerScope, tmp_path: Path) -> Iterator[Node]:
    host = broker_scope.host("node1")
    shared = tmp_path / "shared.conf"
    shared.write_text(
        (REPO / "etc" / "shared.conf")
        .read_text()
        .replace("control_exchange = agents", f"control_exchange = {broker_scope.exchange}")
    )
    images = tmp_path / "images"
    images.mkdir()
    run(["qemu-img", "create", "-q", "-f", "qcow2", str(images / "tiny.qcow2"), "16M"])
    compute_conf = tmp_path / "compute-agent.conf"
    compute_conf.write_text(
        f"[DEFAULT]\nhost = {host}\nstate_dir = {tmp_path / 'state-compute'}\n"
        "[compute]\nlibvirt_uri = test:///default\ndomain_type = test\n"
        f"image_dir = {images}\ninstances_dir = {tmp_path / 'instances'}\n"
        "vif_plugging_timeout = 4\nvif_plugging_is_fatal = true\n"
    )
    l2_conf = tmp_path / "l2-agent.conf"
    l2_conf.write_text(f"[DEFAULT]\nhost = {host}\nstate_dir = {tmp_path / 'state-l2'}\n")
    logs = tmp_path / "logs"
    logs.mkdir()
    with NamespaceHost() as ns:
        node = Node(ns, host, shared, compute_conf, l2_conf, logs)
        yield node
        print(node.logs())  # shown by pytest only when the test failed


def messaging(node: Node) -> Messaging:
    from common.config import BaseConfig, load

    settings: MessagingSettings = load(BaseConfig, [node.shared]).messaging
    return Messaging(settings)


def wait_serving(node: Node, topic: str) -> None:
    """An agent serves once its ping answers (the queue exists and a consumer reads it)."""
    m = messaging(node)
    try:
        client = m.rpc_client(topic, node.host, timeout=2)

        def pong() -> bool:
            try:
                client.call("ping")
                return True
            except Exception:
                return False

        wait_for(pong, 30, interval=0.3, what=f"{topic} agent on {node.host} to answer ping")
    finally:
        m.close()


def links(node: Node) -> dict[str, dict[str, object]]:
    out = run(["ip", "-n", node.ns.name, "-d", "-j", "link", "show"]).stdout
    return {link["ifname"]: link for link in json.loads(out)}


def test_build_over_rabbitmq_wires_tap_and_starts_guest(node1: Node) -> None:
    node1.start("l2-agent")
    node1.start("compute-agent")
    wait_serving(node1, "l2-agent")
    wait_serving(node1, COMPUTE_TOPIC)

    settings = messaging(node1).settings
    keys = [f"{settings.events_topic}.*", f"vif_events.{node1.host}.*"]
    with watching(settings, keys) as watcher:
        result = node1.agentctl(
            "--json", "send", "build", "--host", node1.host, "--name", "skel-1", "--wait",
            "--network", "net1", "--timeout", "60",
        )
        assert result.returncode == 0, result.stdout + result.stderr
        events = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(
            e.event_type == "instance.create.end" for e in events
        ):
            events.extend(watcher.poll(0.5))

    # the instance: found by name in agentctl's answer, confirmed by an RPC call
    instance_uuid = _instance_uuid(result.stdout)
    m = messaging(node1)
    try:
        info = m.rpc_client(COMPUTE_TOPIC, node1.host, timeout=10).call(
            "get_instance", InstanceRef(instance_uuid=instance_uuid)
        )
    finally:
        m.close()
    assert isinstance(info, InstanceInfo)
    assert info.state == "running" and info.name == "skel-1"
    assert len(info.ports) == 1
    port = info.ports[0]

    # the kernel, through iproute2 rather than our own netlink code
    tap = f"tap{str(port.id)[:11]}"
    bridge = f"brq{NET_UUID[:11]}"
    devices = links(node1)
    assert tap in devices, f"{tap} missing; have {sorted(devices)}"
    assert "UP" in devices[tap]["flags"]  # type: ignore[operator]
    assert devices[tap].get("master") == bridge
    assert devices[bridge]["linkinfo"]["info_kind"] == "bridge"  # type: ignore[index]

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


def test_build_fails_on_vif_plugging_timeout_without_l2_agent(
    node1: Node, broker_scope: BrokerScope
) -> None:
    # An l2-agent served this host once (its queue exists) but is not running now: the
    # port_created cast waits in its queue, and the build must fail on the deadline.
    l2 = node1.start("l2-agent")
    wait_serving(node1, "l2-agent")
    l2.terminate()
    l2.wait(timeout=30)
    node1.start("compute-agent")
    wait_serving(node1, COMPUTE_TOPIC)

    started = time.monotonic()
    result = node1.agentctl(
        "send", "build", "--host", node1.host, "--name", "skel-2", "--wait", "--timeout", "60"
    )
    elapsed = time.monotonic() - started
    assert result.returncode not in (0, 2, 3, 5), result.stdout + result.stderr
    output = (result.stdout + result.stderr).lower()
    assert "vif" in output and ("timed out" in output or "timeout" in output), output
    # vif_plugging_timeout is 4 s: the failure comes from that deadline, not agentctl's 60 s
    assert elapsed < 30, elapsed


def test_build_for_host_nobody_serves_fails_clearly(node1: Node, broker_scope: BrokerScope) -> None:
    ghost = broker_scope.host("ghost")
    result = node1.agentctl("send", "build", "--host", ghost, "--wait", "--timeout", "20")
    assert result.returncode == 5, result.stdout + result.stderr
    assert ghost in result.stdout + result.stderr


def _instance_uuid(stdout: str) -> uuid.UUID:
    """agentctl --json prints JSON; find the instance uuid in it wherever it sits."""
    text = stdout.strip()
    docs = []
    try:
        docs.append(json.loads(text))
    except ValueError:
        docs.extend(json.loads(line) for line in text.splitlines() if line.startswith("{"))
    stack: list[object] = docs
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key in ("instance_uuid", "uuid"):
                if isinstance(item.get(key), str):
                    try:
                        return uuid.UUID(item[key])
                    except ValueError:
                        pass
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    raise AssertionError(f"no instance uuid in agentctl output: {stdout!r}")
