"""Object model of the libvirt domain XML this agent writes and reads back.

Each class converts one part of a domain between a Python object and XML
(`format_dom()` -> Element, `parse_dom(Element)`, `to_xml()`), in the manner of
nova's `virt/libvirt/config.py`. It owns the XML shape and escaping: every value goes
through ElementTree as text or an attribute, so a name holding `<`, `&` or quotes can
never change the document's structure.

It must make no policy decision (which NIC, which disk bus, which console): that lives
in `driver.get_guest_config()` and in `vif`. It never talks to libvirt.

Namespaces: the instance record lives in `<metadata>` under METADATA_NS. It is written
with a literal `agents:` prefix (ElementTree's prefix registry is process-global, so we
do not touch it) and read back in Clark notation `{urn:agents:instance:1.0}tag`, which is
what `ElementTree.fromstring` yields for any prefix libvirt hands back.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar, Literal

from agents.compute.errors import GuestXmlError

METADATA_NS = "urn:agents:instance:1.0"
METADATA_PREFIX = "agents"


def _q(tag: str) -> str:
    """Clark-notation name of a metadata element, as parsed XML spells it."""
    return f"{{{METADATA_NS}}}{tag}"


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, {k: v for k, v in attrs.items()})
    if text is not None:
        el.text = text
    return el


def _text(el: ET.Element, path: str, default: str | None = None) -> str | None:
    found = el.find(path)
    if found is None or found.text is None:
        return default
    return found.text


def _need(el: ET.Element, path: str) -> str:
    value = _text(el, path)
    if value is None:
        raise GuestXmlError(element=el.tag, problem=f"missing <{path}>")
    return value


def _parse_time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _attr(el: ET.Element | None, name: str) -> str | None:
    return None if el is None else el.get(name)


class ConfigObject:
    """Base: an object that renders to one XML element and parses back from it."""

    root_name: ClassVar[str]

    def format_dom(self) -> ET.Element:
        raise NotImplementedError

    def to_xml(self) -> str:
        el = self.format_dom()
        ET.indent(el)
        return ET.tostring(el, encoding="unicode")


# --------------------------------------------------------------------------- metadata


@dataclass
class PortRecord:
    """One port as the instance record remembers it."""

    id: str
    network_id: str
    mac: str
    vif_type: str
    nic_model: str
    fixed_ip: str | None = None
    mtu: int | None = None


@dataclass
class InstanceMetadata(ConfigObject):
    """The instance record stored under `<metadata>`: the host's truth about an instance."""

    root_name: ClassVar[str] = "instance"
    uuid: str
    name: str
    flavor: str
    vcpus: int
    memory_mb: int
    disk_gb: int
    image: str
    created_at: datetime
    owner: str | None = None
    request_id: str | None = None
    overlay: str | None = None
    console_log: str | None = None
    # When the guest was last started by this agent (uptime; "never started" at reconcile).
    started_at: datetime | None = None
    ports: list[PortRecord] = field(default_factory=list)
    # Set when a build failed or was interrupted: the instance stays defined, never
    # started, in state "error" until deleted, so an operator can see why.
    fault: str | None = None

    def format_dom(self) -> ET.Element:
        p = f"{METADATA_PREFIX}:"
        root = ET.Element(f"{p}instance", {f"xmlns:{METADATA_PREFIX}": METADATA_NS, "version": "1"})
        _sub(root, f"{p}uuid", self.uuid)
        _sub(root, f"{p}name", self.name)
        _sub(
            root,
            f"{p}flavor",
            self.flavor,
            vcpus=str(self.vcpus),
            memory_mb=str(self.memory_mb),
            disk_gb=str(self.disk_gb),
        )
        _sub(root, f"{p}image", self.image)
        _sub(root, f"{p}created_at", self.created_at.isoformat())
        for tag, value in (
            ("owner", self.owner),
            ("request_id", self.request_id),
            ("overlay", self.overlay),
            ("console_log", self.console_log),
            ("started_at", self.started_at.isoformat() if self.started_at else None),
            ("fault", self.fault),
        ):
            if value is not None:
                _sub(root, f"{p}{tag}", value)
        ports = _sub(root, f"{p}ports")
        for port in self.ports:
            attrs = {
                "id": port.id,
                "network_id": port.network_id,
                "mac": port.mac,
                "vif_type": port.vif_type,
                "nic_model": port.nic_model,
            }
            if port.fixed_ip is not None:
                attrs["fixed_ip"] = port.fixed_ip
            if port.mtu is not None:
                attrs["mtu"] = str(port.mtu)
            _sub(ports, f"{p}port", **attrs)
        return root

    def to_bare_xml(self) -> str:
        """The record without prefix or namespace declaration, as virDomainSetMetadata
        wants it (libvirt adds the prefix and namespace it is given itself)."""
        el = self.format_dom()
        for node in el.iter():
            node.tag = node.tag.split(":", 1)[-1]
        del el.attrib[f"xmlns:{METADATA_PREFIX}"]
        return ET.tostring(el, encoding="unicode")

    @classmethod
    def parse_dom(cls, el: ET.Element) -> InstanceMetadata:
        if el.tag != _q("instance"):
            raise GuestXmlError(element=el.tag, problem=f"not an instance record of {METADATA_NS}")
        flavor = el.find(_q("flavor"))
        if flavor is None:
            raise GuestXmlError(element=el.tag, problem="missing <flavor>")
        try:
            ports = [
                PortRecord(
                    id=p.attrib["id"],
                    network_id=p.attrib["network_id"],
                    mac=p.attrib["mac"],
                    vif_type=p.attrib["vif_type"],
                    nic_model=p.attrib["nic_model"],
                    fixed_ip=p.get("fixed_ip"),
                    mtu=int(p.attrib["mtu"]) if "mtu" in p.attrib else None,
                )
                for p in el.iterfind(f"{_q('ports')}/{_q('port')}")
            ]
            return cls(
                uuid=_need(el, _q("uuid")),
                name=_need(el, _q("name")),
                flavor=flavor.text or "",
                vcpus=int(flavor.get("vcpus", "0")),
                memory_mb=int(flavor.get("memory_mb", "0")),
                disk_gb=int(flavor.get("disk_gb", "0")),
                image=_need(el, _q("image")),
                created_at=datetime.fromisoformat(_need(el, _q("created_at"))),
                owner=_text(el, _q("owner")),
                request_id=_text(el, _q("request_id")),
                overlay=_text(el, _q("overlay")),
                console_log=_text(el, _q("console_log")),
                fault=_text(el, _q("fault")),
                started_at=_parse_time(_text(el, _q("started_at"))),
                ports=ports,
            )
        except (KeyError, ValueError) as err:
            raise GuestXmlError(element=el.tag, problem=f"bad value: {err}") from err


