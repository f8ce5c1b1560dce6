#!/usr/bin/env python3
"""The least CPU one build can cost on this machine, whatever our code does.

A build, as docs/design.md fixes it, cannot do less than this:

  casts      two RPC casts through oslo.messaging (`port_created` to the l2-agent,
             `build_instance` to the compute-agent), each published and dispatched to
             an endpoint that does nothing
  events     two notifications (`port.vif_plugged`, seen by the compute-agent and the
             controller, and `instance.create.end`, seen by the controller), published
             with kombu in batches of 64 with one publisher confirm each (the cheapest
             way to publish them safely) and consumed with acks
  journal    each agent keeps the cast it took on disk before it acknowledges it: a
             file written and fsync'd, then removed (two per build)
  database   the controller's writes in PostgreSQL: an instance, a port and an
             operation inserted (10 builds a transaction, as `send build --count 10`),
             then the instance's state and the operation's end updated (64 builds a
             transaction, as event batches do); a minimal schema of our own, so fewer
             indexes than the real one
  netlink    a tap made, put in a bridge and set up with pyroute2 (the l2-agent's
             library) inside a throwaway network namespace
  hypervisor a domain defined and started on libvirt's test driver (test:///default)
  disk       a qcow2 overlay on a base image made with `qemu-img create`, as the
             compute-agent makes one per build of a disk image

Each part is timed alone on an idle machine: the CPU of this process (both ends of
every message), of the broker's nodes (beam.smp), of PostgreSQL's processes and of the
qemu-img children, divided by the builds. The sum is the floor: no implementation on
these engines and libraries does a build for less, and `cores x 1000 / floor` is the
most builds a second this machine can do. The scale bench's CPU line says what a
build costs today.

  FLOOR part=NAME ms_per_build=X [here_ms=X broker_ms=X postgres_ms=X children_ms=X]
  FLOOR total ms_per_build=X without_disk=X cores=N max_builds_per_s=X
        max_builds_per_s_without_disk=X

Usage (root, RabbitMQ on 127.0.0.1:5672, PostgreSQL on 127.0.0.1:5432; a scratch
database, a namespace and queues of its own, all removed afterwards):
  .venv/bin/python bench/floor.py [-n 2000] [--parts casts events ...]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agents.lab.database import ScratchPostgres  # noqa: E402
from agents.lab.procs import cpu_of, unique, wait_for  # noqa: E402
from common.config import MessagingSettings  # noqa: E402
from common.rpc import Messaging, delete_queues  # noqa: E402

KOMBU_URL = "amqp://guest:guest@127.0.0.1:5672//"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
TARGET_BUILDS_PER_S = 300


# --------------------------------------------------------------------------- CPU


def own_cpu_ms() -> float:
    """CPU of this process (every thread) so far, in ms."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return (usage.ru_utime + usage.ru_stime) * 1000


def children_cpu_ms() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (usage.ru_utime + usage.ru_stime) * 1000


@dataclass
class Cost:
    """CPU one build spent in one part, by where it was spent (ms)."""

    name: str
    where: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.where.values())

    def line(self) -> str:
        detail = " ".join(f"{k}_ms={v:.3f}" for k, v in self.where.items())
        return f"FLOOR part={self.name} ms_per_build={self.total:.3f} {detail}"


@contextmanager
def metered(name: str, builds: int) -> Iterator[Cost]:
    """Time the CPU of the `with` body: here, the broker, PostgreSQL, children."""
    cost = Cost(name)
    before = own_cpu_ms(), cpu_of("beam.smp"), cpu_of("postgres"), children_cpu_ms()
    yield cost
    after = own_cpu_ms(), cpu_of("beam.smp"), cpu_of("postgres"), children_cpu_ms()
    for key, b, a in zip(("here", "broker", "postgres", "children"), before, after, strict=True):
        if a - b > 0:
            cost.where[key] = (a - b) / builds


# --------------------------------------------------------------------------- parts


def casts(n: int) -> Cost:
    """Two oslo.messaging casts a build, each dispatched to a do-nothing endpoint."""
    import oslo_messaging  # common.rpc imported it, its warnings filtered

    exchange = unique("floor-")
    # oslo configured as the daemons configure it; what is timed below is oslo's alone
    settings = MessagingSettings(control_exchange=exchange)
    messaging = Messaging(settings)
    transport = messaging.rpc_transport
    got = {"n": 0}
    lock = threading.Lock()

    class Endpoint:
        def port_created(self, ctxt: object, **kwargs: object) -> None:
            with lock:
                got["n"] += 1

        build_instance = port_created

    servers = []
    topics = [unique("floor-l2-agent-"), unique("floor-compute-")]
    try:
        for topic in topics:
            target = oslo_messaging.Target(topic=topic, server="floorhost")
            server = oslo_messaging.get_rpc_server(transport, target, [Endpoint()])
            server.start()
            servers.append(server)
        client = oslo_messaging.get_rpc_client(transport, oslo_messaging.Target())
        l2 = client.prepare(topic=topics[0], server="floorhost")
        compute = client.prepare(topic=topics[1], server="floorhost")
        port = {"id": str(uuid.uuid4()), "mac": "fa:16:3e:00:00:01", "network": "net1"}
        l2.cast({}, "port_created", port=port)  # connections and queues up before timing
        wait_for(lambda: got["n"] == 1, 30, 0.005, "the first cast")
        with metered("casts", n) as cost:
            for _ in range(n):
                l2.cast({}, "port_created", port=port)
                compute.cast({}, "build_instance", instance={"uuid": str(uuid.uuid4())})
            wait_for(lambda: got["n"] == 2 * n + 1, 300, 0.005, "every cast")
    finally:
        for server in servers:
            server.stop()
            server.wait()
        queues = [f"{t}{s}" for t in topics for s in ("", ".floorhost")]
        delete_queues(settings.transport_url, queues, exchange)
        messaging.close()
    return cost


