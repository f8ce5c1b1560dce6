"""Simulated hosts running the real agents: the machinery of the e2e test and the quickstart.

What it owns:
- `render_config()`: an operator's config file made from an `etc/` sample by setting
  keys (the sample's comments stay; a commented-out `# key =` line is replaced in place);
- `LabHost`: one host = a network namespace (tests.hosts.NamespaceHost, with the broker
  relayed inside) plus its own directory: /etc/agents-like config dir, state, libvirt
  `qemu:///embed` root, instances and logs. Its agents run with the command lines of
  the systemd units (read from systemd/*.service, only /etc/agents and the binary's
  directory replaced);
- `Lab`: the hosts of one deployment (one private control exchange) and agentctl;
- links a scenario needs inside the host namespaces: a veth underlay between two hosts,
  a veth "provider" uplink whose far end holds the network's gateway address.

What it must not do: touch links of the root namespace, or kill processes it did not
start. QEMU processes are found by the host's embed root in their command line (libvirt
puts paths under the root there), so only this host's guests are ever killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.hosts import REPO, NamespaceHost, console_script, run, wait_for

AGENTS = ("l2-agent", "compute-agent")
Values = Mapping[str, Mapping[str, object]]


class LabError(Exception):
    """A lab step failed; the message names what and shows the tool's own words."""


# --------------------------------------------------------------------------- configs

_SECTION = re.compile(r"^\s*\[(?P<name>[^\]]+)\]\s*$")


def render_config(sample: str, values: Values) -> str:
    """The sample text with `values[section][key]` set, comments kept.

    Within a section an active `key = ...` line wins over a commented `# key = ...` one;
    a key the sample does not mention is added at the end of its section, and a section
    it lacks is appended.
    """
    lines = sample.splitlines()
    pending = {s: {k: str(v) for k, v in kv.items()} for s, kv in values.items()}
    bounds: dict[str, tuple[int, int]] = {}
    current, start = None, 0
    for i, line in enumerate(lines):
        m = _SECTION.match(line)
        if m:
            if current is not None:
                bounds.setdefault(current, (start, i))
            current, start = m.group("name").strip(), i + 1
    if current is not None:
        bounds.setdefault(current, (start, len(lines)))

    inserts: dict[int, list[str]] = {}
    for section, kv in pending.items():
        if section not in bounds:
            continue
        lo, hi = bounds[section]
        for key, value in kv.items():
            active = re.compile(rf"^\s*{re.escape(key)}\s*=")
            commented = re.compile(rf"^\s*#\s*{re.escape(key)}\s*=")
            hit = next((i for i in range(lo, hi) if active.match(lines[i])), None)
            if hit is None:
                hit = next((i for i in range(lo, hi) if commented.match(lines[i])), None)
            if hit is not None:
                lines[hit] = f"{key} = {value}"
            else:
                end = hi
                while end > lo and not lines[end - 1].strip():
                    end -= 1
                inserts.setdefault(end, []).append(f"{key} = {value}")
    for at in sorted(inserts, reverse=True):
        lines[at:at] = inserts[at]
    for section, kv in pending.items():
        if section not in bounds:
            lines += ["", f"[{section}]", *(f"{k} = {v}" for k, v in kv.items())]
    return "\n".join(lines) + "\n"


def sample(name: str) -> str:
    path = REPO / "etc" / name
    if not path.is_file():
        raise LabError(f"the sample config {path} does not exist")
    return path.read_text()


def unit_command(agent: str, etc_dir: Path) -> list[str]:
    """The ExecStart of systemd/<agent>.service, pointed at `etc_dir` and this venv."""
    unit = REPO / "systemd" / f"{agent}.service"
    if not unit.is_file():
        raise LabError(f"the unit file {unit} does not exist")
    lines = [ln for ln in unit.read_text().splitlines() if ln.startswith("ExecStart=")]
    if len(lines) != 1:
        raise LabError(f"{unit}: expected one ExecStart= line, found {len(lines)}")
    argv = shlex.split(lines[0].removeprefix("ExecStart="))
    if Path(argv[0]).name != agent:
        raise LabError(f"{unit}: ExecStart runs {argv[0]!r}, not {agent}")
    return [console_script(agent), *(a.replace("/etc/agents", str(etc_dir)) for a in argv[1:])]


# --------------------------------------------------------------------------- hosts


