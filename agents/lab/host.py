"""One simulated host of a lab: a namespace, its files, its two agents, its guests.

Owns, per host: a `NamespaceHost` (broker relayed inside), a directory holding an
/etc/agents-like config dir, the state dir, the instances dir, the libvirt
`qemu:///embed` root and the logs. Its agents run with the command lines of the systemd
units and configs rendered from the `etc/` samples. The libvirt driver is either
libvirt's in-process test driver (`driver="test"`, with a 16 MiB qcow2 image `tiny`) or
real QEMU/TCG guests through `qemu:///embed` (`driver="qemu"`, with the image dir given).

Must not touch links of the root namespace, or kill processes it did not start. QEMU
processes are found by the host's embed root in their command line (libvirt puts paths
under the root there), so only this host's guests are ever killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from agents.lab.broker import TRANSPORT_URL, consumers
from agents.lab.configs import Values, merge, render_config, sample, unit_command
from agents.lab.netns import NamespaceHost
from agents.lab.procs import LabError, run, stop_process, tail, wait_for

AGENTS = ("l2-agent", "compute-agent")
KIND: Mapping[str, str] = MappingProxyType({"l2-agent": "l2", "compute-agent": "compute"})
TOPIC: Mapping[str, str] = MappingProxyType({"l2-agent": "l2-agent", "compute-agent": "compute"})
Driver = Literal["test", "qemu"]
# (host, kind) -> the controller's host entry, or None when it has not heard of it
HostsView = Callable[[], Mapping[tuple[str, str], Mapping[str, Any]]]


@dataclass
class LabHost:
    """One simulated host: its namespace, its files, its two agents, its guests."""

    name: str  # the scenario's name for it (node1)
    host: str  # what the agents serve ([DEFAULT] host), unique per run
    ns: NamespaceHost
    dir: Path
    driver: Driver = "test"
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # Set by the lab when a controller runs: starting an agent then also waits until the
    # controller heard its first heartbeat.
    controller_hosts: HostsView | None = None
    # the broker its agents use (a cluster's multi-node URL in a clustered lab)
    transport_url: str = TRANSPORT_URL

    @property
    def etc(self) -> Path:
        return self.dir / "etc"

    @property
    def embed_root(self) -> Path:
        return self.dir / "libvirt"

    @property
    def instances_dir(self) -> Path:
        return self.dir / "instances"

    @property
    def state_dir(self) -> Path:
        return self.dir / "state"

    @property
    def log_dir(self) -> Path:
        return self.dir / "log"

    def conf(self, agent: str) -> Path:
        return self.etc / f"{agent}.conf"

    def configure(self, shared: str, image_dir: Path | None, compute: Values, l2: Values) -> None:
        """Write shared.conf and both agents' configs, rendered from the samples."""
        self.etc.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        (self.etc / "shared.conf").write_text(shared)
        if self.driver == "test":
            image_dir = image_dir or self.dir / "images"
            ensure_tiny_image(image_dir)
            hypervisor: dict[str, object] = {
                "libvirt_uri": "test:///default",
                "domain_type": "test",
            }
        else:
            if image_dir is None:
                raise LabError(f"{self.name}: a qemu host needs an image dir (the guest image)")
            hypervisor = {
                "libvirt_uri": f"qemu:///embed?root={self.embed_root}",
                "domain_type": "qemu",
            }
        common = {"host": self.host, "state_dir": self.state_dir}
        compute_values = merge(
            {
                "DEFAULT": common,
                # each lab host is its own namespace, so the sample's port never clashes
                "metrics": {"listen": "127.0.0.1:9101"},
                "compute": {
                    **hypervisor,
                    "image_dir": image_dir,
                    "instances_dir": self.instances_dir,
                    "heartbeat_interval": 1,
                },
            },
            compute,
        )
        l2_values = merge({"DEFAULT": common, "l2": {"heartbeat_interval": 1}}, l2)
        self.conf("compute-agent").write_text(
            render_config(sample("compute-agent.conf"), compute_values)
        )
        self.conf("l2-agent").write_text(render_config(sample("l2-agent.conf"), l2_values))

    # ------------------------------------------------------------------ agents

    def start(self, agent: str, wait: bool = True, timeout: float = 60) -> subprocess.Popen[bytes]:
        """Start `agent`; with `wait`, return once it consumes its RPC queue and, when a
        controller runs, once the controller heard this start's heartbeat."""
        running = self.agents.get(agent)
        if running is not None and running.poll() is None:
            raise LabError(f"{agent} of {self.name} is already running (pid {running.pid})")
        before = self._heard(agent)
        proc = self.ns.spawn(unit_command(agent, self.etc), self.log_dir / f"{agent}.log")
        self.agents[agent] = proc
        if wait:
            self.wait_serving(agent, timeout, previous=before)
        return proc

    def _heard(self, agent: str) -> object:
        if self.controller_hosts is None:
            return None
        entry = self.controller_hosts().get((self.host, KIND[agent]))
        return None if entry is None else entry.get("started_at")

    def wait_serving(self, agent: str, timeout: float = 60, previous: object = None) -> None:
        queue = f"{TOPIC[agent]}.{self.host}"

        def consumed() -> bool:
            self._check_alive(agent)
            return consumers(queue, self.transport_url) > 0

        wait_for(consumed, timeout, 0.2, what=f"{agent} of {self.name} to consume {queue}")
        view = self.controller_hosts
        if view is None:
            return

        def heard() -> bool:
            self._check_alive(agent)
            entry = view().get((self.host, KIND[agent]))
            return (
                entry is not None
                and entry.get("state") == "up"
                and entry.get("started_at") != previous
            )

        wait_for(heard, timeout, 0.2, what=f"the controller to hear {agent} of {self.name}")

    def serving(self, agent: str) -> bool:
        """The agent's RPC queue has a consumer (one look, no wait)."""
        return consumers(f"{TOPIC[agent]}.{self.host}", self.transport_url) > 0

    def check_alive(self, agent: str) -> None:
        """LabError with its log's tail when `agent` has exited."""
        self._check_alive(agent)

    def _check_alive(self, agent: str) -> None:
        proc = self.agents[agent]
        if proc.poll() is not None:
            raise LabError(
                f"{agent} of {self.name} exited {proc.returncode}:\n"
                f"{tail(self.log_dir / f'{agent}.log')}"
            )

    def stop(self, agent: str, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Signal the agent (SIGTERM: graceful; SIGKILL: a crash), wait; its exit status."""
        proc = self.agents[agent]
        status, killed = stop_process(proc, sig, timeout)
        if killed and sig != signal.SIGKILL:
            raise LabError(f"{agent} of {self.name} ignored signal {sig} for {timeout}s")
        return status

    def kill(self, agent: str) -> int:
        return self.stop(agent, signal.SIGKILL)

    def running(self, agent: str) -> bool:
        proc = self.agents.get(agent)
        return proc is not None and proc.poll() is None

    # ------------------------------------------------------------------ looking inside

    def sh(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """A command inside the host's namespace."""
        result = run(["ip", "netns", "exec", self.ns.name, *cmd], check=False)
        if check and result.returncode != 0:
            raise LabError(f"{self.name}: {' '.join(cmd)}: {result.stderr.strip()}")
        return result

    def links(self) -> dict[str, dict[str, Any]]:
        out = run(["ip", "-n", self.ns.name, "-d", "-j", "link", "show"]).stdout
        return {link["ifname"]: link for link in json.loads(out)}

    def pings(self, address: str, timeout: float = 2) -> bool:
        wait = str(max(1, round(timeout)))
        return self.sh("ping", "-c", "1", "-W", wait, address, check=False).returncode == 0

    def recorded_ports(self) -> list[dict[str, Any]]:
        """The l2-agent's own record of the ports it holds (its state files)."""
        ports_dir = self.state_dir / "l2-agent" / self.host / "ports"
        records = []
        for path in sorted(ports_dir.glob("*.json")):
            with contextlib.suppress(OSError, ValueError):
                records.append(json.loads(path.read_text()))
        return records

    def qemu_pids(self) -> list[int]:
        return qemu_pids(self.embed_root)

    def kill_guests(self) -> None:
        kill_guests(self.embed_root)

    def logs(self, chars: int = 6000) -> str:
        return "\n".join(
            f"--- {self.name} {p.name}\n{tail(p, chars)}"
            for p in sorted(self.log_dir.glob("*.log"))
        )

    def close(self) -> None:
        """Agents, then guests, then the namespace (which takes its links along)."""
        try:
            for agent in list(self.agents):
                with contextlib.suppress(Exception):
                    self.stop(agent, timeout=15)
        finally:
            try:
                self.kill_guests()
            finally:
                self.ns.close()


def ensure_tiny_image(image_dir: Path) -> Path:
    """The test driver's 16 MiB qcow2 image `tiny` in `image_dir`, made once."""
    image = image_dir / "tiny.qcow2"
    if not image.exists():
        image_dir.mkdir(parents=True, exist_ok=True)
        run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"])
    return image


def qemu_pids(embed_root: Path) -> list[int]:
    """QEMU processes of one embed root (nobody else's): libvirt puts paths under the
    root (monitor socket, pid file, logs) on QEMU's command line."""
    marker = str(embed_root).encode() + b"/"
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and b"qemu-system" in argv[0] and any(marker in a for a in argv):
            pids.append(int(entry.name))
    return sorted(pids)


def kill_guests(embed_root: Path) -> None:
    for pid in qemu_pids(embed_root):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not qemu_pids(embed_root), 10, 0.1, what=f"QEMU of {embed_root} to exit")
