"""Re-plugging a running guest's NIC (replug.py) through the manager, on the test driver.

libvirt's test driver has no device hot-plug (virDomainDetachDeviceFlags/Attach: "not
supported by the connection driver"), so `HotplugTestDriver` is the real test-driver edge
with only those two operations emulated, statefully: a detach takes a few reads of the
live XML to complete (QEMU's DEVICE_DELETED arrives after the call returns), an attach of
a NIC that is still there is refused, and an attach makes "QEMU" read the tap again.
`Taps` stands for the kernel: which tap has a reader. Everything else (domains, states,
metadata records, the manager, the locks) is real.
"""

from __future__ import annotations

import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from agents.compute import vif
from agents.compute.errors import HypervisorError
from agents.compute.hypervisor import Hypervisor
from agents.compute.images import ImageStore
from agents.compute.manager import ComputeManager
from agents.compute.replug import REPLUG_ERROR, REPLUGGED
from agents.compute.reporter import Reporter
from agents.compute.settings import ComputeConfig, ComputeSettings
from agents.compute.telemetry import ComputeMetrics
from agents.compute.waiter import VifWaiter
from common.config import DefaultSettings, load
from common.messages import InstanceSpec, VifEvent
from common.metrics import Registry

from .conftest import SHARED_CONF
from .test_manager import END, HOST, NODE_XML, RecordingNotifier, build_msg, spec

pytestmark = pytest.mark.functional


class Taps:
    """The kernel's answer to "does anyone read this tap": True, False, None (no link)."""

    def __init__(self) -> None:
        self.readers: dict[str, bool] = {}

    def has_reader(self, device: str) -> bool | None:
        return self.readers.get(device)


class HotplugTestDriver(Hypervisor):
    def __init__(self, uri: str, taps: Taps) -> None:
        super().__init__(uri)
        self.taps = taps
        self.calls: list[tuple[str, UUID, str]] = []
        self.gone: dict[UUID, set[str]] = {}  # MACs detached from the live guest
        self.releasing: dict[tuple[UUID, str], int] = {}  # live-XML reads until gone
        self.release_after = 3
        self.guest_releases = True  # False: a guest that ignores ACPI hot-unplug
        self.lock = threading.Lock()

    def live_xml(self, uuid: UUID) -> str | None:
        xml = super().live_xml(uuid)
        if xml is None:
            return None
        with self.lock:
            for key in list(self.releasing):
                if key[0] == uuid and self.guest_releases:
                    self.releasing[key] -= 1
                    if self.releasing[key] <= 0:
                        del self.releasing[key]
                        self.gone.setdefault(uuid, set()).add(key[1])
            gone = self.gone.get(uuid, set())
        root = ET.fromstring(xml)
        devices = root.find("devices")
        assert devices is not None
        for iface in list(devices.iterfind("interface")):
            mac = iface.find("mac")
            if mac is not None and mac.get("address", "").lower() in gone:
                devices.remove(iface)
        return ET.tostring(root, encoding="unicode")

    def detach_device(self, uuid: UUID, device_xml: str) -> None:
        mac, _tap = _nic(device_xml)
        self.calls.append(("detach", uuid, mac))
        with self.lock:
            if mac in self.gone.get(uuid, set()):
                raise HypervisorError(
                    operation="detach_device", instance=str(uuid), problem="no such device"
                )
            self.releasing[(uuid, mac)] = self.release_after

    def attach_device(self, uuid: UUID, device_xml: str) -> None:
        mac, tap = _nic(device_xml)
        self.calls.append(("attach", uuid, mac))
        with self.lock:
            if mac not in self.gone.get(uuid, set()):
                raise HypervisorError(
                    operation="attach_device", instance=str(uuid), problem="duplicate MAC"
                )
            self.gone[uuid].discard(mac)
        self.taps.readers[tap] = True  # QEMU opened the tap it was given


def _nic(device_xml: str) -> tuple[str, str]:
    el = ET.fromstring(device_xml)
    mac, target = el.find("mac"), el.find("target")
    assert mac is not None and target is not None
    return mac.get("address", "").lower(), target.get("dev", "")


@pytest.fixture
def taps() -> Taps:
    return Taps()


@pytest.fixture
def hv(tmp_path: Path, taps: Taps) -> Iterator[HotplugTestDriver]:
    node = tmp_path / "node.xml"
    node.write_text(NODE_XML)
    hypervisor = HotplugTestDriver(f"test://{node}", taps)
    hypervisor.connect()
    yield hypervisor
    hypervisor.close()


