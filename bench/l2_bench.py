#!/usr/bin/env python3
"""l2-agent benchmark (issue 4): plug latency, throughput over 1,000 ports, reconcile time.

Runs the real agent pieces in this process (broker connection direct, not relayed, as
docs/platform.md advises), all netlink work in a network namespace made for the run and
deleted afterwards, on a control exchange and host name of its own. It prints:

- port_created received by the endpoint -> port.vif_plugged emitted (p50, p99), ports
  sent one at a time;
- the same for cast sent -> event seen by a separate watcher (what a client sees);
- ports per second: a backlog of port_created (1,000 ports in all) drained by the agent;
- reconcile on start with 1,000 recorded ports, once with every device present and
  once with every device gone (as after a host reboot).

Usage (root): .venv/bin/python bench/l2_bench.py [--ports 1000] [--serial 200]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kombu
import structlog

from agents.l2.endpoint import L2Endpoint
from agents.l2.manager import L2Manager
from agents.l2.metrics import L2Metrics
from agents.l2.netlink import Netlink
from agents.l2.settings import L2Config
from agents.l2.store import PortStore
from common import logging as agent_logging
from common.config import load
from common.messages import Message, PingReply, Port, PortCreated, new_request_id
from common.metrics import Registry
from common.rpc import L2_TOPIC, Messaging, Notifier, vif_events_topic, watching
from common.workers import KeyedSerialExecutor

REPO = Path(__file__).resolve().parents[1]
NET = uuid.UUID("5d3c0f6e-8a3b-4c1e-9f2a-0b7e6d5c4a31")  # net1 (vxlan 1001) in etc/shared.conf


class TimedSink:
    """Wraps the real notifier: notes when each port's vif event was emitted."""

    def __init__(self, inner: Notifier) -> None:
        self.inner = inner
        self.emitted: dict[uuid.UUID, float] = {}
        self.done = threading.Condition()

    def info(self, event_type: str, payload: Message, request_id: str | None = None) -> None:
        self.inner.info(event_type, payload, request_id)
        self._note(payload)

    def error(self, event_type: str, payload: Message, request_id: str | None = None) -> None:
        self.inner.error(event_type, payload, request_id)
        self._note(payload)

    def _note(self, payload: Message) -> None:
        port_id = getattr(payload, "port_id", None)
        with self.done:
            if port_id is not None:
                self.emitted[port_id] = time.perf_counter()
            self.done.notify_all()

    def wait(self, count: int, timeout: float) -> bool:
        with self.done:
            return self.done.wait_for(lambda: len(self.emitted) >= count, timeout)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


@contextlib.contextmanager
def namespace() -> Iterator[str]:
    name = f"l2b{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def cleanup_broker(config: L2Config) -> None:
    host = config.DEFAULT.host
    url = config.messaging.transport_url.replace("rabbit://", "amqp://", 1)
    with contextlib.suppress(Exception), kombu.Connection(url, connect_timeout=3) as conn:
        for queue in (
            f"{L2_TOPIC}.{host}",
            f"{vif_events_topic(host)}.info",
            f"{vif_events_topic(host)}.error",
            f"{config.messaging.events_topic}.#.error",
        ):
            with contextlib.suppress(Exception):
                conn.channel().queue_delete(queue)
        with contextlib.suppress(Exception):
            conn.channel().exchange_delete(config.messaging.control_exchange)


