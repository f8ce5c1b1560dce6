"""A real tiny guest under TCG through qemu:///embed, on a tap in a bridge in a namespace.

The compute-agent runs inside a network namespace that stands for the host (QEMU opens
the pre-created tap, which must be in the namespace of the process starting QEMU:
docs/platform.md). The test plays the l2-agent: it makes the bridge and the tap in that
namespace and publishes port.vif_plugged. It reads the guest's ready line through the
agent's get_console_log call and pings the guest from the namespace.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from agents.compute import vif
from agents.lab.netns import NamespaceHost
from agents.lab.procs import REPO, console_script, wait_for
from common.messages import (
    ConsoleLog,
    DeleteInstance,
    InstanceInfo,
    InstanceRef,
    VifEvent,
    new_request_id,
)

from .conftest import SHARED_CONF, Controller, Deployment, write_config

pytestmark = [pytest.mark.functional, pytest.mark.e2e]

BUILD_SCRIPT = REPO / "tools" / "build-guest-image.sh"
IMAGE_DIR = REPO / ".cache" / "guest-image"


def _qemu_pids(marker: str) -> list[int]:
    """QEMU processes whose command line mentions `marker` (our embed root): ours only."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes()
            if b"qemu-system" in cmdline and marker.encode() in cmdline:
                pids.append(int(entry.name))
    return pids


