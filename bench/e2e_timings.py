#!/usr/bin/env python3
"""End-to-end build latency as an operator sees it: agentctl to a guest that answers.

A lab (agents/lab: agents-controller on SQLite, one host = a network namespace with the
broker relayed in, the real l2-agent and compute-agent as processes, qemu:///embed, the
flat network `provider` on a veth whose far end is the gateway). It builds N real TCG
guests one after the other with `agentctl send build --wait` and deletes each once it
answers, so one guest runs at a time. Per guest, seconds after agentctl was started:

  port wired      port.vif_plugged seen by a watcher on the lab's exchange
  guest started   instance.create.progress step guest_started (QEMU running)
  guest ready     AGENTS-GUEST-READY first seen in the console log (the controller's
                  console-log API, polled every 0.25 s)
  host ping       the host's first answered ping to the guest (tried every 0.25 s)
  agentctl done   `send build --wait` returned

agentctl's own start-up (about 60 ms) is inside every figure; the first guest also pays
libvirt's capability probe of a fresh embed root (about 4 s).

Usage (root): .venv/bin/python bench/e2e_timings.py [-n 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from uuid import UUID

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.lab.lab import Lab
from agents.lab.links import provider_uplink
from agents.lab.procs import REPO, broker_available, run, wait_for
from common.config import BaseConfig, load
from common.rpc import vif_events_topic
from tests.e2e.observe import ConsoleWatch, EventRecorder

PHASES = ("port wired", "guest started", "guest ready", "host ping", "agentctl done")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=3, help="guests to build, one at a time")
    args = parser.parse_args()
    if not broker_available():
        print("RabbitMQ is not reachable on 127.0.0.1:5672", file=sys.stderr)
        return 3
    image_dir = REPO / ".cache" / "guest-image"
    run(["bash", str(REPO / "tools" / "build-guest-image.sh"), str(image_dir)])

    lab = Lab.create(prefix="ae2b-", image_dir=image_dir)  # /tmp: short QEMU socket paths
    rows: list[dict[str, float]] = []
    try:
        controller = lab.start_controller()
        node = lab.add_host(
            "bench",
            driver="qemu",
            agents=(),
            l2={"l2": {"physical_interface_mappings": "physnet1:phys1"}},
        )
        host = node.host
        config = load(BaseConfig, [lab.write_shared()])
        provider = config.networks["provider"]
        provider_uplink(node, "phys1", f"{provider.gateway}/{provider.cidr.prefixlen}")  # type: ignore[union-attr]
        for agent in ("l2-agent", "compute-agent"):
            node.start(agent)
        settings = config.messaging
        keys = [f"{settings.events_topic}.#", f"{vif_events_topic(host)}.*"]
        with EventRecorder(settings, keys) as events, ConsoleWatch(controller) as consoles:
            for i in range(args.n):
                name = f"b{i}"
                sent = time.monotonic()
                doc = lab.agentctl_json(
                    "send", "build", "--host", host, "--name", name, "--network", "provider",
                    "--wait", "--timeout", "120",
                )  # fmt: skip
                done = time.monotonic()
                assert isinstance(doc, dict) and doc["ok"], doc
                inst = doc["instances"][0]
                uuid, ip = UUID(inst["uuid"]), inst["ports"][0]["fixed_ip"]
                port_id = UUID(inst["ports"][0]["id"])
                consoles.add(uuid)
                ready = wait_for(lambda u=uuid: consoles.seen(u, "ready"), 120, 0.1, what="ready")
                wait_for(lambda ip=ip: node.pings(ip, timeout=1), 60, 0.25, what="ping")
                pinged = time.monotonic()
                wired = events.first("port.vif_plugged", port_id=port_id)
                started = events.first(
                    "instance.create.progress", instance_uuid=uuid, step="guest_started"
                )
                row = {
                    "port wired": (wired or sent) - sent,
                    "guest started": (started or sent) - sent,
                    "guest ready": ready - sent,
                    "host ping": pinged - sent,
                    "agentctl done": done - sent,
                }
                rows.append(row)
                print(name, "  ".join(f"{k}={v:.2f}s" for k, v in row.items()), flush=True)
                consoles.forget(uuid)
                lab.agentctl_json("send", "delete", name, "--wait")
    finally:
        lab.close()

    print(f"\n{len(rows)} guests, seconds after `agentctl send build` started:")
    print(f"{'phase':>14}  {'median':>7}  {'min':>6}  {'max':>6}")
    for phase in PHASES:
        values = [r[phase] for r in rows]
        print(
            f"{phase:>14}  {statistics.median(values):7.2f}  {min(values):6.2f}  {max(values):6.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