class Agent:
    """The agent's pieces as __main__ wires them, with timing hooks at both ends."""

    def __init__(self, config: L2Config, state: Path, messaging: Messaging) -> None:
        host = config.DEFAULT.host
        self.netlink = Netlink(config.l2.namespace)
        self.store = PortStore(state)
        self.sink = TimedSink(messaging.notifier(f"l2-agent.{host}", vif_events_topic(host)))
        self.manager = L2Manager(
            config=config,
            links=self.netlink,
            store=self.store,
            events=self.sink,
            metrics=L2Metrics(Registry("l2_bench")),
        )
        self.executor = KeyedSerialExecutor(config.l2.workers)
        self.received: dict[uuid.UUID, float] = {}
        endpoint = L2Endpoint(
            manager=self.manager,
            executor=self.executor,
            vif_events=self.sink,
            agent_events=self.sink,
            metrics=L2Metrics(Registry("l2_bench_ep")),
            ping=lambda: PingReply(host=host, kind="l2", version="bench", uptime_s=0.0),
            heartbeat=lambda: None,
        )
        original = endpoint.port_created

        def port_created(ctxt: dict[str, Any], payload: object = None) -> None:
            if isinstance(payload, PortCreated):
                self.received[payload.port.id] = time.perf_counter()
            original(ctxt, payload)

        endpoint.port_created = port_created  # type: ignore[method-assign]
        messaging.conf.set_override("executor_thread_pool_size", 1)
        self.server = messaging.rpc_server(L2_TOPIC, host, [endpoint])

        self.started = False

    def start(self) -> None:
        self.manager.reconcile()
        self.server.start()
        self.started = True

    def stop(self) -> None:
        if self.started:  # oslo's stop() waits for a start() that never came
            self.server.stop()
        self.executor.shutdown(30)
        if self.started:
            self.server.wait()
        self.netlink.close()
        self.store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ports", type=int, default=1000)
    parser.add_argument(
        "--serial", type=int, default=200, help="ports sent one at a time for latency"
    )
    args = parser.parse_args()
    agent_logging.setup("WARNING", "console")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))

    tmp = Path(tempfile.mkdtemp(prefix="l2bench-"))
    with namespace() as ns:
        conf = tmp / "l2.conf"
        conf.write_text(
            f"[DEFAULT]\nhost = bench-{uuid.uuid4().hex[:8]}\n"
            f"[messaging]\ncontrol_exchange = bench-{uuid.uuid4().hex}\n"
            f"[l2]\nnamespace = {ns}\nworkers = 4\n"
        )
        config = load(L2Config, [REPO / "etc" / "shared.conf", conf])
        host = config.DEFAULT.host
        state = tmp / "ports"
        messaging = Messaging(config.messaging)
        try:
            agent = Agent(config, state, messaging)
            agent.start()
            client = messaging.rpc_client(L2_TOPIC, host)
            topic = vif_events_topic(host)

            def ports(n: int) -> list[Port]:
                return [
                    Port(
                        id=uuid.uuid4(),
                        network_id=NET,
                        mac=f"fa:16:3e:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
                    )
                    for i in range(n)
                ]

            # 1. latency, one port at a time
            serial = ports(args.serial)
            seen_at: dict[uuid.UUID, float] = {}
            sent_at: dict[uuid.UUID, float] = {}
            with watching(config.messaging, [f"{topic}.info", f"{topic}.error"]) as watcher:
                for p in serial:
                    sent_at[p.id] = time.perf_counter()
                    client.cast(
                        "port_created", PortCreated(request_id=new_request_id(), host=host, port=p)
                    )
                    while p.id not in seen_at:
                        for event in watcher.poll(5):
                            seen_at[event.payload.port_id] = time.perf_counter()
            inside = [agent.sink.emitted[p.id] - agent.received[p.id] for p in serial]
            outside = [seen_at[p.id] - sent_at[p.id] for p in serial]

            # 2. throughput: the agent is stopped, the rest up to --ports is cast and
            #    waits on its (durable) queue; a fresh agent then drains that backlog.
            #    The sender here manages only ~150 casts/s, so casting while the agent
            #    runs would measure the sender.
            agent.stop()
            bulk = ports(args.ports - args.serial)
            t0 = time.perf_counter()
            for p in bulk:
                client.cast(
                    "port_created", PortCreated(request_id=new_request_id(), host=host, port=p)
                )
            sent = time.perf_counter() - t0
            agent = Agent(config, state, messaging)
            agent.manager.reconcile()  # the 200 earlier ports; not part of the figure
            agent.sink.emitted.clear()
            t0 = time.perf_counter()
            agent.server.start()
            agent.started = True
            if not agent.sink.wait(len(bulk), 300):
                raise SystemExit("bulk ports were not all reported within 300 s")
            elapsed = max(agent.sink.emitted[p.id] for p in bulk) - t0
            bulk_lat = [agent.sink.emitted[p.id] - agent.received[p.id] for p in bulk]
            failed = agent.manager.counts()["failed"]
            agent.stop()

            # 3. reconcile with the record of every port, devices present
            recorded = len(PortStore(state).load())
            warm = Agent(config, state, messaging)
            t = time.perf_counter()
            report_warm = warm.manager.reconcile()
            warm_s = time.perf_counter() - t
            warm.stop()

            # 4. reconcile after every device is gone (a reboot)
            taps = [f"link del tap{str(p.id)[:11]}" for p in serial + bulk]
            subprocess.run(
                ["ip", "-n", ns, "-batch", "-"], input="\n".join(taps) + "\n", text=True, check=True
            )
            cold = Agent(config, state, messaging)
            t = time.perf_counter()
            report_cold = cold.manager.reconcile()
            cold_s = time.perf_counter() - t
            cold.stop()
        finally:
            messaging.close()
            cleanup_broker(config)
            shutil.rmtree(tmp, ignore_errors=True)

    print(f"l2-agent benchmark: namespace {ns}, {args.ports} ports on one vxlan network")
    print(f"  port_created received -> vif_plugged emitted, one at a time ({len(inside)} ports):")
    print(
        f"      p50 {ms(statistics.median(inside))}   p99 {ms(pct(inside, 99))}"
        f"   max {ms(max(inside))}"
    )
    print("  cast sent -> vif_plugged seen by a watcher (broker both ways):")
    print(f"      p50 {ms(statistics.median(outside))}   p99 {ms(pct(outside, 99))}")
    print(
        f"  backlog of {len(bulk)} port_created drained at {len(bulk) / elapsed:.0f} ports/s "
        f"(last vif_plugged after {elapsed:.2f} s; failed {failed}; casting them took {sent:.2f} s)"
    )
    print(
        f"      received -> emitted under load: p50 {ms(statistics.median(bulk_lat))}   "
        f"p99 {ms(pct(bulk_lat, 99))}"
    )
    print(
        f"  reconcile on start, {recorded} recorded ports, devices present: {warm_s:.2f} s "
        f"(replugged {report_warm.replugged}, failed {report_warm.failed})"
    )
    print(
        f"  reconcile on start, {recorded} recorded ports, every tap gone:  {cold_s:.2f} s "
        f"(replugged {report_cold.replugged}, failed {report_cold.failed})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
