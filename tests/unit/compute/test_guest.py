"""guest.py: the object model renders XML and parses it back, and escapes everything."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import pytest

from agents.compute import driver
from agents.compute.driver import InstancePaths
from agents.compute.errors import GuestXmlError
from agents.compute.guest import (
    METADATA_NS,
    Guest,
    InstanceMetadata,
    Interface,
    parse_guest,
    parse_metadata,
)
from agents.compute.images import Image

from .fixtures import (
    DISK_IMAGE,
    FLAVORS,
    KERNEL_IMAGE,
    NETWORKS,
    PATHS_DISK,
    PATHS_KERNEL,
    port,
    spec,
)


def _guest(image: Image = DISK_IMAGE, paths: InstancePaths = PATHS_DISK, **kw: Any) -> Guest:
    s = spec(**kw)
    ports = [driver.PortNetwork(p, NETWORKS.get(p.network_id)) for p in s.ports]
    return driver.get_guest_config(s, FLAVORS[s.flavor], image, paths, ports, "qemu", "req-1")


@pytest.mark.parametrize("image,paths", [(DISK_IMAGE, PATHS_DISK), (KERNEL_IMAGE, PATHS_KERNEL)])
def test_round_trip_is_lossless(image, paths) -> None:  # type: ignore[no-untyped-def]
    guest = _guest(image, paths, ports=[port(), port(vif_type="bridge", port_id=port().id)])
    again = parse_guest(guest.to_xml())
    assert again == guest
    assert again.to_xml() == guest.to_xml()


def test_hostile_name_cannot_change_structure() -> None:
    hostile = "x</name><devices><disk type='block'/></devices>&amp;'\"<!--"
    guest = _guest()
    assert guest.metadata is not None
    guest.metadata.name = hostile
    guest.interfaces[0].mac = "fa:16:3e:00:00:01' foo='bar"
    xml = guest.to_xml()
    root = ET.fromstring(xml)
    # Exactly one of each structural element, and the name is still one text value.
    assert len(root.findall("devices")) == 1
    assert len(root.findall("devices/disk")) == 1
    assert root.find(f"metadata/{{{METADATA_NS}}}instance/{{{METADATA_NS}}}name").text == hostile  # type: ignore[union-attr]
    assert root.find("devices/interface/mac").get("address") == "fa:16:3e:00:00:01' foo='bar"  # type: ignore[union-attr]
    assert parse_guest(xml).metadata.name == hostile  # type: ignore[union-attr]


def test_metadata_bare_form_parses_like_the_namespaced_one() -> None:
    meta = _guest().metadata
    assert meta is not None
    meta.fault = "timeout after 1.0s waiting for vif-plugged of port(s) x"
    # virDomainGetMetadata returns the element without its namespace.
    assert parse_metadata(meta.to_bare_xml()) == meta
    assert parse_metadata(meta.to_xml()) == meta


def test_interface_forms() -> None:
    eth = Interface(
        net_type="ethernet", mac="fa:16:3e:00:00:01", target_dev="tapabc", managed=False, mtu=1450
    )
    el = eth.format_dom()
    assert el.get("type") == "ethernet"
    assert el.find("target").attrib == {"dev": "tapabc", "managed": "no"}  # type: ignore[union-attr]
    assert el.find("mtu").get("size") == "1450"  # type: ignore[union-attr]
    assert Interface.parse_dom(ET.fromstring(eth.to_xml())) == eth
    br = Interface(net_type="bridge", mac="fa:16:3e:00:00:02", source_bridge="brq5d3c0f6e-8a")
    assert br.format_dom().find("source").get("bridge") == "brq5d3c0f6e-8a"  # type: ignore[union-attr]
    assert Interface.parse_dom(ET.fromstring(br.to_xml())) == br


@pytest.mark.parametrize(
    "xml,problem",
    [
        ("<domain", "not well-formed"),
        ("<network/>", "not a <domain>"),
        (
            "<domain type='qemu'><uuid>u</uuid><memory>1</memory><vcpu>1</vcpu></domain>",
            "missing <name>",
        ),
        (
            "<domain type='qemu'><name>n</name><uuid>u</uuid><memory unit='PB'>1</memory>"
            "<vcpu>1</vcpu></domain>",
            "unknown unit",
        ),
    ],
)
def test_parse_errors_are_typed(xml: str, problem: str) -> None:
    with pytest.raises(GuestXmlError, match=problem):
        parse_guest(xml)


def test_foreign_domain_has_no_metadata() -> None:
    xml = (
        "<domain type='test'><name>test</name><uuid>6695eb01-f6a4-8304-79aa-97f2502e193f</uuid>"
        "<memory>8192</memory><vcpu>2</vcpu><os><type>hvm</type></os></domain>"
    )
    assert parse_guest(xml).metadata is None


def test_metadata_requires_our_namespace() -> None:
    el = ET.fromstring("<instance xmlns='urn:someone:else'><uuid>x</uuid></instance>")
    with pytest.raises(GuestXmlError, match="not an instance record"):
        InstanceMetadata.parse_dom(el)
