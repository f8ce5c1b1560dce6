"""The store on real SQLite and real PostgreSQL: migrations, allocation, reports, re-drive."""

from __future__ import annotations

import subprocess
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
import structlog.testing
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select, text, update

from agents.controller import errors, ipam
from agents.controller.db.engine import Database
from agents.controller.db.models import Base, Instance, Operation, Port, ReleasedPort
from agents.controller.db.records import Records
from agents.controller.db.store import CreateRequest, Store
from agents.lab.procs import console_script
from common.config import Flavor, NetworkSpec
from common.messages import (
    AgentHeartbeat,
    BuildInstance,
    InstanceEvent,
    PortCreated,
    PortDeleted,
    VifEvent,
)

pytestmark = pytest.mark.functional

NET = NetworkSpec(
    name="net1",
    uuid=uuid.UUID("5d3c0f6e-8a3b-4c1e-9f2a-0b7e6d5c4a31"),
    type="vxlan",
    segmentation_id=1001,
    mtu=1450,
    cidr=IPv4Network("10.10.0.0/24"),
    allocation_start=IPv4Address("10.10.0.10"),
    allocation_end=IPv4Address("10.10.0.250"),
)
SMALL = NetworkSpec(
    name="small",
    uuid=uuid.uuid4(),
    type="vxlan",
    segmentation_id=7,
    cidr=IPv4Network("10.9.0.0/29"),
)
TINY = Flavor(name="m1.tiny", vcpus=1, memory_mb=128)


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    db = Database(database_url)
    db.upgrade()
    s = Store(db, agent_down_time=60)
    s.sync_networks([NET, SMALL])
    yield s
    db.close()


def heartbeat(
    store: Store,
    host: str,
    vcpus: int = 64,
    memory_mb: int = 65536,
    images: list[str] | None = None,
) -> None:
    hb = AgentHeartbeat(
        host=host,
        kind="compute",
        version="t",
        started_at=datetime.now(UTC),
        uptime_s=1,
        vcpus=vcpus,
        memory_mb=memory_mb,
        images=images,
    )
    Records(store).apply("agent.heartbeat", hb)


def request(names: list[str], host: str | None = None, **kw: object) -> CreateRequest:
    return CreateRequest(
        request_id=f"req-{uuid.uuid4()}",
        names=names,
        flavor=TINY,
        image=str(kw.pop("image", "tiny")),
        networks=[NET],
        host=host,
        **kw,  # type: ignore[arg-type]
    )


def test_migrations_from_empty_match_the_models(database_url: str) -> None:
    db = Database(database_url)
    try:
        assert db.current_revision() is None
        db.upgrade()
        assert db.current_revision() == Database.head_revision()
        db.upgrade()  # twice is harmless
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == []
    finally:
        db.close()


def test_create_decides_everything_and_returns_the_casts(store: Store) -> None:
    heartbeat(store, "node1")
    accepted = store.create(request(["a", "b"], host="node1"))
    insts = accepted.response["instances"]
    assert [i["name"] for i in insts] == ["a", "b"]
    assert [i["ports"][0]["fixed_ip"] for i in insts] == ["10.10.0.10", "10.10.0.11"]
    assert all(i["ports"][0]["mac"].startswith("fa:16:3e:") for i in insts)
    kinds = [(c.kind, c.method) for c in accepted.casts]
    assert kinds == [("l2", "port_created"), ("compute", "build_instance")] * 2
    build = accepted.casts[1].message
    assert isinstance(build, BuildInstance) and isinstance(accepted.casts[0].message, PortCreated)
    assert str(build.instance.uuid) == insts[0]["uuid"]
    assert str(build.instance.ports[0].fixed_ip) == "10.10.0.10"
    assert build.instance.ports[0].revision == 1
    assert [o["state"] for o in store.operations(accepted.response["request_id"])] == [
        "pending",
        "pending",
    ]


