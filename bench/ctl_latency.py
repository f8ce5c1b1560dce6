#!/usr/bin/env python3
"""How long a whole `agentctl` takes, as an operator waits for it: process start to exit.

A lab (agents/lab) brings up what it needs and removes it afterwards: agents-controller
on SQLite in the root namespace and one simulated host (a network namespace with the
real l2-agent and compute-agent, libvirt's test driver). Each command is run as a
subprocess against that controller and timed by wall clock, `--runs` times (median of
at least 10):

  agentctl list                    GET /v1/instances
  agentctl show NAME               GET /v1/instances/NAME
  agentctl send build --wait       POST /v1/instances, then the event stream until the
                                   guest runs (the test driver: no QEMU boot)

Then where the time goes: the interpreter's own start-up, agentctl's imports
(`python -X importtime`), and the controller's side of each request (its log line
`request ... duration_ms=`).

`--instances N` first builds N more instances on the host (batches of 100 through
`agentctl send build --count 100 --wait`; net1 widened to a /20 past 200), so that
`list` is timed over N + 1 rows, as on a large deployment without its hosts.

Usage (root, RabbitMQ on 127.0.0.1:5672):
  .venv/bin/python bench/ctl_latency.py [--runs 15] [--instances 1000]
"""

from __future__ import annotations

import argparse
import re
import signal
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.lab.lab import Lab
from agents.lab.procs import broker_available, console_script

AGENTCTL = console_script("agentctl")


def timed(cmd: Sequence[str], env: dict[str, str], check: bool = True) -> float:
    """Wall time of one whole process, in ms."""
    started = time.perf_counter()
    result = subprocess.run(list(cmd), env=env, capture_output=True, text=True, timeout=120)
    took = (time.perf_counter() - started) * 1000
    if check and result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {result.returncode}:\n{result.stderr}")
    return took


def series(runs: int, one: Callable[[int], float]) -> list[float]:
    return [one(i) for i in range(runs)]


def describe(values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[max(0, round(0.9 * len(ordered)) - 1)]
    return f"min {ordered[0]:.0f}  p90 {p90:.0f}  max {ordered[-1]:.0f} ms over {len(values)} runs"


def import_profile(env: dict[str, str], top: int = 12) -> list[str]:
    """agentctl list under -X importtime: total import time and the costliest packages."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", AGENTCTL, "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    rows = []
    for line in result.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            rows.append((int(m.group(2)), len(m.group(3)), m.group(4)))
    total = sum(cum for cum, depth, _ in rows if depth == 1)
    lines = [f"  imports in total: {total / 1000:.1f} ms; the costliest (cumulative, nesting):"]
    for cum, depth, name in sorted(rows, reverse=True)[:top]:
        lines.append(f"    {cum / 1000:7.1f} ms  {'  ' * (depth - 1)}{name}")
    return lines


def server_side(lab: Lab, names: set[str]) -> list[str]:
    assert lab.controller is not None
    per: dict[str, list[float]] = defaultdict(list)
    for method, path, ms in lab.controller.request_durations():
        key = re.sub(
            r"^/v1/instances/([^/]+)",
            lambda m: "/v1/instances/{ref}" if m.group(1) in names else m.group(0),
            path,
        )
        per[f"{method} {key}"].append(ms)
    lines = []
    for key in sorted(per):
        values = per[key]
        lines.append(
            f"    {key:<28} median {statistics.median(values):6.1f} ms"
            f"  max {max(values):6.1f} ms  ({len(values)} requests)"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="runs per command (>= 10)")
    parser.add_argument(
        "--instances", type=int, default=0, help="build this many more before timing (<= 3000)"
    )
    args = parser.parse_args()
    if args.runs < 10:
        parser.error("--runs must be at least 10")
    if not 0 <= args.instances <= 3000:
        parser.error(f"--instances must be 0-3000 (got {args.instances})")
    if not broker_available():
        print("RabbitMQ is not reachable on 127.0.0.1:5672", file=sys.stderr)
        return 3
    n = args.instances
    wide = {"network:net1": {"cidr": "10.10.0.0/20", "allocation_end": "10.10.15.250"}}
    with Lab.create(
        prefix="clb-", stop_signal=signal.SIGKILL, shared=wide if n > 200 else None
    ) as lab:
        lab.start_controller()
        room = {"vcpus": max(64, 2 * n), "memory_mb": max(65536, 1024 * n)}
        node = lab.add_host("node1", compute={"compute": room})
        env = lab.agentctl_env()
        names = {"warm"}
        timed([AGENTCTL, "send", "build", "--name", "warm", "--wait"], env)  # warm caches
        for start in range(0, n, 100):
            count = str(min(100, n - start))
            batch = ["--name", f"n{start // 100}", "--count", count, "--host", node.host]
            timed([AGENTCTL, "send", "build", *batch, "--wait"], env)
        if n:
            print(f"built {n} more instances")

        baseline = series(args.runs, lambda _: timed([sys.executable, "-c", "pass"], env))
        listed = series(args.runs, lambda _: timed([AGENTCTL, "list"], env))
        shown = series(args.runs, lambda _: timed([AGENTCTL, "show", "warm"], env))

        def build(i: int) -> float:
            names.add(f"b{i}")
            return timed([AGENTCTL, "send", "build", "--name", f"b{i}", "--wait"], env)

        built = series(args.runs, build)

        print(f"agentctl list: median {statistics.median(listed):.0f} ms")
        print(f"agentctl show: median {statistics.median(shown):.0f} ms")
        print(f"agentctl send build --wait: median {statistics.median(built):.0f} ms")
        print()
        print(f"  list                 {describe(listed)}")
        print(f"  show                 {describe(shown)}")
        print(f"  send build --wait    {describe(built)}")
        base = statistics.median(baseline)
        print(f"  python -c pass       median {base:.0f} ms; {describe(baseline)}")
        print("where agentctl's time goes (agentctl list, python -X importtime):")
        for line in import_profile(env):
            print(line)
        print("the controller's side (its log: request ... duration_ms=):")
        for line in server_side(lab, names):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
