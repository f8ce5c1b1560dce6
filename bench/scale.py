#!/usr/bin/env python3
"""Many simulated hosts driven by one controller: build rate, read latency, memory.

For each size N of `--hosts`, a lab (agents/lab) brings up agents-controller (SQLite, or
a scratch PostgreSQL database with `--postgres`, dropped afterwards) and N simulated
hosts at once (`Lab.add_hosts`: a network namespace each with the real l2-agent, doing
its netlink work there, and the real compute-agent on libvirt's test driver), then:

  builds     `--clients` threads POST /v1/instances, one instance a request (or
             `--per-request K`: K a request, as `agentctl send build --count K` asks),
             until N x `--instances-per-host` were asked for; the scheduler spreads them.
             builds_per_s = instances / (last create operation's finished_at - first
             POST), the aggregate over all hosts.
  reads      the real `agentctl list`, `agentctl show NAME` and `agentctl agents`, each a
             whole process as an operator waits for it, `--runs` times: the medians are
             list_ms, show_ms, agents_ms. The same GETs over one kept-alive in-process
             HTTP connection are printed on the HTTP line (what the client process adds
             is the difference).
  memory     VmRSS from /proc: the controller's, and the median of all agents'.
  lost       instances not running at the end + expected instances missing + create
             operations not done.

One line per size, then detail lines:

  SCALE hosts=N instances=N builds_per_s=X list_ms=X show_ms=X agents_ms=X
        controller_rss_mib=X agent_rss_mib=X lost=N        (one line)
  START hosts=N agents=N start_s=X      (namespaces, relays, 2N processes, all heard)
  HTTP  list_ms=X show_ms=X agents_ms=X (in-process, kept-alive connection)
  SPREAD per_host_min=N per_host_max=N post_ms_median=X post_ms_p90=X
  CPU   controller_ms_per_build=X agents_ms_per_build=X broker_ms_per_build=X
        postgres_ms_per_build=X machine_ms_per_build=X cores=N
        (broker: every RabbitMQ node on the machine; machine: every process, qemu-img
        and the bench's own clients included)

Agents beat every `--heartbeat` seconds (10; the lab's usual 1 s would be 2N heartbeat
transactions a second, not what a deployment runs), and the controller calls an agent
down after 4 missed beats.

Usage (root, RabbitMQ on 127.0.0.1:5672; about 70 MiB per agent, 2 agents per host):
  .venv/bin/python bench/scale.py --hosts 10 50 100 [--instances-per-host 10]
      [--clients 8] [--runs 7] [--postgres]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.lab.broker import BrokerCluster, BrokerScope, free_base_port
from agents.lab.lab import Lab
from agents.lab.procs import broker_available, console_script, cpu_ms, cpu_of, unique
from common.config import MessagingSettings
from common.rpc import queue_state

AGENTCTL = console_script("agentctl")
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
HOST_CAPACITY = {"vcpus": 256, "memory_mb": 262144}
# net1 of the sample has 241 addresses; 1,000 instances need a /20
NETWORK = {"network:net1": {"cidr": "10.10.0.0/20", "allocation_end": "10.10.15.250"}}


@dataclass
class Size:
    hosts: int
    instances: int
    builds_per_s: float
    list_ms: float
    show_ms: float
    agents_ms: float
    controller_rss_mib: float
    agent_rss_mib: float
    lost: int

    def line(self) -> str:
        return (
            f"SCALE hosts={self.hosts} instances={self.instances}"
            f" builds_per_s={self.builds_per_s:.0f} list_ms={self.list_ms:.0f}"
            f" show_ms={self.show_ms:.0f} agents_ms={self.agents_ms:.0f}"
            f" controller_rss_mib={self.controller_rss_mib:.0f}"
            f" agent_rss_mib={self.agent_rss_mib:.0f} lost={self.lost}"
        )


class Api:
    """A kept-alive HTTP connection to the controller, one per thread."""

    def __init__(self, url: str, token: str | None = None) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)
        self.auth = {"Authorization": f"Bearer {token}"} if token else {}

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {**self.auth, **({"Content-Type": "application/json"} if data else {})}
        try:
            self.conn.request(method, path, body=data, headers=headers)
            resp = self.conn.getresponse()
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            # the server closed the idle kept-alive connection (uvicorn: after 5 s)
            self.conn.close()
            self.conn.request(method, path, body=data, headers=headers)
            resp = self.conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else None

    def get(self, path: str) -> Any:
        status, doc = self.request("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {doc}")
        return doc

    def close(self) -> None:
        self.conn.close()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def machine_cpu_ms() -> float:
    """CPU time every process of the machine spent so far (/proc/stat, not idle or
    iowait), in ms: the broker, PostgreSQL and qemu-img included."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = sum(fields[:8]) - fields[3] - fields[4]  # user..steal, less idle and iowait
    return busy * 1000 / os.sysconf("SC_CLK_TCK")


