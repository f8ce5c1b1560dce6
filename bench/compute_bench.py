#!/usr/bin/env python3
"""Benchmark of the compute-agent over the real broker (issue 3 item 11).

Part 1, libvirt test driver: the agent runs as a real process (test:///default, domain
type test); this script casts N build_instance messages at concurrency 1 and 10 (a
closed loop: a new build is cast when one ends) and reports
- build_instance received -> guest started, p50/p99: the agent's own time, measured
  inside the agent and carried in instance.create.end's elapsed_ms;
- cast -> instance.create.end seen here, p50/p99 (adds broker and notification hops);
- builds per second (N / wall time from the first cast to the last end).
The vif wait: by default builds have zero ports; with --ports K each build has K ports
whose port.vif_plugged is published before the build is cast (the agent must find
them in its recent-events memory). Images: a direct-kernel-boot image by default (no
disk to make); --image-kind qcow2 adds a qemu-img overlay per build.

Part 2 (--tcg, root): one real guest under TCG through qemu:///embed, inside a network
namespace, on a tap in a bridge: received -> QEMU running (instance.create.end) and
received -> the guest's AGENTS-GUEST-READY line in its console log.

Usage: .venv/bin/python bench/compute_bench.py [-n 1000] [--ports 0] [--tcg]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import kombu

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agents.compute import vif  # noqa: E402
from common.config import MessagingSettings  # noqa: E402
from common.messages import (  # noqa: E402
    BuildInstance,
    DeleteInstance,
    InstanceEvent,
    InstanceSpec,
    Port,
    VifEvent,
    new_request_id,
)
from common.rpc import COMPUTE_TOPIC, EventWatcher, Messaging, vif_events_topic  # noqa: E402

NET1 = uuid.UUID("5d3c0f6e-8a3b-4c1e-9f2a-0b7e6d5c4a31")
SHARED_CONF = REPO / "etc" / "shared.conf"
GUEST_IMAGES = REPO / ".cache" / "guest-image"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


@dataclass
class Run:
    concurrency: int
    n: int
    agent_ms: list[float]
    e2e_ms: list[float]
    wall_s: float
    errors: int
    cast_to_received_ms: list[float]
    end_publish_ms: list[float]
    agent_span_s: float  # first build received -> last guest started, agent clock

    def line(self) -> str:
        return (
            f"concurrency {self.concurrency:>2}: {self.n} builds in {self.wall_s:.2f}s = "
            f"{self.n / self.wall_s:7.1f} builds/s | received->started p50 "
            f"{statistics.median(self.agent_ms):6.2f} ms p99 {pct(self.agent_ms, 99):6.2f} ms | "
            f"cast->create.end seen p50 {statistics.median(self.e2e_ms):6.2f} ms "
            f"p99 {pct(self.e2e_ms, 99):6.2f} ms | errors {self.errors}\n"
            f"                 of which cast->received p50 "
            f"{statistics.median(self.cast_to_received_ms):6.2f} ms, "
            f"create.end emitted->seen p50 {statistics.median(self.end_publish_ms):6.2f} ms; "
            f"inside the agent {self.n / self.agent_span_s:7.1f} builds/s "
            f"(first received -> last started)"
        )


class Bench:
    def __init__(self, tmp: Path, host: str, ports: int, image_kind: str) -> None:
        suffix = uuid.uuid4().hex[:10]
        self.tmp = tmp
        self.host = host
        self.ports = ports
        self.image = "benchimg"
        self.settings = MessagingSettings(
            control_exchange=f"bench-{suffix}", events_topic=f"bev-{suffix}", send_retry=3
        )
        self.image_dir = tmp / "images"
        self.image_dir.mkdir()
        if image_kind == "qcow2":
            subprocess.run(
                [
                    "qemu-img",
                    "create",
                    "-q",
                    "-f",
                    "qcow2",
                    str(self.image_dir / "benchimg.qcow2"),
                    "16M",
                ],
                check=True,
            )
        else:
            kdir = self.image_dir / "benchimg"
            kdir.mkdir()
            (kdir / "kernel").write_bytes(b"k")
            (kdir / "initrd").write_bytes(b"i")
        self.messaging = Messaging(self.settings)
        self.client = self.messaging.rpc_client(COMPUTE_TOPIC, host)
        self.vif_notifier = self.messaging.notifier(f"l2-agent.{host}", vif_events_topic(host))
        self.watcher = EventWatcher(
            self.settings,
            [f"{self.settings.events_topic}.#.info", f"{self.settings.events_topic}.#.error"],
        )

    def config(self, **compute: object) -> Path:
        values = {
            "libvirt_uri": "test:///default",
            "domain_type": "test",
            "image_dir": self.image_dir,
            "instances_dir": self.tmp / "instances",
            "vif_plugging_timeout": 30,
            "max_concurrent_builds": 10,
            "heartbeat_interval": 600,
            **compute,
        }
        path = self.tmp / "compute.conf"
        path.write_text(
            "\n".join(
                [
                    "[DEFAULT]",
                    f"host = {self.host}",
                    "log_level = WARNING",
                    "log_format = json",
                    "[messaging]",
                    f"control_exchange = {self.settings.control_exchange}",
                    f"events_topic = {self.settings.events_topic}",
                    "[metrics]",
                    "listen = 127.0.0.1:0",
                    "[compute]",
                    *(f"{k} = {v}" for k, v in values.items()),
                ]
            )
            + "\n"
        )
        return path

    def spec(self, image: str | None = None, ip: str | None = None) -> InstanceSpec:
        iid = uuid.uuid4()
        return InstanceSpec(
            uuid=iid,
            name=f"b-{iid.hex[:8]}",
            flavor="m1.tiny",
            image=image or self.image,
            ports=[
                Port(
                    id=uuid.uuid4(),
                    network_id=NET1,
                    mac=f"fa:16:3e:{(iid.int >> 8) % 256:02x}:{iid.int % 256:02x}:{n:02x}",
                    fixed_ip=ip,
                    instance_uuid=iid,
                )
                for n in range(max(self.ports, 1 if ip else 0))
            ],
        )

    def cast_build(self, spec: InstanceSpec) -> float:
        for port in spec.ports:
            self.vif_notifier.info(
                "port.vif_plugged", VifEvent(host=self.host, port_id=port.id, network_id=NET1)
            )
        rid = new_request_id()
        sent = time.monotonic()
        self.client.cast(
            "build_instance", BuildInstance(request_id=rid, host=self.host, instance=spec), rid
        )
        return sent

    def run(self, n: int, concurrency: int) -> Run:
        sent: dict[uuid.UUID, float] = {}
        sent_wall: dict[uuid.UUID, float] = {}
        to_received: list[float] = []
        end_publish: list[float] = []
        first_received = float("inf")
        last_started = 0.0
        agent_ms: list[float] = []
        e2e_ms: list[float] = []
        errors = 0
        cast = 0
        start = time.monotonic()
        while cast < min(concurrency, n):
            spec = self.spec()
            sent_wall[spec.uuid] = time.time()
            sent[spec.uuid] = self.cast_build(spec)
            cast += 1
        done = 0
        deadline = time.monotonic() + 60 + n * 0.1
        while done < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {done} of {n} builds ended")
            for ev in self.watcher.poll(1.0):
                payload = ev.payload
                if not isinstance(payload, InstanceEvent) or payload.instance_uuid not in sent:
                    continue
                if ev.event_type == "instance.create.start":
                    # the agent's receive time, in wall-clock: emitted at minus its elapsed
                    received = payload.at.timestamp() - (payload.elapsed_ms or 0) / 1000
                    to_received.append((received - sent_wall[payload.instance_uuid]) * 1000)
                    first_received = min(first_received, received)
                if ev.event_type not in ("instance.create.end", "instance.create.error"):
                    continue
                now = time.monotonic()
                done += 1
                if ev.event_type == "instance.create.error":
                    errors += 1
                else:
                    agent_ms.append(payload.elapsed_ms or 0.0)
                    e2e_ms.append((now - sent.pop(payload.instance_uuid)) * 1000)
                    end_publish.append((time.time() - payload.at.timestamp()) * 1000)
                    last_started = max(last_started, payload.at.timestamp())
                if cast < n:
                    spec = self.spec()
                    sent_wall[spec.uuid] = time.time()
                    sent[spec.uuid] = self.cast_build(spec)
                    cast += 1
        wall = time.monotonic() - start
        return Run(
            concurrency,
            n,
            agent_ms or [0.0],
            e2e_ms or [0.0],
            wall,
            errors,
            to_received or [0.0],
            end_publish or [0.0],
            max(last_started - first_received, 1e-6),
        )

    def close(self) -> None:
        self.watcher.close()
        self.messaging.close()
        topics = [self.settings.events_topic, vif_events_topic(self.host)]
        queues = [f"{t}.{p}" for t in topics for p in ("info", "error")]
        queues.append(f"{COMPUTE_TOPIC}.{self.host}")
        with kombu.Connection("amqp://guest:guest@127.0.0.1:5672//") as conn:
            for name in queues:
                with contextlib.suppress(Exception):
                    conn.channel().queue_delete(queue=name)
            with contextlib.suppress(Exception):
                conn.channel().exchange_delete(exchange=self.settings.control_exchange)


def start_agent(
    config: Path, log: Path, client: object, prefix: list[str] | None = None
) -> subprocess.Popen[bytes]:
    script = str(Path(sys.executable).parent / "compute-agent")
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            [
                *(prefix or []),
                script,
                "--config-file",
                str(SHARED_CONF),
                "--config-file",
                str(config),
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"compute-agent exited {proc.returncode}: see {log}")
        try:
            client.call("ping", timeout=1)  # type: ignore[attr-defined]
            return proc
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def bench_test_driver(args: argparse.Namespace) -> None:
    print(
        f"test driver, {args.n} builds per run, {args.ports} port(s) each "
        f"({'vif_plugged pre-published' if args.ports else 'no vif wait'}), "
        f"image kind {args.image_kind}; agent max_concurrent_builds = concurrency"
    )
    for closed in (True, False):
        print(
            "closed loop (a new build is cast when one's create.end is seen):"
            if closed
            else "open loop (all builds cast at once; the agent bounds concurrency):"
        )
        for concurrency in (1, 10):
            with tempfile.TemporaryDirectory(prefix="cbench-") as tmpdir:
                tmp = Path(tmpdir)
                bench = Bench(tmp, f"bench{uuid.uuid4().hex[:6]}", args.ports, args.image_kind)
                config = bench.config(max_concurrent_builds=concurrency)
                proc = start_agent(config, tmp / "agent.log", bench.client)
                try:
                    bench.run(min(50, args.n), 10)  # warm-up: connections, caches
                    result = bench.run(args.n, concurrency if closed else args.n)
                    result.concurrency = concurrency
                    print("  " + result.line(), flush=True)
                finally:
                    stop(proc)
                    bench.close()


def _qemu_pids(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                cmdline = (entry / "cmdline").read_bytes()
                if b"qemu-system" in cmdline and marker.encode() in cmdline:
                    pids.append(int(entry.name))
    return pids


def bench_tcg(args: argparse.Namespace) -> None:
    from agents.lab.netns import NamespaceHost, wire_by_hand

    script = REPO / "tools" / "build-guest-image.sh"
    subprocess.run([str(script)], check=True, capture_output=True)
    with tempfile.TemporaryDirectory(prefix="cbench-") as tmpdir, NamespaceHost() as host:
        tmp = Path(tmpdir)
        embed = Path(tempfile.mkdtemp(prefix="emb", dir="/tmp"))
        bench = Bench(tmp, f"bench{uuid.uuid4().hex[:6]}", 1, "kernel")
        bench.image_dir = GUEST_IMAGES
        config = bench.config(libvirt_uri=f"qemu:///embed?root={embed}", domain_type="qemu")
        spec = bench.spec(image="tiny", ip="10.10.0.10")
        port = spec.ports[0]
        tap, bridge = vif.tap_name(port.id), vif.bridge_name(port.network_id)
        for cmd in wire_by_hand(tap, bridge, "10.10.0.1/24"):
            host.exec_check(cmd)
        proc = start_agent(
            config, tmp / "agent.log", bench.client, ["ip", "netns", "exec", host.name]
        )
        try:
            bench.cast_build(spec)
            console = tmp / "instances" / str(spec.uuid) / "console.log"
            start_ev = end_ev = None
            ready_at = None
            deadline = time.monotonic() + 120
            while ready_at is None and time.monotonic() < deadline:
                for ev in bench.watcher.poll(0.05):
                    if getattr(ev.payload, "instance_uuid", None) != spec.uuid:
                        continue
                    if ev.event_type == "instance.create.start":
                        start_ev = ev.payload
                    elif ev.event_type in ("instance.create.end", "instance.create.error"):
                        end_ev = ev
                if end_ev is not None and end_ev.event_type == "instance.create.error":
                    raise RuntimeError(f"build failed: {end_ev.payload.reason}")
                if console.exists() and b"AGENTS-GUEST-READY" in console.read_bytes():
                    ready_at = datetime.now().astimezone()
            if start_ev is None or end_ev is None or ready_at is None:
                raise TimeoutError("the guest did not become ready within 120 s")
            received = start_ev.at.timestamp() - (start_ev.elapsed_ms or 0) / 1000
            print("real TCG guest (qemu:///embed, 128 MiB, direct kernel boot):")
            running_ms = end_ev.payload.elapsed_ms
            ready_ms = (ready_at.timestamp() - received) * 1000
            print(f"  received -> QEMU running (instance.create.end): {running_ms:8.1f} ms")
            print(f"  received -> guest ready line on ttyS0:          {ready_ms:8.1f} ms")
        finally:
            with contextlib.suppress(Exception):
                bench.client.cast(
                    "delete_instance",
                    DeleteInstance(
                        request_id=new_request_id(), host=bench.host, instance_uuid=spec.uuid
                    ),
                )
                time.sleep(2)
            stop(proc)
            for pid in _qemu_pids(str(embed)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            subprocess.run(["rm", "-rf", str(embed)], check=False)
            bench.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=1000, help="builds per run")
    parser.add_argument(
        "--ports", type=int, default=0, help="ports per build (events pre-published)"
    )
    parser.add_argument("--image-kind", choices=("kernel", "qcow2"), default="kernel")
    parser.add_argument("--tcg", action="store_true", help="also boot one real TCG guest (root)")
    parser.add_argument("--tcg-only", action="store_true", help="only the real TCG guest")
    args = parser.parse_args()
    if not args.tcg_only:
        bench_test_driver(args)
    if args.tcg or args.tcg_only:
        bench_tcg(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