# --------------------------------------------------------------------------- parts


@dataclass
class OsBoot(ConfigObject):
    root_name: ClassVar[str] = "os"
    os_type: str = "hvm"
    machine: str | None = None
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    boot_dev: str | None = None

    def format_dom(self) -> ET.Element:
        root = ET.Element("os")
        type_attrs = {"machine": self.machine} if self.machine else {}
        _sub(root, "type", self.os_type, **type_attrs)
        if self.kernel is not None:
            _sub(root, "kernel", self.kernel)
        if self.initrd is not None:
            _sub(root, "initrd", self.initrd)
        if self.cmdline is not None:
            _sub(root, "cmdline", self.cmdline)
        if self.boot_dev is not None:
            _sub(root, "boot", dev=self.boot_dev)
        return root

    @classmethod
    def parse_dom(cls, el: ET.Element) -> OsBoot:
        return cls(
            os_type=_text(el, "type", "hvm") or "hvm",
            machine=_attr(el.find("type"), "machine"),
            kernel=_text(el, "kernel"),
            initrd=_text(el, "initrd"),
            cmdline=_text(el, "cmdline"),
            boot_dev=_attr(el.find("boot"), "dev"),
        )


@dataclass
class Cpu(ConfigObject):
    root_name: ClassVar[str] = "cpu"
    mode: Literal["host-passthrough", "host-model", "custom"] | None = None

    def format_dom(self) -> ET.Element:
        root = ET.Element("cpu")
        if self.mode is not None:
            root.set("mode", self.mode)
        return root

    @classmethod
    def parse_dom(cls, el: ET.Element) -> Cpu:
        mode = el.get("mode")
        if mode not in (None, "host-passthrough", "host-model", "custom"):
            raise GuestXmlError(element="cpu", problem=f"unknown mode {mode!r}")
        return cls(mode=mode)  # type: ignore[arg-type]


