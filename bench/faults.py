#!/usr/bin/env python3
"""The fault table: bursts of builds through the controller, a fault injected mid-burst.

Each row is one lab (agents/lab: agents-controller on SQLite, one host = a network
namespace with its own l2-agent and compute-agent as processes, the broker relayed in).
The compute-agent runs on libvirt's test driver where the guests' survival across an
agent death does not matter, and on qemu:///embed with real TCG guests where it does
(the test driver's domains live in the agent process and die with it). A row sends N
builds as a burst through the REST API (several clients at once, each POST with its own
Idempotency-Key, retried with the same key while the controller does not answer), then
injects its fault about 0.15 s after the first POST, waits until every instance settled,
inspects the controller, the host's kernel, the l2-agent's record, libvirt (through the
compute-agent's `list_instances`), the instance dirs and QEMU processes, then deletes
everything through the API and checks nothing is left behind.

One line per row, then a table:

  ROW scenario=NAME sent=N running=N error=N lost=N duplicated=N settle_s=X

- running: the controller says running with no task, the host lists the guest running
  (one QEMU process of that uuid on an embed host), and every port is wired: in the
  controller, as a tap in the kernel, in the l2-agent's record, and (embed) held open by
  the guest's QEMU (a tap re-created under a running QEMU leaves the guest cut off).
- error: state error with a non-empty fault, and nothing left for it: no port in GET
  /v1/ports, no tap, no l2 record, no instance dir, no active domain. A defined,
  inactive domain whose record holds the fault (the compute-agent's error record, which
  the instance's delete removes) is not counted as a leftover.
- lost: asked for and neither of the above after settling (unsettled at the bound, a
  state other than running/error, a running instance the host does not have, an error
  that left a port/tap/record/dir/guest behind), plus anything left on the host or in
  the controller after the final delete of every instance, plus taps, records, domains,
  dirs or QEMU processes nobody asked for.
- duplicated: more than one QEMU process (or domain name) for one uuid, more ports for
  an instance than it has networks, two live instances or l2 records sharing an
  address, or instances the controller holds that no request asked for (a retried POST
  that built twice).
- settle_s: from the fault until every instance was running (host agreeing) or error
  (the controller's view), bounded by vif_plugging_timeout + 2 x redrive_after + margin.

Test-driver rows where the compute-agent dies (`*-test` variants of kill/term compute):
guests whose build had ended (instance.create.end recorded with a time before the agent
process exited) die with the test driver. They are no fault of the product's and are
left out of `sent` (shown as `drv_lost` in the table; their instances are still deleted
and checked for leftovers at the end). Builds that had not ended must end.

Rows (`--list`): kill -9 and SIGTERM of each process (compute-agent on real guests and
on the test driver, l2-agent, controller on SQLite and on PostgreSQL), kill -9 of one of
two controller replicas on one PostgreSQL database (the clients move to the other,
which finishes everything alone; `Run.http` takes the lab's comma-separated URLs and
moves on when one refuses the connection, as agentctl does), the broker's app
stopped for 2 s, kill -9 of the RabbitMQ node holding most of the agents' connections
(a 3-node cluster of the row's own on loopback, quorum queues; the node is started
again once the burst settled), casts delivered twice and reordered, taps deleted and
guests destroyed behind the agents' backs, malformed casts of every shape (fresh ids,
and garbled copies of real casts). Timings are short ([controller] redrive_after 5 s,
reconcile_interval 1 s, host_sync_interval 3 s; [compute] vif_plugging_timeout 15 s;
heartbeats 1 s).

Usage (root): .venv/bin/python bench/faults.py [--quick] [--only NAME] [--list]
              [-n N] [--postgres ADMIN_URL] [--keep-logs DIR]
`--keep-logs DIR` keeps each row's agent and controller logs, and the timeline of every
instance that did not end running, under DIR/<row>/.
Exit status 0 only when every row met its target (lost=0, duplicated=0, and the row's
own checks: malformed rows also need both agents answering ping, a named log line and
no traceback). Everything a row makes is removed at the end, also on failure or Ctrl-C;
the broker row restarts the broker's app whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import signal
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
import uuid as uuidlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agents.lab.broker import BrokerCluster, BrokerScope, free_base_port  # noqa: E402
from agents.lab.host import LabHost, qemu_pids  # noqa: E402
from agents.lab.lab import Lab  # noqa: E402
from agents.lab.procs import broker_available, run, wait_for  # noqa: E402
from common.config import BaseConfig, MessagingSettings, load  # noqa: E402
from common.messages import (  # noqa: E402
    BuildInstance,
    DeleteInstance,
    InstanceList,
    InstanceSpec,
    Port,
    PortCreated,
    PortDeleted,
)
from common.rpc import COMPUTE_TOPIC, L2_TOPIC, Messaging  # noqa: E402

IMAGE_DIR = REPO / ".cache" / "guest-image"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"

# Short timings, so a row takes a minute or two.
REDRIVE_AFTER = 5.0
VIF_PLUGGING_TIMEOUT = 15.0
MARGIN = 45.0
SETTLE_BOUND = VIF_PLUGGING_TIMEOUT + 2 * REDRIVE_AFTER + MARGIN
CLEANUP_BOUND = 45.0
FAULT_DELAY = 0.15  # seconds after the first POST of the burst
CONTROLLER = {
    "redrive_after": REDRIVE_AFTER,
    "reconcile_interval": 1,
    "max_attempts": 5,
    # above the agents' vif wait, below the settle bound
    "operation_timeout": VIF_PLUGGING_TIMEOUT + 4 * REDRIVE_AFTER + 20,
    "host_sync_interval": 3,
    "host_sync_timeout": 3,
    "agent_down_time": 6,
    "stop_grace": 5,
    "max_count": 100,
}
COMPUTE = {
    "compute": {
        "vif_plugging_timeout": VIF_PLUGGING_TIMEOUT,
        "heartbeat_interval": 1,
        "vcpus": 512,
        "memory_mb": 262144,
        "stop_grace": 5,
    }
}
L2 = {"l2": {"heartbeat_interval": 1, "stop_grace": 5}}

_TAP_RE = re.compile(r"^tap[0-9a-f]{8}-[0-9a-f]{2}$")


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Clean-up that Ctrl-C (or SIGTERM) must not cut short: the signal is held until
    the block ends, then raised as KeyboardInterrupt."""
    held: list[int] = []
    previous = {
        sig: signal.signal(sig, lambda signum, _f: held.append(signum))
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if held:
            raise KeyboardInterrupt(f"signal {held[0]}")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# =========================================================================== HTTP


class Http:
    """Small JSON client of the lab's controller (urllib: nothing else to install)."""

    def __init__(self, url: str, token: str | None = None) -> None:
        self.url = url
        # the lab's admin token (the API wants one, as installed)
        self.auth = {"Authorization": f"Bearer {token}"} if token else {}

    def rotated(self, by: int) -> Http:
        """The same controllers, asked from the `by`-th on (spreads clients over them)."""
        urls = self.url.split(",")
        by %= len(urls)
        other = Http(",".join(urls[by:] + urls[:by]))
        other.auth = self.auth
        return other

    def request(
        self,
        method: str,
        path: str,
        body: object = None,
        headers: dict[str, str] | None = None,
        timeout: float = 15,
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        hdrs = {"Content-Type": "application/json", **self.auth, **(headers or {})}
        try:
            with self._open(method, path, data, hdrs, timeout) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            raw = err.read()
            try:
                return err.code, json.loads(raw)
            except ValueError:
                return err.code, raw.decode(errors="replace")

    def _open(
        self, method: str, path: str, data: bytes | None, headers: dict[str, str], timeout: float
    ) -> Any:
        """urlopen on the first of the lab's controllers (comma-separated URLs) that takes
        the connection, as agentctl does: an HTTP answer is never sent elsewhere."""
        urls = self.url.split(",")
        for i, base in enumerate(urls):
            req = urllib.request.Request(f"{base}{path}", data=data, method=method, headers=headers)
            try:
                return urllib.request.urlopen(req, timeout=timeout)
            except urllib.error.HTTPError:
                raise
            except OSError:
                if i == len(urls) - 1:
                    raise
        raise AssertionError("unreachable")

    def get(self, path: str, timeout: float = 10) -> Any:
        status, doc = self.request("GET", path, timeout=timeout)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {doc}")
        return doc


# =========================================================================== observing


def qemu_uuids(embed_root: Path) -> Counter[str]:
    """QEMU processes of one embed root, counted per guest uuid (`-uuid` argument)."""
    return Counter(u for u, _pid in qemu_guests(embed_root))


def qemu_guests(embed_root: Path) -> list[tuple[str, int]]:
    """(guest uuid, pid) of every QEMU process of one embed root."""
    found = []
    for pid in qemu_pids(embed_root):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        for i, arg in enumerate(argv[:-1]):
            if arg == b"-uuid":
                found.append((argv[i + 1].decode(), pid))
    return found


def qemu_taps(pid: int) -> set[str]:
    """The taps a QEMU process holds open: a tun fd's fdinfo reads `iff: tapX` while it is
    attached, and `iff:` (empty) once its tap was deleted under it (docs/e2e.md)."""
    held = set()
    with contextlib.suppress(OSError):
        for info in Path(f"/proc/{pid}/fdinfo").iterdir():
            with contextlib.suppress(OSError):
                for line in info.read_text().splitlines():
                    if line.startswith("iff:") and line[4:].strip():
                        held.add(line[4:].strip())
    return held


@dataclass
class HostView:
    """What the host has, seen from outside the controller."""

    domains: dict[str, Any] | None  # uuid -> InstanceInfo (compute-agent's list), None: no answer
    domain_names: Counter[str]
    taps: set[str]
    records: dict[str, str | None]  # port id -> fixed ip, l2 records wanted present
    dirs: set[str]
    qemu: Counter[str] | None  # embed hosts only
    qemu_taps: dict[str, set[str]] = field(default_factory=dict)  # uuid -> taps QEMU holds


@dataclass
class View:
    at: float
    instances: dict[str, dict[str, Any]] | None  # controller, by uuid (deleted ones too)
    ports: list[dict[str, Any]] | None
    host: HostView


def tap_of(port_id: str) -> str:
    return f"tap{port_id[:11]}"


# =========================================================================== one row


@dataclass
class Row:
    name: str
    driver: str  # "test" | "qemu"
    n: int
    quick_n: int | None  # None: not in --quick
    inject: Callable[[Run], None]
    doc: str
    after: Callable[[Run], None] | None = None  # after settling, before inspecting
    check: Callable[[Run], list[str]] | None = None  # the row's own checks
    driver_lost: bool = False
    clients: int = 8
    touches_broker: bool = False
    postgres: bool = False  # the controller on a scratch PostgreSQL database
    cluster: bool = False  # on a 3-node RabbitMQ cluster of its own, quorum queues
    replicas: int = 1  # controllers on that database, all serving the API (PostgreSQL)
    stagger: float = 0.04  # seconds between the burst's clients' first POSTs


@dataclass
class Result:
    row: str
    sent: int = 0
    running: int = 0
    error: int = 0
    lost: int = 0
    duplicated: int = 0
    settle_s: float = 0.0
    driver_lost: int = 0
    took_s: float = 0.0
    cleanup_s: float = 0.0
    problems: list[str] = field(default_factory=list)  # why lost / duplicated / checks
    notes: list[str] = field(default_factory=list)
    crashed: str | None = None

    @property
    def ok(self) -> bool:
        return (
            self.crashed is None
            and self.lost == 0
            and self.duplicated == 0
            and not [p for p in self.problems if p.startswith("check:")]
        )

    def line(self) -> str:
        return (
            f"ROW scenario={self.row} sent={self.sent} running={self.running} "
            f"error={self.error} lost={self.lost} duplicated={self.duplicated} "
            f"settle_s={self.settle_s:.1f}"
        )


class Run:
    """One row's world: its lab, its host, its burst, what it saw."""

    def __init__(self, row: Row, n: int, postgres: str | None) -> None:
        self.row = row
        self.n = n
        self.prefix = f"f{uuidlib.uuid4().hex[:5]}"
        self.cluster: BrokerCluster | None = None
        scope = None
        if row.cluster:
            self.cluster = BrokerCluster(f"flt-{self.prefix}", 3, free_base_port(3))
            self.cluster.__enter__()
            scope = BrokerScope.new("flt-", self.cluster.transport_url, queue_type="quorum")
        self.lab = Lab.create(
            prefix="flt-",
            image_dir=IMAGE_DIR if row.driver == "qemu" else None,
            stop_signal=signal.SIGKILL,
            scope=scope,
        )
        self.postgres = postgres
        self.node: LabHost
        self.http: Http
        self.messaging: Messaging | None = None
        self.settings: MessagingSettings
        # uuid -> the instance as the API answered its create
        self.asked: dict[str, dict[str, Any]] = {}
        self.asked_lock = threading.Lock()
        self.refused: list[str] = []  # POSTs that never got a 202/200
        self.extra: dict[str, dict[str, Any]] = {}  # made by the row itself (victims)
        self.fault_at: float | None = None
        self.fault_wall: datetime | None = None
        self.down_wall: datetime | None = None  # when the faulted agent had exited
        self.driver_lost: set[str] = set()
        self.blamed: set[str] = set()  # instances counted lost (by the last judge())
        self.notes: list[str] = []
        self.problems: list[str] = []
        self.burst_threads: list[threading.Thread] = []
        self.burst_started = threading.Event()
        self.t0 = 0.0
        self.log_marks: dict[str, int] = {}

    # ------------------------------------------------------------------ set-up

    def up(self) -> None:
        ctl = self.lab.start_controller(
            postgres=self.postgres, settings=CONTROLLER, replicas=self.row.replicas
        )
        self.http = Http(self.lab.url, ctl.token)
        self.node = self.lab.add_host("node1", driver=self.row.driver, compute=COMPUTE, l2=L2)  # type: ignore[arg-type]
        self.settings = load(BaseConfig, [self.lab.write_shared()]).messaging
        self.messaging = Messaging(self.settings)

    @property
    def ctl(self) -> Any:
        assert self.lab.controller is not None
        return self.lab.controller

    def compute_client(self, timeout: float = 5) -> Any:
        assert self.messaging is not None
        return self.messaging.rpc_client(COMPUTE_TOPIC, self.node.host, timeout=timeout)

    def l2_client(self, timeout: float = 5) -> Any:
        assert self.messaging is not None
        return self.messaging.rpc_client(L2_TOPIC, self.node.host, timeout=timeout)

    def mark_fault(self) -> None:
        if self.fault_at is None:
            self.fault_at = time.monotonic()
            self.fault_wall = datetime.now(UTC)

    # ------------------------------------------------------------------ the burst

    def burst(self, n: int, clients: int, name: str | None = None) -> None:
        """Start `clients` threads POSTing n builds between them, `stagger` apart."""
        clients = max(1, min(clients, n))
        counts = [n // clients + (1 if i < n % clients else 0) for i in range(clients)]
        self.t0 = time.monotonic()
        for i, count in enumerate(counts):
            body = {"name": f"{name or self.prefix}-c{i}", "count": count, "networks": ["net1"]}
            key = f"{self.prefix}-{name or 'b'}-{i}"
            th = threading.Thread(
                target=self._client,
                args=(body, key, i * self.row.stagger, self.http.rotated(i)),
                name=f"client-{i}",
                daemon=True,
            )
            th.start()
            self.burst_threads.append(th)

    def _client(self, body: dict[str, Any], key: str, delay: float, http: Http) -> None:
        time.sleep(delay)
        deadline = time.monotonic() + 60
        last = ""
        while time.monotonic() < deadline:
            try:
                status, doc = http.request(
                    "POST", "/v1/instances", body, {"Idempotency-Key": key}, timeout=15
                )
            except OSError as err:  # the controller is down: the same key again, later
                last = str(err)
                time.sleep(0.3)
                continue
            if status in (200, 202):
                with self.asked_lock:
                    for inst in doc["instances"]:
                        self.asked[inst["uuid"]] = inst
                return
            last = f"{status} {doc}"
            if status in (500, 502, 503, 504):
                time.sleep(0.3)
                continue
            break
        self.refused.append(f"{body['name']}: {last}"[:300])

    def wait_burst(self, timeout: float = 90) -> None:
        for th in self.burst_threads:
            th.join(max(0.1, self.t0 + timeout - time.monotonic()))

    # ------------------------------------------------------------------ looking

    def host_view(self) -> HostView:
        domains: dict[str, Any] | None
        names: Counter[str] = Counter()
        try:
            listing = self.compute_client(timeout=4).call("list_instances")
            assert isinstance(listing, InstanceList), listing
            domains = {str(i.uuid): i for i in listing.instances}
            names = Counter(i.name for i in listing.instances)
        except Exception:
            domains = None
        try:
            taps = {n for n in self.node.links() if _TAP_RE.match(n)}
        except Exception:
            taps = set()
        records = {
            r["port_id"]: (r.get("port") or {}).get("fixed_ip")
            for r in self.node.recorded_ports()
            if r.get("wanted") == "present"
        }
        dirs = set()
        with contextlib.suppress(OSError):
            for d in self.node.instances_dir.iterdir():
                with contextlib.suppress(ValueError):
                    dirs.add(str(uuidlib.UUID(d.name)))
        qemu = held = None
        if self.row.driver == "qemu":
            guests = qemu_guests(self.node.embed_root)
            qemu = Counter(u for u, _ in guests)
            held = {u: qemu_taps(pid) for u, pid in guests}
        return HostView(domains, names, taps, records, dirs, qemu, held or {})

    def view(self) -> View:
        instances: dict[str, dict[str, Any]] | None = {}
        ports = None
        try:
            assert instances is not None
            for doc in self.http.get("/v1/instances", timeout=5) + self.http.get(
                "/v1/instances?state=deleted", timeout=5
            ):
                instances[doc["uuid"]] = doc
            ports = self.http.get("/v1/ports", timeout=5)
        except Exception:
            instances = None
        return View(time.monotonic(), instances, ports, self.host_view())

    def wanted(self) -> dict[str, dict[str, Any]]:
        with self.asked_lock:
            return {u: d for u, d in self.asked.items() if u not in self.driver_lost}

    def _update_driver_lost(self, view: View) -> None:
        """Test driver, compute-agent died: a guest whose build had ended before the fault
        died with the agent process. Found from the controller's timeline."""
        cutoff = self.down_wall or self.fault_wall
        if not self.row.driver_lost or cutoff is None or view.instances is None:
            return
        for u in list(self.wanted()):
            inst = view.instances.get(u)
            host_has = view.host.domains is not None and u in view.host.domains
            if inst is None or host_has:
                continue
            if inst["state"] == "running" or (inst["state"] == "error" and inst.get("fault")):
                try:
                    events = self.http.get(f"/v1/instances/{u}/timeline", timeout=5)["events"]
                except Exception:
                    continue
                for ev in events:
                    if ev["event"] == "instance.create.end" and _parse(ev["at"]) < cutoff:
                        self.driver_lost.add(u)
                        break

    def final(self, view: View) -> bool:
        """Every asked instance is running (the host agreeing) or in error (the
        controller's view), and the host builds nothing of them any more."""
        if view.instances is None or view.host.domains is None:
            return False
        self._update_driver_lost(view)
        for u in self.wanted():
            inst = view.instances.get(u)
            if inst is None or inst["task"] is not None:
                return False
            d = view.host.domains.get(u)
            if d is not None and d.state == "building":
                return False
            if inst["state"] == "running":
                if view.ports is None:
                    return False
                if self.not_running(u, [p["id"] for p in self.asked[u]["ports"]], view):
                    return False
            elif inst["state"] != "error":
                return False
        return True

    def settle(self, bound: float = SETTLE_BOUND, start: float | None = None) -> tuple[float, View]:
        """Wait until final() holds in two looks at least 1.5 s apart (nothing moved in
        between: a replayed build or a host sync pass could still change it); the time
        is that of the first look. At the bound: the bound, and the last look."""
        if start is None:
            start = self.fault_at if self.fault_at is not None else self.t0
        deadline = start + bound
        first: View | None = None
        while True:
            view = self.view()
            if self.final(view) and not any(t.is_alive() for t in self.burst_threads):
                if first is None:
                    first = view
                elif view.at - first.at >= 1.5:
                    return first.at - start, view
            else:
                first = None
            if time.monotonic() > deadline:
                return bound, view
            time.sleep(0.5)

    # ------------------------------------------------------------------ judging

    def judge(self, view: View) -> tuple[Counter[str], list[str], int, list[str]]:
        """(category per asked instance, why lost, duplicated, why duplicated)."""
        cats: Counter[str] = Counter()
        why: list[str] = []
        dup_why: list[str] = []
        host = view.host
        insts = view.instances or {}
        ports = view.ports or []
        ports_of: dict[str, list[dict[str, Any]]] = {}
        for p in ports:
            ports_of.setdefault(p["instance_uuid"], []).append(p)
        wanted = self.wanted()
        running_ports: set[str] = set()
        explained_domains: set[str] = set()
        blamed: set[str] = set()

        def lost(u: str, reason: str) -> None:
            cats["lost"] += 1
            blamed.add(u)
            self.blamed.add(u)
            name = wanted.get(u, self.extra.get(u, {})).get("name", "?")
            why.append(f"{name} {u[:8]}: {reason}")

        for u, asked in wanted.items():
            inst = insts.get(u)
            port_ids = [p["id"] for p in asked["ports"]]
            if inst is None:
                lost(
                    u,
                    "unknown to the controller"
                    if view.instances is not None
                    else "controller did not answer",
                )
                continue
            state, task, fault = inst["state"], inst["task"], inst.get("fault")
            if state == "running" and task is None:
                problems = self.not_running(u, port_ids, view)
                running_ports.update(port_ids)
                explained_domains.add(u)
                if problems:
                    lost(u, "running, but " + ", ".join(problems))
                else:
                    cats["running"] += 1
            elif state == "error" and fault:
                left = self._leftovers(u, port_ids, view, allow_error_record=True)
                explained_domains.add(u)
                if left:
                    lost(u, f"error ({_short(fault)}), but left " + ", ".join(left))
                else:
                    cats["error"] += 1
            else:
                lost(u, f"state={state} task={task} fault={_short(fault)}")
                running_ports.update(port_ids)  # its leftovers are blamed on it already
                explained_domains.add(u)

        # the row's own instances (deleted on purpose): nothing may stay
        for u, doc in self.extra.items():
            inst = insts.get(u)
            port_ids = [p["id"] for p in doc["ports"]]
            explained_domains.add(u)
            if inst is not None and inst["state"] != "deleted":
                running_ports.update(port_ids)
                continue
            left = self._leftovers(u, port_ids, view, allow_error_record=False)
            if left:
                lost(u, "deleted, but left " + ", ".join(left))

        # what nobody explains (the test driver's dead guests are judged by the clean-up)
        with self.asked_lock:
            excused = {p["id"] for u in self.driver_lost for p in self.asked[u]["ports"]}
        running_ports |= excused
        known_ports = {
            p["id"] for d in list(wanted.values()) + list(self.extra.values()) for p in d["ports"]
        } | excused
        for tap in sorted(host.taps - {tap_of(p) for p in running_ports}):
            owner = next(
                (
                    u
                    for u, d in {**wanted, **self.extra}.items()
                    if tap in {tap_of(p["id"]) for p in d["ports"]}
                ),
                None,
            )
            if owner is None:
                cats["lost"] += 1
                why.append(f"orphan tap {tap}")
            elif owner not in blamed:
                lost(owner, f"{tap} left behind")
        for pid in sorted(set(host.records) - running_ports):
            owner = next(
                (
                    u
                    for u, d in {**wanted, **self.extra}.items()
                    if pid in {p["id"] for p in d["ports"]}
                ),
                None,
            )
            if owner is None and pid not in known_ports:
                cats["lost"] += 1
                why.append(f"orphan l2 record {pid[:8]}")
        for u in sorted(set(host.domains or {}) - explained_domains - self.driver_lost):
            cats["lost"] += 1
            why.append(f"domain {u[:8]} nobody asked for ({host.domains[u].state})")  # type: ignore[index]
        for u in sorted(set(host.qemu or {}) - explained_domains - self.driver_lost):
            cats["lost"] += 1
            why.append(f"QEMU of {u[:8]} nobody asked for")
        for u in sorted(host.dirs - explained_domains - self.driver_lost):
            cats["lost"] += 1
            why.append(f"instance dir {u[:8]} nobody asked for")

        # duplicates
        dup = 0
        for u, c in (host.qemu or {}).items():
            if c > 1:
                dup += 1
                dup_why.append(f"{c} QEMU processes for {u[:8]}")
        for name, c in host.domain_names.items():
            if c > 1:
                dup += 1
                dup_why.append(f"{c} domains named {name}")
        for u, ps in ports_of.items():
            if u in wanted and len(ps) > len(wanted[u]["ports"]):
                dup += 1
                dup_why.append(f"{len(ps)} ports for {u[:8]}")
        live_ips: Counter[str] = Counter()
        for u, inst in insts.items():
            if inst["state"] in ("deleted", "error") and not ports_of.get(u):
                continue
            for p in inst.get("ports") or []:
                if p.get("fixed_ip"):
                    live_ips[p["fixed_ip"]] += 1
        for ip, c in live_ips.items():
            if c > 1:
                dup += 1
                dup_why.append(f"{c} instances hold {ip}")
        for ip, c in Counter(v for v in host.records.values() if v).items():
            if c > 1:
                dup += 1
                dup_why.append(f"{c} l2 records hold {ip}")
        mine = {u for u, i in insts.items() if i["name"].startswith(self.prefix)}
        strays = mine - set(self.asked) - set(self.extra)
        if strays:
            dup += len(strays)
            dup_why.append(f"{len(strays)} instances no answer named (a retried POST built twice?)")
        names = Counter(
            i["name"] for u, i in insts.items() if u in mine and i["state"] != "deleted"
        )
        for name, c in names.items():
            if c > 1:
                dup += 1
                dup_why.append(f"{c} live instances named {name}")
        return cats, why, dup, dup_why

    def not_running(self, u: str, port_ids: list[str], view: View) -> list[str]:
        """Why an instance the controller says is running is not really running (empty:
        it is): the host's guest, its QEMU (embed), each port wired in the controller,
        in the kernel, in the l2 record, and held by the guest's QEMU (embed)."""
        host = view.host
        problems = []
        d = host.domains.get(u) if host.domains is not None else None
        if host.domains is None:
            problems.append("compute-agent did not answer")
        elif d is None or d.state != "running":
            problems.append(f"host lists it {d.state if d else 'nowhere'}")
        if host.qemu is not None and host.qemu.get(u, 0) != 1:
            problems.append(f"{host.qemu.get(u, 0)} QEMU processes")
        cports = {p["id"]: p for p in view.ports or [] if p["instance_uuid"] == u}
        for pid in port_ids:
            cp = cports.get(pid)
            if cp is None or cp["state"] != "wired":
                problems.append(f"port {pid[:8]} {cp['state'] if cp else 'missing'}")
            if tap_of(pid) not in host.taps:
                problems.append(f"no {tap_of(pid)}")
            if pid not in host.records:
                problems.append(f"port {pid[:8]} not in the l2 record")
            if host.qemu is not None and tap_of(pid) not in host.qemu_taps.get(u, set()):
                problems.append(f"QEMU does not hold {tap_of(pid)} (guest cut off)")
        return problems

    def _leftovers(
        self, u: str, port_ids: list[str], view: View, allow_error_record: bool
    ) -> list[str]:
        host = view.host
        left = []
        cports = [p for p in view.ports or [] if p["instance_uuid"] == u]
        if cports:
            left.append(f"{len(cports)} port(s) in GET /v1/ports")
        for pid in port_ids:
            if tap_of(pid) in host.taps:
                left.append(tap_of(pid))
            if pid in host.records:
                left.append(f"l2 record {pid[:8]}")
        if u in host.dirs:
            left.append("instance dir")
        if host.domains is not None and u in host.domains:
            d = host.domains[u]
            if not (allow_error_record and d.state == "error"):
                left.append(f"domain ({d.state})")
        if host.qemu is not None and host.qemu.get(u):
            left.append("QEMU process")
        return left

    def inspect(self, grace: float = 8.0) -> tuple[Counter[str], list[str], int, list[str], View]:
        """Judge, looking again for up to `grace` seconds while something is lost or
        duplicated (a port_deleted on its way, a tap being removed)."""
        deadline = time.monotonic() + grace
        while True:
            self.blamed = set()
            view = self.view()
            self._update_driver_lost(view)
            cats, why, dup, dup_why = self.judge(view)
            if (cats["lost"] == 0 and dup == 0) or time.monotonic() > deadline:
                return cats, why, dup, dup_why, view
            time.sleep(1.0)

    # ------------------------------------------------------------------ the end

    def delete_all(self) -> tuple[float, list[str], set[str]]:
        """Delete every instance through the API; wait until nothing is left anywhere.
        Returns the seconds it took, what is left, and whose it is (an instance uuid, or
        the thing itself when it belongs to no instance of this row)."""
        started = time.monotonic()
        try:
            live = [i for i in self.http.get("/v1/instances") if i["state"] != "deleted"]
        except Exception as err:
            return 0.0, [f"controller did not answer: {err}"], {"controller"}
        for inst in live:
            with contextlib.suppress(Exception):
                self.http.request("DELETE", f"/v1/instances/{inst['uuid']}", timeout=10)
        everything = {**self.asked, **self.extra}
        owner_of_port = {p["id"]: u for u, d in everything.items() for p in d["ports"]}
        owner_of_tap = {tap_of(pid): u for pid, u in owner_of_port.items()}
        deadline = started + CLEANUP_BOUND
        while True:
            left: list[str] = []
            whose: set[str] = set()
            try:
                rest = self.http.get("/v1/instances")
                if rest:
                    left.append(
                        f"{len(rest)} instance(s) not deleted: "
                        + ", ".join(f"{i['name']}={i['state']}/{i['task']}" for i in rest[:4])
                    )
                    whose |= {i["uuid"] for i in rest}
                ports = self.http.get("/v1/ports")
                if ports:
                    left.append(f"{len(ports)} port(s) in GET /v1/ports")
                    whose |= {p["instance_uuid"] for p in ports}
            except Exception as err:
                left.append(f"controller: {err}")
                whose.add("controller")
            host = self.host_view()
            if host.taps:
                left.append(f"taps {sorted(host.taps)[:4]}")
                whose |= {owner_of_tap.get(t, t) for t in host.taps}
            if host.records:
                left.append(f"{len(host.records)} l2 record(s)")
                whose |= {owner_of_port.get(p, p) for p in host.records}
            if host.domains:
                left.append(f"domains {[u[:8] for u in host.domains][:4]}")
                whose |= set(host.domains)
            if host.dirs:
                left.append(f"instance dirs {[u[:8] for u in host.dirs][:4]}")
                whose |= host.dirs
            if host.qemu:
                left.append(f"QEMU {list(host.qemu)[:4]}")
                whose |= set(host.qemu)
            if not left or time.monotonic() > deadline:
                return time.monotonic() - started, left, whose
            time.sleep(1.0)

    def log_lines(self, agent: str) -> list[str]:
        path = self.ctl.log if agent == "controller" else self.node.log_dir / f"{agent}.log"
        try:
            return path.read_text(errors="replace").splitlines()
        except OSError:
            return []

    def dump_timelines(self, where: Path, why: list[str]) -> None:
        """The timelines of the instances not running (lost or error), for a post-mortem."""
        dest = where / self.row.name
        dest.mkdir(parents=True, exist_ok=True)
        out = ["\n".join(why), ""]
        for u in {**self.asked, **self.extra}:
            try:
                doc = self.http.get(f"/v1/instances/{u}/timeline")
            except Exception:
                continue
            inst = doc["instance"]
            if inst["state"] == "running" and not any(u[:8] in w for w in why):
                continue
            out.append(
                f"{inst['name']} {u} state={inst['state']} task={inst['task']} "
                f"fault={inst.get('fault')}"
            )
            out += [
                f"  {e['id']:>6} {e['at']} {e['source']:<13} {e['event']:<28} "
                f"{e.get('step') or ''} state={e.get('state')} "
                f"rid={(e.get('request_id') or '')[:12]} reason={_short(e.get('reason'), 100)}"
                for e in doc["events"]
            ]
        (dest / "timelines.txt").write_text("\n".join(out) + "\n")

    def keep_logs(self, where: Path) -> None:
        import shutil

        dest = where / self.row.name
        dest.mkdir(parents=True, exist_ok=True)
        for log_file in self.lab.dir.rglob("*.log"):
            if "libvirt" in log_file.parts or "instances" in log_file.parts:
                continue
            rel = "-".join(log_file.relative_to(self.lab.dir).parts)
            with contextlib.suppress(OSError):
                shutil.copy(log_file, dest / rel)

    def close(self) -> None:
        if self.messaging is not None:
            with contextlib.suppress(Exception):
                self.messaging.close()
        try:
            self.lab.close()
        finally:
            if self.cluster is not None:
                self.cluster.down()


def _parse(at: str) -> datetime:
    return datetime.fromisoformat(at.replace("Z", "+00:00"))


def _short(text: object, n: int = 70) -> str:
    s = str(text)
    return s if len(s) <= n else s[: n - 3] + "..."


# =========================================================================== faults


def _after_delay(run: Run) -> None:
    remaining = run.t0 + FAULT_DELAY - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)


def kill_restart(agent: str, sig: int = signal.SIGKILL) -> Callable[[Run], None]:
    def inject(run: Run) -> None:
        _after_delay(run)
        run.mark_fault()
        if agent == "controller":
            run.ctl.stop(sig, grace=30)
            time.sleep(1.0)
            run.ctl.start()
        else:
            run.node.stop(agent, sig, timeout=30)
            run.down_wall = datetime.now(UTC)
            time.sleep(1.0)
            run.node.start(agent)
        run.notes.append(f"{agent} down {time.monotonic() - run.fault_at:.1f}s")  # type: ignore[operator]

    return inject


def kill_replica(run: Run) -> None:
    """kill -9 the first of two controllers mid-burst, not restarted: the other one
    serves the clients (they move to it) and finishes every operation alone."""
    _after_delay(run)
    run.mark_fault()
    run.ctl.stop(signal.SIGKILL, grace=30)
    run.notes.append(
        f"controller 1 of {len(run.lab.controllers)} killed; "
        f"{sum(c.running() for c in run.lab.controllers)} serve on"
    )


def broker_bounce(run: Run) -> None:
    _after_delay(run)
    run.mark_fault()
    try:
        run_rmq("stop_app")
        time.sleep(2.0)
    finally:
        with shielded():
            run_rmq("start_app")
    wait_for(broker_available, 30, 0.2, what="the broker to accept connections again")
    run.notes.append(f"broker away {time.monotonic() - run.fault_at:.1f}s")  # type: ignore[operator]


def broker_node_kill(run: Run) -> None:
    """kill -9 of the cluster node holding most of the agents' connections; it stays
    down while the burst settles (two of three nodes keep every quorum queue)."""
    assert run.cluster is not None
    _after_delay(run)
    victim = run.cluster.busiest_node(("compute-agent", "l2-agent"))
    run.mark_fault()
    run.cluster.kill(victim)
    run.notes.append(f"node {victim} killed (of {len(run.cluster.nodes)}); down until settled")


def broker_node_back(run: Run) -> None:
    """After settling: the killed node started again (it rejoins from its own data);
    deleting quorum queues while a member is down takes about 5 s each."""
    assert run.cluster is not None
    started = time.monotonic()
    for node in run.cluster.nodes:
        if node.pid() is None:
            run.cluster.start(node.index)
    run.notes.append(f"killed node back in {time.monotonic() - started:.1f}s")


def run_rmq(action: str) -> None:
    res = run(["rabbitmqctl", action], check=False, timeout=60)
    if res.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {action}: {res.stderr.strip() or res.stdout.strip()}")


def _wire_ports(inst: dict[str, Any]) -> list[Port]:
    return [
        Port(
            id=uuidlib.UUID(p["id"]),
            network_id=uuidlib.UUID(p["network_id"]),
            mac=p["mac"],
            fixed_ip=p["fixed_ip"],
            mtu=p["mtu"],
            instance_uuid=uuidlib.UUID(inst["uuid"]),
        )
        for p in inst["ports"]
    ]


def build_of(run: Run, inst: dict[str, Any]) -> BuildInstance:
    """The build_instance the controller sent for `inst` (same ids, same request id)."""
    return BuildInstance(
        request_id=inst["request_id"],
        host=run.node.host,
        instance=InstanceSpec(
            uuid=uuidlib.UUID(inst["uuid"]),
            name=inst["name"],
            flavor=inst["flavor"],
            image=inst["image"],
            ports=_wire_ports(inst),
            created_at=_parse(inst["created_at"]),
        ),
    )


def wait_asked(run: Run, count: int, timeout: float = 20) -> list[dict[str, Any]]:
    wait_for(lambda: len(run.asked) >= count, timeout, 0.02, what=f"{count} builds accepted")
    with run.asked_lock:
        return list(run.asked.values())


def each_accepted(
    run: Run, act: Callable[[dict[str, Any]], object], limit: int | None = None, timeout: float = 30
) -> int:
    """Call `act` for every instance as soon as the API accepted it (its casts are on
    the wire by then, its build has just begun): truly mid-burst. The fault's time is
    the first call."""
    done: set[str] = set()
    want = run.n if limit is None else min(limit, run.n)
    deadline = time.monotonic() + timeout
    while len(done) < want and time.monotonic() < deadline:
        with run.asked_lock:
            new = [i for u, i in run.asked.items() if u not in done]
        for inst in new[: want - len(done)]:
            run.mark_fault()
            act(inst)
            done.add(inst["uuid"])
        time.sleep(0.002)
    return len(done)


def _resend(run: Run, inst: dict[str, Any], compute: Any, l2: Any) -> None:
    for port in _wire_ports(inst):
        l2.cast(
            "port_created",
            PortCreated(request_id=inst["request_id"], host=run.node.host, port=port),
        )
    compute.cast("build_instance", build_of(run, inst))


def duplicate_casts(run: Run) -> None:
    """Every build_instance and port_created the controller sent, sent twice more as
    soon as its instance is accepted (mid-build); once more when all are running."""
    compute, l2 = run.compute_client(), run.l2_client()

    def twice(inst: dict[str, Any]) -> None:
        for _ in range(2):
            _resend(run, inst, compute, l2)

    count = each_accepted(run, twice)
    run.notes.append(f"{count} instances: build_instance + port_created sent twice more mid-build")


def duplicate_after(run: Run) -> None:
    compute, l2 = run.compute_client(), run.l2_client()
    with run.asked_lock:
        insts = list(run.asked.values())
    for inst in insts:
        _resend(run, inst, compute, l2)
    run.notes.append(f"{len(insts)} instances: their casts sent again after settling")
    time.sleep(3)
    settled, _ = run.settle(bound=30, start=time.monotonic())
    run.notes.append(f"settled again {settled:.1f}s after those")


def reordered_casts(run: Run) -> None:
    """Live ports: a port_deleted delivered before a port_created of the same port, as
    soon as its instance is accepted (mid-build). Then, for instances deleted through
    the API: their port_created and build_instance delivered late (reorder_after)."""
    l2 = run.l2_client()

    def swap(inst: dict[str, Any]) -> None:
        for port in _wire_ports(inst):
            l2.cast(
                "port_deleted",
                PortDeleted(
                    request_id=inst["request_id"],
                    host=run.node.host,
                    port_id=port.id,
                    network_id=port.network_id,
                ),
            )
            l2.cast(
                "port_created",
                PortCreated(request_id=inst["request_id"], host=run.node.host, port=port),
            )

    count = each_accepted(run, swap, limit=max(1, run.n // 2))
    run.notes.append(f"{count} instances: port_deleted then port_created of their port mid-build")


def reorder_after(run: Run) -> None:
    """Victims: built, deleted through the API; then their create casts arrive late."""
    status, doc = run.http.request(
        "POST", "/v1/instances", {"name": f"{run.prefix}-victim", "count": 3, "networks": ["net1"]}
    )
    assert status == 202, (status, doc)
    victims = {i["uuid"]: i for i in doc["instances"]}
    wait_for(
        lambda: all(run.http.get(f"/v1/instances/{u}")["state"] == "running" for u in victims),
        40,
        0.5,
        what="victims running",
    )
    for u in victims:
        run.http.request("DELETE", f"/v1/instances/{u}")
    wait_for(
        lambda: (
            all(
                i["state"] == "deleted"
                for i in run.http.get("/v1/instances?state=deleted")
                if i["uuid"] in victims
            )
            and len(
                [i for i in run.http.get("/v1/instances?state=deleted") if i["uuid"] in victims]
            )
            == len(victims)
        ),
        40,
        0.5,
        what="victims deleted",
    )
    wait_for(
        lambda: (
            not (
                {tap_of(p["id"]) for v in victims.values() for p in v["ports"]}
                & set(run.node.links())
            )
        ),
        20,
        0.2,
        what="victims' taps gone",
    )
    run.extra.update(victims)
    compute, l2 = run.compute_client(), run.l2_client()
    for inst in victims.values():
        for port in _wire_ports(inst):
            l2.cast(
                "port_created",
                PortCreated(request_id=inst["request_id"], host=run.node.host, port=port),
            )
        compute.cast("build_instance", build_of(run, inst))
    run.notes.append("3 deleted instances: late port_created + build_instance")
    time.sleep(5)


def tap_deleted(run: Run) -> None:
    """Taps deleted behind the agents' backs. Test driver: those of the first three
    instances, as soon as each exists (mid-burst). Real guests: the first guest's as soon
    as its QEMU holds it (the guest is starting), the second's once it is running."""
    if run.row.driver != "qemu":
        insts = wait_asked(run, 3)[:3]
        taps = [tap_of(p["id"]) for i in insts for p in i["ports"]]
        wait_for(lambda: set(taps) <= set(run.node.links()), 30, 0.05, what="the taps to exist")
        run.mark_fault()
        for tap in taps:
            run.node.sh("ip", "link", "del", tap)
        run.notes.append(f"deleted {', '.join(taps)}")
        return
    first, second, third = wait_asked(run, 3)[:3]

    def held_by_qemu(inst: dict[str, Any]) -> bool:
        tap = tap_of(inst["ports"][0]["id"])
        return any(
            u == inst["uuid"] and tap in qemu_taps(pid)
            for u, pid in qemu_guests(run.node.embed_root)
        )

    wait_for(lambda: held_by_qemu(first), 60, 0.05, what="QEMU to hold the first guest's tap")
    # 0.8 s later libvirt is still starting the guest (its build in flight), and QEMU
    # survives the delete (sooner, QEMU itself often fails: a clean build error)
    time.sleep(0.8)
    run.mark_fault()
    tap = tap_of(first["ports"][0]["id"])
    run.node.sh("ip", "link", "del", tap)
    run.notes.append(f"deleted {tap} of {first['name']} while its guest was starting")
    wait_for(
        lambda: run.http.get(f"/v1/instances/{second['uuid']}")["state"] == "running",
        60,
        0.1,
        what="the second guest running",
    )
    wait_for(lambda: held_by_qemu(second), 30, 0.1, what="QEMU to hold the second guest's tap")
    tap = tap_of(second["ports"][0]["id"])
    run.node.sh("ip", "link", "del", tap)
    run.notes.append(f"deleted {tap} of {second['name']} once it was running")
    console = run.node.instances_dir / third["uuid"] / "console.log"

    def booted() -> bool:
        try:
            return "AGENTS-GUEST-READY" in console.read_text(errors="replace")
        except OSError:
            return False

    wait_for(booted, 90, 0.2, what="the third guest's AGENTS-GUEST-READY")
    tap = tap_of(third["ports"][0]["id"])
    run.node.sh("ip", "link", "del", tap)
    run.notes.append(f"deleted {tap} of {third['name']} once its guest had booted")


def domain_destroyed(run: Run) -> None:
    """A guest destroyed behind the agents' backs: its QEMU killed (embed), or (test
    driver: nothing outside the agent's process can reach its domains) the
    compute-agent's own delete_instance cast straight onto the wire."""
    insts = wait_asked(run, 1)[:1]
    u = insts[0]["uuid"]
    wait_for(
        lambda: run.http.get(f"/v1/instances/{u}")["state"] == "running",
        60,
        0.1,
        what="the first instance running",
    )
    if run.row.driver == "qemu":
        pids = wait_for(
            lambda: [
                p
                for p in qemu_pids(run.node.embed_root)
                if u.encode() in Path(f"/proc/{p}/cmdline").read_bytes()
            ],
            60,
            0.1,
            what="QEMU of the first guest",
        )
        run.mark_fault()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                import os

                os.kill(pid, signal.SIGKILL)
        run.notes.append(f"killed QEMU of {insts[0]['name']}")
    else:
        run.mark_fault()
        run.compute_client().cast(
            "delete_instance",
            DeleteInstance(
                request_id=f"req-{uuidlib.uuid4()}",
                host=run.node.host,
                instance_uuid=uuidlib.UUID(u),
            ),
        )
        run.notes.append(f"delete_instance cast behind the controller's back: {insts[0]['name']}")


# ---------------------------------------------------------------------- malformed


def _raw_cast(client: Any, method: str, version: str | None = None, **kwargs: Any) -> None:
    c = client._client  # the oslo client: a payload that is not a Message goes as it is
    if version is not None:
        c = c.prepare(version=version)
    c.cast({"request_id": f"req-{uuidlib.uuid4()}"}, method, **kwargs)


def _raw_publish(run: Run, routing_key: str, body: bytes) -> None:
    """Bytes straight onto an agent's queue: not even an oslo message."""
    import kombu

    with kombu.Connection("amqp://guest:guest@127.0.0.1:5672//", connect_timeout=5) as conn:
        producer = conn.Producer()
        producer.publish(
            body,
            exchange=run.lab.exchange,
            routing_key=routing_key,
            content_type="application/json",
            content_encoding="utf-8",
            retry=True,
        )


def malformed_shapes(run: Run, real: list[dict[str, Any]] | None = None) -> list[str]:
    """Cast every malformed shape to both agents of the host; `real`: use the ids of
    those instances (garbled copies of real casts), else fresh random ids."""
    compute, l2 = run.compute_client(), run.l2_client()
    host = run.node.host
    sent = []

    def ids(i: int) -> tuple[dict[str, Any], BuildInstance]:
        if real:
            inst = real[i % len(real)]
            return inst, build_of(run, inst)
        u = uuidlib.uuid4()
        port = Port(
            id=uuidlib.uuid4(),
            network_id=uuidlib.UUID("5d3c0f6e-8a3b-4c1e-9f2a-0b7e6d5c4a31"),
            mac=f"fa:16:3e:00:{i:02x}:{i:02x}",
            fixed_ip=f"10.10.1.{i + 1}",
            instance_uuid=u,
        )
        b = BuildInstance(
            request_id=f"req-{uuidlib.uuid4()}",
            host=host,
            instance=InstanceSpec(
                uuid=u, name=f"junk-{i}", flavor="m1.tiny", image="tiny", ports=[port]
            ),
        )
        return {}, b

    def env(msg: Any, **over: Any) -> dict[str, Any]:
        e = {"schema": msg.SCHEMA, "version": msg.VERSION, "data": msg.model_dump(mode="json")}
        e.update(over)
        return e

    for i, shape in enumerate(
        [
            "not-oslo",
            "bad-envelope",
            "data-not-object",
            "wrong-version",
            "oslo-version",
            "unknown-method",
            "extra-argument",
            "wrong-host",
            "non-dict-args",
            "list-payload",
            "missing-payload",
            "huge-invalid",
            "huge-valid-junk",
            "unknown-schema",
            "bad-field",
        ]
    ):
        _, b = ids(i)
        pc = PortCreated(request_id=b.request_id, host=host, port=b.instance.ports[0])
        for client, method, msg, key in (
            (compute, "build_instance", b, f"compute.{host}"),
            (l2, "port_created", pc, f"l2-agent.{host}"),
        ):
            if shape == "not-oslo":
                _raw_publish(run, key, b"\x00\xffthis is not json at all{")
                _raw_publish(
                    run,
                    key,
                    json.dumps({"oslo.version": "2.0", "oslo.message": "{not json"}).encode(),
                )
                _raw_publish(run, key, json.dumps([1, 2, 3]).encode())
            elif shape == "bad-envelope":
                _raw_cast(client, method, payload={"schema": msg.SCHEMA, "data": None})
            elif shape == "data-not-object":
                _raw_cast(client, method, payload=env(msg, data=[1, 2, 3]))
            elif shape == "wrong-version":
                _raw_cast(client, method, payload=env(msg, version="2.0"))
            elif shape == "oslo-version":
                _raw_cast(client, method, version="9.0", payload=env(msg))
            elif shape == "unknown-method":
                _raw_cast(client, "frobnicate_" + method, payload=env(msg))
            elif shape == "extra-argument":
                _raw_cast(client, method, payload=env(msg), surprise=1)
            elif shape == "wrong-host":
                other = msg.model_copy(update={"host": "some-other-host"})
                _raw_cast(client, method, payload=env(other))
            elif shape == "non-dict-args":
                _raw_cast(client, method, payload="just a string")
            elif shape == "list-payload":
                _raw_cast(client, method, payload=[env(msg)])
            elif shape == "missing-payload":
                _raw_cast(client, method)
            elif shape == "huge-invalid":
                big = env(msg)
                big["data"]["request_id"] = "r" * (4 << 20)
                _raw_cast(client, method, payload=big)
            elif shape == "huge-valid-junk":
                big = env(msg)
                big["data"]["junk"] = "j" * (4 << 20)
                if not real:  # a fresh id would be a real build nobody asked for
                    big["data"]["host"] = "not a host!"
                _raw_cast(client, method, payload=big)
            elif shape == "unknown-schema":
                _raw_cast(client, method, payload=env(msg, schema="no_such_schema"))
            elif shape == "bad-field":
                bad = env(msg)
                if method == "build_instance":
                    bad["data"]["instance"]["name"] = "bad name with spaces!"
                else:
                    bad["data"]["port"]["mac"] = "ff:ff:ff:ff:ff:ff"
                _raw_cast(client, method, payload=bad)
        sent.append(shape)
    return sent


def malformed(run: Run) -> None:
    _after_delay(run)
    run.mark_fault()
    shapes = malformed_shapes(run)
    run.notes.append(f"{len(shapes)} malformed shapes x 2 agents mid-burst")


def malformed_copies(run: Run) -> None:
    """Garbled copies of real casts, sent as soon as each of the first 5 instances is
    accepted (its build in flight)."""
    count = each_accepted(run, lambda inst: malformed_shapes(run, real=[inst]), limit=5)
    run.notes.append(f"the malformed shapes carrying the ids of {count} real builds in flight")


def malformed_check(run: Run) -> list[str]:
    out = []
    for client, what in ((run.compute_client(), "compute-agent"), (run.l2_client(), "l2-agent")):
        try:
            client.call("ping")
        except Exception as err:
            out.append(f"check: {what} does not answer ping: {err}")
    for agent in ("compute-agent", "l2-agent"):
        lines = run.log_lines(agent)
        tb = [i for i, ln in enumerate(lines) if "Traceback" in ln]
        named = [ln for ln in lines if "message_rejected" in ln]
        if tb:
            events = sorted({_event_of(lines, i) for i in tb})
            out.append(f"check: {agent} log has {len(tb)} Traceback(s): {', '.join(events)[:300]}")
        if not named:
            out.append(f"check: {agent} log has no message_rejected line")
    return out


def _event_of(lines: list[str], i: int) -> str:
    """The log record a traceback belongs to: the JSON line holding it (structlog), or
    the stdlib line before it (a library's `LEVEL logger: message`)."""
    line = lines[i]
    with contextlib.suppress(ValueError):
        rec = json.loads(line)
        return str(rec.get("event"))[:120]
    for j in range(i - 1, max(-1, i - 60), -1):
        m = re.match(r"^(ERROR|WARNING|CRITICAL) (\S+): (.*)$", lines[j])
        if m:
            # the exception line ends the traceback: the last line without indentation
            k = i + 1
            while k < len(lines) and (
                lines[k].startswith((" ", "\t"))
                or not lines[k].strip()
                or lines[k].startswith("During handling")
                or lines[k].startswith("The above")
                or lines[k].startswith("Traceback")
            ):
                k += 1
            exc = lines[k].split(":", 1)[0].rsplit(".", 1)[-1] if k < len(lines) else "?"
            return f"{m.group(2)} '{m.group(3)[:40]}' {exc}"
    return line[:120]


def tracebacks(run: Run) -> list[str]:
    out = []
    for agent in ("compute-agent", "l2-agent", "controller"):
        lines = run.log_lines(agent)
        tb = [i for i, ln in enumerate(lines) if "Traceback" in ln]
        if tb:
            causes = ", ".join(sorted({_event_of(lines, i) for i in tb}))
            out.append(f"{agent}: {len(tb)} traceback(s) ({causes[:200]})")
    return out


# =========================================================================== the table

ROWS = [
    Row(
        "kill-compute-embed",
        "qemu",
        4,
        None,
        kill_restart("compute-agent"),
        "kill -9 compute-agent mid-burst, restarted 1 s later; real guests (qemu:///embed)",
        clients=4,
    ),
    Row(
        "kill-compute-test",
        "test",
        40,
        10,
        kill_restart("compute-agent"),
        "kill -9 compute-agent mid-burst, restarted 1 s later; test driver",
        driver_lost=True,
    ),
    Row(
        "kill-l2",
        "test",
        40,
        10,
        kill_restart("l2-agent"),
        "kill -9 l2-agent mid-burst, restarted 1 s later",
    ),
    Row(
        "kill-controller",
        "test",
        40,
        10,
        kill_restart("controller"),
        "kill -9 agents-controller mid-burst, restarted 1 s later",
    ),
    Row(
        "kill-controller-pg",
        "test",
        40,
        None,
        kill_restart("controller"),
        "kill -9 agents-controller mid-burst, restarted 1 s later; PostgreSQL database",
        postgres=True,
    ),
    Row(
        "controller-replica-kill",
        "test",
        40,
        10,
        kill_replica,
        "two controllers on one PostgreSQL database, both taking the burst; kill -9 of one"
        " mid-burst, not restarted",
        postgres=True,
        replicas=2,
    ),
    Row(
        "term-compute-embed",
        "qemu",
        4,
        None,
        kill_restart("compute-agent", signal.SIGTERM),
        "SIGTERM compute-agent mid-burst, restarted 1 s after it exited; real guests",
        clients=4,
    ),
    Row(
        "term-compute-test",
        "test",
        40,
        None,
        kill_restart("compute-agent", signal.SIGTERM),
        "SIGTERM compute-agent mid-burst (POSTs spread over 2.4 s, so casts arrive while it"
        " drains and while it is down), restarted; test driver",
        driver_lost=True,
        stagger=0.3,
    ),
    Row(
        "term-l2",
        "test",
        40,
        None,
        kill_restart("l2-agent", signal.SIGTERM),
        "SIGTERM l2-agent mid-burst, restarted 1 s after it exited",
    ),
    Row(
        "term-controller",
        "test",
        40,
        None,
        kill_restart("controller", signal.SIGTERM),
        "SIGTERM agents-controller mid-burst, restarted 1 s after it exited",
    ),
    Row(
        "broker-bounce",
        "test",
        40,
        None,
        broker_bounce,
        "rabbitmqctl stop_app, 2 s, start_app mid-burst",
        touches_broker=True,
    ),
    Row(
        "broker-node-kill",
        "test",
        40,
        10,
        broker_node_kill,
        "kill -9 of the RabbitMQ node the agents are connected to mid-burst; 3-node"
        " cluster, quorum queues",
        after=broker_node_back,
        cluster=True,
    ),
    Row(
        "duplicate-casts",
        "test",
        12,
        6,
        duplicate_casts,
        "every build_instance and port_created sent twice more mid-build, once after",
        after=duplicate_after,
    ),
    Row(
        "reordered-casts",
        "test",
        12,
        None,
        reordered_casts,
        "port_deleted before port_created of live ports mid-burst; late port_created and "
        "build_instance of deleted instances",
        after=reorder_after,
    ),
    Row(
        "tap-deleted-test",
        "test",
        20,
        None,
        tap_deleted,
        "3 taps deleted behind the agents' backs as soon as they exist; test driver",
    ),
    Row(
        "tap-deleted-embed",
        "qemu",
        3,
        None,
        tap_deleted,
        "taps of real guests deleted under QEMU: while starting, just running, booted",
        clients=3,
    ),
    Row(
        "domain-destroyed-embed",
        "qemu",
        3,
        None,
        domain_destroyed,
        "the QEMU of a real guest killed behind the agents' backs mid-burst",
        clients=3,
    ),
    Row(
        "domain-deleted-test",
        "test",
        10,
        None,
        domain_destroyed,
        "a running instance's domain deleted by a delete_instance cast the controller "
        "never sent (test driver: nothing else reaches its domains)",
    ),
    Row(
        "malformed",
        "test",
        40,
        10,
        malformed,
        "malformed casts of every shape to both agents mid-burst (fresh ids)",
        check=malformed_check,
    ),
    Row(
        "malformed-copies",
        "qemu",
        3,
        None,
        malformed_copies,
        "the same shapes carrying the ids of real builds in flight (garbled copies of "
        "the controller's casts); real guests, so the builds are still in flight",
        check=malformed_check,
        clients=3,
    ),
]
QUICK_ORDER = [
    "kill-compute-test",
    "kill-l2",
    "kill-controller",
    "controller-replica-kill",
    "broker-node-kill",
    "duplicate-casts",
    "malformed",
]


def run_row(row: Row, n: int, postgres: str | None, keep_logs: Path | None = None) -> Result:
    res = Result(row.name)
    started = time.monotonic()
    log(f"{row.name}: {row.doc} (N={n})")
    r: Run | None = None
    try:
        r = Run(row, n, postgres or (PG_ADMIN if row.postgres else None))
        r.up()
        log(f"{row.name}: lab up in {time.monotonic() - started:.1f}s; burst of {n}")
        r.burst(n, row.clients)
        row.inject(r)
        r.wait_burst()
        if r.fault_at is None:
            r.mark_fault()
        settle_s, _ = r.settle()
        res.settle_s = settle_s
        log(
            f"{row.name}: settled in {settle_s:.1f}s"
            + (" (bound reached)" if settle_s >= SETTLE_BOUND else "")
        )
        if row.after is not None:
            row.after(r)
        cats, why, dup, dup_why, view = r.inspect()
        for agent, proc in r.node.agents.items():
            if proc.poll() is not None:
                r.notes.append(f"{agent} is not running (exit status {proc.returncode})")
        if not r.ctl.running():
            r.notes.append("the controller is not running")
        faults = Counter(
            _short(i.get("fault"), 90)
            for u, i in (view.instances or {}).items()
            if u in r.wanted() and i["state"] == "error"
        )
        r.notes += [f"error x{c}: {f}" for f, c in faults.most_common()]
        wanted = r.wanted()
        res.sent = len(wanted)
        res.driver_lost = len(r.driver_lost)
        res.running, res.error = cats["running"], cats["error"]
        res.lost = cats["lost"]
        res.duplicated = dup
        res.problems += [f"lost: {w}" for w in why] + [f"duplicated: {w}" for w in dup_why]
        if r.refused:
            res.problems += [f"check: POST never accepted: {x}" for x in r.refused]
        if row.check is not None:
            res.problems += row.check(r)
        if keep_logs is not None:
            r.dump_timelines(keep_logs, why)
        cleanup_s, left, whose = r.delete_all()
        res.cleanup_s = cleanup_s
        if left:
            # each instance (or thing) with leftovers counts once, unless already lost
            res.lost += len(whose - r.blamed)
            res.problems += [f"lost: after deleting everything: {x}" for x in left]
        res.notes += r.notes
        res.notes += [f"tracebacks: {t}" for t in tracebacks(r)]
    except KeyboardInterrupt:
        res.crashed = "interrupted"
        raise
    except Exception as err:
        res.crashed = f"{type(err).__name__}: {err}"[:500]
        res.problems.append(f"check: row crashed: {res.crashed}")
        traceback.print_exc()
        if r is not None:
            with contextlib.suppress(Exception):
                print(r.lab.logs()[-6000:], file=sys.stderr)
    finally:
        with shielded():
            if r is not None and keep_logs is not None:
                with contextlib.suppress(Exception):
                    r.keep_logs(keep_logs)
            try:
                if r is not None:
                    r.close()
            except Exception as err:
                res.problems.append(f"check: lab clean-up failed: {err}")
            res.took_s = time.monotonic() - started
    return res


def table(results: list[Result]) -> str:
    head = (
        "scenario",
        "sent",
        "running",
        "error",
        "lost",
        "dup",
        "settle_s",
        "drv_lost",
        "cleanup_s",
        "took_s",
        "ok",
    )
    rows = [head] + [
        (
            r.row,
            str(r.sent),
            str(r.running),
            str(r.error),
            str(r.lost),
            str(r.duplicated),
            f"{r.settle_s:.1f}",
            str(r.driver_lost),
            f"{r.cleanup_s:.1f}",
            f"{r.took_s:.0f}",
            "ok" if r.ok else "FAIL",
        )
        for r in results
    ]
    widths = [max(len(x[i]) for x in rows) for i in range(len(head))]
    lines = [
        "  ".join(
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(x, widths, strict=True))
        )
        for x in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    for r in results:
        if r.problems or r.notes:
            lines.append(f"\n{r.row}:")
            lines += [f"  note: {n}" for n in r.notes]
            shown = r.problems[:15]
            lines += [f"  {p}" for p in shown]
            if len(r.problems) > len(shown):
                lines.append(f"  ... and {len(r.problems) - len(shown)} more")
    return "\n".join(lines)


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short version for CI")
    parser.add_argument("--only", action="append", metavar="NAME", help="run this row (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the rows and exit")
    parser.add_argument("-n", type=int, help="builds per row instead of the row's own N")
    parser.add_argument(
        "--postgres", metavar="ADMIN_URL", help="the controller on a scratch PostgreSQL database"
    )
    parser.add_argument(
        "--keep-logs",
        type=Path,
        metavar="DIR",
        help="copy each row's agent and controller logs here",
    )
    args = parser.parse_args(list(argv) if argv is not None else None)
    by_name = {r.name: r for r in ROWS}
    if args.list:
        for r in ROWS:
            quick = f" (quick N={r.quick_n})" if r.quick_n else ""
            print(f"{r.name:24} {r.driver:5} N={r.n:<3}{quick}  {r.doc}")
        return 0

    def size(row: Row) -> int:
        return int(args.n or (row.quick_n if args.quick and row.quick_n else row.n))

    if args.only:
        unknown = [x for x in args.only if x not in by_name]
        if unknown:
            print(f"unknown row(s) {unknown}; --list shows them", file=sys.stderr)
            return 2
        rows = [(by_name[x], size(by_name[x])) for x in args.only]
    elif args.quick:
        rows = [(by_name[x], size(by_name[x])) for x in QUICK_ORDER]
    else:
        rows = [(r, size(r)) for r in ROWS]
    if not broker_available():
        print("RabbitMQ is not reachable on 127.0.0.1:5672", file=sys.stderr)
        return 3
    if any(r.driver == "qemu" for r, _ in rows):
        run(["bash", str(REPO / "tools" / "build-guest-image.sh"), str(IMAGE_DIR)])

    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with it ignored
    started = time.monotonic()
    results: list[Result] = []
    try:
        for row, n in rows:
            res = run_row(row, n, args.postgres, args.keep_logs)
            results.append(res)
            print(res.line(), flush=True)
    except KeyboardInterrupt:
        print("interrupted: everything made so far was removed", file=sys.stderr)
        return 130
    took = time.monotonic() - started
    print()
    print(table(results))
    print(
        f"\n{len(results)} rows in {took / 60:.1f} min; "
        f"{sum(1 for r in results if r.ok)} met the target"
    )
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
