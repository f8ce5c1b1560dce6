"""Links a scenario needs inside the lab's host namespaces.

- `underlay()`: a veth pair between two hosts (the VXLAN underlay), made inside the
  first host's namespace and moved straight to the second;
- `provider_uplink()`: a veth inside one host whose end goes into a flat network's
  bridge (the l2-agent's physnet mapping) while its peer holds the gateway address, so
  the host answers the guest.

Must not create anything in the root namespace: every `ip` command names a lab
namespace.
"""

from __future__ import annotations

from agents.lab.host import LabHost
from agents.lab.procs import run


def underlay(a: LabHost, b: LabHost, a_ip: str, b_ip: str, prefix: int = 30) -> tuple[str, str]:
    """A veth pair from `a` to `b`, made inside `a`'s namespace and moved straight to `b`."""
    a_dev, b_dev = "ul-" + a.name[-8:], "ul-" + b.name[-8:]
    run(["ip", "-n", a.ns.name, "link", "add", a_dev, "type", "veth",
         "peer", "name", b_dev, "netns", b.ns.name])  # fmt: skip
    for host, dev, ip in ((a, a_dev, a_ip), (b, b_dev, b_ip)):
        host.sh("ip", "addr", "add", f"{ip}/{prefix}", "dev", dev)
        host.sh("ip", "link", "set", dev, "up")
    return a_dev, b_dev


def provider_uplink(host: LabHost, device: str, gateway_cidr: str) -> str:
    """A veth inside `host`: `device` goes into the flat network's bridge (the l2-agent's
    physnet mapping); its peer holds the gateway address, so the host answers the guest."""
    peer = (device + "-gw")[:15]
    host.sh("ip", "link", "add", device, "type", "veth", "peer", "name", peer)
    host.sh("ip", "addr", "add", gateway_cidr, "dev", peer)
    host.sh("ip", "link", "set", device, "up")
    host.sh("ip", "link", "set", peer, "up")
    return peer
