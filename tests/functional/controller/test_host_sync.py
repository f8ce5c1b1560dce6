"""Level-triggered host sync: a host's `list_instances` compared with the database.

First on both databases (`Records.apply_listing`): a guest gone turns its instance to
error, a guest stopped behind the agents' back turns it shutoff with a fault, busy or
freshly changed instances are left for the next pass, and what the host has that is
not ours is only reported. Then over the real broker (`HostSync`, the reconciler's
thread): hosts are asked in parallel and a slow, dead or failing host never stops
the others.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from agents.controller.bus import Bus, Hub
from agents.controller.db.engine import Database
from agents.controller.db.models import Instance
from agents.controller.db.records import Records, gone_fault
from agents.controller.db.store import CreateRequest, Store
from agents.controller.hostsync import HostSync
from agents.controller.reconciler import Reconciler
from agents.controller.settings import ControllerSettings
from agents.lab.broker import BrokerScope
from common.config import Flavor, MessagingSettings, NetworkSpec
from common.messages import AgentHeartbeat, InstanceEvent, InstanceInfo, InstanceList
from common.rpc import COMPUTE_TOPIC, Messaging, RpcServer

pytestmark = pytest.mark.functional

NET = NetworkSpec(
    name="net1", uuid=uuid.uuid4(), type="vxlan", segmentation_id=1001, mtu=1450,
    cidr="10.10.0.0/24",  # type: ignore[arg-type]
)  # fmt: skip
TINY = Flavor(name="m1.tiny", vcpus=1, memory_mb=128)


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    db = Database(database_url)
    db.upgrade()
    s = Store(db, agent_down_time=60, rng=random.Random(5))
    s.sync_networks([NET])
    yield s
    db.close()


def heartbeat(store: Store, host: str) -> None:
    Records(store).apply(
        "agent.heartbeat",
        AgentHeartbeat(
            host=host, kind="compute", version="t", started_at=datetime.now(UTC), uptime_s=1,
            vcpus=64, memory_mb=65536,
        ),
    )  # fmt: skip


def running(store: Store, host: str, name: str, state: str = "running") -> str:
    acc = store.create(
        CreateRequest(
            request_id=f"req-{uuid.uuid4()}", names=[name], flavor=TINY, image="tiny",
            networks=[NET], host=host,
        )
    )  # fmt: skip
    inst = acc.response["instances"][0]
    if state != "building":
        Records(store).apply(
            "instance.create.end",
            InstanceEvent(
                request_id=acc.response["request_id"], host=host,
                instance_uuid=uuid.UUID(inst["uuid"]), state=state,
            ),
        )  # fmt: skip
    return str(inst["uuid"])


def info(uuid_: str, host: str, state: str, name: str = "x") -> InstanceInfo:
    return InstanceInfo(uuid=uuid.UUID(uuid_), name=name, host=host, state=state)  # type: ignore[arg-type]


def age_all(store: Store, seconds: float = 60) -> None:
    """As if nothing had changed for a while (the sync skips what changed after it asked)."""
    with store.db.writing() as s:
        s.execute(
            update(Instance).values(updated_at=datetime.now(UTC) - timedelta(seconds=seconds))
        )


def shown(store: Store, ref: str) -> tuple[str, str | None]:
    inst = store.show(ref)
    return inst["state"], inst["fault"]


def test_listing_drives_observed_state_and_reports_the_rest(store: Store) -> None:
    h = "node1"
    heartbeat(store, h)
    same = running(store, h, "same")
    gone = running(store, h, "gone")
    stopped = running(store, h, "stopped")
    off = running(store, h, "off", state="shutoff")
    busy = running(store, h, "busy", state="building")  # its create is open
    was_deleted = running(store, h, "was-deleted")
    rid = store.delete("was-deleted").response["request_id"]
    Records(store).apply(
        "instance.delete.end",
        InstanceEvent(
            request_id=rid, host=h, instance_uuid=uuid.UUID(was_deleted), state="deleted"
        ),
    )
    age_all(store)
    fresh = running(store, h, "fresh")  # changed just now: left for the next pass
    stranger = str(uuid.uuid4())
    asked = datetime.now(UTC)
    listing = [
        info(same, h, "running"),
        info(stopped, h, "shutoff"),
        info(off, h, "shutoff"),
        info(stranger, h, "running"),
        info(was_deleted, h, "running"),
    ]
    report = Records(store).apply_listing(h, listing, asked)

    assert {c.name: (c.old, c.new) for c in report.changed} == {
        "gone": ("running", "error"),
        "stopped": ("running", "shutoff"),
    }
    assert shown(store, gone) == ("error", gone_fault(h))
    assert gone_fault(h) == f"the guest is gone from host {h} (not built or removed outside agents)"
    assert shown(store, stopped) == ("shutoff", "stopped outside agents")
    assert shown(store, same) == ("running", None)
    assert shown(store, off) == ("shutoff", None)
    assert shown(store, busy)[0] == "building" and shown(store, fresh) == ("running", None)
    assert report.skipped == 2
    assert report.foreign == [stranger] and report.deleted == [was_deleted]
    # Desired state is driven back: the gone guest's ports are unwired (its addresses
    # released), the stopped one is started again by a hard reboot of its own.
    gone_ports = {p["id"] for p in store.show(gone)["ports"]}
    assert gone_ports == set()
    methods = sorted(c.method for c in report.casts)
    assert methods == ["port_deleted", "reboot_instance"]
    reboot = next(c for c in report.casts if c.method == "reboot_instance")
    assert str(reboot.message.instance_uuid) == stopped  # type: ignore[attr-defined]
    assert reboot.message.hard  # type: ignore[attr-defined]
    restart = store.show(stopped)
    assert restart["task"] == "reboot" and restart["operations"][0]["kind"] == "reboot"

    sync = [e for e in store.timeline(gone)["events"] if e["event"] == "instance.sync"]
    assert [(e["source"], e["host"], e["step"], e["state"]) for e in sync] == [
        ("controller", h, "running -> error", "error")
    ]
    assert sync[0]["reason"] == gone_fault(h)

    # The agent restarts the stopped guest; a gone guest that shows up again stays in
    # error (its addresses went to others): only reported, and resync removes it.
    Records(store).apply(
        "instance.reboot.end",
        InstanceEvent(
            request_id=restart["request_id"], host=h, instance_uuid=uuid.UUID(stopped),
            state="running",
        ),
    )  # fmt: skip
    assert shown(store, stopped) == ("running", None)
    age_all(store)
    back = [info(i, h, "running") for i in (same, gone, stopped, fresh)]
    again = Records(store).apply_listing(h, [*back, info(off, h, "shutoff")], datetime.now(UTC))
    assert again.changed == [] and again.casts == []
    assert again.failed == [gone]
    assert shown(store, gone)[0] == "error"


def test_a_failed_build_is_never_resurrected_and_other_hosts_are_untouched(
    store: Store,
) -> None:
    heartbeat(store, "node1")
    heartbeat(store, "node2")
    acc = store.create(
        CreateRequest(
            request_id="req-f", names=["failed"], flavor=TINY, image="tiny", networks=[NET],
            host="node1",
        )
    )  # fmt: skip
    failed = acc.response["instances"][0]["uuid"]
    Records(store).apply(
        "instance.create.error",
        InstanceEvent(
            request_id="req-f", host="node1", instance_uuid=uuid.UUID(failed), reason="x"
        ),
    )
    elsewhere = running(store, "node2", "elsewhere")
    age_all(store)
    report = Records(store).apply_listing(
        "node1", [info(failed, "node1", "running"), info(elsewhere, "node1", "running")],
        datetime.now(UTC),
    )  # fmt: skip
    assert report.changed == []
    assert report.failed == [failed] and report.elsewhere == [(elsewhere, "node2")]
    assert shown(store, failed) == ("error", "x")
    # node1's listing says nothing about node2's instance
    assert shown(store, elsewhere) == ("running", None)


# --------------------------------------------------------------------------- over the broker


class FakeCompute:
    """A compute-agent's list_instances, as slow or as broken as a test needs."""

    def __init__(self, host: str, listing: list[InstanceInfo], delay: float = 0.0,
                 fail: bool = False) -> None:  # fmt: skip
        self.host, self.listing, self.delay, self.fail = host, listing, delay, fail
        self.calls = 0

    def list_instances(self, ctxt: Any, **extra: Any) -> InstanceList:
        self.calls += 1
        if self.fail:
            raise RuntimeError("libvirt went away")
        time.sleep(self.delay)
        return InstanceList(host=self.host, instances=self.listing)


