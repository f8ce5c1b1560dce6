"""Shared builders for compute unit tests: specs, flavors, networks, images (pure)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from agents.compute.driver import InstancePaths
from agents.compute.images import DiskImage, KernelImage
from common.config import Flavor, NetworkSpec
from common.messages import InstanceSpec, Port, VifType

INSTANCE = uuid.UUID("0b5e6c1a-6f7e-4d2c-9a1b-3c4d5e6f7a8b")
PORT_A = uuid.UUID("a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d")
PORT_B = uuid.UUID("b2c3d4e5-f6a7-4b8c-9d0e-1f2a3b4c5d6e")
NET = uuid.UUID("5d3c0f6e-8a3b-4c1e-9f2a-0b7e6d5c4a31")
CREATED = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)

FLAVORS = {
    "m1.tiny": Flavor(name="m1.tiny", vcpus=1, memory_mb=128, disk_gb=1),
    "m1.small": Flavor(name="m1.small", vcpus=1, memory_mb=512, disk_gb=5),
    "m1.medium": Flavor(name="m1.medium", vcpus=2, memory_mb=2048, disk_gb=20),
}

NETWORKS = {
    NET: NetworkSpec(
        name="net1",
        uuid=NET,
        type="vxlan",
        segmentation_id=1001,
        mtu=1450,
        cidr=IPv4Network("10.10.0.0/24"),
        gateway=IPv4Address("10.10.0.1"),
    )
}

DISK_IMAGE = DiskImage(name="tiny", path=Path("/images/tiny.qcow2"), format="qcow2")
KERNEL_IMAGE = KernelImage(
    name="tiny",
    kernel=Path("/images/tiny/kernel"),
    initrd=Path("/images/tiny/initrd"),
    cmdline="loglevel=4 panic=0",
)
PATHS_DISK = InstancePaths(
    console_log=Path(f"/instances/{INSTANCE}/console.log"),
    disk=Path(f"/instances/{INSTANCE}/disk.qcow2"),
)
PATHS_KERNEL = InstancePaths(console_log=Path(f"/instances/{INSTANCE}/console.log"))


def port(
    port_id: uuid.UUID = PORT_A, vif_type: VifType = "ethernet", mtu: int | None = None
) -> Port:
    return Port(
        id=port_id,
        network_id=NET,
        mac="fa:16:3e:12:34:56" if port_id == PORT_A else "fa:16:3e:65:43:21",
        fixed_ip=IPv4Address("10.10.0.11") if port_id == PORT_A else None,
        mtu=mtu,
        vif_type=vif_type,
        instance_uuid=INSTANCE,
    )


def spec(
    ports: list[Port] | None = None, name: str = "web-1", flavor: str = "m1.tiny"
) -> InstanceSpec:
    return InstanceSpec(
        uuid=INSTANCE,
        name=name,
        flavor=flavor,
        image="tiny",
        ports=[port()] if ports is None else ports,
        owner="alice",
        created_at=CREATED,
    )
