"""The compute manager in-process against a private libvirt test driver.

Each test opens `test:///<tmp>/node.xml`: a driver state of its own (not the
process-wide test:///default), holding one running domain that this agent does not own,
which must never be touched. Notifications go to a small recording notifier; images
and qemu-img are real.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agents.compute import driver
from agents.compute.errors import HypervisorError, InstanceNotFound
from agents.compute.hypervisor import Hypervisor
from agents.compute.images import DiskImage, ImageStore
from agents.compute.manager import ComputeManager
from agents.compute.reporter import Reporter
from agents.compute.settings import ComputeConfig, ComputeSettings
from agents.compute.telemetry import ComputeMetrics
from agents.compute.waiter import VifWaiter
from common.config import DefaultSettings, Flavor, load
from common.messages import (
    BuildInstance,
    DeleteInstance,
    InstanceEvent,
    InstanceRef,
    InstanceSpec,
    Message,
    MessageRejected,
    Port,
    RebootInstance,
    VifEvent,
    envelope,
    new_request_id,
)
from common.metrics import Registry

from .conftest import NET1, SHARED_CONF

pytestmark = pytest.mark.functional

HOST = "node-t"
FOREIGN = uuid.UUID("6695eb01-f6a4-8304-79aa-97f2502e1111")
NODE_XML = f"""<node>
  <domain type='test'>
    <name>not-ours</name>
    <uuid>{FOREIGN}</uuid>
    <memory>8192</memory>
    <vcpu>1</vcpu>
    <os><type>hvm</type></os>
  </domain>
</node>
"""


class RecordingNotifier:
    """Keeps every notification; `wait()` blocks until a matching one arrived."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, Message]] = []
        self._cond = threading.Condition()

    def info(self, event_type: str, payload: Message, request_id: str | None = None) -> None:
        self._add("info", event_type, payload)

    def error(self, event_type: str, payload: Message, request_id: str | None = None) -> None:
        self._add("error", event_type, payload)

    def _add(self, priority: str, event_type: str, payload: Message) -> None:
        with self._cond:
            self.events.append((priority, event_type, payload))
            self._cond.notify_all()

    def of(self, instance: uuid.UUID) -> list[tuple[str, InstanceEvent]]:
        with self._cond:
            return [
                (t, p)
                for _, t, p in self.events
                if isinstance(p, InstanceEvent | MessageRejected) and p.instance_uuid == instance
            ]

    def types(self, instance: uuid.UUID) -> list[str]:
        return [t for t, _ in self.of(instance)]

    def wait(
        self, instance: uuid.UUID, event_types: set[str], timeout: float = 10
    ) -> InstanceEvent:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for t, p in self.of(instance):
                    if t in event_types:
                        return p
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no {event_types} for {instance}: {self.types(instance)}")
                self._cond.wait(remaining)


@pytest.fixture
def hv(tmp_path: Path) -> Iterator[Hypervisor]:
    node = tmp_path / "node.xml"
    node.write_text(NODE_XML)
    hypervisor = Hypervisor(f"test://{node}")
    hypervisor.connect()
    yield hypervisor
    hypervisor.close()


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    import subprocess

    images = tmp_path / "images"
    images.mkdir()
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(images / "tiny.qcow2"), "16M"], check=True
    )
    return images


Factory = Callable[..., tuple[ComputeManager, RecordingNotifier]]


@pytest.fixture
def make(hv: Hypervisor, image_dir: Path, tmp_path: Path) -> Iterator[Factory]:
    made: list[ComputeManager] = []
    shared = load(ComputeConfig, [SHARED_CONF])

    def factory(**compute: Any) -> tuple[ComputeManager, RecordingNotifier]:
        settings = ComputeSettings(
            libvirt_uri=hv.uri,
            domain_type="test",
            image_dir=image_dir,
            instances_dir=tmp_path / "instances",
            vif_plugging_timeout=compute.pop("vif_plugging_timeout", 5),
            **compute,
        )
        config = shared.model_copy(
            update={"compute": settings, "DEFAULT": DefaultSettings(host=HOST)}
        )
        notifier = RecordingNotifier()
        manager = ComputeManager(
            config=config,
            hypervisor=hv,
            images=ImageStore(image_dir, settings.instances_dir),
            waiter=VifWaiter(),
            reporter=Reporter(notifier, HOST),
            metrics=ComputeMetrics(Registry("t")),
            version="9.9-test",
        )
        made.append(manager)
        return manager, notifier

    yield factory
    for manager in made:
        manager.drain(0)