@pytest.fixture
def wired(broker_scope: BrokerScope, tmp_path: Path) -> Iterator[tuple[Store, Bus, Messaging]]:
    db = Database(f"sqlite:///{tmp_path / 'c.sqlite'}")
    db.upgrade()
    store = Store(db, agent_down_time=60, rng=random.Random(5))
    store.sync_networks([NET])
    messaging = Messaging(MessagingSettings(control_exchange=broker_scope.exchange, send_retry=1))
    yield store, Bus(messaging, store, Hub(), call_timeout=5), messaging
    messaging.close()
    db.close()


def serve(messaging: Messaging, fake: FakeCompute) -> RpcServer:
    server = messaging.rpc_server(COMPUTE_TOPIC, fake.host, [fake])
    server.start()
    return server


def test_hosts_are_asked_in_parallel_and_one_failing_host_stops_no_other(
    wired: tuple[Store, Bus, Messaging], broker_scope: BrokerScope
) -> None:
    store, bus, messaging = wired
    good, slow, dead, broken, quiet = (
        broker_scope.host(n) for n in ("good", "slow", "dead", "broken", "quiet")
    )
    for h in (good, slow, dead, broken, quiet):
        heartbeat(store, h)
    kept = running(store, good, "kept")
    lost = running(store, good, "lost")
    on_slow = running(store, slow, "on-slow")
    on_dead = running(store, dead, "on-dead")
    on_quiet = running(store, quiet, "on-quiet")
    age_all(store)
    # the quiet host's agent is down (no heartbeat for long): not asked at all
    from agents.controller.db.models import Agent

    with store.db.writing() as s:
        s.execute(
            update(Agent)
            .where(Agent.host == quiet)
            .values(last_seen=datetime.now(UTC) - timedelta(hours=1))
        )
    fakes = [
        FakeCompute(good, [info(kept, good, "running")]),
        FakeCompute(slow, [], delay=3.0),  # answers after the sync stopped waiting
        FakeCompute(broken, [], fail=True),
    ]
    servers = [serve(messaging, f) for f in fakes]  # `dead`: no agent ever served it
    try:
        sync = HostSync(store, bus, timeout=1.0)
        started = time.monotonic()
        results = sync.run_once()
        elapsed = time.monotonic() - started
    finally:
        for server in servers:
            server.stop()
        for server in servers:
            server.wait()
    assert set(results) == {good, slow, dead, broken}  # not the quiet (down) host
    assert results[slow] is None and results[dead] is None and results[broken] is None
    good_report = results[good]
    assert good_report is not None and [c.name for c in good_report.changed] == ["lost"]
    assert shown(store, lost) == ("error", gone_fault(good))
    assert shown(store, kept) == ("running", None)
    # nothing is concluded about the hosts that did not answer
    for uuid_ in (on_slow, on_dead, on_quiet):
        assert shown(store, uuid_) == ("running", None)
    assert elapsed < 2.5, f"hosts were not asked in parallel ({elapsed:.1f}s)"


