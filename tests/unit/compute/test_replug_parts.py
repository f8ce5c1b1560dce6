"""The pure parts the NIC re-plug rests on: ACPI in the guest definition, the MACs of a
live XML, and the embed root that QEMU's monitor socket must fit under."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.compute import driver
from agents.compute.errors import GuestXmlError, HypervisorUnavailable
from agents.compute.guest import interface_macs, parse_guest
from agents.compute.hypervisor import UNIX_PATH_MAX, check_embed_root, monitor_socket_path
from agents.compute.settings import DomainType

from .fixtures import DISK_IMAGE, FLAVORS, NETWORKS, PATHS_DISK, port, spec


@pytest.mark.parametrize(
    "domain_type,features", [("qemu", ["acpi"]), ("kvm", ["acpi"]), ("test", [])]
)
def test_acpi_for_qemu_and_kvm_only(domain_type: DomainType, features: list[str]) -> None:
    s = spec(ports=[port()])
    ports = [driver.PortNetwork(p, NETWORKS.get(p.network_id)) for p in s.ports]
    guest = driver.get_guest_config(
        s, FLAVORS[s.flavor], DISK_IMAGE, PATHS_DISK, ports, domain_type
    )
    assert guest.features == features
    xml = guest.to_xml()
    assert ("<acpi />" in xml) == bool(features)
    assert parse_guest(xml).features == features  # round trip


def test_interface_macs_reads_a_live_xml_with_unknown_devices() -> None:
    live = """<domain type='qemu' id='3'><name>x</name><devices>
      <controller type='pci' index='0' model='pci-root'><alias name='pci.0'/></controller>
      <interface type='ethernet'><mac address='FA:16:3E:00:00:01'/>
        <target dev='tap1' managed='no'/><alias name='net0'/>
        <address type='pci' domain='0x0000' bus='0x00' slot='0x03' function='0x0'/>
      </interface>
      <interface type='bridge'><mac address='fa:16:3e:00:00:02'/></interface>
      <memballoon model='virtio'/></devices></domain>"""
    assert interface_macs(live) == {"fa:16:3e:00:00:01", "fa:16:3e:00:00:02"}
    with pytest.raises(GuestXmlError):
        interface_macs("<domain")


def test_monitor_socket_path_shape() -> None:
    # libvirt: <root>/lib/qemu/domain-<id>-<first 20 characters of the name>/monitor.sock
    assert (
        monitor_socket_path(Path("/r"), 7)
        == "/r/lib/qemu/domain-7-xxxxxxxxxxxxxxxxxxxx/monitor.sock"
    )


def test_short_embed_root_is_accepted() -> None:
    check_embed_root(Path("/tmp/ae2e-abcdefgh/node1/libvirt"))


def test_long_embed_root_is_refused_with_path_and_limit() -> None:
    root = Path("/tmp/" + "r" * 60)
    with pytest.raises(HypervisorUnavailable) as caught:
        check_embed_root(root)
    text = str(caught.value)
    assert str(root) in text and f"{UNIX_PATH_MAX}-byte" in text and "monitor.sock" in text
    # The advertised maximum is exact: a root of that length passes, one byte more fails.
    longest_ok = int(text.rsplit("at most ", 1)[1].split()[0])
    check_embed_root(Path("/" + "a" * (longest_ok - 1)))
    with pytest.raises(HypervisorUnavailable):
        check_embed_root(Path("/" + "a" * longest_ok))