def spec(ports: int = 1, **kw: Any) -> InstanceSpec:
    iid = uuid.uuid4()
    return InstanceSpec(
        uuid=iid,
        name=kw.pop("name", "vm-" + iid.hex[:6]),
        flavor=kw.pop("flavor", "m1.tiny"),
        image=kw.pop("image", "tiny"),
        ports=[
            Port(id=uuid.uuid4(), network_id=NET1, mac=f"fa:16:3e:00:00:{n:02x}", instance_uuid=iid)
            for n in range(ports)
        ],
        **kw,
    )


def build_msg(s: InstanceSpec, host: str = HOST) -> BuildInstance:
    return BuildInstance(request_id=new_request_id(), host=host, instance=s)


def plug(manager: ComputeManager, s: InstanceSpec, event_type: str = "port.vif_plugged") -> None:
    for p in s.ports:
        manager.on_vif_event(event_type, VifEvent(host=HOST, port_id=p.id, reason="test"))


def delete(manager: ComputeManager, iid: uuid.UUID) -> None:
    manager.delete_instance(
        {}, payload=DeleteInstance(request_id=new_request_id(), host=HOST, instance_uuid=iid)
    )


END = {"instance.create.end", "instance.create.error"}


def raised(err: BaseException) -> BaseException:
    """The error a call endpoint raised: expected errors travel wrapped for oslo's
    dispatcher (common.rpc.expected_errors), which answers the caller with the original."""
    exc_info = getattr(err, "exc_info", None)
    return exc_info[1] if exc_info else err


def foreign_untouched(hv: Hypervisor) -> None:
    dom = hv.get(FOREIGN)
    assert dom is not None and dom.active and dom.name == "not-ours"


# ----------------------------------------------------------------------------- builds


def test_build_runs_and_is_reported(make: Factory, hv: Hypervisor) -> None:
    manager, notes = make()
    s = spec(ports=2)
    plug(manager, s)  # events before the build: remembered
    manager.build_instance({}, payload=build_msg(s))
    end = notes.wait(s.uuid, END)
    assert end.state == "running" and end.elapsed_ms is not None
    info = manager.get_instance({}, payload=InstanceRef(instance_uuid=s.uuid))
    assert info.state == "running" and info.uptime_s is not None and info.uptime_s >= 0
    assert [p.id for p in info.ports] == [p.id for p in s.ports]
    assert [i.uuid for i in manager.list_instances({}).instances] == [s.uuid]  # not the foreign one
    foreign_untouched(hv)


def test_same_build_twice_builds_one_guest(make: Factory, hv: Hypervisor) -> None:
    manager, notes = make()
    s = spec()
    msg = build_msg(s)
    manager.build_instance({}, payload=msg)
    manager.build_instance({}, payload=msg)  # while the first waits for its vif
    plug(manager, s)
    notes.wait(s.uuid, END)
    manager.build_instance({}, payload=msg)  # after it finished
    deadline = time.monotonic() + 5
    while notes.types(s.uuid).count("instance.create.end") < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    ends = [p for t, p in notes.of(s.uuid) if t == "instance.create.end"]
    assert [e.step for e in ends] == [None, "already_built"]
    assert (
        notes.types(s.uuid).count("instance.create.start") == 2
    )  # the in-flight duplicate never began
    # ... but said the build is under way, so the controller stops re-driving it
    in_flight = [
        p for t, p in notes.of(s.uuid) if t == "instance.create.progress" and p.step == "in_flight"
    ]
    assert [(p.state, p.request_id) for p in in_flight] == [("building", msg.request_id)]
    assert len(manager.list_instances({}).instances) == 1


def test_builds_run_in_parallel_up_to_the_bound(make: Factory) -> None:
    manager, notes = make(max_concurrent_builds=3)
    specs = [spec() for _ in range(7)]
    for s in specs:
        manager.build_instance({}, payload=build_msg(s))
    time.sleep(0.3)
    started = [s for s in specs if "instance.create.start" in notes.types(s.uuid)]
    assert len(started) == 3  # the others wait their turn
    for s in specs:
        plug(manager, s)
    for s in specs:
        assert notes.wait(s.uuid, END).state == "running"
    assert len(manager.list_instances({}).instances) == 7


def test_vif_timeout_not_fatal_starts_anyway(make: Factory) -> None:
    manager, notes = make(vif_plugging_timeout=0.2, vif_plugging_is_fatal=False)
    s = spec()
    manager.build_instance({}, payload=build_msg(s))
    assert notes.wait(s.uuid, END).state == "running"
    assert manager.metrics.vif_plugging_timeouts._value.get() == 1


