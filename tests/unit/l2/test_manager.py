"""L2Manager policy against a tiny stateful fake kernel: what gets wired, torn down,
reported and remembered, and which message wins."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from agents.l2.manager import L2Manager
from agents.l2.metrics import L2Metrics
from agents.l2.settings import L2Config
from agents.l2.store import PortStore
from common.config import load
from common.messages import Port, PortCreated, PortDeleted, PortUpdated
from common.metrics import Registry
from tests.unit.l2.fakes import FakeLinks, RecordingSink

REPO = Path(__file__).resolve().parents[3]
FLAT = uuid.UUID("9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d")
VXLAN = uuid.UUID("5d3c0f6e-8a3b-4c1e-9f2a-0b7e6d5c4a31")
VLAN = uuid.UUID("3c2b1a09-8f7e-4d6c-9b5a-4f3e2d1c0b9a")
HOST = "node1"


def make_config(tmp_path: Path, l2: str = "") -> L2Config:
    extra = tmp_path / "l2.conf"
    extra.write_text(
        f"[DEFAULT]\nhost = {HOST}\n"
        f"[network:vlan1]\nuuid = {VLAN}\ntype = vlan\nsegmentation_id = 42\nphysnet = physnet1\n"
        f"[l2]\n{l2 or 'physical_interface_mappings = physnet1:uplink0'}\n"
    )
    return load(L2Config, [REPO / "etc" / "shared.conf", extra])


class Rig:
    def __init__(self, tmp_path: Path, l2: str = "", links: FakeLinks | None = None) -> None:
        self.tmp_path = tmp_path
        self.links = links or FakeLinks()
        if "uplink0" not in self.links.by_name:
            self.links.plain("uplink0")
            self.links.calls.clear()
        self.events = RecordingSink()
        self.store = PortStore(tmp_path / "ports")
        self.config = make_config(tmp_path, l2)
        self.metrics = L2Metrics(Registry("l2_test"))
        self.manager = L2Manager(
            config=self.config,
            links=self.links,
            store=self.store,
            events=self.events,
            metrics=self.metrics,
        )

    def restart(self) -> Rig:
        return Rig(self.tmp_path, links=self.links)

    def create(self, port: Port) -> None:
        self.manager.port_created(PortCreated(request_id="req-1", host=HOST, port=port))

    def update(self, port: Port) -> None:
        self.manager.port_updated(PortUpdated(request_id="req-2", host=HOST, port=port))

    def delete(self, port: Port, with_network: bool = True) -> None:
        self.manager.port_deleted(
            PortDeleted(
                request_id="req-3",
                host=HOST,
                port_id=port.id,
                network_id=port.network_id if with_network else None,
            )
        )

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.registry.get_sample_value(f"l2_test_{name}", labels)
        return value or 0.0


def port(network: uuid.UUID = VXLAN, **kw: Any) -> Port:
    return Port(id=uuid.uuid4(), network_id=network, mac="fa:16:3e:aa:bb:cc", **kw)


def tap(p: Port) -> str:
    return f"tap{str(p.id)[:11]}"


def brq(net: uuid.UUID) -> str:
    return f"brq{str(net)[:11]}"


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(tmp_path)


def test_vxlan_port_is_wired_and_reported(rig: Rig) -> None:
    p = port(instance_uuid=uuid.uuid4())
    rig.create(p)
    links = rig.links
    assert links.master_of(tap(p)) == brq(VXLAN) and links.by_name[tap(p)].up
    assert links.by_name[tap(p)].mac == "fe:16:3e:aa:bb:cc"
    assert links.by_name[tap(p)].mtu == 1450  # the network's MTU
    assert links.by_name[brq(VXLAN)].mtu == 1450 and links.by_name[brq(VXLAN)].up
    assert links.master_of("vxlan-1001") == brq(VXLAN)
    [sent] = rig.events.sent
    assert (sent.priority, sent.event_type) == ("info", "port.vif_plugged")
    assert sent.payload.device == tap(p) and sent.payload.instance_uuid == p.instance_uuid
    assert sent.request_id == "req-1"
    assert rig.manager.counts()["wired"] == 1
    assert rig.metric("plugs_total", result="wired") == 1


def test_flat_port_puts_the_mapped_device_in_the_bridge_and_never_deletes_it(rig: Rig) -> None:
    p = port(FLAT)
    rig.create(p)
    assert rig.links.master_of("uplink0") == brq(FLAT)
    rig.delete(p)
    assert "uplink0" in rig.links.by_name and rig.links.by_name["uplink0"].master is None
    assert brq(FLAT) not in rig.links.by_name
    assert rig.events.types() == ["port.vif_plugged", "port.vif_unplugged"]


def test_vlan_fails_naming_the_missing_kernel_support_and_leaves_nothing(rig: Rig) -> None:
    p = port(VLAN)
    rig.create(p)
    [sent] = rig.events.sent
    assert (sent.priority, sent.event_type) == ("error", "port.plug_failed")
    assert "vlan support" in sent.payload.reason and "uplink0.42" in sent.payload.reason
    assert set(rig.links.by_name) == {"uplink0"}  # the bridge made for it is gone again
    assert rig.manager.port_infos()[0].state == "failed"


def test_vlan_works_where_the_kernel_supports_it(tmp_path: Path) -> None:
    r = Rig(tmp_path, links=FakeLinks(unsupported=()))
    p = port(VLAN)
    r.create(p)
    assert r.links.master_of("uplink0.42") == brq(VLAN)
    assert r.events.types() == ["port.vif_plugged"]


@pytest.mark.parametrize(
    ("l2", "network", "needle"),
    [
        ("", uuid.UUID("00000000-0000-4000-8000-000000000001"), "is not configured"),
        ("physical_interface_mappings = physnet9:eth9\n", FLAT, "physnet1"),
    ],
)
def test_unusable_network_fails_before_touching_the_kernel(
    tmp_path: Path, l2: str, network: uuid.UUID, needle: str
) -> None:
    r = Rig(tmp_path, l2=l2)
    before = dict(r.links.by_name)
    r.create(port(network))
    assert r.events.types() == ["port.plug_failed"]
    assert needle in r.events.sent[0].payload.reason
    assert r.links.by_name == before


def test_failure_after_creating_the_tap_removes_what_this_attempt_made(rig: Rig) -> None:
    p = port()
    rig.links.fail_set_on.add(tap(p))  # the tap is made, then attaching it fails
    rig.create(p)
    assert rig.events.types() == ["port.plug_failed"]
    assert "busy" in rig.events.sent[0].payload.reason
    assert set(rig.links.by_name) == {"uplink0"}


def test_bridge_goes_with_the_last_port_only(rig: Rig) -> None:
    a, b = port(), port()
    rig.create(a)
    rig.create(b)
    rig.delete(a)
    assert brq(VXLAN) in rig.links.by_name and "vxlan-1001" in rig.links.by_name
    assert tap(a) not in rig.links.by_name
    rig.delete(b)
    assert set(rig.links.by_name) == {"uplink0"}


def test_delete_then_create_ends_wired_and_late_update_is_ignored(rig: Rig) -> None:
    p = port()
    rig.delete(p)  # arrives first: leaves a tombstone
    assert rig.manager.record(p.id) is not None and rig.manager.record(p.id).wanted == "absent"  # type: ignore[union-attr]
    rig.update(p)  # an update never brings a deleted port back
    assert tap(p) not in rig.links.by_name
    rig.create(p)  # the last message asks for the port: it wins
    assert rig.links.master_of(tap(p)) == brq(VXLAN)


def test_update_before_create_wires_and_duplicates_are_idempotent(rig: Rig) -> None:
    p = port()
    rig.update(p)
    rig.create(p)
    rig.create(p)
    assert rig.links.master_of(tap(p)) == brq(VXLAN)
    assert rig.events.types() == ["port.vif_plugged"] * 3  # each message is answered
    adds = [c for c in rig.links.calls if c[0] == "add"]
    assert adds == [("add", brq(VXLAN)), ("add", "vxlan-1001"), ("add", tap(p))]


def test_rapid_create_delete_create(rig: Rig) -> None:
    p = port()
    for _ in range(3):
        rig.create(p)
        rig.delete(p)
    rig.create(p)
    assert rig.links.master_of(tap(p)) == brq(VXLAN)
    assert rig.manager.counts()["wired"] == 1


def test_update_changes_admin_state_and_mtu(rig: Rig) -> None:
    p = port()
    rig.create(p)
    rig.update(p.model_copy(update={"admin_state_up": False, "mtu": 1400}))
    assert not rig.links.by_name[tap(p)].up and rig.links.by_name[tap(p)].mtu == 1400
    assert rig.manager.port_infos()[0].state == "down"
    assert rig.links.by_name[brq(VXLAN)].mtu == 1450  # the bridge follows the network
    assert rig.events.types() == ["port.vif_plugged"]  # no vif_plugged for a port that is down


def test_update_moving_a_port_to_another_network(rig: Rig) -> None:
    p = port()
    rig.create(p)
    rig.update(p.model_copy(update={"network_id": FLAT}))
    assert rig.links.master_of(tap(p)) == brq(FLAT)
    assert brq(VXLAN) not in rig.links.by_name  # it was the network's last port


def test_unicast_peers_become_flood_entries(tmp_path: Path) -> None:
    r = Rig(
        tmp_path,
        l2="physical_interface_mappings = physnet1:uplink0\n"
        "vxlan_local_ip = 10.0.0.1\nvxlan_peers = 10.0.0.2, 10.0.0.3\n",
    )
    r.create(port())
    assert r.links.flood_entries("vxlan-1001") == {"10.0.0.2", "10.0.0.3"}


def test_reconcile_rewires_removes_what_is_proven_gone_and_keeps_the_unknown(rig: Rig) -> None:
    kept, gone = port(), port()
    rig.create(kept)
    rig.create(gone)
    rig.delete(gone)
    # While the agent is down: its tap vanishes, the tap of the deleted port is back
    # (proven gone by its tombstone), stray devices with our naming appear, and devices
    # that are not ours exist.
    rig.links.delete(tap(kept))
    rig.links.add_tap(tap(gone))
    stray_tap, stray_br = f"tap{str(uuid.uuid4())[:11]}", f"brq{str(uuid.uuid4())[:11]}"
    rig.links.add_tap(stray_tap)
    rig.links.add_bridge(stray_br, 1500)
    rig.links.add_vxlan("vxlan-77", 77, mtu=1500, port=4789)
    rig.links.add_bridge(brq(VLAN), 1500)  # of a network of this host, unused: ours
    rig.links.plain("tapforeign")
    rig.links.plain("br-ex")
    fresh = rig.restart()
    report = fresh.manager.reconcile()
    assert report.replugged == 1 and report.failed == 0
    # an unknown tap may be another system's (or ours under a lost record), a bridge or
    # uplink of no network of this host another system's: kept, reported
    assert set(report.removed_devices) == {tap(gone), brq(VLAN)}
    assert sorted(report.kept_unknown) == sorted([stray_tap, stray_br, "vxlan-77"])
    assert fresh.links.master_of(tap(kept)) == brq(VXLAN)
    assert {"tapforeign", "br-ex", "uplink0", stray_tap, stray_br, "vxlan-77"} <= set(
        fresh.links.by_name
    )
    assert fresh.events.types() == ["port.vif_plugged"]  # a waiting build is never stuck
    assert fresh.metric("reconcile_total", action="removed_device") == 2


def test_a_corrupt_record_stops_every_deletion(rig: Rig) -> None:
    gone = port()
    rig.create(gone)
    rig.delete(gone)
    rig.links.add_tap(tap(gone))
    (rig.store.directory / f"{uuid.uuid4()}.json").write_text("{not json")
    fresh = rig.restart()
    report = fresh.manager.reconcile()
    assert report.removed_devices == ()
    assert tap(gone) in fresh.links.by_name


def test_a_new_record_directory_stops_deletions_and_says_so_only_when_it_matters(
    tmp_path: Path,
) -> None:
    """A record directory made at this start (a first start, or a changed host name or
    state_dir): nothing is deleted. That is an error worth an operator's look when
    devices named like ours are there, and a plain first start when none is."""
    with structlog.testing.capture_logs() as first:
        Rig(tmp_path / "a").manager.reconcile()
    assert [e["event"] for e in first if e["log_level"] == "error"] == []
    assert any(e["event"] == "record_directory_created" for e in first)

    links = FakeLinks()
    stray = f"tap{str(uuid.uuid4())[:11]}"
    links.add_tap(stray)
    with structlog.testing.capture_logs() as moved:
        report = Rig(tmp_path / "b", links=links).manager.reconcile()
    stopped = [e for e in moved if e["event"] == "reconcile_deletions_stopped"]
    assert stopped and stopped[0]["log_level"] == "error"
    assert stopped[0]["devices_named_like_ours"] == 1
    assert report.removed_devices == () and stray in links.by_name


def test_reconcile_prunes_old_tombstones(tmp_path: Path) -> None:
    r = Rig(tmp_path, l2="tombstone_ttl = 0\n")
    p = port()
    r.delete(p)
    fresh = Rig(tmp_path, l2="tombstone_ttl = 0\n", links=r.links)
    assert fresh.manager.reconcile().pruned_tombstones == 1
    assert fresh.store.load() == {}


def test_ports_affected_by_a_vanished_device(rig: Rig) -> None:
    a, b, c = port(), port(), port(FLAT)
    for p in (a, b, c):
        rig.create(p)
    m = rig.manager
    assert m.ports_affected_by(tap(a)) == [a.id]
    assert sorted(m.ports_affected_by(brq(VXLAN))) == sorted([a.id, b.id])
    assert sorted(m.ports_affected_by("vxlan-1001")) == sorted([a.id, b.id])
    assert m.ports_affected_by("uplink0") == []
    rig.links.delete(brq(VXLAN))
    rig.events.clear()
    m.ensure(a.id, why="device_vanished")
    assert rig.links.master_of(tap(a)) == brq(VXLAN)
    assert rig.links.master_of("vxlan-1001") == brq(VXLAN)
    assert rig.events.types() == ["port.vif_plugged"]
    m.ensure(a.id, why="device_vanished")  # nothing to fix: nothing reported
    assert rig.events.types() == ["port.vif_plugged"]


def test_a_vanished_bridge_makes_the_next_plug_check_the_network_again(rig: Rig) -> None:
    a = port()
    rig.create(a)
    rig.links.delete(brq(VXLAN))
    assert rig.manager.device_vanished(brq(VXLAN)) == [a.id]
    rig.links.calls.clear()
    rig.manager.ensure(a.id, why="device_vanished")
    assert ("add", brq(VXLAN)) in rig.links.calls
    assert rig.links.master_of(tap(a)) == brq(VXLAN)
    assert rig.metric("ports", state="wired") == 1
    assert rig.metric("rewires_total", result="ok") == 1


def _deleted(p: Port, revision: int | None) -> PortDeleted:
    return PortDeleted(
        request_id="req-d", host=HOST, port_id=p.id, network_id=p.network_id, revision=revision
    )


def test_a_create_delivered_after_the_controllers_delete_is_stale(rig: Rig) -> None:
    p = port(revision=1)
    rig.create(p)
    rig.manager.port_deleted(_deleted(p, revision=2))
    assert tap(p) not in rig.links.by_name
    # the same create again (a duplicate, or a copy rebuilt without a revision): stale
    rig.create(p)
    rig.create(p.model_copy(update={"revision": None}))
    assert tap(p) not in rig.links.by_name
    assert rig.manager.record(p.id).wanted == "absent"  # type: ignore[union-attr]
    assert rig.metric("stale_messages_total") == 2


def test_unversioned_messages_keep_arrival_order(rig: Rig) -> None:
    p = port(revision=1)
    rig.create(p)
    # a delete nobody versioned, then the create again: the last one asked wins
    rig.manager.port_deleted(_deleted(p, revision=None))
    rig.create(p)
    assert rig.links.master_of(tap(p)) == brq(VXLAN)
    # an older versioned delete never undoes a newer state
    rig.create(p.model_copy(update={"revision": 3}))
    rig.manager.port_deleted(_deleted(p, revision=2))
    assert rig.links.master_of(tap(p)) == brq(VXLAN)