def events(n: int) -> Cost:
    """Two notifications a build: one seen by two queues, one by one; batched confirms."""
    import kombu

    exchange = kombu.Exchange(unique("floor-events-"), type="topic", durable=True)
    names = [unique("floor-compute-"), unique("floor-controller-")]
    queues = [
        kombu.Queue(names[0], exchange, routing_key="vif.#", durable=True),
        kombu.Queue(names[1], exchange, routing_key="#", durable=True),
    ]
    expected = 3 * n
    got = {"n": 0}
    stop = threading.Event()

    def consume() -> None:
        with kombu.Connection(KOMBU_URL) as conn:

            def on_message(_body: object, message: kombu.Message) -> None:
                message.ack()
                got["n"] += 1

            with kombu.Consumer(conn, queues, callbacks=[on_message], prefetch_count=200):
                while not stop.is_set():
                    try:
                        conn.drain_events(timeout=0.2)
                    except TimeoutError:
                        continue

    body = {"event_type": "port.vif_plugged", "payload": {"port": str(uuid.uuid4())}}
    thread = threading.Thread(target=consume, daemon=True)
    try:
        with kombu.Connection(KOMBU_URL) as conn:
            for queue in queues:
                queue.bind(conn.default_channel).declare()
            thread.start()
            channel = conn.default_channel
            channel.confirm_select()
            confirmed = {"tag": 0}

            def on_ack(tag: int, multiple: bool) -> None:
                confirmed["tag"] = max(confirmed["tag"], tag)

            channel.events["basic_ack"].add(on_ack)
            producer = kombu.Producer(channel, exchange)
            batch = 64
            with metered("events", n) as cost:
                sent = 0
                while sent < n:
                    k = min(batch // 2, n - sent)
                    for _ in range(k):
                        producer.publish(body, routing_key="vif.plugged", delivery_mode=2)
                        producer.publish(body, routing_key="instance.end", delivery_mode=2)
                    sent += k
                    while confirmed["tag"] < 2 * sent:  # one round trip for the batch
                        conn.drain_events(timeout=10)
                wait_for(lambda: got["n"] >= expected, 300, 0.005, "every event")
    finally:
        stop.set()
        if thread.is_alive():
            thread.join(5)
        delete_queues(MessagingSettings().transport_url, names, exchange.name)
    return cost


def journal(n: int) -> Cost:
    """Each agent keeps the cast it took: written, fsync'd (file and directory), removed."""
    root = Path(tempfile.mkdtemp(prefix="floor-journal-", dir="/var/tmp"))
    body = b"x" * 1500
    try:
        fd_dir = os.open(root, os.O_RDONLY)
        with metered("journal", n) as cost:
            for i in range(2 * n):
                path = root / f"{i:08d}"
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                os.write(fd, body)
                os.fsync(fd)
                os.close(fd)
                os.fsync(fd_dir)
                path.unlink()
        os.close(fd_dir)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return cost


def database(n: int) -> Cost:
    """Three rows inserted (10 builds a transaction), two updated (64 a transaction)."""
    import sqlalchemy as sa

    scratch = ScratchPostgres.create(PG_ADMIN, prefix="floor_")
    engine = sa.create_engine(scratch.url)
    try:
        meta = sa.MetaData()
        instances = sa.Table(
            "instances",
            meta,
            sa.Column("uuid", sa.String(36), primary_key=True),
            sa.Column("name", sa.String(64), nullable=False),
            sa.Column("host", sa.String(64), nullable=False),
            sa.Column("state", sa.String(16), nullable=False),
        )
        ports = sa.Table(
            "ports",
            meta,
            sa.Column("uuid", sa.String(36), primary_key=True),
            sa.Column("instance", sa.String(36), sa.ForeignKey("instances.uuid")),
            sa.Column("mac", sa.String(17), nullable=False, unique=True),
            sa.Column("ip", sa.String(15), nullable=False, unique=True),
        )
        operations = sa.Table(
            "operations",
            meta,
            sa.Column("id", sa.String(36), primary_key=True),
            sa.Column("instance", sa.String(36), sa.ForeignKey("instances.uuid")),
            sa.Column("state", sa.String(16), nullable=False),
        )
        meta.create_all(engine)
        ids = [(str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())) for _ in range(n)]
        with metered("database", n) as cost:
            for start in range(0, n, 10):
                chunk = ids[start : start + 10]
                with engine.begin() as conn:
                    conn.execute(
                        instances.insert(),
                        [
                            {"uuid": i, "name": f"vm-{i[:8]}", "host": "h1", "state": "building"}
                            for i, _, _ in chunk
                        ],
                    )
                    conn.execute(
                        ports.insert(),
                        [
                            {
                                "uuid": p,
                                "instance": i,
                                "mac": "fa:16:3e:" + ":".join(f"{b:02x}" for b in k.to_bytes(3)),
                                "ip": "10." + ".".join(str(b) for b in k.to_bytes(3)),
                            }
                            for k, (i, p, _) in enumerate(chunk, start)
                        ],
                    )
                    conn.execute(
                        operations.insert(),
                        [{"id": o, "instance": i, "state": "sent"} for i, _, o in chunk],
                    )
            for start in range(0, n, 64):
                chunk = ids[start : start + 64]
                with engine.begin() as conn:
                    conn.execute(
                        instances.update()
                        .where(instances.c.uuid == sa.bindparam("u"))
                        .values(state="running"),
                        [{"u": i} for i, _, _ in chunk],
                    )
                    conn.execute(
                        operations.update()
                        .where(operations.c.id == sa.bindparam("o"))
                        .values(state="done"),
                        [{"o": o} for _, _, o in chunk],
                    )
    finally:
        engine.dispose()
        scratch.drop()
    return cost