def test_unknown_image_and_flavor_fail_without_leftovers(make: Factory, tmp_path: Path) -> None:
    manager, notes = make()
    for s, problem in (
        (spec(image="nope"), "'nope' not found"),
        (spec(flavor="m9.huge"), "'m9.huge'"),
    ):
        manager.build_instance({}, payload=build_msg(s))
        err = notes.wait(s.uuid, END)
        assert err.state == "error" and problem in (err.reason or "")
        with pytest.raises(Exception) as info:
            manager.get_instance({}, payload=InstanceRef(instance_uuid=s.uuid))
        assert isinstance(raised(info.value), InstanceNotFound)
        assert not (tmp_path / "instances" / str(s.uuid)).exists()


def test_build_with_a_foreign_domains_uuid_touches_nothing(make: Factory, hv: Hypervisor) -> None:
    manager, notes = make()
    s = spec(ports=0).model_copy(update={"uuid": FOREIGN})
    manager.build_instance({}, payload=build_msg(s))
    err = notes.wait(FOREIGN, END)
    assert "not managed by this agent" in (err.reason or "")
    foreign_untouched(hv)


# ----------------------------------------------------------------------------- delete


def test_delete_racing_a_build_leaves_nothing(
    make: Factory, hv: Hypervisor, tmp_path: Path
) -> None:
    manager, notes = make()
    for delay in (0.0, 0.001, 0.003, 0.01, 0.03):
        s = spec()
        manager.build_instance({}, payload=build_msg(s))
        threading.Timer(delay / 2, plug, (manager, s)).start()
        time.sleep(delay)
        delete(manager, s.uuid)
        notes.wait(s.uuid, {"instance.delete.end"})
        notes.wait(s.uuid, END)
        time.sleep(0.02)
        assert hv.get(s.uuid) is None, f"domain left behind (delay {delay})"
        assert not (tmp_path / "instances" / str(s.uuid)).exists()
        # A late duplicate of the build must not resurrect it.
        manager.build_instance({}, payload=build_msg(s))
        time.sleep(0.05)
        assert hv.get(s.uuid) is None
    foreign_untouched(hv)


def test_delete_while_waiting_for_vifs_ends_the_build_at_once(
    make: Factory, hv: Hypervisor
) -> None:
    manager, notes = make(vif_plugging_timeout=30)
    s = spec()
    manager.build_instance({}, payload=build_msg(s))
    notes.wait(s.uuid, {"instance.create.start"})
    start = time.monotonic()
    delete(manager, s.uuid)
    err = notes.wait(s.uuid, END)
    assert time.monotonic() - start < 2
    assert err.state == "error" and "deleted while building" in (err.reason or "")
    assert hv.get(s.uuid) is None
    end = notes.wait(s.uuid, {"instance.delete.end"})  # events are published asynchronously
    # The build ends first (cancelled at the boundary), then the delete runs and says so.
    types = notes.types(s.uuid)
    assert types.index("instance.create.error") < types.index("instance.delete.end")
    assert end.reason is None  # not "nothing to delete": it deleted a build


def test_delete_running_and_unknown(make: Factory, hv: Hypervisor, tmp_path: Path) -> None:
    manager, notes = make()
    s = spec(ports=0)
    manager.build_instance({}, payload=build_msg(s))
    notes.wait(s.uuid, END)
    assert (tmp_path / "instances" / str(s.uuid) / "disk.qcow2").exists()
    delete(manager, s.uuid)
    end = notes.wait(s.uuid, {"instance.delete.end"})
    assert end.reason is None and hv.get(s.uuid) is None
    assert not (tmp_path / "instances" / str(s.uuid)).exists()
    unknown = uuid.uuid4()
    delete(manager, unknown)
    noop = notes.wait(unknown, {"instance.delete.end"})
    assert "nothing to delete" in (noop.reason or "")


def test_delete_refuses_a_foreign_domain(make: Factory, hv: Hypervisor) -> None:
    manager, notes = make()
    delete(manager, FOREIGN)
    err = notes.wait(FOREIGN, {"instance.delete.error", "instance.delete.end"})
    assert "does not own" in (err.reason or "")
    foreign_untouched(hv)


# ----------------------------------------------------------------------------- reboot, console


