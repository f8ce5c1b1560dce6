"""The libvirt edge: the only module of the project that imports libvirt.

It owns the connection (test:///default, qemu:///embed?root=DIR, qemu:///system), the
event loop thread that the embed driver needs, and a handful of domain operations
keyed by the instance uuid (which is the domain uuid), each turning libvirtError into
a typed HypervisorError that names the operation and the instance.

It must not decide anything: no XML building, no metadata parsing beyond "is there an
element in our namespace", no retries, no notifications.

Facts it relies on (docs/platform.md):
- qemu:///embed runs the QEMU driver in this process and needs an event loop:
  virEventRegisterDefaultImpl() before opening, then virEventRunDefaultImpl() in a
  thread. Its root needs etc/qemu.conf with stdio_handler="file" (no virtlogd) and
  user/group root (else capabilities are re-probed for ~48 s).
- right after reconnecting to a running embed QEMU, destroy() may raise "domain is not
  running" while it does kill QEMU: check isActive() rather than trusting the error.
- libvirt connections are thread-safe; one connection serves every build thread.
- the QEMU driver puts each guest's monitor socket at
  `<root>/lib/qemu/domain-<id>-<name[:20]>/monitor.sock` (embed; libvirt's short domain
  name keeps 20 characters of the name), and a unix socket path must fit sun_path
  (108 bytes with its NUL): a longer embed root makes every start fail, so it is
  refused at connect.
- detachDeviceFlags(AFFECT_LIVE) asks the guest to release the device (ACPI PCI
  hot-unplug) and waits up to 5 s for QEMU's DEVICE_DELETED; it may return before the
  device is gone, so callers check the live XML before attaching it again.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit
from uuid import UUID

import libvirt
import structlog

from agents.compute.errors import HypervisorError, HypervisorUnavailable
from agents.compute.records import Domain
from common.messages import InstanceState

log = structlog.get_logger()

_STATES: dict[int, InstanceState] = {
    libvirt.VIR_DOMAIN_NOSTATE: "unknown",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "running",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "running",  # shutting down: still running until it is off
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "paused",
}

EMBED_QEMU_CONF = """\
# Written by compute-agent for its qemu:///embed root (see docs/platform.md).
stdio_handler = "file"
user = "root"
group = "root"
# Debian builds default these to a group "libvirt-qemu" that may not exist (the user of
# that name belongs to group kvm); opening the driver then fails.
swtpm_user = "root"
swtpm_group = "root"
"""

# sun_path of struct sockaddr_un is 108 bytes, the terminating NUL included.
UNIX_PATH_MAX = 108
# The longest domain id libvirt hands out (an int) and the short name it keeps.
_MAX_DOMAIN_ID = 2**31 - 1
_SHORT_NAME_MAX = 20


def embed_root(uri: str) -> Path | None:
    parts = urlsplit(uri)
    if parts.scheme != "qemu" or parts.path != "/embed":
        return None
    root = parse_qs(parts.query).get("root", [""])[0]
    return Path(root) if root else None


def monitor_socket_path(root: Path, domain_id: int = _MAX_DOMAIN_ID) -> str:
    """The longest QEMU monitor socket path a guest of this embed root can get."""
    short = "x" * _SHORT_NAME_MAX  # our domain names are longer than 20 characters
    return f"{root}/lib/qemu/domain-{domain_id}-{short}/monitor.sock"


def check_embed_root(root: Path) -> None:
    """Refuse an embed root under which QEMU's monitor socket could not be bound."""
    longest = monitor_socket_path(root)
    if len(longest.encode()) >= UNIX_PATH_MAX:
        raise HypervisorUnavailable(
            uri=f"qemu:///embed?root={root}",
            problem=(
                f"the embed root {root} is too long: a guest's QEMU monitor socket can be "
                f"{longest} ({len(longest.encode())} bytes, with the longest domain id and "
                f"libvirt's 20-character short name), over the {UNIX_PATH_MAX}-byte "
                "limit of a unix socket path (sun_path, with its NUL); choose a root of at "
                f"most {UNIX_PATH_MAX - 1 - (len(longest.encode()) - len(str(root).encode()))}"
                " bytes"
            ),
        )


