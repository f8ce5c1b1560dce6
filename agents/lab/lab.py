"""A lab: one deployment on this machine: hosts, a controller, agentctl pointed at it.

Owns the deployment's directory, its broker scope (a private control exchange, unique
host names, their queues), its `LabHost`s, at most one `LabController`, and running
`agentctl` as a subprocess with `AGENTS_URL` (and `AGENTS_CONFIG`, so no /etc file
leaks in) set to the lab's controller. `close()` removes everything it made, also after
a failure, in this order: agents (all signalled at once, then waited for), guests and
namespaces, the controller with its queue and database, the broker queues and
exchange, and the directory when the lab made it.

Must not act on anything outside the lab: the root namespace's links, other processes,
other deployments' queues.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.lab.broker import BrokerScope
from agents.lab.configs import Values, render_config, sample
from agents.lab.controller import LabController
from agents.lab.host import AGENTS, Driver, LabHost
from agents.lab.netns import NamespaceHost
from agents.lab.procs import LabError, console_script, signal_process, tail, unique
from common.config import BaseConfig, NetworkSpec, load


@dataclass
class Lab:
    """One deployment: its own control exchange, its hosts, its controller, agentctl."""

    dir: Path
    scope: BrokerScope
    image_dir: Path | None = None
    hosts: dict[str, LabHost] = field(default_factory=dict)
    controller: LabController | None = None
    remove_dir: bool = False
    # how close() stops agents: SIGTERM (graceful, as systemd would) or SIGKILL (fast)
    stop_signal: int = signal.SIGTERM

    @classmethod
    def create(
        cls,
        prefix: str = "lab-",
        image_dir: Path | None = None,
        scope: BrokerScope | None = None,
        stop_signal: int = signal.SIGTERM,
    ) -> Lab:
        """A lab in a fresh directory under /tmp (short: QEMU's socket paths live below
        it), removed on close."""
        lab_dir = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        return cls(
            dir=lab_dir,
            scope=scope or BrokerScope.new(prefix),
            image_dir=image_dir,
            remove_dir=True,
            stop_signal=stop_signal,
        )

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def exchange(self) -> str:
        return self.scope.exchange

    @property
    def etc(self) -> Path:
        return self.dir / "etc"

    # ------------------------------------------------------------------ configs

    def shared_conf(self) -> str:
        return render_config(
            sample("shared.conf"), {"messaging": {"control_exchange": self.exchange}}
        )

    def write_shared(self) -> Path:
        self.etc.mkdir(parents=True, exist_ok=True)
        path = self.etc / "shared.conf"
        path.write_text(self.shared_conf())
        return path

    def networks(self) -> dict[str, NetworkSpec]:
        return load(BaseConfig, [self.write_shared()]).networks

    # ------------------------------------------------------------------ parts

    def start_controller(
        self,
        postgres: str | None = None,
        settings: Mapping[str, object] | None = None,
        port: int | None = None,
    ) -> LabController:
        """Start agents-controller (SQLite in the lab's dir, or a scratch database on the
        PostgreSQL server `postgres`, an admin URL) and wait until it is healthy."""
        if self.controller is not None:
            raise LabError("this lab has a controller already; restart it with .start()")
        controller = self.controller = LabController(
            dir=self.dir / "controller",
            etc=self.write_shared().parent,
            events_queue=self.scope.queue(unique(f"{self.exchange}.controller-")),
            postgres=postgres,
            settings=settings,
            port=port,
        )
        controller.start()
        (self.etc / "agentctl.conf").write_text(
            f"# agentctl of this lab: its controller\n[agentctl]\nurl = {controller.url}\n"
        )
        for host in self.hosts.values():
            host.controller_hosts = controller.hosts
        return controller

    def add_host(
        self,
        name: str,
        *,
        driver: Driver = "test",
        host: str | None = None,
        netns: str | None = None,
        l2: Values | None = None,
        compute: Values | None = None,
        agents: tuple[str, ...] = AGENTS,
    ) -> LabHost:
        """A namespace and configs for host `name`; `agents` are started and waited for
        (RPC queue consumed, and the controller heard them when it runs)."""
        if name in self.hosts:
            raise LabError(f"the lab has a host {name} already")
        ns = NamespaceHost(netns or unique(f"lab-{name[:6]}-"))
        ns.__enter__()
        if host is not None and host not in self.scope.hosts:
            self.scope.hosts.append(host)  # its queues go on close() too
        lab_host = LabHost(
            name=name,
            host=host or self.scope.host(name),
            ns=ns,
            dir=self.dir / name,
            driver=driver,
            controller_hosts=self.controller.hosts if self.controller else None,
        )
        self.hosts[name] = lab_host
        lab_host.configure(self.shared_conf(), self.image_dir, compute or {}, l2 or {})
        for agent in agents:
            lab_host.start(agent, wait=False)
        for agent in agents:
            lab_host.wait_serving(agent)
        return lab_host

    # ------------------------------------------------------------------ agentctl

    def agentctl_env(self) -> dict[str, str]:
        if self.controller is None:
            raise LabError("the lab has no controller: start_controller() first")
        return {
            **os.environ,
            "AGENTS_URL": self.controller.url,
            "AGENTS_CONFIG": str(self.etc / "agentctl.conf"),
        }

    def agentctl_cmd(self, *args: str) -> list[str]:
        return [console_script("agentctl"), *args]

    def agentctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run agentctl against the lab's controller; its exit status and output."""
        return subprocess.run(
            self.agentctl_cmd(*args),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.agentctl_env(),
        )

    def agentctl_json(self, *args: str, timeout: float = 120) -> Any:
        """Run agentctl --json; its last JSON document (the result), or LabError."""
        result = self.agentctl("--json", *args, timeout=timeout)
        docs = [json.loads(ln) for ln in result.stdout.splitlines() if ln.strip()[:1] in "{["]
        if result.returncode != 0 or not docs:
            raise LabError(
                f"agentctl {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout}{result.stderr}"
            )
        return docs[-1]

    # ------------------------------------------------------------------ the end

    def logs(self) -> str:
        parts = [h.logs() for h in self.hosts.values()]
        if self.controller is not None and self.controller.log.exists():
            parts.append(f"--- controller\n{tail(self.controller.log, 8000)}")
        return "\n".join(parts)

    def close(self) -> None:
        errors: list[str] = []
        # every agent and the controller at once, then wait for each
        for host in self.hosts.values():
            for proc in host.agents.values():
                signal_process(proc, self.stop_signal)
        if self.controller is not None and self.controller.proc is not None:
            signal_process(self.controller.proc, signal.SIGTERM)
        for host in reversed(list(self.hosts.values())):
            try:
                host.close()
            except Exception as err:  # one host's failure must not leave the others up
                errors.append(f"{host.name}: {err}")
        self.hosts.clear()
        if self.controller is not None:
            try:
                self.controller.close()
            except Exception as err:
                errors.append(f"controller: {err}")
        try:
            self.scope.cleanup()
        except Exception as err:
            errors.append(f"broker: {err}")
        if self.remove_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
        if errors:
            raise LabError("cleanup failed: " + "; ".join(errors))