def parse_time(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def timed_ms(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


def agentctl_ms(env: dict[str, str], *args: str) -> float:
    def run() -> None:
        result = subprocess.run(
            [AGENTCTL, *args], env=env, capture_output=True, text=True, timeout=120
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"agentctl {' '.join(args)} exited {result.returncode}:\n{result.stderr[-2000:]}"
            )

    return timed_ms(run)


def requests_for(total: int, per_request: int) -> list[tuple[str, int]]:
    """(name, count) of each POST: one name a request, or a prefix and a count."""
    return [(f"s{i:05d}", min(per_request, total - i)) for i in range(0, total, per_request)]


def names_of(requests: Sequence[tuple[str, int]]) -> list[str]:
    """The instance names the controller gives those requests (PREFIX-1..K for a count)."""
    return [
        name if count == 1 else f"{name}-{j}"
        for name, count in requests
        for j in range(1, count + 1)
    ]


def build_all(
    urls: Sequence[str], token: str | None, requests: Sequence[tuple[str, int]], clients: int
) -> tuple[float, list[float], int]:
    """POST `requests` (name, count) from `clients` threads, spread over the controllers'
    `urls`; (first POST time, each POST's ms, refused instances)."""
    todo = list(reversed(requests))
    lock = threading.Lock()
    post_ms: list[float] = []
    refused: list[str] = []
    first: list[float] = []

    def client(url: str) -> None:
        api = Api(url, token)
        try:
            while True:
                with lock:
                    if not todo:
                        return
                    name, count = todo.pop()
                    if not first:
                        first.append(time.time())
                body: dict[str, Any] = (
                    {"name": name} if count == 1 else {"name": name, "count": count}
                )
                started = time.perf_counter()
                status, doc = api.request("POST", "/v1/instances", body)
                took = (time.perf_counter() - started) * 1000
                with lock:
                    post_ms.append(took)
                    if status != 202:
                        refused.extend([f"{name}: {status} {doc}"] * count)
        finally:
            api.close()

    threads = [
        threading.Thread(target=client, args=(urls[i % len(urls)],)) for i in range(max(1, clients))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for line in refused[:5]:
        print(f"  refused: {line}", file=sys.stderr)
    return first[0], post_ms, len(refused)


def events_backlog(lab: Lab) -> int:
    """Agent events waiting in the controller's queue (not yet applied)."""
    assert lab.controller is not None
    settings = MessagingSettings(transport_url=lab.scope.transport_url)
    return queue_state(settings, lab.controller.events_queue).messages


def wait_settled(api: Api, expected: int, timeout: float) -> list[dict[str, Any]]:
    """Poll the instance list until every instance has left `building` (or timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = api.get("/v1/instances")
        busy = [r for r in rows if r["task"] is not None or r["state"] == "building"]
        if (len(rows) >= expected and not busy) or time.monotonic() > deadline:
            return list(rows)
        time.sleep(0.5)


def run_size(n: int, args: argparse.Namespace) -> Size:
    with contextlib.ExitStack() as stack:
        scope = None
        if args.own_broker:
            # a broker node of the bench's own: this process's open-files limit (raised
            # to the hard limit) instead of the machine broker's, and nobody else's
            # queues disturbed; 100 hosts hold about 1,000 connections
            _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            cluster = stack.enter_context(
                BrokerCluster(unique("scl-"), nodes=1, base_port=free_base_port(1))
            )
            scope = BrokerScope.new("scl-", transport_url=cluster.transport_url)
        lab = stack.enter_context(
            Lab.create(prefix="scl-", stop_signal=signal.SIGKILL, shared=NETWORK, scope=scope)
        )
        return measure(n, args, lab)


def measure(n: int, args: argparse.Namespace, lab: Lab) -> Size:
    per_host = args.instances_per_host
    beat = args.heartbeat
    ctl = lab.start_controller(
        postgres=PG_ADMIN if args.postgres else None,
        settings={"agent_down_time": 4 * beat, "max_count": 1000},
        replicas=args.replicas,
    )
    assert ctl.proc is not None
    ctl_pids = [c.proc.pid for c in lab.controllers if c.proc is not None]
    started = time.monotonic()
    hosts = lab.add_hosts(
        [f"h{i:03d}" for i in range(n)],
        compute={"compute": {**HOST_CAPACITY, "heartbeat_interval": beat}},
        l2={"l2": {"heartbeat_interval": beat}},
        parallel=args.parallel,
    )
    start_s = time.monotonic() - started
    print(f"START hosts={n} agents={2 * n} start_s={start_s:.1f}", flush=True)

    total = n * per_host
    requests = requests_for(total, args.per_request)
    names = names_of(requests)
    agent_pids = [p.pid for h in hosts for p in h.agents.values()]
    ctl_cpu0, agents_cpu0 = sum(map(cpu_ms, ctl_pids)), sum(map(cpu_ms, agent_pids))
    machine_cpu0 = machine_cpu_ms()
    broker_cpu0, db_cpu0 = cpu_of("beam.smp"), cpu_of("postgres")
    urls = [c.url for c in lab.controllers]
    first_post, post_ms, refused = build_all(urls, ctl.token, requests, args.clients)
    backlog = events_backlog(lab)
    api = Api(ctl.url, ctl.token)
    rows = wait_settled(api, total - refused, timeout=120 + total / 5)
    ctl_cpu = sum(map(cpu_ms, ctl_pids)) - ctl_cpu0
    agents_cpu = sum(map(cpu_ms, agent_pids)) - agents_cpu0
    machine_cpu = machine_cpu_ms() - machine_cpu0
    broker_cpu, db_cpu = cpu_of("beam.smp") - broker_cpu0, cpu_of("postgres") - db_cpu0
    by_name = {r["name"]: r for r in rows}
    not_running = [r["name"] for r in rows if r["state"] != "running"]
    missing = [nm for nm in names if nm not in by_name]
    last_done = 0.0
    ops_not_done = 0
    for r in rows:
        ops = api.get(f"/v1/operations?instance={r['uuid']}")
        creates = [o for o in ops if o["kind"] == "create"]
        if not creates or any(o["state"] != "done" for o in creates):
            ops_not_done += 1
        for o in creates:
            if o["finished_at"]:
                last_done = max(last_done, parse_time(o["finished_at"]))
    wall = max(last_done - first_post, 1e-3)
    lost = len(not_running) + len(missing) + ops_not_done
    if lost:
        print(
            f"  not running: {not_running[:10]} missing: {missing[:10]}"
            f" create ops not done: {ops_not_done}",
            file=sys.stderr,
        )

    env = lab.agentctl_env()
    show_name = names[len(names) // 2]
    agentctl_ms(env, "list")  # warm the page cache of the client's imports
    list_ms = [agentctl_ms(env, "list") for _ in range(args.runs)]
    show_ms = [agentctl_ms(env, "show", show_name) for _ in range(args.runs)]
    agents_ms = [agentctl_ms(env, "agents") for _ in range(args.runs)]
    http_list = [timed_ms(lambda: api.get("/v1/instances")) for _ in range(args.runs)]
    http_show = [timed_ms(lambda: api.get(f"/v1/instances/{show_name}")) for _ in range(args.runs)]
    http_agents = [timed_ms(lambda: api.get("/v1/hosts")) for _ in range(args.runs)]
    api.close()

    agent_rss = [rss_mib(p.pid) for h in hosts for p in h.agents.values()]
    size = Size(
        hosts=n,
        instances=len(rows),
        builds_per_s=len(rows) / wall,
        list_ms=statistics.median(list_ms),
        show_ms=statistics.median(show_ms),
        agents_ms=statistics.median(agents_ms),
        # with replicas: the largest one's (each is a whole controller)
        controller_rss_mib=max(map(rss_mib, ctl_pids)),
        agent_rss_mib=statistics.median(agent_rss),
        lost=lost + refused,
    )
    print(size.line(), flush=True)
    print(
        f"HTTP  list_ms={statistics.median(http_list):.1f}"
        f" show_ms={statistics.median(http_show):.1f}"
        f" agents_ms={statistics.median(http_agents):.1f}",
        flush=True,
    )
    spread = Counter({h.host: 0 for h in hosts})  # a host given nothing counts as 0
    spread.update(r["host"] for r in rows)
    ordered = sorted(post_ms)
    print(
        f"SPREAD per_host_min={min(spread.values(), default=0)}"
        f" per_host_max={max(spread.values(), default=0)}"
        f" post_ms_median={statistics.median(ordered):.1f}"
        f" post_ms_p90={ordered[max(0, round(0.9 * len(ordered)) - 1)]:.1f}"
        f" build_wall_s={wall:.1f} events_queued_after_posts={backlog}",
        flush=True,
    )
    # CPU a build costs, whatever the machine: what bounds builds_per_s on few cores
    # (includes the heartbeats and host syncs of the build window). machine_ms is all
    # of it, whoever spent it (broker, PostgreSQL, qemu-img, the bench's own clients):
    # cores x 1000 / machine_ms is the most builds/s this machine can give.
    built = max(1, len(rows))
    print(
        f"CPU   controller_ms_per_build={ctl_cpu / built:.1f}"
        f" agents_ms_per_build={agents_cpu / built:.1f}"
        f" broker_ms_per_build={broker_cpu / built:.1f}"
        f" postgres_ms_per_build={db_cpu / built:.1f}"
        f" machine_ms_per_build={machine_cpu / built:.1f} cores={os.cpu_count()}"
        f" load1={os.getloadavg()[0]:.1f}",
        flush=True,
    )
    return size


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--hosts",
        type=int,
        nargs="+",
        action="extend",
        metavar="N",
        help="sizes to run, e.g. --hosts 10 50 100 (default 10)",
    )
    parser.add_argument("--instances-per-host", type=int, default=10)
    parser.add_argument("--clients", type=int, default=8, help="concurrent API clients")
    parser.add_argument(
        "--per-request",
        type=int,
        default=1,
        help="instances a POST asks for (`count`; an operator's `send build --count K`)",
    )
    parser.add_argument("--runs", type=int, default=7, help="runs of each agentctl command")
    parser.add_argument(
        "--heartbeat", type=float, default=10.0, help="the agents' heartbeat_interval, seconds"
    )
    parser.add_argument("--parallel", type=int, default=8, help="hosts set up at a time")
    parser.add_argument(
        "--own-broker",
        action="store_true",
        help="a RabbitMQ node of the bench's own (the machine's broker may allow only"
        " 1,024 open files: about 90 hosts)",
    )
    parser.add_argument(
        "--postgres",
        action="store_true",
        help=f"the controller on a scratch database of {PG_ADMIN}",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="controllers on one PostgreSQL database (needs --postgres); the clients"
        " are spread over them, CPU is their sum",
    )
    args = parser.parse_args()
    if args.replicas > 1 and not args.postgres:
        parser.error(f"--replicas {args.replicas} needs --postgres (SQLite serves one controller)")
    sizes = args.hosts or [10]
    for value, name in (
        (min(sizes), "--hosts"),
        (args.instances_per_host, "--instances-per-host"),
        (args.clients, "--clients"),
        (args.per_request, "--per-request"),
        (args.runs, "--runs"),
        (args.parallel, "--parallel"),
        (args.replicas, "--replicas"),
    ):
        if value < 1:
            parser.error(f"{name} must be at least 1, got {value}")
    if not broker_available():
        print("RabbitMQ is not reachable on 127.0.0.1:5672", file=sys.stderr)
        return 3
    results = [run_size(n, args) for n in sizes]
    if len(results) > 1:
        print("growth from the smallest to the largest size (per host where it should be flat):")
        a, b = results[0], results[-1]
        for field in (
            "builds_per_s",
            "list_ms",
            "show_ms",
            "agents_ms",
            "controller_rss_mib",
            "agent_rss_mib",
        ):
            x, y = getattr(a, field), getattr(b, field)
            print(
                f"  {field:<20} {x:8.1f} -> {y:8.1f}  (x{y / x if x else float('nan'):.2f}"
                f" for x{b.hosts / a.hosts:.0f} hosts)"
            )
    return 1 if any(r.lost for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