@pytest.mark.parametrize("hard", [False, True])
def test_reboot(make: Factory, hard: bool) -> None:
    manager, notes = make()
    s = spec(ports=0)
    manager.build_instance({}, payload=build_msg(s))
    notes.wait(s.uuid, END)
    manager.reboot_instance(
        {},
        payload=RebootInstance(
            request_id=new_request_id(), host=HOST, instance_uuid=s.uuid, hard=hard
        ),
    )
    end = notes.wait(s.uuid, {"instance.reboot.end", "instance.reboot.error"})
    assert end.state == "running", end.reason
    assert manager.get_instance({}, payload=InstanceRef(instance_uuid=s.uuid)).state == "running"


def test_reboot_of_a_build_waiting_for_its_vifs_is_refused_at_once(make: Factory) -> None:
    """Never waits behind the build's lock (held through its vif wait) on an intake
    worker: refused with the build named, the build goes on undisturbed."""
    manager, notes = make(vif_plugging_timeout=30)
    s = spec()
    build = build_msg(s)
    manager.build_instance({}, payload=build)
    notes.wait(s.uuid, {"instance.create.start"})  # its vif wait has begun
    asked = time.monotonic()
    manager.reboot_instance(
        {}, payload=RebootInstance(request_id=new_request_id(), host=HOST, instance_uuid=s.uuid)
    )
    err = notes.wait(s.uuid, {"instance.reboot.error"})
    assert time.monotonic() - asked < 3  # not after the build's 30 s vif wait
    assert err.state == "building"
    assert f"still being built (request {build.request_id})" in (err.reason or "")
    plug(manager, s)
    assert notes.wait(s.uuid, END).state == "running"


def test_reboot_unknown_is_an_error_event(make: Factory) -> None:
    manager, notes = make()
    unknown = uuid.uuid4()
    manager.reboot_instance(
        {}, payload=RebootInstance(request_id=new_request_id(), host=HOST, instance_uuid=unknown)
    )
    err = notes.wait(unknown, {"instance.reboot.error"})
    assert "not on this host" in (err.reason or "")


def test_console_log_tail(make: Factory, tmp_path: Path) -> None:
    manager, notes = make()
    s = spec(ports=0)
    manager.build_instance({}, payload=build_msg(s))
    notes.wait(s.uuid, END)
    console = tmp_path / "instances" / str(s.uuid) / "console.log"
    console.write_bytes(b"x" * 200 * 1024 + b"\nAGENTS-GUEST-READY name=a\n")
    log = manager.get_console_log({}, payload=InstanceRef(instance_uuid=s.uuid))
    assert len(log.text) == 100 * 1024 and log.truncated and log.text.endswith("READY name=a\n")
    short = manager.get_console_log({}, payload=InstanceRef(instance_uuid=s.uuid, max_bytes=8))
    assert short.text == " name=a\n"


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "payload",
    [
        None,
        "garbage",
        42,
        ["a", "list"],
        {"schema": "build_instance", "version": "7.0", "data": {}},
        {"schema": "no_such_thing", "version": "1.0", "data": {}},
        {"schema": "build_instance", "version": "1.0", "data": "not an object"},
    ],
)
def test_malformed_build_is_rejected_and_the_manager_keeps_working(
    make: Factory, payload: object
) -> None:
    manager, notes = make()
    manager.build_instance({}, payload=payload, unexpected="kwarg")
    s = spec(ports=0)
    manager.build_instance({}, payload=build_msg(s))
    assert notes.wait(s.uuid, END).state == "running"
    # agent.* and instance.* events are published by different senders: no order between them
    manager.reporter.flush(5)
    assert [t for _, t, _ in notes.events].count("agent.message_rejected") == 1


@pytest.mark.parametrize(
    "field,value,problem",
    [
        ("name", "x</name><devices>", "instance.name"),
        ("name", "a" * 64, "instance.name"),
        ("flavor", "m1 tiny", "instance.flavor"),
        ("ports", [{"id": "x"}], "instance.ports.0"),
        ("mac", "01:00:5e:00:00:01", "multicast"),
        ("mtu", 20000, "mtu"),
    ],
)
def test_invalid_field_is_refused_naming_the_salvaged_uuid_and_fails_nothing(
    make: Factory, hv: Hypervisor, field: str, value: object, problem: str
) -> None:
    manager, notes = make()
    s = spec()
    raw = envelope(build_msg(s))
    if field in ("mac", "mtu"):
        raw["data"]["instance"]["ports"][0][field] = value
    else:
        raw["data"]["instance"][field] = value
    manager.build_instance({}, payload=raw)
    # agent.message_rejected names the instance; no instance.create.error: a garbled copy
    # may carry the uuid of a real build in flight, which must not fail for it.
    rejected = notes.wait(s.uuid, {"agent.message_rejected"})
    assert problem in (rejected.problem or "")  # type: ignore[attr-defined]
    assert "instance.create.error" not in notes.types(s.uuid)
    assert hv.get(s.uuid) is None