def test_the_reconciler_runs_the_sync_on_its_own_thread(
    wired: tuple[Store, Bus, Messaging], broker_scope: BrokerScope
) -> None:
    store, bus, messaging = wired
    host = broker_scope.host("node1")
    heartbeat(store, host)
    up = running(store, host, "up")
    down = running(store, host, "down")
    age_all(store)
    fake = FakeCompute(host, [info(up, host, "running"), info(down, host, "crashed")])
    server = serve(messaging, fake)
    woke = threading.Event()
    bus.hub.subscribe(woke.set)
    settings = ControllerSettings(host_sync_interval=0.2, host_sync_timeout=2)
    reconciler = Reconciler(store, bus, settings)
    reconciler.start()
    try:
        deadline = time.monotonic() + 10
        while shown(store, down)[0] != "crashed" and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        reconciler.stop()
        server.stop()
        server.wait()
    assert shown(store, down) == ("crashed", "stopped outside agents")
    assert shown(store, up) == ("running", None)
    assert woke.is_set()  # event-stream readers are woken for the new timeline rows
    calls = fake.calls
    time.sleep(0.5)
    assert fake.calls == calls  # stopped means stopped


def test_a_zero_interval_disables_the_sync(wired: tuple[Store, Bus, Messaging]) -> None:
    store, bus, _ = wired
    reconciler = Reconciler(store, bus, ControllerSettings(host_sync_interval=0))
    reconciler.start()
    try:
        assert reconciler._sync_thread is None
    finally:
        reconciler.stop()
