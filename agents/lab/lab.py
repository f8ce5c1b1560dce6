"""A lab: one deployment on this machine: hosts, a controller, agentctl pointed at it.

Owns the deployment's directory, its broker scope (a private control exchange, unique
host names, their queues), its `LabHost`s, at most one `LabController`, and running
`agentctl` as a subprocess with `AGENTS_URL` (and `AGENTS_CONFIG`, so no /etc file
leaks in) set to the lab's controller, and the lab's admin API token (its `token_file`,
0600: the controller wants tokens, as installed). `close()` removes everything it made,
also after a failure, in this order: agents (all signalled at once, then waited for),
guests and namespaces, the controller with its queue and database, the broker queues
and exchange, and the directory when the lab made it.

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
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.lab.accounts import LabAccounts
from agents.lab.broker import BrokerScope
from agents.lab.configs import Values, merge, render_config, sample
from agents.lab.controller import LabController
from agents.lab.host import AGENTS, KIND, Driver, LabHost, ensure_tiny_image
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
    # more controllers of the same deployment (PostgreSQL): add_replica()
    replicas: list[LabController] = field(default_factory=list)
    remove_dir: bool = False
    # how close() stops agents: SIGTERM (graceful, as systemd would) or SIGKILL (fast)
    stop_signal: int = signal.SIGTERM
    # settings of shared.conf over the sample's (e.g. a larger network for a scale run)
    shared: Values = field(default_factory=dict)
    # each daemon on its own broker account (controller, compute-<host>, l2-<host>) with
    # the permissions install gives it, instead of shared.conf's guest (agents/lab/accounts)
    broker_accounts: bool = False
    accounts: LabAccounts | None = None

    @classmethod
    def create(
        cls,
        prefix: str = "lab-",
        image_dir: Path | None = None,
        scope: BrokerScope | None = None,
        stop_signal: int = signal.SIGTERM,
        shared: Values | None = None,
        broker_accounts: bool = False,
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
            shared=shared or {},
            broker_accounts=broker_accounts,
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
        """etc/shared.conf with the lab's exchange, and its broker (a cluster's
        multi-node URL) and queue type."""
        messaging = {
            "control_exchange": self.exchange,
            "transport_url": self.scope.transport_url,
            "queue_type": self.scope.queue_type,
        }
        return render_config(sample("shared.conf"), merge(self.shared, {"messaging": messaging}))

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
        replicas: int = 1,
        ca_file: Path | None = None,
    ) -> LabController:
        """Start agents-controller (SQLite in the lab's dir, or a scratch database on the
        PostgreSQL server `postgres`, an admin URL) and wait until it is healthy.
        `replicas` > 1 (PostgreSQL only): that many controllers on the one database and
        events queue (`add_replica`), all serving the API; the first is returned and
        `controllers` lists them all.

        The API wants tokens, as installed: the lab mints an admin token (`token_file`,
        0600) into its token file, and agentctl and the lab's own reads send it; `auth =
        none` in `settings` turns that off. With `tls_cert_file`/`tls_key_file` in
        `settings` the API is https, verified against `ca_file`."""
        if replicas > 1 and not postgres:
            raise LabError("controller replicas need postgres= (SQLite serves one controller)")
        if self.controller is not None:
            raise LabError("this lab has a controller already; restart it with .start()")
        auth_off = str((settings or {}).get("auth", "tokens")) == "none"
        controller = self.controller = LabController(
            dir=self.dir / "controller",
            etc=self.write_shared().parent,
            events_queue=self.scope.queue(unique(f"{self.exchange}.controller-")),
            postgres=postgres,
            settings=settings,
            port=port,
            transport_url=self.scope.transport_url,
            tokens_file=None if auth_off else self.tokens_file,
            token=None if auth_off else self._admin_token(),
            ca_file=ca_file,
        )
        if self.broker_accounts:
            self._accounts().controller(controller.etc)
        controller.start()
        self._write_agentctl_conf()
        for host in self.hosts.values():
            host.controller_hosts = controller.hosts
        for _ in range(replicas - 1):
            self.add_replica()
        return controller

    @property
    def controllers(self) -> list[LabController]:
        return ([self.controller] if self.controller else []) + self.replicas

    @property
    def url(self) -> str:
        """What agentctl is given: every controller's URL, comma-separated."""
        return ",".join(c.url for c in self.controllers)

    def add_replica(self, settings: Mapping[str, object] | None = None) -> LabController:
        """One more agents-controller on the first one's PostgreSQL database and events
        queue (its own directory, config dir and port), started and healthy."""
        first = self.controller
        if first is None:
            raise LabError("start_controller(postgres=...) first")
        n = len(self.replicas) + 2
        etc = self.dir / f"etc-controller-{n}"
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "shared.conf").write_text(self.shared_conf())
        replica = LabController(
            dir=self.dir / f"controller-{n}",
            etc=etc,
            events_queue=first.events_queue,
            settings=first.settings if settings is None else settings,
            replica_of=first,
            transport_url=self.scope.transport_url,
        )
        self.replicas.append(replica)  # before start: close() stops it whatever happens
        replica.start()
        self._write_agentctl_conf()
        return replica

    @property
    def tokens_file(self) -> Path:
        """The controller's token file (hashes)."""
        return self.etc / "tokens"

    @property
    def token_file(self) -> Path:
        """agentctl's token file: the lab's admin token, mode 0600."""
        return self.etc / "admin.token"

    def _admin_token(self) -> str:
        """The lab's admin token, minted into the token file the first time."""
        from agents.controller.tokens import add

        if not self.token_file.exists():
            self.etc.mkdir(parents=True, exist_ok=True)
            secret = add(self.tokens_file, "admin", "lab")
            fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secret + "\n")
        return self.token_file.read_text().strip()

    def _write_agentctl_conf(self) -> None:
        first = self.controller
        lines = [f"url = {self.url}"]
        if first is not None and first.token:
            lines.append(f"token_file = {self.token_file}")
        if first is not None and first.ca_file:
            lines.append(f"ca_file = {first.ca_file}")
        (self.etc / "agentctl.conf").write_text(
            "# agentctl of this lab: its controllers\n[agentctl]\n" + "\n".join(lines) + "\n"
        )

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
        lab_host = self._new_host(name, driver, host, netns, l2, compute, self.image_dir)
        for agent in agents:
            lab_host.start(agent, wait=False)
        for agent in agents:
            lab_host.wait_serving(agent)
        return lab_host

    def _new_host(
        self,
        name: str,
        driver: Driver,
        host: str | None,
        netns: str | None,
        l2: Values | None,
        compute: Values | None,
        image_dir: Path | None,
    ) -> LabHost:
        """The namespace (broker relayed inside) and configs of host `name`, registered
        with the lab before anything can fail, so close() removes what was made."""
        if name in self.hosts:
            raise LabError(f"the lab has a host {name} already")
        ns = NamespaceHost(netns or unique(f"lab-{name[:6]}-"), broker_ports=self.scope.ports)
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
            transport_url=self.scope.transport_url,
        )
        self.hosts[name] = lab_host
        lab_host.configure(self.shared_conf(), image_dir, compute or {}, l2 or {})
        if self.broker_accounts:
            self._accounts().host(lab_host.host, lab_host.etc)
        return lab_host

    def _accounts(self) -> LabAccounts:
        if self.accounts is None:
            messaging = load(BaseConfig, [self.write_shared()]).messaging
            self.accounts = LabAccounts.new(
                self.scope.transport_url, self.exchange, messaging.events_topic
            )
        return self.accounts

    def add_hosts(
        self,
        names: Sequence[str],
        *,
        l2: Values | None = None,
        compute: Values | None = None,
        parallel: int = 8,
        timeout: float | None = None,
    ) -> list[LabHost]:
        """Many test-driver hosts at once (a scale run): namespaces and relays made
        `parallel` at a time, one image dir shared by all, every agent started without a
        per-host wait, then one wait for them all: the controller's host table showing
        each agent up (an agent's RPC server consumes its queue before its first
        heartbeat), or each RPC queue consumed when no controller runs. Polls once a
        second whatever the number of hosts; `timeout` defaults to 60 s + 2 s a host."""
        taken = [n for n in names if n in self.hosts]
        if taken or len(set(names)) != len(names):
            raise LabError(f"host names must be new and distinct: {sorted(set(taken))}")
        image_dir = self.image_dir or self.dir / "images"
        ensure_tiny_image(image_dir)
        # unique host names are handed out here, in order, not from the threads
        hosts = {n: self.scope.host(n) for n in names}

        def make(name: str) -> LabHost:
            lab_host = self._new_host(name, "test", hosts[name], None, l2, compute, image_dir)
            for agent in AGENTS:
                lab_host.start(agent, wait=False)
            return lab_host

        with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
            made = list(pool.map(make, names))
        deadline = time.monotonic() + (timeout or 60 + 2 * len(names))
        pending = {(h.host, KIND[a]): (h, a) for h in made for a in AGENTS}
        while pending:
            for lab_host, agent in pending.values():
                lab_host.check_alive(agent)
            if self.controller is not None:
                table = self.controller.hosts()
                up = [k for k in pending if (table.get(k) or {}).get("state") == "up"]
            else:
                up = [k for k, (h, a) in pending.items() if h.serving(a)]
            for key in up:
                del pending[key]
            if not pending:
                break
            if time.monotonic() > deadline:
                waiting = sorted(f"{h.name}/{a}" for h, a in pending.values())
                raise LabError(
                    f"{len(pending)} agents not up after {timeout or 60 + 2 * len(names)}s:"
                    f" {', '.join(waiting[:10])}"
                )
            time.sleep(1)
        return made

    # ------------------------------------------------------------------ agentctl

    def agentctl_env(self) -> dict[str, str]:
        if self.controller is None:
            raise LabError("the lab has no controller: start_controller() first")
        # the lab's token file, not a token this shell happens to carry
        inherited = {k: v for k, v in os.environ.items() if k != "AGENTS_TOKEN"}
        return {
            **inherited,
            "AGENTS_URL": self.url,
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
        for i, ctl in enumerate(self.controllers, 1):
            if ctl.log.exists():
                name = "controller" if i == 1 else f"controller {i}"
                parts.append(f"--- {name}\n{tail(ctl.log, 8000)}")
        return "\n".join(parts)

    def close(self) -> None:
        errors: list[str] = []
        # every agent and the controller at once, then wait for each
        for host in self.hosts.values():
            for proc in host.agents.values():
                signal_process(proc, self.stop_signal)
        for ctl in self.controllers:
            if ctl.proc is not None:
                signal_process(ctl.proc, signal.SIGTERM)
        for host in reversed(list(self.hosts.values())):
            try:
                host.close()
            except Exception as err:  # one host's failure must not leave the others up
                errors.append(f"{host.name}: {err}")
        self.hosts.clear()
        for replica in self.replicas:  # before the first: it drops their database
            try:
                replica.close()
            except Exception as err:
                errors.append(f"controller replica: {err}")
        self.replicas.clear()
        if self.controller is not None:
            try:
                self.controller.close()
            except Exception as err:
                errors.append(f"controller: {err}")
        try:
            self.scope.cleanup()
        except Exception as err:
            errors.append(f"broker: {err}")
        if self.accounts is not None:
            try:
                self.accounts.remove()
            except Exception as err:
                errors.append(f"broker accounts: {err}")
        if self.remove_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
        if errors:
            raise LabError("cleanup failed: " + "; ".join(errors))