def test_build_for_another_host_is_rejected(make: Factory, hv: Hypervisor) -> None:
    manager, notes = make()
    s = spec(ports=0)
    manager.build_instance({}, payload=build_msg(s, host="elsewhere"))
    rejected = notes.wait(s.uuid, {"agent.message_rejected"})
    assert "addressed to host 'elsewhere'" in (rejected.problem or "")  # type: ignore[attr-defined]
    assert hv.get(s.uuid) is None


def test_malformed_vif_events_are_ignored(make: Factory) -> None:
    manager, _notes = make()
    manager.on_vif_event("port.vif_plugged", {"port_id": "nope"})
    manager.on_vif_event("port.vif_plugged", None)
    manager.on_vif_event("something.else", "x")
    assert manager.metrics.rpc_errors.labels("vif_event")._value.get() == 2


# ----------------------------------------------------------------------------- stop, reconcile


def test_sigterm_drain_hands_waiting_builds_back_and_leaves_nothing(
    make: Factory, hv: Hypervisor
) -> None:
    manager, notes = make(vif_plugging_timeout=60, max_concurrent_builds=1)
    waiting, queued, finishing = spec(), spec(), spec()
    for s in (waiting, queued):
        manager.build_instance({}, payload=build_msg(s))
    notes.wait(waiting.uuid, {"instance.create.start"})
    start = time.monotonic()
    manager.drain(grace=0.3)
    assert time.monotonic() - start < 3
    for s in (waiting, queued):
        back = notes.wait(s.uuid, {"instance.create.handed_back"})
        assert "the controller sends it again" in (back.reason or "")
        assert "instance.create.error" not in notes.types(s.uuid)
    # Nothing stays behind for the controller's second attempt to trip over.
    again, _ = make()
    for s in (waiting, queued):
        with pytest.raises(Exception) as info:
            again.get_instance({}, payload=InstanceRef(instance_uuid=s.uuid))
        assert isinstance(raised(info.value), InstanceNotFound)
    assert again.reconcile()["error"] == 0
    # A build finishing inside the grace completes.
    other, notes2 = make(vif_plugging_timeout=60)
    other.build_instance({}, payload=build_msg(finishing))
    notes2.wait(finishing.uuid, {"instance.create.start"})
    threading.Timer(0.2, plug, (other, finishing)).start()
    other.drain(grace=5)
    assert notes2.wait(finishing.uuid, END).state == "running"


def test_reconcile_finishes_cleans_and_never_touches_foreign(
    make: Factory, hv: Hypervisor, tmp_path: Path, image_dir: Path
) -> None:
    first, notes = make()
    running = spec(ports=0)
    first.build_instance({}, payload=build_msg(running))
    notes.wait(running.uuid, END)
    # Half-built: defined by a build that died before starting it.
    half = spec(ports=0)
    store = ImageStore(image_dir, tmp_path / "instances")
    store.prepare_instance_dir(half.uuid)
    image = store.resolve("tiny")
    assert isinstance(image, DiskImage)
    xml = driver.get_guest_xml(
        half,
        {"m1.tiny": Flavor(vcpus=1, memory_mb=128)},
        image,
        driver.InstancePaths(
            console_log=store.console_log_path(half.uuid),
            disk=store.create_overlay(half.uuid, image, 1),
        ),
        {},
        "test",
    )
    hv.define(half.uuid, xml)
    # Orphan: files of a build that died before defining its domain.
    orphan = uuid.uuid4()
    store.prepare_instance_dir(orphan)
    foreign_xml = hv.get(FOREIGN).xml  # type: ignore[union-attr]

    second, notes2 = make()
    counts = second.reconcile()
    assert counts == {
        "running": 1,
        "stopped": 0,
        "error": 0,
        "finished": 1,
        "failed": 0,
        "orphans": 1,
        "unreadable": 0,
    }
    assert hv.get(half.uuid).active  # type: ignore[union-attr]
    assert notes2.wait(half.uuid, {"instance.create.end"}).step == "reconciled"
    assert notes2.wait(orphan, {"instance.create.error"}).state == "error"
    assert not store.instance_dir(orphan).exists()
    foreign_untouched(hv)
    assert hv.get(FOREIGN).xml == foreign_xml  # type: ignore[union-attr]
    assert second.reconcile()["running"] == 2