@pytest.fixture
def agent(
    hv: HotplugTestDriver, taps: Taps, tmp_path: Path
) -> Iterator[tuple[ComputeManager, RecordingNotifier]]:
    import subprocess

    images = tmp_path / "images"
    images.mkdir()
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(images / "tiny.qcow2"), "16M"], check=True
    )
    settings = ComputeSettings(
        libvirt_uri=hv.uri,
        domain_type="test",
        image_dir=images,
        instances_dir=tmp_path / "instances",
        vif_plugging_timeout=5,
    )
    config = load(ComputeConfig, [SHARED_CONF]).model_copy(
        update={"compute": settings, "DEFAULT": DefaultSettings(host=HOST)}
    )
    notes = RecordingNotifier()
    manager = ComputeManager(
        config=config,
        hypervisor=hv,
        images=ImageStore(images, settings.instances_dir),
        waiter=VifWaiter(),
        reporter=Reporter(notes, HOST),
        metrics=ComputeMetrics(Registry("t")),
        version="9.9-test",
        taps=taps,
    )
    manager.replugger.sleep = lambda _s: time.sleep(0.005)
    yield manager, notes
    manager.drain(0)


Agent = tuple[ComputeManager, RecordingNotifier]


def plugged(s: InstanceSpec, at: datetime | None = None, with_instance: bool = True) -> VifEvent:
    p = s.ports[0]
    return VifEvent(
        host=HOST,
        port_id=p.id,
        network_id=p.network_id,
        instance_uuid=s.uuid if with_instance else None,
        device=vif.tap_name(p.id),
        **({"at": at} if at is not None else {}),
    )


def running_guest(agent: Agent, taps: Taps) -> InstanceSpec:
    """A built guest whose QEMU reads its tap, as after a normal build."""
    manager, notes = agent
    s = spec(ports=1)
    tap = vif.tap_name(s.ports[0].id)
    taps.readers[tap] = False  # the l2-agent made it; nobody reads it yet
    manager.on_vif_event("port.vif_plugged", plugged(s))
    manager.build_instance({}, payload=build_msg(s))
    assert notes.wait(s.uuid, END).state == "running"
    taps.readers[tap] = True  # QEMU opened it
    return s


def replug_count(manager: ComputeManager, result: str) -> float:
    return manager.metrics.replugs.labels(result)._value.get()  # type: ignore[no-any-return]


def settle(manager: ComputeManager, workers: int = 2) -> None:
    """Wait until the re-plug pool finished everything queued so far: one barrier task
    per worker can only all run once every worker is done with earlier work (FIFO)."""
    barrier = threading.Barrier(workers + 1)
    for _ in range(workers):
        manager.replugger._pool.submit(barrier.wait, 10)
    barrier.wait(10)


