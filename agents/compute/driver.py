"""Policy of the guest definition: what domain XML an instance gets (pure).

`get_guest_xml()` gathers what the guest needs to know (the network of each port,
the disk, the image's boot data) and calls `get_guest_config()`, which builds and fills
the `guest.Guest` object: CPU, memory, OS/kernel boot, disk, serial console logged to a
file, one interface per port (through the VIF layer) and the instance record in
`<metadata>`. The object then renders itself.

Every decision about the guest is made here or in `vif`; `guest` only renders. This
module never touches libvirt, the filesystem or the broker, and reads no global config:
everything arrives as arguments.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

from agents.compute import vif
from agents.compute.errors import UnknownFlavor
from agents.compute.guest import Cpu, Disk, Guest, InstanceMetadata, OsBoot, PortRecord, SerialFile
from agents.compute.images import DiskImage, Image, KernelImage
from agents.compute.settings import DomainType
from common.config import Flavor, NetworkSpec
from common.messages import InstanceSpec, Port

DOMAIN_NAME_PREFIX = "instance-"


def domain_name(instance_uuid: UUID) -> str:
    """Domain names are derived from the uuid: unique, and free of user-chosen text."""
    return f"{DOMAIN_NAME_PREFIX}{instance_uuid}"


def pick_flavor(flavors: Mapping[str, Flavor], name: str) -> Flavor:
    try:
        return flavors[name]
    except KeyError:
        raise UnknownFlavor(flavor=name, known=", ".join(sorted(flavors)) or "none") from None


@dataclass(frozen=True)
class InstancePaths:
    """Where the instance's files live on this host (made by images.ImageStore)."""

    console_log: Path
    disk: Path | None = None  # the qcow2 overlay; None for a direct-kernel-boot image


@dataclass(frozen=True)
class PortNetwork:
    """A port with what this host knows about its network (may be nothing)."""

    port: Port
    network: NetworkSpec | None


def kernel_cmdline(image: KernelImage, spec: InstanceSpec, ports: list[PortNetwork]) -> str:
    """The image's command line plus the keys the project's guest image reads.

    `agents.ip=<ip>/<prefix>` and `agents.gw=<gw>` come from the first port with a fixed
    IP and, for the prefix and gateway, from that port's network when this host knows it;
    `agents.mtu=<mtu>` from the port's MTU, else its network's, when either is known.
    """
    words = (image.cmdline or "").split()
    if "console=ttyS0" not in words:
        words.append("console=ttyS0")
    words.append(f"agents.name={spec.name}")
    first = next((pn for pn in ports if pn.port.fixed_ip is not None), None)
    if first is not None:
        net = first.network
        prefix = net.cidr.prefixlen if net is not None and net.cidr is not None else 32
        words.append(f"agents.ip={first.port.fixed_ip}/{prefix}")
        if net is not None and net.gateway is not None:
            words.append(f"agents.gw={net.gateway}")
        mtu = first.port.mtu or (net.mtu if net is not None else None)
        if mtu is not None:
            words.append(f"agents.mtu={mtu}")
    return " ".join(words)


def instance_metadata(
    spec: InstanceSpec,
    flavor: Flavor,
    paths: InstancePaths,
    request_id: str | None,
) -> InstanceMetadata:
    return InstanceMetadata(
        uuid=str(spec.uuid),
        name=spec.name,
        flavor=spec.flavor,
        vcpus=flavor.vcpus,
        memory_mb=flavor.memory_mb,
        disk_gb=flavor.disk_gb,
        image=spec.image,
        created_at=spec.created_at,
        owner=spec.owner,
        request_id=request_id,
        overlay=str(paths.disk) if paths.disk is not None else None,
        console_log=str(paths.console_log),
        ports=[
            PortRecord(
                id=str(p.id),
                network_id=str(p.network_id),
                mac=p.mac,
                vif_type=p.vif_type,
                nic_model=p.nic_model,
                fixed_ip=str(p.fixed_ip) if p.fixed_ip is not None else None,
                mtu=p.mtu,
            )
            for p in spec.ports
        ],
    )


def get_guest_config(
    spec: InstanceSpec,
    flavor: Flavor,
    image: Image,
    paths: InstancePaths,
    ports: list[PortNetwork],
    domain_type: DomainType,
    request_id: str | None = None,
) -> Guest:
    guest = Guest(
        virt_type=domain_type,
        name=domain_name(spec.uuid),
        uuid=str(spec.uuid),
        memory_kib=flavor.memory_mb * 1024,
        vcpus=flavor.vcpus,
        metadata=instance_metadata(spec, flavor, paths, request_id),
    )
    # Only KVM can pass the host CPU through; under TCG (and the test driver) QEMU's
    # default model is the one that works (where KVM is absent or unusable:
    # docs/platform.md).
    guest.cpu = Cpu(mode="host-passthrough") if domain_type == "kvm" else None
    # ACPI: without it QEMU's i440fx bus refuses PCI hot-unplug ("Bus 'pci.0' does not
    # support hotplugging"), so a NIC could never be re-plugged onto a re-created tap
    # (replug.py), and soft reboot/shutdown have no way to ask the guest. The test
    # driver takes the element but has no use for it: its XML stays as it was.
    guest.features = ["acpi"] if domain_type in ("qemu", "kvm") else []
    if isinstance(image, KernelImage):
        guest.os = OsBoot(
            kernel=str(image.kernel),
            initrd=str(image.initrd),
            cmdline=kernel_cmdline(image, spec, ports),
        )
    else:
        guest.os = OsBoot(boot_dev="hd")
    if isinstance(image, DiskImage):
        if paths.disk is None:
            raise ValueError("a disk image needs the instance's overlay path")
        guest.disks.append(Disk(source_path=str(paths.disk), driver_type="qcow2"))
    for pn in ports:
        mtu = pn.network.mtu if pn.network is not None else None
        guest.interfaces.append(vif.get_interface(pn.port, mtu))
    guest.serials.append(SerialFile(path=str(paths.console_log)))
    return guest


def get_guest_xml(
    spec: InstanceSpec,
    flavors: Mapping[str, Flavor],
    image: Image,
    paths: InstancePaths,
    networks: Mapping[UUID, NetworkSpec],
    domain_type: DomainType,
    request_id: str | None = None,
) -> str:
    """Gather network, disk and image data for `spec`, build its guest, render the XML."""
    flavor = pick_flavor(flavors, spec.flavor)
    ports = [PortNetwork(port=p, network=networks.get(p.network_id)) for p in spec.ports]
    guest = get_guest_config(spec, flavor, image, paths, ports, domain_type, request_id)
    return guest.to_xml()