def netlink(n: int) -> Cost:
    """A tap made, put in a bridge and set up, in a namespace of its own."""
    from pyroute2 import IPRoute, netns

    name = unique("floor-")
    netns.create(name)
    result: dict[str, Cost] = {}

    def work() -> None:  # setns applies to this thread only
        netns.setns(name)
        with IPRoute() as ip:
            ip.link("add", ifname="brfloor", kind="bridge")
            bridge = ip.link_lookup(ifname="brfloor")[0]
            with metered("netlink", n) as cost:
                for i in range(n):
                    ip.link("add", ifname=f"tapfloor{i}", kind="tuntap", mode="tap")
                    index = ip.link_lookup(ifname=f"tapfloor{i}")[0]
                    ip.link("set", index=index, master=bridge, state="up")
            result["cost"] = cost

    try:
        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
    finally:
        netns.remove(name)  # its links go with it
    return result["cost"]


def hypervisor(n: int) -> Cost:
    """A domain defined and started on libvirt's test driver."""
    import libvirt

    conn = libvirt.open("test:///default")
    template = (
        "<domain type='test'><name>floor-{i}</name><uuid>{uuid}</uuid>"
        "<memory>65536</memory><vcpu>1</vcpu><os><type>hvm</type></os><devices>"
        "<interface type='ethernet'><target dev='tapfloor{i}'/>"
        "<mac address='fa:16:3e:{a:02x}:{b:02x}:{c:02x}'/></interface></devices></domain>"
    )
    try:
        with metered("hypervisor", n) as cost:
            for i in range(n):
                xml = template.format(
                    i=i, uuid=uuid.uuid4(), a=i >> 16 & 255, b=i >> 8 & 255, c=i & 255
                )
                conn.defineXML(xml).create()
    finally:
        conn.close()  # the test driver's state lives in this connection only
    return cost


def disk(n: int) -> Cost:
    """A qcow2 overlay on a base image, by `qemu-img create`."""
    root = Path(tempfile.mkdtemp(prefix="floor-disk-", dir="/var/tmp"))
    try:
        base = root / "base.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True)
        overlay = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base)]
        with metered("disk", n) as cost:
            for i in range(n):
                subprocess.run([*overlay, str(root / f"{i}.qcow2"), "1G"], check=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return cost


PARTS: dict[str, Callable[[int], Cost]] = {
    "casts": casts,
    "events": events,
    "journal": journal,
    "database": database,
    "netlink": netlink,
    "hypervisor": hypervisor,
    "disk": disk,
}
# a part is measured on fewer builds where each is slow or leaves a lot behind
SCALE = {"netlink": 0.25, "disk": 0.25}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="builds a part is measured on")
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    args = parser.parse_args()
    if args.n < 10:
        parser.error(f"-n {args.n}: at least 10 builds")
    if os.geteuid() != 0 and "netlink" in args.parts:
        parser.error("the netlink part makes a network namespace: run as root")
    costs = []
    for name in args.parts:
        n = max(10, int(args.n * SCALE.get(name, 1.0)))
        cost = PARTS[name](n)
        print(cost.line(), flush=True)
        costs.append(cost)
    total = sum(c.total for c in costs)
    no_disk = sum(c.total for c in costs if c.name != "disk")
    cores = os.cpu_count() or 1
    budget = cores * 1000 / TARGET_BUILDS_PER_S
    print(
        f"FLOOR total ms_per_build={total:.2f} without_disk={no_disk:.2f} cores={cores}"
        f" max_builds_per_s={cores * 1000 / total:.0f}"
        f" max_builds_per_s_without_disk={cores * 1000 / no_disk:.0f}"
        f" target={TARGET_BUILDS_PER_S} needs_ms_per_build<={budget:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