@pytest.fixture(scope="module")
def guest_image() -> Path:
    if not BUILD_SCRIPT.exists():
        pytest.skip(f"{BUILD_SCRIPT} is missing: no tiny guest image to boot")
    done = subprocess.run([str(BUILD_SCRIPT)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"build-guest-image.sh failed:\n{done.stderr}")
    assert (IMAGE_DIR / "tiny" / "kernel").exists() and (IMAGE_DIR / "tiny" / "initrd").exists()
    return IMAGE_DIR


def test_tcg_guest_boots_reports_ready_and_answers_ping(
    deployment: Deployment, controller: Controller, guest_image: Path
) -> None:
    # A short root: QEMU's monitor socket lives under it and a UNIX socket path is
    # limited to 108 bytes (pytest's tmp paths are too long).
    embed = Path(tempfile.mkdtemp(prefix="emb", dir="/tmp"))
    config = write_config(
        deployment,
        guest_image,
        libvirt_uri=f"qemu:///embed?root={embed}",
        domain_type="qemu",
        vif_plugging_timeout=30,
    )
    spec = controller.spec(ports=1, image="tiny")
    port = spec.ports[0]
    tap, bridge = vif.tap_name(port.id), vif.bridge_name(port.network_id)
    with NamespaceHost() as host:
        try:
            # What the l2-agent would do on port_created.
            for cmd in (
                ["ip", "link", "add", bridge, "type", "bridge"],
                ["ip", "addr", "add", "10.10.0.1/24", "dev", bridge],
                ["ip", "link", "set", bridge, "up"],
                ["ip", "tuntap", "add", "dev", tap, "mode", "tap"],
                ["ip", "link", "set", tap, "master", bridge, "up"],
            ):
                host.exec_check(cmd)
            agent = host.spawn(
                [
                    console_script("compute-agent"),
                    "--config-file",
                    str(SHARED_CONF),
                    "--config-file",
                    str(config),
                ],
                deployment.tmp / "agent.log",
            )
            wait_for(lambda: _answers(controller, agent), 60, interval=0.5, what="agent ready")
            controller.plug(port)
            controller.build(spec)
            end = controller.wait_event(
                spec.uuid, {"instance.create.end", "instance.create.error"}, timeout=60
            )
            assert end.event_type == "instance.create.end", end.payload

            def ready() -> str | None:
                log = controller.compute.call(
                    "get_console_log", InstanceRef(instance_uuid=spec.uuid)
                )
                assert isinstance(log, ConsoleLog)
                return log.text if "AGENTS-GUEST-READY" in log.text else None

            text = wait_for(ready, 60, interval=0.5, what="the guest's ready line")
            assert f"name={spec.name}" in text and "ip=10.10.0.10" in text
            pinged = wait_for(
                lambda: (
                    subprocess.run(
                        [
                            "ip",
                            "netns",
                            "exec",
                            host.name,
                            "ping",
                            "-c",
                            "1",
                            "-W",
                            "1",
                            "10.10.0.10",
                        ],
                        capture_output=True,
                    ).returncode
                    == 0
                ),
                30,
                interval=0.5,
                what="the guest to answer ping",
            )
            assert pinged

            # The tap is deleted under the running QEMU and re-created in the bridge, as
            # the l2-agent does after a restart (issue 6 item 7). QEMU keeps the fd of the
            # deleted tap, so the guest stays cut off until its NIC is re-plugged.
            host.exec_check(["ip", "link", "del", tap])
            for cmd in (
                ["ip", "tuntap", "add", "dev", tap, "mode", "tap"],
                ["ip", "link", "set", tap, "master", bridge, "up"],
            ):
                host.exec_check(cmd)
            assert not _pings(host.name, "10.10.0.10"), "a re-created tap is not QEMU's"
            replug_sent = time.monotonic()
            controller.vif_notifier.info(
                "port.vif_plugged",
                VifEvent(
                    host=deployment.host,
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
                lambda: _pings(host.name, "10.10.0.10"), 15, 0.3, what="ping after the re-plug"
            )
            print(f"guest answered {time.monotonic() - replug_sent:.1f}s after vif_plugged")
            # Idempotent: the same event again finds QEMU reading the tap and does nothing.
            controller.plug(port)
            time.sleep(1.5)
            assert controller.events_for(spec.uuid).count("instance.interface.replugged") == 1
            assert _pings(host.name, "10.10.0.10")

            # Restart the agent: QEMU outlives it, the new one reconnects to the embed
            # root and finds the guest from its metadata (the host is the truth).
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(timeout=30) == 0
            qemu_before = _qemu_pids(str(embed))
            assert qemu_before, "QEMU must outlive the agent"
            agent = host.spawn(
                [
                    console_script("compute-agent"),
                    "--config-file",
                    str(SHARED_CONF),
                    "--config-file",
                    str(config),
                ],
                deployment.tmp / "agent.log",
            )
            wait_for(lambda: _answers(controller, agent), 60, interval=0.5, what="agent back")
            info = controller.compute.call("get_instance", InstanceRef(instance_uuid=spec.uuid))
            assert isinstance(info, InstanceInfo)
            assert info.state == "running" and info.uptime_s is not None and info.uptime_s > 1
            assert _qemu_pids(str(embed)) == qemu_before  # reconcile left it alone
            assert '"running": 1' in (deployment.tmp / "agent.log").read_text()

            rid = new_request_id()
            controller.compute.cast(
                "delete_instance",
                DeleteInstance(request_id=rid, host=deployment.host, instance_uuid=spec.uuid),
                rid,
            )
            controller.wait_event(spec.uuid, {"instance.delete.end"}, timeout=30)
            assert _qemu_pids(str(embed)) == []
        finally:
            for pid in _qemu_pids(str(embed)):  # QEMU outlives the agent: never leave one
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            shutil.rmtree(embed, ignore_errors=True)
            log_path = deployment.tmp / "agent.log"
            if log_path.exists():
                print(log_path.read_text(errors="replace")[-5000:])


def _pings(netns: str, ip: str) -> bool:
    cmd = ["ip", "netns", "exec", netns, "ping", "-c", "1", "-W", "1", ip]
    return subprocess.run(cmd, capture_output=True).returncode == 0


def _answers(controller: Controller, proc: subprocess.Popen[bytes]) -> bool:
    if proc.poll() is not None:
        raise RuntimeError(f"compute-agent exited {proc.returncode}")
    try:
        controller.compute.call("ping", timeout=2)
        return True
    except Exception:
        time.sleep(0.2)
        return False