def test_addresses_never_clash_under_concurrency(store: Store) -> None:
    for h in ("h1", "h2", "h3"):
        heartbeat(store, h)
    failures: list[BaseException] = []

    def client() -> None:
        try:
            for _ in range(4):
                store.create(request(["x", "y", "z"]))
        except BaseException as err:
            failures.append(err)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures
    ips = [p["fixed_ip"] for p in store.ports()]
    macs = [p["mac"] for p in store.ports()]
    assert len(ips) == 96 and len(set(ips)) == 96 and len(set(macs)) == 96
    hosts = {i["host"] for i in store.list_instances()}
    assert hosts == {"h1", "h2", "h3"}


def test_the_database_refuses_a_second_owner_of_an_address(store: Store) -> None:
    heartbeat(store, "node1")
    first = store.create(request(["a"], host="node1")).response["instances"][0]
    with (
        pytest.raises(Exception, match="uq_ports_network_ip|UNIQUE|unique"),
        store.db.writing() as s,
    ):
        s.add(
            Port(
                id=str(uuid.uuid4()),
                instance_uuid=first["uuid"],
                network_id=str(NET.uuid),
                host="node1",
                mac="fa:16:3e:00:00:01",
                fixed_ip=first["ports"][0]["fixed_ip"],
                mtu=1450,
                position=1,
                state="pending",
                created_at=datetime.now(UTC),
            )
        )


def test_exhausted_network_is_a_clear_conflict_and_creates_nothing(store: Store) -> None:
    heartbeat(store, "node1")
    req = CreateRequest(
        request_id="req-x", names=[f"v{i}" for i in range(7)], flavor=TINY, image="tiny",
        networks=[SMALL], host="node1",
    )  # fmt: skip
    with pytest.raises(errors.NetworkExhaustedError, match="'small'"):
        store.create(req)
    assert store.list_instances() == []


def test_host_checks(store: Store) -> None:
    with pytest.raises(errors.HostUnavailable, match="no compute-agent of that host was heard"):
        store.create(request(["a"], host="nowhere"))
    heartbeat(store, "small", vcpus=1, memory_mb=200)
    store.create(request(["a"], host="small"))
    with pytest.raises(errors.HostNoCapacity, match="0 of 1 vCPUs free"):
        store.create(request(["b"], host="small"))
    with pytest.raises(errors.NoHost, match="small: 0 of 1 vCPUs free"):
        store.create(request(["b"]))


def test_idempotency_key_replays_and_refuses_a_different_body(store: Store) -> None:
    heartbeat(store, "node1")
    first = store.create(request(["a"], host="node1", idempotency_key="k1", body_hash="h1"))
    again = store.create(request(["a"], host="node1", idempotency_key="k1", body_hash="h1"))
    assert again.replayed and again.casts == []
    assert again.response == first.response
    assert len(store.list_instances()) == 1
    with pytest.raises(errors.IdempotencyConflict):
        store.create(request(["a"], host="node1", idempotency_key="k1", body_hash="other"))


def _vif(port: dict[str, object], rid: str, event: str = "port.vif_plugged") -> VifEvent:
    return VifEvent(
        request_id=rid, host="node1", port_id=uuid.UUID(str(port["id"])), device="tapx",
        bridge="brqx", received_at=datetime.now(UTC),
    )  # fmt: skip


def _inst(uuid_: str, rid: str, **kw: object) -> InstanceEvent:
    return InstanceEvent(request_id=rid, host="node1", instance_uuid=uuid.UUID(uuid_), **kw)  # type: ignore[arg-type]


