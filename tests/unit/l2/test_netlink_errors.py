"""errno -> typed error mapping of the netlink edge (pure; no socket opened)."""

from __future__ import annotations

import errno

from pyroute2.netlink.exceptions import NetlinkError

from agents.l2.errors import DeviceNotFound, KernelFeatureMissing, NetlinkFailure
from agents.l2.netlink import translate


def test_vlan_without_8021q_names_the_missing_kernel_feature() -> None:
    # What this machine's kernel answers to `add type vlan` (docs/platform.md): errno 95.
    err = translate(
        NetlinkError(errno.EOPNOTSUPP, "Operation not supported"),
        op="add",
        device="eth1.42",
        namespace="node1",
        kind="vlan",
    )
    assert isinstance(err, KernelFeatureMissing)
    assert "802.1q" in str(err) and "eth1.42" in str(err) and "errno 95" in str(err)
    assert err.fields["device"] == "eth1.42"


def test_missing_device_and_other_errnos() -> None:
    missing = translate(NetlinkError(errno.ENODEV), op="set", device="tapx", namespace="")
    assert isinstance(missing, DeviceNotFound) and "tapx" in str(missing)
    busy = translate(
        NetlinkError(errno.EEXIST), op="add", device="brqx", namespace="ns1", kind="bridge"
    )
    assert isinstance(busy, NetlinkFailure)
    assert (
        busy.fields["errno"] == errno.EEXIST and "ns1" in str(busy) and "File exists" in str(busy)
    )
    # EOPNOTSUPP on something other than creating a link kind is not a missing feature.
    other = translate(NetlinkError(errno.EOPNOTSUPP), op="set", device="brqx", namespace="ns1")
    assert isinstance(other, NetlinkFailure)