def test_reconcile_leaves_an_unreadable_domain_and_its_disk_alone(
    make: Factory, hv: Hypervisor, tmp_path: Path
) -> None:
    first, notes = make()
    victim = spec(ports=0)
    first.build_instance({}, payload=build_msg(victim))
    notes.wait(victim.uuid, END)
    # Someone rewrote the record by hand: our namespace, contents no agent can read.
    hv.set_metadata(victim.uuid, "<instance version='99'><junk/></instance>", "agents",
                    "urn:agents:instance:1.0")  # fmt: skip
    disk_dir = tmp_path / "instances" / str(victim.uuid)
    assert disk_dir.exists()
    second, _ = make()
    counts = second.reconcile()
    assert counts["unreadable"] == 1 and counts["orphans"] == 0
    assert disk_dir.exists() and hv.get(victim.uuid) is not None
    assert hv.get(victim.uuid).active  # type: ignore[union-attr]


# ----------------------------------------------------------------------------- faults


class StartFails(Hypervisor):
    """The real test-driver edge, with start() failing the way QEMU does without its tap."""

    def start(self, uuid: uuid.UUID) -> None:
        raise HypervisorError(
            operation="start",
            instance=str(uuid),
            problem="target managed='no' but specified dev doesn't exist",
        )


@pytest.fixture
def failing_hv(tmp_path: Path) -> Iterator[Hypervisor]:
    node = tmp_path / "node-faulty.xml"
    node.write_text(NODE_XML)
    hypervisor = StartFails(f"test://{node}")
    hypervisor.connect()
    yield hypervisor
    hypervisor.close()


def test_start_failure_leaves_an_error_record_and_no_files(
    failing_hv: Hypervisor, image_dir: Path, tmp_path: Path
) -> None:
    shared = load(ComputeConfig, [SHARED_CONF])
    settings = ComputeSettings(
        libvirt_uri=failing_hv.uri,
        domain_type="test",
        image_dir=image_dir,
        instances_dir=tmp_path / "instances",
    )
    config = shared.model_copy(update={"compute": settings, "DEFAULT": DefaultSettings(host=HOST)})
    notes = RecordingNotifier()
    manager = ComputeManager(
        config=config,
        hypervisor=failing_hv,
        images=ImageStore(image_dir, settings.instances_dir),
        waiter=VifWaiter(),
        reporter=Reporter(notes, HOST),
        metrics=ComputeMetrics(Registry("t")),
        version="t",
    )
    try:
        s = spec(ports=0)
        manager.build_instance({}, payload=build_msg(s))
        err = notes.wait(s.uuid, END)
        assert err.state == "error" and "specified dev doesn't exist" in (err.reason or "")
        info = manager.get_instance({}, payload=InstanceRef(instance_uuid=s.uuid))
        assert info.state == "error" and "specified dev doesn't exist" in (info.fault or "")
        assert not (tmp_path / "instances" / str(s.uuid)).exists()
        domain = failing_hv.get(s.uuid)
        assert domain is not None and not domain.active
        # The same build again reports the recorded fault; delete then removes the record.
        manager.build_instance({}, payload=build_msg(s))
        time.sleep(0.1)
        assert [t for t, _ in notes.of(s.uuid)].count("instance.create.error") == 2
        delete(manager, s.uuid)
        notes.wait(s.uuid, {"instance.delete.end"})
        assert failing_hv.get(s.uuid) is None

        # Reconcile: a half-built domain that cannot be started becomes an error record.
        half = spec(ports=0)
        image = manager.images.resolve("tiny")
        assert isinstance(image, DiskImage)
        paths = driver.InstancePaths(
            console_log=manager.images.console_log_path(half.uuid),
            disk=manager.images.create_overlay(half.uuid, image, 1),
        )
        xml = driver.get_guest_xml(half, config.flavors, image, paths, {}, "test")
        failing_hv.define(half.uuid, xml)
        counts = manager.reconcile()
        assert counts["failed"] == 1
        err = notes.wait(half.uuid, {"instance.create.error"})
        assert "could not be started" in (err.reason or "")
        assert (
            manager.get_instance({}, payload=InstanceRef(instance_uuid=half.uuid)).state == "error"
        )
    finally:
        manager.drain(0)
