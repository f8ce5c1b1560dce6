"""The tiny guest itself, without the agents: it boots, says so, and finds its peer.

Two guests are started with plain QEMU (TCG, as on every machine of this project) on taps
in a bridge inside a namespace this test creates. It proves what the agents' e2e test
relies on: the ready line on the serial console, an address from `agents.ip`, the MTU
from `agents.mtu`, and peer discovery by broadcast echo with each peer's unicast ping
reported as `AGENTS-PING ip=X ok`, although neither guest was told the other's address.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.lab.netns import NamespaceHost
from agents.lab.procs import unique, wait_for

pytestmark = pytest.mark.e2e

HOST_IP = "10.99.0.1"
GUESTS = {"g1": ("10.99.0.11", "fa:16:3e:00:99:11"), "g2": ("10.99.0.12", "fa:16:3e:00:99:12")}


@pytest.fixture
def bridge_host() -> Iterator[NamespaceHost]:
    with NamespaceHost(unique("tgi"), relay_broker=False) as ns:
        ns.exec_check(["ip", "link", "add", "br0", "type", "bridge"])
        ns.exec_check(["ip", "addr", "add", f"{HOST_IP}/24", "dev", "br0"])
        ns.exec_check(["ip", "link", "set", "br0", "up"])
        yield ns


def boot(ns: NamespaceHost, image: Path, name: str, ip: str, mac: str, extra: str) -> Path:
    tap = f"tap{name}"
    ns.exec_check(["ip", "tuntap", "add", "dev", tap, "mode", "tap"])
    ns.exec_check(["ip", "link", "set", tap, "master", "br0", "up"])
    cmdline = (image / "cmdline").read_text().strip()
    console = ns.tmp / f"{name}.console"
    ns.spawn(
        [
            "qemu-system-x86_64", "-accel", "tcg", "-m", "128", "-nographic", "-no-reboot",
            "-kernel", str(image / "kernel"), "-initrd", str(image / "initrd"),
            "-append", f"{cmdline} agents.ip={ip}/24 agents.name={name} {extra} console=ttyS0",
            "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
            "-device", f"virtio-net-pci,netdev=n0,mac={mac}",
        ],
        console,
    )  # fmt: skip
    return console


def test_two_guests_boot_and_find_each_other(
    guest_image_dir: Path, bridge_host: NamespaceHost
) -> None:
    image = guest_image_dir / "tiny"
    consoles = {
        name: boot(bridge_host, image, name, ip, mac, "agents.mtu=1400")
        for name, (ip, mac) in GUESTS.items()
    }

    def text(name: str) -> str:
        return consoles[name].read_text(errors="replace")

    for name, (ip, _) in GUESTS.items():
        wait_for(lambda n=name: "AGENTS-GUEST-READY" in text(n), 60, 0.2, what=f"{name} ready line")
        assert re.search(rf"^AGENTS-GUEST-READY name={name} ip={ip} mtu=1400$", text(name), re.M)
        answered = subprocess.run(
            ["ip", "netns", "exec", bridge_host.name, "ping", "-c", "1", "-W", "2", ip],
            capture_output=True,
        )
        assert answered.returncode == 0, f"{name} ({ip}) does not answer the host"

    (ip1, _), (ip2, _) = GUESTS["g1"], GUESTS["g2"]
    wait_for(lambda: f"AGENTS-PING ip={ip2} ok" in text("g1"), 30, 0.2, what="g1 pings g2")
    wait_for(lambda: f"AGENTS-PING ip={ip1} ok" in text("g2"), 30, 0.2, what="g2 pings g1")
