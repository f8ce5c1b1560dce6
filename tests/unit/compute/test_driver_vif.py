"""driver.py and vif.py: the policy of the guest definition."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

import pytest

from agents.compute import driver, vif
from agents.compute.errors import UnknownFlavor
from agents.compute.guest import Guest
from agents.compute.images import Image
from agents.compute.settings import DomainType
from common.config import NetworkSpec
from common.messages import InstanceSpec

from .fixtures import (
    DISK_IMAGE,
    FLAVORS,
    INSTANCE,
    KERNEL_IMAGE,
    NET,
    NETWORKS,
    PATHS_DISK,
    PATHS_KERNEL,
    PORT_B,
    port,
    spec,
)


def _config(
    s: InstanceSpec,
    image: Image = DISK_IMAGE,
    paths: driver.InstancePaths = PATHS_DISK,
    domain_type: DomainType = "qemu",
    networks: Mapping[uuid.UUID, NetworkSpec] = NETWORKS,
) -> Guest:
    ports = [driver.PortNetwork(p, networks.get(p.network_id)) for p in s.ports]
    return driver.get_guest_config(s, FLAVORS[s.flavor], image, paths, ports, domain_type)


def test_names_follow_the_design_and_fit_ifnamsiz() -> None:
    assert vif.tap_name(uuid.UUID("a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d")) == "tapa1b2c3d4-e5"
    assert vif.bridge_name(NET) == "brq5d3c0f6e-8a"
    assert len(vif.tap_name(uuid.uuid4())) <= 15 and len(vif.bridge_name(uuid.uuid4())) <= 15


def test_vif_type_chooses_the_interface_kind_and_port_values_win() -> None:
    eth = vif.get_interface(port(mtu=1400), network_mtu=1450)
    assert (eth.net_type, eth.target_dev, eth.managed, eth.mtu) == (
        "ethernet",
        "tapa1b2c3d4-e5",
        False,
        1400,
    )
    assert eth.mac == "fa:16:3e:12:34:56" and eth.model == "virtio"
    br = vif.get_interface(port(vif_type="bridge"), network_mtu=1450)
    assert (br.net_type, br.source_bridge, br.target_dev, br.mtu) == (
        "bridge",
        "brq5d3c0f6e-8a",
        None,
        1450,
    )
    nic = port().model_copy(update={"nic_model": "e1000"})
    assert vif.get_config(nic).model == "e1000"


def test_flavor_sets_cpu_and_memory_domain_type_from_config() -> None:
    guest = _config(spec(flavor="m1.medium"))
    assert (guest.vcpus, guest.memory_kib, guest.virt_type) == (2, 2048 * 1024, "qemu")
    assert guest.cpu is None  # TCG: QEMU's default model
    cpu = _config(spec(), domain_type="kvm").cpu
    assert cpu is not None and cpu.mode == "host-passthrough"
    assert guest.name == f"instance-{INSTANCE}" and guest.uuid == str(INSTANCE)


def test_unknown_flavor_is_refused_with_the_name() -> None:
    with pytest.raises(UnknownFlavor, match="'m9.huge'"):
        driver.get_guest_xml(
            spec(flavor="m9.huge"), FLAVORS, DISK_IMAGE, PATHS_DISK, NETWORKS, "test"
        )


def test_disk_image_boots_from_the_overlay() -> None:
    guest = _config(spec())
    assert [d.source_path for d in guest.disks] == [str(PATHS_DISK.disk)]
    assert guest.disks[0].driver_type == "qcow2"
    assert guest.os.kernel is None and guest.os.boot_dev == "hd"
    assert guest.serials[0].path == str(PATHS_DISK.console_log)


def test_kernel_image_gets_name_ip_gateway_mtu_on_the_cmdline() -> None:
    guest = _config(spec(), KERNEL_IMAGE, PATHS_KERNEL)
    assert guest.disks == []
    assert guest.os.kernel == "/images/tiny/kernel" and guest.os.initrd == "/images/tiny/initrd"
    assert guest.os.cmdline == (
        "loglevel=4 panic=0 console=ttyS0 agents.name=web-1 agents.ip=10.10.0.11/24 "
        "agents.gw=10.10.0.1 agents.mtu=1450"
    )


def test_cmdline_without_known_network_or_ip() -> None:
    unknown_net = _config(spec(), KERNEL_IMAGE, PATHS_KERNEL, networks={})
    assert unknown_net.os.cmdline is not None
    assert unknown_net.os.cmdline.endswith("agents.name=web-1 agents.ip=10.10.0.11/32")
    no_ip = _config(spec(ports=[port(PORT_B)]), KERNEL_IMAGE, PATHS_KERNEL)
    assert no_ip.os.cmdline == "loglevel=4 panic=0 console=ttyS0 agents.name=web-1"


def test_metadata_records_the_instance() -> None:
    meta = _config(spec(ports=[port(), port(PORT_B, vif_type="bridge")])).metadata
    assert meta is not None
    assert (meta.uuid, meta.name, meta.flavor, meta.image, meta.owner) == (
        str(INSTANCE),
        "web-1",
        "m1.tiny",
        "tiny",
        "alice",
    )
    assert [(p.id, p.vif_type) for p in meta.ports] == [
        (str(port().id), "ethernet"),
        (str(PORT_B), "bridge"),
    ]
    assert meta.overlay == str(PATHS_DISK.disk) and meta.fault is None