def test_reports_drive_state_timeline_and_release(store: Store) -> None:
    heartbeat(store, "node1")
    records = Records(store)
    acc = store.create(request(["web"], host="node1"))
    rid = acc.response["request_id"]
    inst = acc.response["instances"][0]
    store.mark_sent({o["id"]: datetime.now(UTC) for o in store.operations(rid)})
    records.apply("port.vif_plugged", _vif(inst["ports"][0], rid))
    records.apply("instance.create.start", _inst(inst["uuid"], rid, state="building", elapsed_ms=1))
    records.apply("instance.create.progress", _inst(inst["uuid"], rid, step="guest_started"))
    end = _inst(inst["uuid"], rid, state="running")
    records.apply("instance.create.end", end)
    records.apply("instance.create.end", end)  # delivered twice: nothing more happens
    shown = store.show("web")
    assert (shown["state"], shown["task"], shown["fault"]) == ("running", None, None)
    assert shown["ports"][0]["state"] == "wired" and shown["ports"][0]["device"] == "tapx"
    assert [o["state"] for o in shown["operations"]] == ["done"]
    events = [e["event"] for e in store.timeline("web")["events"]]
    for hop in ("api.received", "casts.sent", "port.received", "port.vif_plugged",
                "instance.create.received", "instance.create.end", "operation.done"):  # fmt: skip
        assert hop in events
    assert events.count("operation.done") == 1

    deleting = store.delete("web")
    assert [c.method for c in deleting.casts] == ["delete_instance"]
    drid = deleting.response["request_id"]
    # the address is held until the guest is gone
    assert store.ports()[0]["fixed_ip"] == "10.10.0.10"
    applied = records.apply("instance.delete.end", _inst(inst["uuid"], drid, state="deleted"))
    assert [c.method for c in applied.casts] == ["port_deleted"]
    assert isinstance(applied.casts[0].message, PortDeleted)
    # newer than the create: a create of this port delivered late is stale at the agent
    assert applied.casts[0].message.revision == 2
    assert store.ports() == []
    assert store.list_instances() == []
    assert store.list_instances(state="deleted")[0]["uuid"] == inst["uuid"]
    # the address is free again
    again = store.create(request(["web2"], host="node1")).response["instances"][0]
    assert again["ports"][0]["fixed_ip"] == "10.10.0.10"


def test_build_error_releases_ports_and_keeps_the_reason(store: Store) -> None:
    heartbeat(store, "node1")
    acc = store.create(request(["web"], host="node1"))
    rid, inst = acc.response["request_id"], acc.response["instances"][0]
    applied = Records(store).apply(
        "instance.create.error", _inst(inst["uuid"], rid, reason="vif plugging timed out")
    )
    assert [c.method for c in applied.casts] == ["port_deleted"]
    shown = store.show(inst["uuid"])
    assert (shown["state"], shown["fault"], shown["ports"]) == (
        "error",
        "vif plugging timed out",
        [],
    )
    final = [e for e in store.timeline("web")["events"] if e["final"]]
    assert [(e["event"], e["reason"]) for e in final] == [
        ("operation.error", "vif plugging timed out")
    ]


def test_stalled_operations_are_recast_then_given_up(store: Store) -> None:
    heartbeat(store, "node1")
    acc = store.create(request(["web"], host="node1"))
    rid = acc.response["request_id"]
    op_id = store.operations(rid)[0]["id"]
    store.mark_sent({op_id: datetime.now(UTC)})
    casts, failed = store.stalled(redrive_after=30, operation_timeout=600, max_attempts=3)
    assert (casts, failed) == ([], [])  # not quiet long enough
    old = datetime.now(UTC) - timedelta(seconds=60)
    with store.db.writing() as s:
        s.execute(update(Operation).values(updated_at=old))
    casts, failed = store.stalled(redrive_after=30, operation_timeout=600, max_attempts=3)
    assert [c.method for c in casts] == ["port_created", "build_instance"]
    assert casts[1].message.instance.uuid == uuid.UUID(acc.response["instances"][0]["uuid"])  # type: ignore[attr-defined]
    with store.db.writing() as s:
        s.execute(update(Operation).values(updated_at=old, attempts=3))
    with structlog.testing.capture_logs() as logs:
        casts, failed = store.stalled(redrive_after=30, operation_timeout=600, max_attempts=3)
    assert casts == [] and failed == [op_id]
    # given up: logged once, with the ids an operator searches the journal for
    (line,) = [e for e in logs if e["event"] == "operation_finished"]
    assert (line["operation_id"], line["request_id"], line["state"]) == (op_id, rid, "error")
    assert line["instance_uuid"] == acc.response["instances"][0]["uuid"]
    shown = store.show("web")
    assert shown["state"] == "error" and "no answer from host 'node1'" in shown["fault"]
    assert shown["ports"] == []