@dataclass
class Disk(ConfigObject):
    root_name: ClassVar[str] = "disk"
    source_path: str
    driver_type: Literal["qcow2", "raw"] = "qcow2"
    target_dev: str = "vda"
    target_bus: str = "virtio"

    def format_dom(self) -> ET.Element:
        root = ET.Element("disk", {"type": "file", "device": "disk"})
        _sub(root, "driver", name="qemu", type=self.driver_type)
        _sub(root, "source", file=self.source_path)
        _sub(root, "target", dev=self.target_dev, bus=self.target_bus)
        return root

    @classmethod
    def parse_dom(cls, el: ET.Element) -> Disk:
        driver_type = _attr(el.find("driver"), "type") or "raw"
        if driver_type not in ("qcow2", "raw"):
            raise GuestXmlError(element="disk", problem=f"unknown driver type {driver_type!r}")
        source = _attr(el.find("source"), "file")
        if source is None:
            raise GuestXmlError(element="disk", problem="missing <source file=...>")
        target = el.find("target")
        return cls(
            source_path=source,
            driver_type=driver_type,  # type: ignore[arg-type]
            target_dev=_attr(target, "dev") or "vda",
            target_bus=_attr(target, "bus") or "virtio",
        )


@dataclass
class Interface(ConfigObject):
    """`<interface type='ethernet'>` on a pre-created tap, or `type='bridge'` on a bridge."""

    root_name: ClassVar[str] = "interface"
    net_type: Literal["ethernet", "bridge"]
    mac: str
    model: str = "virtio"
    target_dev: str | None = None
    managed: bool | None = None
    source_bridge: str | None = None
    mtu: int | None = None

    def format_dom(self) -> ET.Element:
        root = ET.Element("interface", {"type": self.net_type})
        _sub(root, "mac", address=self.mac)
        if self.source_bridge is not None:
            _sub(root, "source", bridge=self.source_bridge)
        if self.target_dev is not None:
            attrs = {"dev": self.target_dev}
            if self.managed is not None:
                attrs["managed"] = "yes" if self.managed else "no"
            _sub(root, "target", **attrs)
        _sub(root, "model", type=self.model)
        if self.mtu is not None:
            _sub(root, "mtu", size=str(self.mtu))
        return root

    @classmethod
    def parse_dom(cls, el: ET.Element) -> Interface:
        net_type = el.get("type")
        if net_type not in ("ethernet", "bridge"):
            raise GuestXmlError(element="interface", problem=f"unsupported type {net_type!r}")
        mac = _attr(el.find("mac"), "address")
        if mac is None:
            raise GuestXmlError(element="interface", problem="missing <mac address=...>")
        target = el.find("target")
        managed = _attr(target, "managed")
        mtu = _attr(el.find("mtu"), "size")
        return cls(
            net_type=net_type,  # type: ignore[arg-type]
            mac=mac,
            model=_attr(el.find("model"), "type") or "virtio",
            target_dev=_attr(target, "dev"),
            managed=None if managed is None else managed == "yes",
            source_bridge=_attr(el.find("source"), "bridge"),
            mtu=int(mtu) if mtu is not None else None,
        )


@dataclass
class SerialFile(ConfigObject):
    """The first serial port, written to a file: the instance's console log."""

    root_name: ClassVar[str] = "serial"
    path: str
    port: int = 0

    def format_dom(self) -> ET.Element:
        root = ET.Element("serial", {"type": "file"})
        _sub(root, "source", path=self.path)
        _sub(root, "target", port=str(self.port))
        return root

    @classmethod
    def parse_dom(cls, el: ET.Element) -> SerialFile:
        path = _attr(el.find("source"), "path")
        if el.get("type") != "file" or path is None:
            raise GuestXmlError(element="serial", problem="only file serial ports are modelled")
        return cls(path=path, port=int(_attr(el.find("target"), "port") or "0"))


# --------------------------------------------------------------------------- guest