class _EventLoop:
    """virEventRunDefaultImpl in a daemon thread, woken every second to notice stop()."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        libvirt.virEventRegisterDefaultImpl()
        # A periodic no-op timer makes each run of the loop return at least once a second.
        libvirt.virEventAddTimeout(1000, lambda _timer, _opaque: None, None)
        self._thread = threading.Thread(target=self._run, name="libvirt-events", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if libvirt.virEventRunDefaultImpl() < 0:
                log.error("libvirt_event_loop_failed")
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)


class Hypervisor:
    def __init__(self, uri: str, domain_type: str = "test") -> None:
        self.uri = uri
        self.domain_type = domain_type
        self._conn: libvirt.virConnect | None = None
        self._loop: _EventLoop | None = None

    # ------------------------------------------------------------------ connection

    def connect(self) -> None:
        # libvirt prints every error to stderr by default, including the expected
        # "metadata not found" of domains that are not ours; errors reach us as
        # exceptions anyway.
        libvirt.registerErrorHandler(_ignore_error, None)
        root = embed_root(self.uri)
        if root is not None:
            check_embed_root(root)
            conf = root / "etc" / "qemu.conf"
            if not conf.exists():
                conf.parent.mkdir(parents=True, exist_ok=True)
                conf.write_text(EMBED_QEMU_CONF, encoding="utf-8")
                log.info("embed_qemu_conf_written", path=str(conf))
            self._loop = _EventLoop()
            self._loop.start()
        try:
            self._conn = libvirt.open(self.uri)
            if self.domain_type != "test":
                # The QEMU driver probes the emulator's capabilities on first use (about
                # 4 s for a fresh embed root): do it now, before the agent says READY,
                # rather than in the first build; it also refuses a domain type this
                # host cannot run before any build is accepted.
                started = time.monotonic()
                self._conn.getDomainCapabilities(None, None, None, self.domain_type)
                log.info(
                    "libvirt_capabilities_probed",
                    domain_type=self.domain_type,
                    elapsed_ms=round((time.monotonic() - started) * 1000, 1),
                )
        except libvirt.libvirtError as err:
            if self._loop is not None:
                self._loop.stop()
            problem = _msg(err)
            if "Failed to parse group 'libvirt-qemu'" in problem:
                # libvirt's QEMU driver resolves its compiled-in default group before it
                # reads qemu.conf, so the group must exist even when guests run as root.
                problem += " (the QEMU driver needs that group: groupadd --system libvirt-qemu)"
            raise HypervisorUnavailable(uri=self.uri, problem=problem) from err

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except libvirt.libvirtError as err:
                log.warning("libvirt_close_failed", error=_msg(err))
            self._conn = None
        if self._loop is not None:
            self._loop.stop()
            self._loop = None

    def alive(self) -> bool:
        try:
            return self._conn is not None and bool(self._conn.isAlive())
        except libvirt.libvirtError:
            return False

    @property
    def conn(self) -> libvirt.virConnect:
        if self._conn is None:
            raise HypervisorUnavailable(uri=self.uri, problem="not connected")
        return self._conn

    # ------------------------------------------------------------------ domains

    def _lookup(self, uuid: UUID) -> libvirt.virDomain | None:
        try:
            return self.conn.lookupByUUIDString(str(uuid))
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise HypervisorError(
                operation="lookup", instance=str(uuid), problem=_msg(err)
            ) from err

    def _need(self, uuid: UUID, operation: str) -> libvirt.virDomain:
        dom = self._lookup(uuid)
        if dom is None:
            raise HypervisorError(operation=operation, instance=str(uuid), problem="no such domain")
        return dom

    def define(self, uuid: UUID, xml: str) -> None:
        try:
            self.conn.defineXML(xml)
        except libvirt.libvirtError as err:
            raise HypervisorError(
                operation="define", instance=str(uuid), problem=_msg(err)
            ) from err

    def start(self, uuid: UUID) -> None:
        dom = self._need(uuid, "start")
        try:
            dom.create()
        except libvirt.libvirtError as err:
            raise HypervisorError(operation="start", instance=str(uuid), problem=_msg(err)) from err

    def destroy(self, uuid: UUID) -> bool:
        """Stop the guest if it runs; True if it was running."""
        dom = self._lookup(uuid)
        if dom is None or not dom.isActive():
            return False
        try:
            dom.destroy()
        except libvirt.libvirtError as err:
            if dom.isActive():  # see module docstring: the error may be a false alarm
                raise HypervisorError(
                    operation="destroy", instance=str(uuid), problem=_msg(err)
                ) from err
        return True

    def undefine(self, uuid: UUID) -> bool:
        """Remove the definition; True if there was one."""
        dom = self._lookup(uuid)
        if dom is None:
            return False
        try:
            # Plain undefine: our domains have no NVRAM or snapshots, and the test
            # driver refuses the NVRAM flag.
            dom.undefine()
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return False
            raise HypervisorError(
                operation="undefine", instance=str(uuid), problem=_msg(err)
            ) from err
        return True

    def reboot(self, uuid: UUID, hard: bool) -> None:
        dom = self._need(uuid, "reboot")
        try:
            if hard:
                # reset() is not offered by every driver (test); destroy+create is.
                if dom.isActive():
                    dom.destroy()
                dom.create()
            else:
                dom.reboot(0)
        except libvirt.libvirtError as err:
            raise HypervisorError(
                operation="reboot", instance=str(uuid), problem=_msg(err)
            ) from err

    def live_xml(self, uuid: UUID) -> str | None:
        """The running guest's XML (devices as QEMU has them now); None if not running."""
        dom = self._lookup(uuid)
        if dom is None:
            return None
        try:
            return str(dom.XMLDesc(0)) if dom.isActive() else None
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise HypervisorError(
                operation="live_xml", instance=str(uuid), problem=_msg(err)
            ) from err

    def detach_device(self, uuid: UUID, device_xml: str) -> None:
        """Ask the running guest to release a device (see module docstring: may return
        before it is gone)."""
        dom = self._need(uuid, "detach_device")
        try:
            dom.detachDeviceFlags(device_xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError as err:
            raise HypervisorError(
                operation="detach_device", instance=str(uuid), problem=_msg(err)
            ) from err

    def attach_device(self, uuid: UUID, device_xml: str) -> None:
        """Hot-plug a device into the running guest (the definition is left as it is)."""
        dom = self._need(uuid, "attach_device")
        try:
            dom.attachDeviceFlags(device_xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        except libvirt.libvirtError as err:
            raise HypervisorError(
                operation="attach_device", instance=str(uuid), problem=_msg(err)
            ) from err

    def set_metadata(self, uuid: UUID, element_xml: str, prefix: str, namespace: str) -> None:
        """Replace our metadata element, on the definition (and the live guest if running)."""
        dom = self._need(uuid, "set_metadata")
        flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
        if dom.isActive():
            flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
        try:
            dom.setMetadata(
                libvirt.VIR_DOMAIN_METADATA_ELEMENT, element_xml, prefix, namespace, flags
            )
        except libvirt.libvirtError as err:
            raise HypervisorError(
                operation="set_metadata", instance=str(uuid), problem=_msg(err)
            ) from err

    def get(self, uuid: UUID) -> Domain | None:
        dom = self._lookup(uuid)
        return None if dom is None else self._view(dom, uuid)

    def list_with_metadata(self, namespace: str) -> list[Domain]:
        """Every domain carrying an element in `namespace`; others are never returned."""
        found = []
        try:
            domains = self.conn.listAllDomains()
        except libvirt.libvirtError as err:
            raise HypervisorError(operation="list", instance="*", problem=_msg(err)) from err
        for dom in domains:
            try:
                dom.metadata(
                    libvirt.VIR_DOMAIN_METADATA_ELEMENT, namespace, libvirt.VIR_DOMAIN_AFFECT_CONFIG
                )
            except libvirt.libvirtError:
                continue  # no metadata of ours (or it vanished meanwhile): not ours
            view = self._view(dom, UUID(dom.UUIDString()))
            if view is not None:
                found.append(view)
        return found

    def _view(self, dom: libvirt.virDomain, uuid: UUID) -> Domain | None:
        try:
            state, _reason = dom.state()
            return Domain(
                uuid=uuid,
                name=dom.name(),
                state=_STATES.get(state, "unknown"),
                active=bool(dom.isActive()),
                xml=dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE),
            )
        except libvirt.libvirtError as err:
            if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None  # undefined while we looked
            raise HypervisorError(
                operation="inspect", instance=str(uuid), problem=_msg(err)
            ) from err


def _ignore_error(_ctx: object, _err: object) -> None:
    return None


def _msg(err: libvirt.libvirtError) -> str:
    return str(err.get_error_message() or err)
