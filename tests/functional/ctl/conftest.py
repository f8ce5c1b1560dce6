"""A simulated deployment for agentctl tests: real agents as processes, one namespace per host.

`deployment` gives a private control exchange (tests/conftest.py `broker_scope`), a
shared.conf pointing at it, and `add_host()`, which makes a network namespace standing
for a host (tests/hosts.py `NamespaceHost`, broker relayed inside) and starts the real
`l2-agent` and `compute-agent` console scripts in it (libvirt test driver, a 16 MiB
qcow2 image named `tiny`). `agentctl()` runs the installed console script as a
subprocess, with its own state directory. Everything is stopped and removed afterwards,
also when the test failed; agent logs are printed for a failed test.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BrokerScope
from tests.hosts import REPO, NamespaceHost, console_script, run, wait_for

AGENTS = ("l2-agent", "compute-agent")


@dataclass
class SimHost:
    """One simulated host: a namespace and the agents running inside it."""

    name: str
    ns: NamespaceHost
    dep: Deployment
    confs: dict[str, Path]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, agent: str, wait: bool = True) -> None:
        cmd = [
            console_script(agent),
            "--config-file", str(self.dep.shared),
            "--config-file", str(self.confs[agent]),
        ]  # fmt: skip
        self.procs[agent] = self.ns.spawn(cmd, self.dep.logs / f"{self.name}-{agent}.log")
        if wait:
            self.wait_serving(agent)

    def stop(self, agent: str, sig: int = signal.SIGTERM) -> None:
        """Stop an agent: SIGTERM (graceful, a few seconds) or SIGKILL (a crash)."""
        proc = self.procs.pop(agent)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait(timeout=30)

    def wait_serving(self, agent: str) -> None:
        """Serving = its RPC queue has a consumer (the agent consumes only once started)."""
        topic = "compute" if agent == "compute-agent" else "l2-agent"

        def consumed() -> bool:
            proc = self.procs[agent]
            if proc.poll() is not None:
                raise AssertionError(
                    f"{agent} on {self.name} exited {proc.returncode}:\n{self.dep.log_text()}"
                )
            return self.dep.consumers(f"{topic}.{self.name}") > 0

        wait_for(consumed, 30, interval=0.2, what=f"{agent} on {self.name} to consume")

    def links(self) -> dict[str, dict[str, Any]]:
        out = run(["ip", "-n", self.ns.name, "-d", "-j", "link", "show"]).stdout
        return {link["ifname"]: link for link in json.loads(out)}


@dataclass
class Deployment:
    scope: BrokerScope
    tmp: Path
    shared: Path
    ctl_conf: Path
    logs: Path
    stack: contextlib.ExitStack
    hosts: dict[str, SimHost] = field(default_factory=dict)

    def add_host(
        self, short: str, agents: tuple[str, ...] = AGENTS, vif_timeout: float = 4
    ) -> SimHost:
        host = self.scope.host(short)
        images = self.tmp / f"images-{short}"
        images.mkdir()
        run(["qemu-img", "create", "-q", "-f", "qcow2", str(images / "tiny.qcow2"), "16M"])
        state = self.tmp / f"state-{short}"
        compute_conf = self.tmp / f"compute-{short}.conf"
        compute_conf.write_text(
            f"[DEFAULT]\nhost = {host}\nstate_dir = {state}\n"
            "[metrics]\nlisten = 127.0.0.1:0\n"
            "[compute]\nlibvirt_uri = test:///default\ndomain_type = test\n"
            f"image_dir = {images}\ninstances_dir = {self.tmp / f'instances-{short}'}\n"
            f"vif_plugging_timeout = {vif_timeout}\nvif_plugging_is_fatal = true\nstop_grace = 2\n"
        )
        l2_conf = self.tmp / f"l2-{short}.conf"
        l2_conf.write_text(
            f"[DEFAULT]\nhost = {host}\nstate_dir = {state}\n[metrics]\nlisten = 127.0.0.1:0\n"
        )
        ns = self.stack.enter_context(NamespaceHost())
        sim = SimHost(host, ns, self, {"compute-agent": compute_conf, "l2-agent": l2_conf})
        self.hosts[short] = sim
        for agent in agents:
            sim.start(agent, wait=False)
        for agent in agents:
            sim.wait_serving(agent)
        return sim

    def agentctl(
        self, *args: str, timeout: float = 60, config: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.agentctl_cmd(*args, config=config),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(),
        )

    def agentctl_cmd(self, *args: str, config: Path | None = None) -> list[str]:
        # `config` is read last, so it overrides keys of the deployment's files
        files = [str(self.shared), str(self.ctl_conf), *([str(config)] if config else [])]
        return [
            console_script("agentctl"),
            *(a for f in files for a in ("--config-file", f)),
            *args,
        ]

    def env(self) -> dict[str, str]:
        return {**os.environ, "XDG_STATE_HOME": str(self.tmp / "agentctl-state")}

    def stop_all(self) -> None:
        """Kill every agent of every host at once, then wait.

        SIGKILL, not SIGTERM: the agents' graceful stop is their own tests' subject, and
        here it would cost seconds per agent. Nothing outlives them: the libvirt test
        driver lives in the agent's process, links go with the namespace.
        """
        procs = [p for h in self.hosts.values() for p in h.procs.values()]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=15)  # NamespaceHost.close() kills what is left

    def consumers(self, queue: str) -> int:
        import kombu

        with kombu.Connection("amqp://guest:guest@127.0.0.1:5672//", connect_timeout=3) as conn:
            try:
                return int(conn.channel().queue_declare(queue=queue, passive=True).consumer_count)
            except Exception:  # NOT_FOUND: nobody declared it yet
                return 0

    def log_text(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-6000:]}"
            for p in sorted(self.logs.glob("*.log"))
        )


@pytest.fixture
def deployment(root: None, broker_scope: BrokerScope, tmp_path: Path) -> Iterator[Deployment]:
    shared = tmp_path / "shared.conf"
    shared.write_text(
        (REPO / "etc" / "shared.conf")
        .read_text()
        .replace("control_exchange = agents", f"control_exchange = {broker_scope.exchange}")
    )
    # agents of this test answer within milliseconds: keep discovery short
    ctl = tmp_path / "agentctl.conf"
    ctl.write_text("[agentctl]\ndiscovery_window = 0.6\ncall_timeout = 5\n")
    logs = tmp_path / "logs"
    logs.mkdir()
    with contextlib.ExitStack() as stack:
        dep = Deployment(broker_scope, tmp_path, shared, ctl, logs, stack)
        started = time.monotonic()
        try:
            yield dep
        finally:
            dep.stop_all()
        print(f"deployment lived {time.monotonic() - started:.1f}s")
        print(dep.log_text())  # pytest shows it only for a failed test


def json_lines(text: str) -> list[Any]:
    return [json.loads(line) for line in text.splitlines() if line.startswith(("{", "["))]