@dataclass
class Guest(ConfigObject):
    root_name: ClassVar[str] = "domain"
    virt_type: str
    name: str
    uuid: str
    memory_kib: int
    vcpus: int
    os: OsBoot = field(default_factory=OsBoot)
    cpu: Cpu | None = None
    # Hypervisor features by name, each rendered as an empty element (`<acpi/>`).
    features: list[str] = field(default_factory=list)
    disks: list[Disk] = field(default_factory=list)
    interfaces: list[Interface] = field(default_factory=list)
    serials: list[SerialFile] = field(default_factory=list)
    metadata: InstanceMetadata | None = None
    on_poweroff: str = "destroy"
    on_reboot: str = "restart"
    on_crash: str = "destroy"

    def format_dom(self) -> ET.Element:
        root = ET.Element("domain", {"type": self.virt_type})
        _sub(root, "name", self.name)
        _sub(root, "uuid", self.uuid)
        if self.metadata is not None:
            _sub(root, "metadata").append(self.metadata.format_dom())
        _sub(root, "memory", str(self.memory_kib), unit="KiB")
        _sub(root, "vcpu", str(self.vcpus))
        root.append(self.os.format_dom())
        if self.features:
            features = _sub(root, "features")
            for name in self.features:
                _sub(features, name)
        if self.cpu is not None:
            root.append(self.cpu.format_dom())
        _sub(root, "on_poweroff", self.on_poweroff)
        _sub(root, "on_reboot", self.on_reboot)
        _sub(root, "on_crash", self.on_crash)
        devices = _sub(root, "devices")
        for device in (*self.disks, *self.interfaces, *self.serials):
            devices.append(device.format_dom())
        return root

    @classmethod
    def parse_dom(cls, el: ET.Element) -> Guest:
        if el.tag != "domain":
            raise GuestXmlError(element=el.tag, problem="not a <domain>")
        memory = el.find("memory")
        unit = (memory.get("unit") if memory is not None else None) or "KiB"
        scale = {"KiB": 1, "k": 1, "MiB": 1024, "M": 1024, "GiB": 1024 * 1024, "G": 1024 * 1024}
        if unit not in scale:
            raise GuestXmlError(element="memory", problem=f"unknown unit {unit!r}")
        os_el = el.find("os")
        cpu_el = el.find("cpu")
        features_el = el.find("features")
        meta_el = el.find(f"metadata/{_q('instance')}")
        devices = el.find("devices")
        try:
            return cls(
                virt_type=el.get("type", ""),
                name=_need(el, "name"),
                uuid=_need(el, "uuid"),
                memory_kib=int(_need(el, "memory")) * scale[unit],
                vcpus=int(_need(el, "vcpu")),
                os=OsBoot.parse_dom(os_el) if os_el is not None else OsBoot(),
                cpu=Cpu.parse_dom(cpu_el) if cpu_el is not None else None,
                features=[f.tag for f in features_el] if features_el is not None else [],
                disks=[
                    Disk.parse_dom(d)
                    for d in (devices.iterfind("disk") if devices is not None else ())
                ],
                interfaces=[
                    Interface.parse_dom(i)
                    for i in (devices.iterfind("interface") if devices is not None else ())
                    if i.get("type") in ("ethernet", "bridge")
                ],
                serials=[
                    SerialFile.parse_dom(s)
                    for s in (devices.iterfind("serial") if devices is not None else ())
                    if s.get("type") == "file"
                ],
                metadata=InstanceMetadata.parse_dom(meta_el) if meta_el is not None else None,
                on_poweroff=_text(el, "on_poweroff", "destroy") or "destroy",
                on_reboot=_text(el, "on_reboot", "restart") or "restart",
                on_crash=_text(el, "on_crash", "destroy") or "destroy",
            )
        except ValueError as err:
            raise GuestXmlError(element="domain", problem=f"bad value: {err}") from err


def parse_guest(xml: str) -> Guest:
    """Parse a domain XML document (as libvirt's XMLDesc returns it)."""
    try:
        return Guest.parse_dom(ET.fromstring(xml))
    except ET.ParseError as err:
        raise GuestXmlError(element="domain", problem=f"not well-formed: {err}") from err


def interface_macs(xml: str) -> set[str]:
    """MAC addresses of every `<interface>` of a domain XML (any type), lower-cased.

    Reads only the interfaces, so it accepts a live XML with devices this model does not
    know (QEMU's controllers, aliases, addresses)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as err:
        raise GuestXmlError(element="domain", problem=f"not well-formed: {err}") from err
    return {
        mac.lower()
        for el in root.iterfind("devices/interface/mac")
        if (mac := el.get("address")) is not None
    }


def parse_metadata(xml: str) -> InstanceMetadata:
    """Parse the instance record element alone (libvirt's `metadata()` returns just it)."""
    try:
        el = ET.fromstring(xml)
    except ET.ParseError as err:
        raise GuestXmlError(element="instance", problem=f"not well-formed: {err}") from err
    if el.tag == "instance":
        # libvirt's virDomainGetMetadata returns the element without its namespace;
        # re-home it so one parser reads both spellings.
        for node in el.iter():
            if not node.tag.startswith("{"):
                node.tag = _q(node.tag)
    return InstanceMetadata.parse_dom(el)
