"""The VIF layer: how one port becomes one `<interface>` of a guest (pure policy).

`get_config()` gives an `<interface type='ethernet'>` on the tap the l2-agent
pre-created (`managed='no'`: libvirt opens it and never creates or deletes it);
`get_config_bridge()` gives an `<interface type='bridge'>` on the network's bridge,
where libvirt makes the tap itself. The port's `vif_type` chooses; MAC, MTU and NIC
model come from the port (the MTU falls back to the network's, when known).

Device names follow docs/design.md and must match what the l2-agent creates:
tap + port uuid[:11], brq + network uuid[:11] (15 characters at most, IFNAMSIZ - 1).
It never touches the kernel or libvirt.
"""

from __future__ import annotations

from uuid import UUID

from agents.compute.guest import Interface
from common.messages import Port


def tap_name(port_id: UUID) -> str:
    return "tap" + str(port_id)[:11]


def bridge_name(network_id: UUID) -> str:
    return "brq" + str(network_id)[:11]


def get_config(port: Port, network_mtu: int | None = None) -> Interface:
    """An ethernet interface on the pre-created tap of `port`."""
    return Interface(
        net_type="ethernet",
        mac=port.mac,
        model=port.nic_model,
        target_dev=tap_name(port.id),
        managed=False,
        mtu=port.mtu or network_mtu,
    )


def get_config_bridge(port: Port, network_mtu: int | None = None) -> Interface:
    """A bridge interface on the network's bridge; libvirt creates the tap."""
    return Interface(
        net_type="bridge",
        mac=port.mac,
        model=port.nic_model,
        source_bridge=bridge_name(port.network_id),
        mtu=port.mtu or network_mtu,
    )


def get_interface(port: Port, network_mtu: int | None = None) -> Interface:
    """Choose by the port's vif type."""
    if port.vif_type == "bridge":
        return get_config_bridge(port, network_mtu)
    return get_config(port, network_mtu)
