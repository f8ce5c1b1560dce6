"""A real tiny guest under TCG through qemu:///embed, on a tap in a bridge in a namespace.

The compute-agent runs on a lab host (agents/lab: a network namespace standing for the
host, the agent started as its systemd unit would, its QEMU guests killed on close): QEMU
opens the pre-created tap, which must be in the namespace of the process starting QEMU
(docs/platform.md). The test plays the l2-agent: it makes the bridge and the tap in that
namespace and publishes port.vif_plugged. It reads the guest's ready line through the
agent's get_console_log call and pings the guest from the namespace.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.compute import vif
from agents.lab.lab import Lab
from agents.lab.netns import wire_by_hand
from agents.lab.procs import REPO, broker_available, wait_for
from common.config import BaseConfig, load
from common.messages import (
    ConsoleLog,
    DeleteInstance,
    InstanceInfo,
    InstanceRef,
    VifEvent,
    new_request_id,
)

from .conftest import Controller, Deployment

pytestmark = [pytest.mark.functional, pytest.mark.e2e]

BUILD_SCRIPT = REPO / "tools" / "build-guest-image.sh"
IMAGE_DIR = REPO / ".cache" / "guest-image"
AGENT = "compute-agent"


@pytest.fixture(scope="module")
def guest_image() -> Path:
    if not BUILD_SCRIPT.exists():
        pytest.skip(f"{BUILD_SCRIPT} is missing: no tiny guest image to boot")
    done = subprocess.run([str(BUILD_SCRIPT)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"build-guest-image.sh failed:\n{done.stderr}")
    assert (IMAGE_DIR / "tiny" / "kernel").exists() and (IMAGE_DIR / "tiny" / "initrd").exists()
    return IMAGE_DIR


@pytest.fixture
def lab(guest_image: Path) -> Iterator[Lab]:
    """A lab (its own exchange, removed with its queues, namespaces and guests on close)
    in a short /tmp directory: QEMU's monitor socket lives under the embed root and a
    UNIX socket path is limited to 108 bytes (pytest's tmp paths are too long)."""
    if not broker_available():
        pytest.skip("RabbitMQ is not running on 127.0.0.1:5672")
    with Lab.create(prefix="rg-", image_dir=guest_image) as made:
        yield made


def test_tcg_guest_boots_reports_ready_and_answers_ping(lab: Lab) -> None:
    node = lab.add_host(
        "node1", driver="qemu", agents=(), compute={"compute": {"vif_plugging_timeout": 30}}
    )
    events_topic = load(BaseConfig, [lab.write_shared()]).messaging.events_topic
    controller = Controller(Deployment(lab.exchange, events_topic, node.host, node.dir))
    spec = controller.spec(ports=1, image="tiny")
    port = spec.ports[0]
    tap, bridge = vif.tap_name(port.id), vif.bridge_name(port.network_id)
    try:
        for cmd in wire_by_hand(tap, bridge, "10.10.0.1/24"):  # the l2-agent's part
            node.sh(*cmd)
        node.start(AGENT)  # returns once it consumes its RPC queue
        controller.plug(port)
        controller.build(spec)
        end = controller.wait_event(
            spec.uuid, {"instance.create.end", "instance.create.error"}, timeout=60
        )
        assert end.event_type == "instance.create.end", end.payload

        def ready() -> str:
            log = controller.compute.call("get_console_log", InstanceRef(instance_uuid=spec.uuid))
            assert isinstance(log, ConsoleLog)
            return log.text if "AGENTS-GUEST-READY" in log.text else ""

        text = wait_for(ready, 60, interval=0.5, what="the guest's ready line")
        assert f"name={spec.name}" in text and "ip=10.10.0.10" in text
        assert wait_for(
            lambda: node.pings("10.10.0.10", timeout=1), 30, 0.5, what="the guest to answer ping"
        )

        # The tap is deleted under the running QEMU and re-created in the bridge, as
        # the l2-agent does after a restart (issue 6 item 7). QEMU keeps the fd of the
        # deleted tap, so the guest stays cut off until its NIC is re-plugged.
        node.sh("ip", "link", "del", tap)
        node.sh("ip", "tuntap", "add", "dev", tap, "mode", "tap")
        node.sh("ip", "link", "set", tap, "master", bridge, "up")
        assert not node.pings("10.10.0.10", timeout=1), "a re-created tap is not QEMU's"
        replug_sent = time.monotonic()
        controller.vif_notifier.info(
            "port.vif_plugged",
            VifEvent(
                host=node.host,
                port_id=port.id,
                network_id=port.network_id,
                instance_uuid=spec.uuid,
                device=tap,
                bridge=bridge,
            ),
        )
        replugged = controller.wait_event(
            spec.uuid, {"instance.interface.replugged", "instance.interface.error"}, 20
        )
        assert replugged.event_type == "instance.interface.replugged", replugged.payload
        wait_for(
            lambda: node.pings("10.10.0.10", timeout=1), 15, 0.3, what="ping after the re-plug"
        )
        print(f"guest answered {time.monotonic() - replug_sent:.1f}s after vif_plugged")
        # Idempotent: the same event again finds QEMU reading the tap and does nothing.
        controller.plug(port)
        time.sleep(1.5)
        assert controller.events_for(spec.uuid).count("instance.interface.replugged") == 1
        assert node.pings("10.10.0.10", timeout=1)

        # Restart the agent: QEMU outlives it, the new one reconnects to the embed
        # root and finds the guest from its metadata (the host is the truth).
        assert node.stop(AGENT) == 0
        qemu_before = node.qemu_pids()
        assert qemu_before, "QEMU must outlive the agent"
        node.start(AGENT)
        info = controller.compute.call("get_instance", InstanceRef(instance_uuid=spec.uuid))
        assert isinstance(info, InstanceInfo)
        assert info.state == "running" and info.uptime_s is not None and info.uptime_s > 1
        assert node.qemu_pids() == qemu_before  # reconcile left it alone
        assert '"running": 1' in (node.log_dir / f"{AGENT}.log").read_text()

        rid = new_request_id()
        controller.compute.cast(
            "delete_instance",
            DeleteInstance(request_id=rid, host=node.host, instance_uuid=spec.uuid),
            rid,
        )
        controller.wait_event(spec.uuid, {"instance.delete.end"}, timeout=30)
        assert node.qemu_pids() == []
    finally:
        controller.close()
        print(node.logs(5000))  # the lab kills what QEMU is left when it closes
