"""Typed errors of the l2-agent: each carries the offending value and formats its reason.

Raised by the netlink edge (errno -> error), the naming rules and the manager; the RPC
boundary turns them into `port.plug_failed` reasons. Nothing here logs or decides.
"""

from __future__ import annotations

from common.errors import AgentsError


class L2Error(AgentsError):
    """Base of the l2-agent's own errors."""


class InvalidDeviceName(L2Error):
    msg_fmt = "device name {name!r} is not usable: {problem}"


class UnknownNetwork(L2Error):
    msg_fmt = "network {network_id} is not configured on host {host!r}"


class UnmappedPhysnet(L2Error):
    msg_fmt = (
        "network {network_id} needs physnet {physnet!r}, which [l2] "
        "physical_interface_mappings does not map to a device on this host"
    )


class KernelFeatureMissing(L2Error):
    msg_fmt = "cannot create {device!r}: the kernel lacks {feature} (errno {errno}: {problem})"


class DeviceNotFound(L2Error):
    msg_fmt = "device {device!r} does not exist in namespace {namespace!r}"


class NetlinkFailure(L2Error):
    msg_fmt = (
        "netlink {op} on {device!r} in namespace {namespace!r} failed: errno {errno} ({problem})"
    )


class WiringMismatch(L2Error):
    msg_fmt = "device {device!r} is not wired as asked after plugging: {problem}"
