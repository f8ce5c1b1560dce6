"""A network namespace standing for one host, with the broker reachable inside it.

A process inside a namespace cannot reach the root namespace's 127.0.0.1, so each
`NamespaceHost` runs two socat relays: one in the root namespace from a unix socket to
the broker, one inside the namespace from its own 127.0.0.1:5672 to that socket.
Agents inside then use the ordinary `rabbit://guest:guest@127.0.0.1:5672/`. For a
broker cluster on this machine (`broker_ports`, one per node) each port gets its pair
of relays, so the cluster's multi-node URL works unchanged inside.

Owns the namespace, its relays, the processes spawned in it and a scratch directory.
Everything is removed by `close()`, also after a failure: processes first, then the
namespace (which takes its links with it). It must not touch the root namespace's links
nor signal processes it did not spawn.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from agents.lab.procs import (
    BROKER,
    run,
    signal_process,
    unique,
    wait_for,
)


def wire_by_hand(tap: str, bridge: str, gateway: str) -> list[list[str]]:
    """The `ip` commands that do what the l2-agent does on port_created for a flat port
    (the bridge with `gateway`, e.g. 10.10.0.1/24, on it; the tap in it, up), for a
    compute-agent measured or tested without an l2-agent."""
    return [
        ["ip", "link", "add", bridge, "type", "bridge"],
        ["ip", "addr", "add", gateway, "dev", bridge],
        ["ip", "link", "set", bridge, "up"],
        ["ip", "tuntap", "add", "dev", tap, "mode", "tap"],
        ["ip", "link", "set", tap, "master", bridge, "up"],
    ]


RELAY_UP_S = 30.0


def port_open(netns: str | None, port: int) -> bool:
    """Something accepts TCP connections on 127.0.0.1:`port` (inside `netns` if given)."""
    cmd = ["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    return subprocess.run(cmd, capture_output=True).returncode == 0


class NamespaceHost:
    """A network namespace standing for one host, with the broker reachable inside it."""

    def __init__(
        self,
        name: str | None = None,
        relay_broker: bool = True,
        broker_ports: Sequence[int] = (BROKER[1],),
    ) -> None:
        self.name = name or unique("tns")
        self.relay_broker = relay_broker
        self.broker_ports = list(broker_ports)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        self.sock = self.tmp / "broker.sock"

    def __enter__(self) -> NamespaceHost:
        try:
            run(["ip", "netns", "add", self.name])
            self.exec_check(["ip", "link", "set", "lo", "up"])
            if self.relay_broker:
                for port in self.broker_ports:
                    self._start_relay(port)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start_relay(self, port: int = BROKER[1]) -> None:
        sock = self.sock if port == BROKER[1] else self.tmp / f"broker-{port}.sock"
        self.procs.append(
            subprocess.Popen(
                ["socat", f"UNIX-LISTEN:{sock},fork", f"TCP:{BROKER[0]}:{port}"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        # Generous bounds: 8 hosts set up at once beside 100 busy agents (bench/scale.py)
        # once took more than 5 s to get a socat listening.
        wait_for(sock.exists, RELAY_UP_S, what="root-side relay socket")
        self.procs.append(
            subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    self.name,
                    "socat",
                    f"TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr",
                    f"UNIX-CONNECT:{sock}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        wait_for(lambda: port_open(self.name, port), RELAY_UP_S, what="namespace-side relay")

    @property
    def relays(self) -> list[subprocess.Popen[bytes]]:
        return self.procs[: 2 * len(self.broker_ports)] if self.relay_broker else []

    def exec_check(self, cmd: Sequence[str]) -> subprocess.CompletedProcess[str]:
        return run(["ip", "netns", "exec", self.name, *cmd])

    def spawn(
        self, cmd: Sequence[str], log: Path, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a process inside the namespace, in its own session; killed on close()."""
        with log.open("ab") as fh:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.name, *cmd],
                stdout=fh,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self.procs):
            signal_process(proc, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                signal_process(proc, signal.SIGKILL)
                proc.wait(timeout=5)
        self.procs.clear()
        run(["ip", "netns", "del", self.name], check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)
