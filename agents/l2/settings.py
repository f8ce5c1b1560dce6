"""The l2-agent's typed settings: `BaseConfig` plus an `[l2]` section.

Parsing and validation only: comma lists and `physnet:device` mappings written the way
neutron's linuxbridge agent takes them. Nothing here touches the system.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Address
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, model_validator

from agents.l2 import names
from common.config import BaseConfig, Section
from common.messages import Name

_NETNS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def _comma_list(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _mappings(value: Any) -> Any:
    """'physnet1:eth1, physnet2:eth2' -> {'physnet1': 'eth1', 'physnet2': 'eth2'}."""
    if not isinstance(value, str):
        return value
    out: dict[str, str] = {}
    for item in _comma_list(value):
        physnet, sep, device = item.partition(":")
        if not sep or not physnet.strip() or not device.strip():
            raise ValueError(f"{item!r} is not PHYSNET:DEVICE")
        if physnet.strip() in out:
            raise ValueError(f"physnet {physnet.strip()!r} is mapped twice")
        out[physnet.strip()] = device.strip()
    return out


def _device(value: str) -> str:
    names.check(value)
    return value


def _netns(value: str) -> str:
    if value and not _NETNS_RE.fullmatch(value):
        raise ValueError("must be a network namespace name (letters, digits, '.', '_', '-')")
    return value


DeviceName = Annotated[str, BeforeValidator(str), Field(min_length=1, max_length=15)]


class L2Settings(Section):
    # Network namespace all netlink work happens in; empty = the agent's own.
    namespace: Annotated[str, BeforeValidator(_netns)] = ""
    physical_interface_mappings: Annotated[dict[Name, DeviceName], BeforeValidator(_mappings)] = {}
    vxlan_local_ip: IPv4Address | None = None
    vxlan_device: DeviceName | None = None
    vxlan_group: IPv4Address | None = None
    vxlan_peers: Annotated[list[IPv4Address], BeforeValidator(_comma_list)] = []
    vxlan_port: Annotated[int, Field(ge=1, le=65535)] = 4789
    heartbeat_interval: Annotated[float, Field(gt=0, le=3600)] = 30.0
    # Threads wiring ports of different networks/ports at once (same port: always serial).
    workers: Annotated[int, Field(ge=1, le=64)] = 4
    # How long the record of a deleted port is kept (it stops a late port_updated
    # from bringing the port back).
    tombstone_ttl: Annotated[float, Field(ge=0)] = 3600.0
    # On SIGTERM: seconds to finish port work already taken from the queue.
    stop_grace: Annotated[float, Field(ge=0, le=600)] = 30.0

    @model_validator(mode="after")
    def _coherent(self) -> L2Settings:
        for device in self.physical_interface_mappings.values():
            names.check(device)
        if self.vxlan_device is not None:
            names.check(self.vxlan_device)
        if self.vxlan_group is not None and not self.vxlan_group.is_multicast:
            raise ValueError(f"vxlan_group {self.vxlan_group} is not a multicast address")
        if self.vxlan_group is not None and self.vxlan_peers:
            raise ValueError("set vxlan_group or vxlan_peers, not both")
        return self


class L2Config(BaseConfig):
    l2: L2Settings = L2Settings()