def wait_until(cond: Callable[[], Any], timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := cond()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
    return result


# ----------------------------------------------------------------------------- tests


def test_recreated_tap_gets_the_nic_replugged(
    agent: Agent, hv: HotplugTestDriver, taps: Taps
) -> None:
    manager, notes = agent
    s = running_guest(agent, taps)
    tap, mac = vif.tap_name(s.ports[0].id), s.ports[0].mac
    # The tap is deleted under QEMU and the l2-agent re-creates it: no reader now.
    taps.readers[tap] = False
    manager.on_vif_event("port.vif_plugged", plugged(s))
    ev = notes.wait(s.uuid, {REPLUGGED, REPLUG_ERROR})
    assert notes.types(s.uuid)[-1] == REPLUGGED, ev.reason
    assert ev.state == "running" and ev.elapsed_ms is not None and tap in (ev.reason or "")
    assert [c[0] for c in hv.calls] == ["detach", "attach"]
    assert hv.calls[0][2] == mac
    live = hv.live_xml(s.uuid)
    assert live is not None and mac in live
    assert taps.readers[tap] is True
    assert replug_count(manager, "replugged") == 1


def test_tap_recreated_while_the_guest_was_started_is_replugged_when_the_build_ends(
    agent: Agent, hv: HotplugTestDriver, taps: Taps
) -> None:
    """Found by the fault table: a tap deleted and re-created while QEMU was starting.
    The event arrives during the build (taken by its vif wait), QEMU holds the old tap;
    only a look at the end of the build sees that nobody reads the new one."""
    manager, notes = agent
    s = spec(ports=1)
    tap = vif.tap_name(s.ports[0].id)
    taps.readers[tap] = False
    manager.build_instance({}, payload=build_msg(s))
    notes.wait(s.uuid, {"instance.create.start"})
    manager.on_vif_event("port.vif_plugged", plugged(s))  # the build's own report
    manager.on_vif_event("port.vif_plugged", plugged(s))  # the tap was made again
    assert notes.wait(s.uuid, END).state == "running"
    ev = notes.wait(s.uuid, {REPLUGGED, REPLUG_ERROR})
    assert notes.types(s.uuid)[-1] == REPLUGGED, ev.reason
    assert [c[0] for c in hv.calls] == ["detach", "attach"]


def test_tap_still_read_is_left_alone(agent: Agent, hv: HotplugTestDriver, taps: Taps) -> None:
    """An l2-agent restart re-reports every port; taps QEMU still reads are not touched."""
    manager, notes = agent
    s = running_guest(agent, taps)
    for _ in range(3):
        manager.on_vif_event("port.vif_plugged", plugged(s))
    settle(manager)
    assert hv.calls == []
    assert not [t for t in notes.types(s.uuid) if t.startswith("instance.interface")]
    assert manager.replugger.check(plugged(s)) == "attached"


def test_repeated_events_replug_once(agent: Agent, hv: HotplugTestDriver, taps: Taps) -> None:
    manager, notes = agent
    s = running_guest(agent, taps)
    taps.readers[vif.tap_name(s.ports[0].id)] = False
    for _ in range(5):
        manager.on_vif_event("port.vif_plugged", plugged(s))
    notes.wait(s.uuid, {REPLUGGED})
    settle(manager)
    assert [c[0] for c in hv.calls] == ["detach", "attach"]
    assert notes.types(s.uuid).count(REPLUGGED) == 1


def test_event_without_instance_uuid_finds_its_owner(
    agent: Agent, hv: HotplugTestDriver, taps: Taps
) -> None:
    manager, _notes = agent
    s = running_guest(agent, taps)
    taps.readers[vif.tap_name(s.ports[0].id)] = False
    assert manager.replugger.check(plugged(s, with_instance=False)) == "replugged"


def test_the_builds_own_event_never_replugs(
    agent: Agent, hv: HotplugTestDriver, taps: Taps
) -> None:
    manager, _notes = agent
    s = running_guest(agent, taps)
    taps.readers[vif.tap_name(s.ports[0].id)] = False
    # emitted before the guest started: the event its build waited for, delivered late
    old = datetime.now(UTC) - timedelta(hours=1)
    assert manager.replugger.check(plugged(s, at=old)) == "older_than_guest"
    assert hv.calls == []


def test_no_replug_during_a_build(agent: Agent, hv: HotplugTestDriver, taps: Taps) -> None:
    manager, notes = agent
    s = spec(ports=1)
    taps.readers[vif.tap_name(s.ports[0].id)] = False
    manager.build_instance({}, payload=build_msg(s))  # waits for its vif event
    wait_until(lambda: manager.table.get(s.uuid))
    assert manager.replugger.check(plugged(s)) == "building"
    assert hv.calls == []
    manager.on_vif_event("port.vif_plugged", plugged(s))  # completes the build
    assert notes.wait(s.uuid, END).state == "running"
    assert replug_count(manager, "building") == 1
    # (after the build, a tap nobody reads is looked at again: the next test)


def test_skipped_when_not_running_not_ours_or_no_tap(
    agent: Agent, hv: HotplugTestDriver, taps: Taps
) -> None:
    manager, _ = agent
    s = running_guest(agent, taps)
    tap = vif.tap_name(s.ports[0].id)
    stranger = spec(ports=1)
    taps.readers[vif.tap_name(stranger.ports[0].id)] = False
    assert manager.replugger.check(plugged(stranger)) == "not_ours"
    assert manager.replugger.check(plugged(stranger, with_instance=False)) == "not_ours"
    del taps.readers[tap]
    assert manager.replugger.check(plugged(s)) == "tap_missing"
    taps.readers[tap] = False
    hv.destroy(s.uuid)
    assert manager.replugger.check(plugged(s)) == "not_running"
    assert hv.calls == []


def test_guest_that_keeps_its_nic_is_restarted_onto_the_new_tap(
    agent: Agent, hv: HotplugTestDriver, taps: Taps
) -> None:
    """No ACPI hot-unplug answer (a booting or slow guest): the guest would run on, cut
    off from a tap that no longer exists; a restart reopens every tap by name."""
    manager, notes = agent
    manager.replugger.removal_timeout = 0.3
    s = running_guest(agent, taps)
    taps.readers[vif.tap_name(s.ports[0].id)] = False
    hv.guest_releases = False
    manager.on_vif_event("port.vif_plugged", plugged(s))
    ev = notes.wait(s.uuid, {REPLUGGED, REPLUG_ERROR})
    assert notes.types(s.uuid)[-1] == REPLUGGED and ev.step == "restarted"
    assert "did not release its NIC" in (ev.reason or "")
    assert ev.state == "running"
    assert [c[0] for c in hv.calls] == ["detach"]
    dom = hv.get(s.uuid)
    assert dom is not None and dom.active  # destroyed and started again


def test_delete_waits_for_the_replug_and_wins(
    agent: Agent, hv: HotplugTestDriver, taps: Taps
) -> None:
    """Serialised per instance: a delete arriving mid-replug runs after it, and a replug
    queued behind a delete finds nothing to do."""
    from common.messages import DeleteInstance, new_request_id

    manager, notes = agent
    s = running_guest(agent, taps)
    taps.readers[vif.tap_name(s.ports[0].id)] = False
    settle(manager)
    before = replug_count(manager, "not_ours")  # the build's own early event counted there
    with manager.table.locked(s.uuid):  # as a delete/reboot in progress would
        manager.on_vif_event("port.vif_plugged", plugged(s))
        time.sleep(0.1)
        assert hv.calls == []  # the replug waits for the instance's lock
        hv.destroy(s.uuid)
        hv.undefine(s.uuid)
    settle(manager)
    assert hv.calls == []
    assert replug_count(manager, "not_ours") == before + 1
    manager.delete_instance(
        {}, payload=DeleteInstance(request_id=new_request_id(), host=HOST, instance_uuid=s.uuid)
    )
    notes.wait(s.uuid, {"instance.delete.end"})