def test_an_image_no_live_host_has_is_refused_and_placement_follows_images(
    store: Store,
) -> None:
    heartbeat(store, "node1", images=["tiny"])
    heartbeat(store, "node2", images=["tiny", "cirros"])
    with pytest.raises(errors.UnknownImage) as err:
        store.create(request(["a"], image="nope"))
    assert (err.value.field, err.value.value, err.value.valid) == (
        "image",
        "nope",
        ["cirros", "tiny"],
    )
    assert "no live compute host has it" in str(err.value)
    with pytest.raises(errors.UnknownImage) as err:
        store.create(request(["a"], host="node1", image="cirros"))
    assert "host 'node1' has no such image" in str(err.value) and err.value.valid == ["tiny"]
    assert store.list_instances() == []  # nothing half-created
    # placed only where the image is, however loaded that host is
    acc = store.create(request(["b1", "b2", "b3"], image="cirros"))
    assert {i["host"] for i in acc.response["instances"]} == {"node2"}
    # an agent that does not report its images (an older one) is taken at its word
    heartbeat(store, "node3", images=None)
    acc = store.create(request(["c"], host="node3", image="anything"))
    assert acc.response["instances"][0]["host"] == "node3"


def test_quiet_is_counted_from_where_the_event_queue_is(store: Store) -> None:
    """News still queued behind a backlog is not silence: with the events applied now
    sent 40 s ago, an operation quiet for 60 s is not re-driven before 30 + 40 s."""
    heartbeat(store, "node1")
    acc = store.create(request(["web"], host="node1"))
    op_id = store.operations(acc.response["request_id"])[0]["id"]
    store.mark_sent({op_id: datetime.now(UTC)})
    with store.db.writing() as s:
        s.execute(update(Operation).values(updated_at=datetime.now(UTC) - timedelta(seconds=60)))
    store.heard(datetime.now(UTC) - timedelta(seconds=40))
    assert store.stalled(redrive_after=30, operation_timeout=600, max_attempts=3) == ([], [])
    store.heard(datetime.now(UTC))  # the backlog is gone: it is quiet indeed
    casts, _ = store.stalled(redrive_after=30, operation_timeout=600, max_attempts=3)
    assert [c.method for c in casts] == ["port_created", "build_instance"]


def test_each_attempt_is_claimed_once_and_recorded_once(store: Store) -> None:
    heartbeat(store, "node1")
    acc = store.create(request(["web"], host="node1"))
    assert {c.attempt for c in acc.casts} == {1}  # the create claimed the first attempt
    op_id = acc.casts[0].operation_id
    assert op_id is not None
    old = datetime.now(UTC) - timedelta(seconds=60)
    with store.db.writing() as s:
        s.execute(update(Operation).values(updated_at=old))
    redriven, _ = store.stalled(redrive_after=30, operation_timeout=600, max_attempts=5)
    again, _ = store.stalled(redrive_after=30, operation_timeout=600, max_attempts=5)
    assert {c.attempt for c in redriven} == {2} and again == []  # claimed: not twice
    now = datetime.now(UTC)
    # the first attempt's hop recorded late (a slow replica): attempt 2 is newer, so the
    # old one writes nothing; attempt 2's hop once, and nothing counts a cast again
    store.mark_sent({op_id: now}, {op_id: 1})
    store.mark_sent({op_id: now}, {op_id: 2})
    hops = [
        (e["event"], e["reason"])
        for e in store.timeline("web")["events"]
        if e["event"] in ("casts.sent", "operation.retried")
    ]
    assert hops == [("operation.retried", "attempt 2")]
    assert store.operation(op_id)["attempts"] == 2
    # a cast that could not be published hands its attempt back
    with store.db.writing() as s:
        s.execute(update(Operation).values(updated_at=old))
    third, _ = store.stalled(redrive_after=30, operation_timeout=600, max_attempts=5)
    assert {c.attempt for c in third} == {3}
    store.note_cast_failed(op_id, "no queue", 3)
    assert store.operation(op_id)["attempts"] == 2