@dataclass
class LabHost:
    """One simulated host: its namespace, its files, its two agents, its guests."""

    name: str  # the scenario's name for it (node1)
    host: str  # what the agents serve ([DEFAULT] host), unique per run
    ns: NamespaceHost
    dir: Path
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

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
    def log_dir(self) -> Path:
        return self.dir / "log"

    def configure(self, shared: str, compute: Values, l2: Values) -> None:
        self.etc.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        (self.etc / "shared.conf").write_text(shared)
        common = {"host": self.host, "state_dir": self.dir / "state"}
        compute_values: dict[str, dict[str, object]] = {
            "DEFAULT": common,
            # As in the sample; each lab host is its own namespace, so hosts never clash.
            "metrics": {"listen": "127.0.0.1:9101"},
            "compute": {
                "libvirt_uri": f"qemu:///embed?root={self.embed_root}",
                "domain_type": "qemu",
                "instances_dir": self.instances_dir,
            },
        }
        for section, kv in compute.items():
            compute_values[section] = {**compute_values.get(section, {}), **kv}
        l2_values = {"DEFAULT": common, **l2}
        rendered = {
            "compute-agent": render_config(sample("compute-agent.conf"), compute_values),
            "l2-agent": render_config(sample("l2-agent.conf"), l2_values),
        }
        for agent, text in rendered.items():
            (self.etc / f"{agent}.conf").write_text(text)

    def start(self, agent: str) -> subprocess.Popen[bytes]:
        running = self.agents.get(agent)
        if running is not None and running.poll() is None:
            raise LabError(f"{agent} of {self.name} is already running (pid {running.pid})")
        proc = self.ns.spawn(unit_command(agent, self.etc), self.log_dir / f"{agent}.log")
        self.agents[agent] = proc
        return proc

    def stop(self, agent: str, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Signal the agent and wait for it to exit; its exit status."""
        proc = self.agents[agent]
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
                raise LabError(
                    f"{agent} of {self.name} ignored signal {sig} for {timeout}s"
                ) from None
        return proc.returncode

    def running(self, agent: str) -> bool:
        proc = self.agents.get(agent)
        return proc is not None and proc.poll() is None

    def sh(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """A command inside the host's namespace."""
        result = run(["ip", "netns", "exec", self.ns.name, *cmd], check=False)
        if check and result.returncode != 0:
            raise LabError(f"{self.name}: {' '.join(cmd)}: {result.stderr.strip()}")
        return result

    def links(self) -> dict[str, dict[str, object]]:
        out = run(["ip", "-n", self.ns.name, "-d", "-j", "link", "show"]).stdout
        return {link["ifname"]: link for link in json.loads(out)}

    def pings(self, address: str, timeout: float = 2) -> bool:
        wait = str(max(1, round(timeout)))
        return self.sh("ping", "-c", "1", "-W", wait, address, check=False).returncode == 0

    def qemu_pids(self) -> list[int]:
        return qemu_pids(self.embed_root)

    def kill_guests(self) -> None:
        kill_guests(self.embed_root)

    def logs(self, tail: int = 6000) -> str:
        return "\n".join(
            f"--- {self.name} {p.name}\n{p.read_text(errors='replace')[-tail:]}"
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


# --------------------------------------------------------------------------- links


def underlay(a: LabHost, b: LabHost, a_ip: str, b_ip: str, prefix: int = 30) -> tuple[str, str]:
    """A veth pair from `a` to `b`, made inside `a`'s namespace and moved straight to `b`."""
    a_dev, b_dev = "ul-" + a.name[-8:], "ul-" + b.name[-8:]
    run(["ip", "-n", a.ns.name, "link", "add", a_dev, "type", "veth",
         "peer", "name", b_dev, "netns", b.ns.name])  # fmt: skip
    for host, dev, ip in ((a, a_dev, a_ip), (b, b_dev, b_ip)):
        host.sh("ip", "addr", "add", f"{ip}/{prefix}", "dev", dev)
        host.sh("ip", "link", "set", dev, "up")
    return a_dev, b_dev


def provider_uplink(host: LabHost, device: str, gateway_cidr: str) -> str:
    """A veth inside `host`: `device` goes into the flat network's bridge (the l2-agent's
    physnet mapping); its peer holds the gateway address, so the host answers the guest."""
    peer = (device + "-gw")[:15]
    host.sh("ip", "link", "add", device, "type", "veth", "peer", "name", peer)
    host.sh("ip", "addr", "add", gateway_cidr, "dev", peer)
    host.sh("ip", "link", "set", device, "up")
    host.sh("ip", "link", "set", peer, "up")
    return peer


# --------------------------------------------------------------------------- the lab


@dataclass
class Lab:
    """One deployment: its own control exchange, its hosts, agentctl pointed at it."""

    dir: Path
    exchange: str
    image_dir: Path
    hosts: dict[str, LabHost] = field(default_factory=dict)

    def shared_conf(self) -> str:
        return render_config(
            sample("shared.conf"), {"messaging": {"control_exchange": self.exchange}}
        )

    def write_ctl_config(self) -> list[Path]:
        etc = self.dir / "etc"
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "shared.conf").write_text(self.shared_conf())
        files = [etc / "shared.conf"]
        if (REPO / "etc" / "agentctl.conf").is_file():
            ctl = render_config(
                sample("agentctl.conf"), {"agentctl": {"state_dir": self.dir / "agentctl"}}
            )
            (etc / "agentctl.conf").write_text(ctl)
            files.append(etc / "agentctl.conf")
        return files

    def add_host(
        self, name: str, host: str, netns: str, l2: Values, compute: Values | None = None
    ) -> LabHost:
        ns = NamespaceHost(netns)
        ns.__enter__()
        lab_host = LabHost(name=name, host=host, ns=ns, dir=self.dir / name)
        self.hosts[name] = lab_host
        compute_values: dict[str, dict[str, object]] = {"compute": {"image_dir": self.image_dir}}
        for section, kv in (compute or {}).items():
            compute_values[section] = {**compute_values.get(section, {}), **kv}
        lab_host.configure(self.shared_conf(), compute_values, l2)
        return lab_host

    def agentctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        files = self.write_ctl_config()
        config = [a for f in files for a in ("--config-file", str(f))]
        return subprocess.run(
            [console_script("agentctl"), *config, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def agentctl_json(self, *args: str, timeout: float = 120) -> object:
        """Run agentctl --json; its last JSON document (the result), or LabError."""
        result = self.agentctl("--json", *args, timeout=timeout)
        docs = [json.loads(ln) for ln in result.stdout.splitlines() if ln.strip()[:1] in "{["]
        if result.returncode != 0 or not docs:
            raise LabError(
                f"agentctl {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout}{result.stderr}"
            )
        return docs[-1]

    def logs(self) -> str:
        return "\n".join(h.logs() for h in self.hosts.values())

    def close(self) -> None:
        errors = []
        for host in reversed(list(self.hosts.values())):
            try:
                host.close()
            except Exception as err:  # one host's failure must not leave the others up
                errors.append(f"{host.name}: {err}")
        self.hosts.clear()
        if errors:
            raise LabError("cleanup failed: " + "; ".join(errors))
