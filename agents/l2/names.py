"""Device naming of the l2-agent: pure functions, bounded to IFNAMSIZ - 1 characters.

The names follow the OpenStack conventions operators know (docs/design.md): `tap` + port
uuid[:11], `brq` + network uuid[:11], `vxlan-<vni>`, `<physdev>.<vid>`. The `owns_*`
predicates recognise exactly the names this module produces, so reconcile can remove
its own leftovers and never touch anything else. No I/O here.
"""

from __future__ import annotations

import hashlib
import re
from uuid import UUID

from agents.l2.errors import InvalidDeviceName

IFNAME_MAX = 15  # IFNAMSIZ (16) minus the terminating NUL

TAP_PREFIX = "tap"
BRIDGE_PREFIX = "brq"
VXLAN_PREFIX = "vxlan-"

# uuid[:11] is 8 hex digits, a dash and 2 hex digits.
_UUID11 = r"[0-9a-f]{8}-[0-9a-f]{2}"
_TAP_RE = re.compile(rf"^{TAP_PREFIX}{_UUID11}$")
_BRIDGE_RE = re.compile(rf"^{BRIDGE_PREFIX}{_UUID11}$")
_VXLAN_RE = re.compile(rf"^{re.escape(VXLAN_PREFIX)}[1-9][0-9]{{0,7}}$")
# What the kernel refuses in a name (dev_valid_name): '/', ':', whitespace, "." and "..".
_BAD_CHARS = re.compile(r"[/:\s]")


def check(name: str) -> str:
    """Return `name` if the kernel would accept it as an interface name, else raise."""
    if not name:
        raise InvalidDeviceName(name=name, problem="empty")
    if len(name) > IFNAME_MAX:
        raise InvalidDeviceName(name=name, problem=f"longer than {IFNAME_MAX} characters")
    if name in (".", "..") or _BAD_CHARS.search(name):
        raise InvalidDeviceName(name=name, problem="contains '/', ':' or whitespace")
    return name


def tap_name(port_id: UUID) -> str:
    return check(TAP_PREFIX + str(port_id)[:11])


def bridge_name(network_id: UUID) -> str:
    return check(BRIDGE_PREFIX + str(network_id)[:11])


def vxlan_name(vni: int) -> str:
    if not 1 <= vni <= 16777215:
        raise InvalidDeviceName(name=f"{VXLAN_PREFIX}{vni}", problem="VNI outside 1-16777215")
    return check(f"{VXLAN_PREFIX}{vni}")


def vlan_name(device: str, vid: int) -> str:
    """`<device>.<vid>`; when that exceeds 15 characters the device part is shortened
    deterministically (prefix + 4 hex digits of its sha256), so two long device names
    that share a prefix still give two different VLAN names."""
    if not 1 <= vid <= 4094:
        raise InvalidDeviceName(name=f"{device}.{vid}", problem="VLAN id outside 1-4094")
    check(device)
    suffix = f".{vid}"
    full = device + suffix
    if len(full) <= IFNAME_MAX:
        return check(full)
    digest = hashlib.sha256(device.encode()).hexdigest()[:4]
    keep = IFNAME_MAX - len(suffix) - len(digest)
    return check(device[:keep] + digest + suffix)


def host_mac(port_mac: str) -> str:
    """The tap's own (host-side) MAC: the port MAC with first octet 0xFE.

    A Linux bridge takes the lowest MAC of its ports as its own address unless one is
    set; 0xFE is higher than any unicast guest MAC, so the bridge never adopts a tap's
    address (libvirt does the same for the taps it creates). The guest keeps the port MAC.
    """
    return "fe" + port_mac.lower()[2:]


def owns_tap(name: str) -> bool:
    return bool(_TAP_RE.fullmatch(name))


def owns_bridge(name: str) -> bool:
    return bool(_BRIDGE_RE.fullmatch(name))


def owns_vxlan(name: str) -> bool:
    return bool(_VXLAN_RE.fullmatch(name))