def test_concurrent_redrives_claim_each_operation_once(store: Store) -> None:
    """Four reconcilers (as four replicas would) at once over 30 stalled operations:
    SKIP LOCKED on PostgreSQL, serialised writers on SQLite; each operation once."""
    heartbeat(store, "node1")
    store.create(request([f"w{i}" for i in range(30)], host="node1"))
    with store.db.writing() as s:
        s.execute(update(Operation).values(updated_at=datetime.now(UTC) - timedelta(seconds=60)))
    claimed: list[str] = []
    lock = threading.Lock()
    gate = threading.Barrier(4)

    def reconciler() -> None:
        gate.wait()
        casts, _ = store.stalled(redrive_after=30, operation_timeout=600, max_attempts=5)
        with lock:
            claimed.extend(c.operation_id or "" for c in casts if c.method == "build_instance")

    threads = [threading.Thread(target=reconciler) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert len(claimed) == 30 and len(set(claimed)) == 30
    assert {o["attempts"] for o in store.operations()} == {2}


def test_busy_instance_refuses_reboot_but_delete_supersedes(store: Store) -> None:
    heartbeat(store, "node1")
    store.create(request(["web"], host="node1"))
    with pytest.raises(errors.InstanceBusy, match="create"):
        store.reboot("web", hard=False)
    store.delete("web")
    ops = store.show("web")["operations"]
    assert [(o["kind"], o["state"]) for o in ops] == [("delete", "pending"), ("create", "error")]


def test_names_resolve_or_are_ambiguous(store: Store) -> None:
    heartbeat(store, "node1")
    store.create(request(["twin"], host="node1"))
    store.create(request(["twin"], host="node1"))
    with pytest.raises(errors.AmbiguousName) as err:
        store.show("twin")
    assert err.value.valid is not None and len(err.value.valid) == 2
    with pytest.raises(errors.InstanceNotFound):
        store.show("nobody")


def test_sqlite_runs_in_wal_mode(tmp_path: object) -> None:
    db = Database(f"sqlite:///{tmp_path}/w.sqlite")
    try:
        with db.engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    finally:
        db.close()


def test_a_mac_clash_is_retried_with_a_fresh_choice(store: Store) -> None:
    import random

    heartbeat(store, "node1")
    first_mac = ipam.new_mac(random.Random(7))
    # another port already holds the MAC the seeded generator proposes first
    store.rng = random.Random(7)
    taken = store.create(request(["a"], host="node1")).response["instances"][0]
    assert taken["ports"][0]["mac"] == first_mac
    store.rng = random.Random(7)
    second = store.create(request(["b"], host="node1")).response["instances"][0]
    assert second["ports"][0]["mac"] != first_mac
    assert len({p["mac"] for p in store.ports()}) == 2


def test_migrations_down_and_up_keep_a_database_that_holds_data(database_url: str) -> None:
    """Instances, ports, operations, events and hosts in it: down to 0001 and up to head
    again (each migration since, both ways, over data), all kept, the schema the models'."""
    db = Database(database_url)
    try:
        db.upgrade()
        first = Store(db, agent_down_time=60)
        first.sync_networks([NET])
        heartbeat(first, "node1", images=["tiny"])
        acc = first.create(request(["web", "db"], host="node1"))
        rid = acc.response["request_id"]
        uuids = [i["uuid"] for i in acc.response["instances"]]
        tables = ("instances", "ports", "operations", "events", "agents", "networks")
        with db.reading() as s:
            before = {t: s.execute(text(f"SELECT count(*) FROM {t}")).scalar() for t in tables}
        with db.engine.begin() as conn:
            command.downgrade(db._alembic(conn), "0001")
        assert db.current_revision() == "0001"
        with db.reading() as s:
            assert {t: s.execute(text(f"SELECT count(*) FROM {t}")).scalar() for t in tables} == (
                before
            )
        db.upgrade()
        assert db.current_revision() == Database.head_revision() == "0003"
        with db.reading() as s:
            after = {t: s.execute(text(f"SELECT count(*) FROM {t}")).scalar() for t in tables}
        assert after == before
        with db.engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        # and what the later migrations added is written from now on
        store = Store(db, agent_down_time=60)
        assert [h.get("images") for h in store.hosts()] == [None]  # not said yet
        heartbeat(store, "node1", images=["tiny"])
        assert [h["images"] for h in store.hosts()] == [["tiny"]]
        Records(store).apply("instance.create.error", _inst(uuids[0], rid, reason="boom"))
        assert [str(p) for p in store.desired_state("node1", "l2", 14).released_ports] == [
            p["id"] for p in acc.response["instances"][0]["ports"]
        ]
    finally:
        db.close()


def test_released_ports_are_recorded_and_pruned_with_the_events(store: Store) -> None:
    heartbeat(store, "node1")
    acc = store.create(request(["web"], host="node1"))
    rid, inst = acc.response["request_id"], acc.response["instances"][0]
    Records(store).apply("instance.create.end", _inst(inst["uuid"], rid, state="running"))
    drid = store.delete("web").response["request_id"]
    Records(store).apply("instance.delete.end", _inst(inst["uuid"], drid, state="deleted"))
    with store.db.reading() as s:
        rows = list(s.scalars(select(ReleasedPort)))
    assert [(r.id, r.host, r.network_id, r.instance_uuid) for r in rows] == [
        (inst["ports"][0]["id"], "node1", str(NET.uuid), inst["uuid"])
    ]
    desired = store.desired_state("node1", "compute", retention_days=14)
    assert [str(u) for u in desired.deleted_instances] == [inst["uuid"]]
    # older than the retention: no longer listed, and pruned with the events
    old = datetime.now(UTC) - timedelta(days=20)
    with store.db.writing() as s:
        s.execute(update(ReleasedPort).values(released_at=old))
        s.execute(update(Instance).values(deleted_at=old))
    assert store.desired_state("node1", "l2", retention_days=14).released_ports == []
    assert store.desired_state("node1", "compute", retention_days=14).deleted_instances == []
    store.prune_events(14)
    with store.db.reading() as s:
        assert list(s.scalars(select(ReleasedPort))) == []


def test_db_commands_of_the_console_script(database_url: str, tmp_path: Path) -> None:
    """`agents-controller db current | upgrade`, as an operator runs them before a start."""
    conf = tmp_path / "controller.conf"
    conf.write_text(f"[controller]\ndatabase_url = {database_url}\n")

    def run(action: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [console_script("agents-controller"), "--config-file", str(conf), "db", action],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    head = Database.head_revision()
    res = run("current")
    assert res.returncode == 0 and f"revision None (head {head})" in res.stdout, res
    res = run("upgrade")
    assert res.returncode == 0 and f"revision {head} (head {head})" in res.stdout, res
    res = run("upgrade")  # again: nothing to do
    assert res.returncode == 0 and f"revision {head} (head {head})" in res.stdout, res
    conf.write_text("[controller]\ndatabase_url = postgresql://nobody@127.0.0.1:1/none\n")
    res = run("upgrade")
    assert res.returncode == 1 and "127.0.0.1:1" in res.stderr and "Traceback" not in res.stderr


def test_batches_sharing_instances_in_any_order_never_deadlock(database_url: str) -> None:
    """Two controllers' consumers applying batches that report on the same instances in
    opposite orders: every instance is locked in uuid order up front, so PostgreSQL
    never has to break a deadlock (each one costs `deadlock_timeout` of lag)."""
    db = Database(database_url)
    db.upgrade()
    try:
        store = Store(db, agent_down_time=60)
        store.sync_networks([NET])
        heartbeat(store, "node1")
        acc = store.create(request([f"d{i}" for i in range(12)], host="node1"))
        rid = acc.response["request_id"]
        insts = acc.response["instances"]
        batch = [
            ("instance.create.progress", _inst(i["uuid"], rid, step="guest_defined")) for i in insts
        ] + [("port.vif_plugged", _vif(i["ports"][0], rid)) for i in insts]

        def deadlocks() -> int:
            if db.is_sqlite:
                return 0
            with db.reading() as s:
                return int(
                    s.execute(
                        text(
                            "SELECT deadlocks FROM pg_stat_database"
                            " WHERE datname = current_database()"
                        )
                    ).scalar_one()
                )

        before = deadlocks()
        failures: list[BaseException] = []

        def apply(order: list[tuple[str, InstanceEvent | VifEvent]]) -> None:
            try:
                for _ in range(15):
                    Records(store).apply_batch(order)
            except BaseException as err:
                failures.append(err)

        threads = [
            threading.Thread(target=apply, args=(batch,)),
            threading.Thread(target=apply, args=(list(reversed(batch)),)),
        ]
        for th in threads:
            th.start()
        for th in threads:
            th.join(120)
        assert not failures, failures
        assert deadlocks() == before
        assert {
            p["state"] for i in store.list_instances() for p in store.show(i["uuid"])["ports"]
        } == {"wired"}
    finally:
        db.close()


def test_a_batch_reads_each_instance_and_port_once_however_many_events(store: Store) -> None:
    """The batch's rows stay in the session: an event of an instance already loaded
    selects nothing (the identity map holds objects weakly, so a row nobody kept was
    selected again for every event, each select autoflushing the timeline one INSERT
    at a time first)."""
    from sqlalchemy import event as sa_event

    heartbeat(store, "node1")
    acc = store.create(request([f"b{i}" for i in range(8)], host="node1"))
    rid = acc.response["request_id"]
    insts = acc.response["instances"]
    store.mark_sent({o["id"]: datetime.now(UTC) for o in store.operations(rid)})
    batch: list[tuple[str, InstanceEvent | VifEvent]] = []
    for i in insts:
        batch.append(("instance.create.start", _inst(i["uuid"], rid, state="building")))
        for step in ("xml_rendered", "ports_plugged", "guest_defined", "guest_started"):
            batch.append(("instance.create.progress", _inst(i["uuid"], rid, step=step)))
        batch.append(("port.vif_plugged", _vif(i["ports"][0], rid)))
        batch.append(("instance.create.end", _inst(i["uuid"], rid, state="running")))
    selects: list[str] = []

    def seen(_c: object, _cur: object, statement: str, *_rest: object) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            selects.append(statement)

    sa_event.listen(store.db.engine, "before_cursor_execute", seen)
    try:
        Records(store).apply_batch(batch)
    finally:
        sa_event.remove(store.db.engine, "before_cursor_execute", seen)
    from_instances = [q for q in selects if "FROM instances" in q]
    from_ports = [q for q in selects if "FROM ports" in q]
    assert len(from_instances) == 1, from_instances  # the one locking them all
    assert len(from_ports) <= 2, from_ports  # the ports' instances, then the rows
    assert {i["state"] for i in store.list_instances()} == {"running"}
