"""A RabbitMQ cluster on this machine's loopback, beside the machine's own broker.

`BrokerCluster(name, nodes=3, base_port=5681, tls=None)`: node i (from 1) is
`<name>-<i>@localhost`, AMQP on 127.0.0.1:`base_port + i - 1`, Erlang distribution on
127.0.0.1:`base_port + 2000 + i - 1` (registered with the machine's epmd), its own
Erlang cookie, configs, data and logs under `state_dir/<name>` (default
/tmp/agents-lab-broker, `AGENTS_LAB_BROKER_DIR`). `up()`, `down()` (removes every process
and file of it), `status()`, `kill(i)` (kill -9 of node i), `start(i)`, `connections()`,
`transport_url` (all nodes, oslo's form), `node(i).url`; a context manager.
`tls=(ca_file, cert_file, key_file)` adds an AMQPS listener per node on
`base_port + 1000 + i - 1` with `ssl_options.verify = verify_none` (client certificates
are not asked for); with `plain=False` as well, the nodes have no plain AMQP listener
(`listeners.tcp = none`, as install's `--broker-plain-off` writes).
`python -m agents.lab.broker up|down|status|kill|start` (tools/rabbitmq-cluster.sh)
drives it.

Must not touch the machine's own broker, its cookie or epmd, nor signal a process that
is not marked as this cluster's.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.lab.procs import LabError, run, tail, wait_for

# RabbitMQ's own scripts; the Debian wrapper in /usr/sbin would switch to the rabbitmq
# user, whose HOME (and cookie) is the machine broker's.
RABBITMQ_BIN = Path(os.environ.get("AGENTS_RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))
CLUSTER_STATE = Path(os.environ.get("AGENTS_LAB_BROKER_DIR", "/tmp/agents-lab-broker"))
# Every process of a cluster carries this variable (value: the cluster's directory), so
# `down` finds exactly its processes, also from another process than the one that
# started them.
_MARK = "AGENTS_LAB_BROKER"
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
TlsFiles = tuple[Path, Path, Path]  # (CA, certificate, key), PEM files


@dataclass(frozen=True)
class BrokerNode:
    """One node of a `BrokerCluster` (index from 1)."""

    index: int
    name: str  # Erlang node name, `<cluster>-<index>@localhost`
    port: int  # AMQP, 127.0.0.1
    dist_port: int  # Erlang distribution, 127.0.0.1
    tls_port: int | None  # AMQPS, 127.0.0.1, when the cluster has TLS
    dir: Path
    plain: bool = True  # False: no plain AMQP listener (`port` is reserved, unused)

    @property
    def url(self) -> str:
        return f"rabbit://guest:guest@127.0.0.1:{self.port}/"

    @property
    def pid_file(self) -> Path:
        return self.dir / "pid"

    def pid(self) -> int | None:
        """The node's beam process while it runs (its pid file names one that lives)."""
        with contextlib.suppress(OSError, ValueError):
            pid = int(self.pid_file.read_text().split()[0])
            if _marked(pid) is not None:
                return pid
        return None

    def accepting(self) -> bool:
        port = self.port if self.plain or self.tls_port is None else self.tls_port
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return True
        return False


def _marked(pid: int) -> str | None:
    """The cluster directory a process belongs to (its _MARK variable), else None."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    prefix = f"{_MARK}=".encode()
    return next((v[len(prefix) :].decode() for v in env if v.startswith(prefix)), None)


class BrokerCluster:
    """A RabbitMQ cluster of `nodes` nodes beside the machine's own broker, on loopback.

    Node i (from 1) is `<name>-<i>@localhost`, AMQP on 127.0.0.1:`base_port + i - 1`,
    distribution on 127.0.0.1:`base_port + 2000 + i - 1` (epmd: the machine's, on
    127.0.0.1), with `tls` an AMQPS listener on 127.0.0.1:`base_port + 1000 + i - 1`
    (`tls=(ca, cert, key)`, client certificates not asked for). Its own Erlang cookie and
    every file (config, data, logs, pid) live in `state_dir/<name>`, which `down()`
    removes with every process of the cluster. User guest/guest (loopback only).

        with BrokerCluster("agl", nodes=3, base_port=5681) as cluster:
            settings = MessagingSettings(transport_url=cluster.transport_url)
            cluster.kill(2)   # kill -9 of node 2
            cluster.start(2)  # it rejoins

    `up()` on a cluster already running returns at once; a cluster brought up by another
    process is reattached by constructing it with the same name (its layout is read
    back from `cluster.json`).
    """

    def __init__(
        self,
        name: str,
        nodes: int = 3,
        base_port: int = 5681,
        tls: tuple[str | Path, str | Path, str | Path] | None = None,
        state_dir: Path | None = None,
        plain: bool = True,
    ) -> None:
        if not _NAME.match(name):
            raise LabError(f"cluster name {name!r}: lower-case letters, digits, '-' (<= 31)")
        self.name = name
        self.dir = (state_dir or CLUSTER_STATE) / name
        saved = self._saved()
        if saved:
            nodes, base_port = int(saved["nodes"]), int(saved["base_port"])
            tls = saved["tls"] and tuple(saved["tls"])
            plain = bool(saved.get("plain", True))
        if not 1 <= nodes <= 9:
            raise LabError(f"nodes {nodes}: a cluster has 1 to 9 nodes")
        if not 1024 <= base_port <= 32767 - 2000 - nodes:
            # below the kernel's ephemeral ports (32768-60999 by default): a client's
            # outgoing connection can never take a node's port between check and start
            raise LabError(f"base_port {base_port}: must be 1024-{32767 - 2000 - nodes}")
        self.base_port = base_port
        self.tls: TlsFiles | None = None
        if tls is not None:
            files = tuple(Path(f).resolve() for f in tls)
            for label, f in zip(("ca_file", "cert_file", "key_file"), files, strict=True):
                if not f.is_file():
                    raise LabError(f"tls {label} {str(f)!r}: no such file")
            self.tls = (files[0], files[1], files[2])
        if not plain and self.tls is None:
            raise LabError("plain=False leaves no listener: it needs tls=(ca, cert, key)")
        self.nodes = [
            BrokerNode(
                index=i,
                name=f"{name}-{i}@localhost",
                port=base_port + i - 1,
                dist_port=base_port + 2000 + i - 1,
                tls_port=base_port + 1000 + i - 1 if self.tls else None,
                dir=self.dir / f"node{i}",
                plain=plain,
            )
            for i in range(1, nodes + 1)
        ]
        self._procs: dict[int, subprocess.Popen[bytes]] = {}

    def __enter__(self) -> BrokerCluster:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    # ------------------------------------------------------------------ addresses

    @property
    def transport_url(self) -> str:
        """oslo.messaging's multi-host form: every node, the client fails over."""
        hosts = ",".join(f"guest:guest@127.0.0.1:{n.port}" for n in self.nodes)
        return f"rabbit://{hosts}/"

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    def node(self, index: int) -> BrokerNode:
        if not 1 <= index <= len(self.nodes):
            raise LabError(f"node {index}: the cluster has nodes 1-{len(self.nodes)}")
        return self.nodes[index - 1]

    # ------------------------------------------------------------------ files

    def _saved(self) -> dict[str, Any] | None:
        with contextlib.suppress(OSError, ValueError):
            saved: dict[str, Any] = json.loads((self.dir / "cluster.json").read_text())
            return saved
        return None

    def _write_files(self) -> None:
        home = self.dir / "home"
        home.mkdir(parents=True, exist_ok=True)
        cookie = home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(secrets.token_hex(16).upper())
            cookie.chmod(0o400)
        (self.dir / "rabbitmq-env.conf").write_text("# this cluster's: nothing from /etc\n")
        (self.dir / "cluster.json").write_text(
            json.dumps(
                {
                    "nodes": len(self.nodes),
                    "base_port": self.base_port,
                    "tls": [str(f) for f in self.tls] if self.tls else None,
                    "plain": self.nodes[0].plain,
                }
            )
        )
        first = self.nodes[0].name
        for node in self.nodes:
            node.dir.mkdir(parents=True, exist_ok=True)
            (node.dir / "enabled_plugins").write_text("[].\n")
            conf = [
                # what install's --broker-plain-off writes: TLS clients only
                f"listeners.tcp.default = 127.0.0.1:{node.port}"
                if node.plain
                else "listeners.tcp = none",
                "disk_free_limit.absolute = 50MB",
                "log.file.level = info",
                "log.console = false",
            ]
            if node.index > 1:
                # A blank node joins node 1 on its first boot; later boots rejoin from
                # the node's own data (peer discovery runs on blank nodes only).
                conf += [
                    "cluster_formation.peer_discovery_backend = classic_config",
                    f"cluster_formation.classic_config.nodes.1 = {first}",
                ]
            if self.tls and node.tls_port:
                ca, cert, key = self.tls
                conf += [
                    f"listeners.ssl.default = 127.0.0.1:{node.tls_port}",
                    f"ssl_options.cacertfile = {ca}",
                    f"ssl_options.certfile = {cert}",
                    f"ssl_options.keyfile = {key}",
                    "ssl_options.verify = verify_none",
                    "ssl_options.fail_if_no_peer_cert = false",
                ]
            (node.dir / "rabbitmq.conf").write_text("\n".join(conf) + "\n")

    def _env(self, node: BrokerNode | None = None) -> dict[str, str]:
        env = {
            **os.environ,
            _MARK: str(self.dir),
            "HOME": str(self.dir / "home"),  # the Erlang cookie of this cluster
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }
        if node is not None:
            env.update(
                {
                    "RABBITMQ_NODENAME": node.name,
                    "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
                    "RABBITMQ_NODE_PORT": str(node.port),
                    "RABBITMQ_DIST_PORT": str(node.dist_port),
                    "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": (
                        "-kernel inet_dist_use_interface {127,0,0,1}"
                    ),
                    "RABBITMQ_CONFIG_FILE": str(node.dir / "rabbitmq.conf"),
                    "RABBITMQ_ADVANCED_CONFIG_FILE": str(node.dir / "advanced.config"),
                    "RABBITMQ_ENABLED_PLUGINS_FILE": str(node.dir / "enabled_plugins"),
                    "RABBITMQ_PLUGINS_EXPAND_DIR": str(node.dir / "plugins-expand"),
                    "RABBITMQ_MNESIA_BASE": str(node.dir / "data"),
                    "RABBITMQ_MNESIA_DIR": str(node.dir / "data" / "mnesia"),
                    "RABBITMQ_LOG_BASE": str(node.dir / "log"),
                    "RABBITMQ_PID_FILE": str(node.pid_file),
                    # exec the VM in place: the pid we start is the node's beam
                    "RUNNING_UNDER_SYSTEMD": "true",
                }
            )
        return env

    # ------------------------------------------------------------------ life cycle

    def up(self, timeout: float = 120) -> None:
        """Start every node that is not running (node 1 first), wait until all are
        clustered and accept AMQP; LabError (with the node's log) otherwise."""
        if all(n.pid() and n.accepting() for n in self.nodes):
            return
        if not (RABBITMQ_BIN / "rabbitmq-server").is_file():
            raise LabError(
                f"{RABBITMQ_BIN}/rabbitmq-server not found: install Debian's rabbitmq-server"
                " (or set AGENTS_RABBITMQ_BIN to its scripts' directory)"
            )
        self._write_files()
        for node in self.nodes:
            if node.pid() is None:
                self._check_ports_free(node)
        self.start(self.nodes[0].index, timeout)
        rest = [n for n in self.nodes[1:] if n.pid() is None]
        for node in rest:
            self._spawn(node)
        for node in rest:
            self._wait_accepting(node, timeout)
        self._wait_clustered(timeout)

    def _check_ports_free(self, node: BrokerNode) -> None:
        ports = [node.port, node.dist_port] + ([node.tls_port] if node.tls_port else [])
        for port in ports:
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError as err:
                    raise LabError(
                        f"node {node.name}: port {port} on 127.0.0.1 is taken ({err.strerror});"
                        " choose another base_port"
                    ) from None

    def _spawn(self, node: BrokerNode) -> None:
        node.pid_file.unlink(missing_ok=True)
        (node.dir / "log").mkdir(parents=True, exist_ok=True)
        with (node.dir / "log" / "console.log").open("ab") as out:
            self._procs[node.index] = subprocess.Popen(
                [str(RABBITMQ_BIN / "rabbitmq-server")],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._env(node),
                start_new_session=True,
            )

    def _wait_accepting(self, node: BrokerNode, timeout: float) -> None:
        def ready() -> bool:
            proc = self._procs.get(node.index)
            if proc is not None and proc.poll() is not None:
                raise LabError(f"node {node.name} exited {proc.returncode}:\n{self.log(node)}")
            return node.accepting()

        try:
            wait_for(ready, timeout, 0.2, what=f"node {node.name} to accept AMQP")
        except TimeoutError as err:
            raise LabError(f"{err}\n{self.log(node)}") from None

    def _wait_clustered(self, timeout: float) -> None:
        want = {n.name for n in self.nodes}

        def clustered() -> bool:
            return set(self.status().get("running_nodes", [])) >= want

        try:
            wait_for(clustered, timeout, 0.5, what=f"nodes {sorted(want)} to form one cluster")
        except TimeoutError as err:
            raise LabError(f"{err}: {self.status()}") from None

    def start(self, index: int, timeout: float = 120) -> None:
        """Start node `index` (again) and wait until it accepts AMQP."""
        node = self.node(index)
        if not (node.dir / "rabbitmq.conf").is_file():
            raise LabError(f"cluster {self.name} was never brought up: up() first")
        if node.pid() is None:
            self._spawn(node)
        self._wait_accepting(node, timeout)

    def kill(self, index: int, sig: int = signal.SIGKILL) -> None:
        """Signal node `index`'s VM (default kill -9) and wait until it is gone."""
        node = self.node(index)
        pid = node.pid()
        if pid is None:
            raise LabError(f"node {node.name} is not running")
        os.kill(pid, sig)
        proc = self._procs.pop(index, None)
        if proc is not None:
            proc.wait(timeout=60)
        wait_for(lambda: _marked(pid) is None, 60, 0.05, what=f"node {node.name} to exit")

    def ctl_env(self) -> dict[str, str]:
        """The environment rabbitmqctl needs for this cluster (its cookie): with
        `ctl_command()`, what a tool that runs rabbitmqctl itself is given."""
        return self._env()

    def ctl_command(self, node: int = 1) -> list[str]:
        return [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.node(node).name]

    def rabbitmqctl(self, *args: str, node: int = 1, timeout: float = 60) -> str:
        """Run `rabbitmqctl -n <node> args` with this cluster's cookie; its output."""
        result = run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.node(node).name, *args],
            check=False,
            timeout=timeout,
            env=self._env(),
        )
        if result.returncode != 0:
            raise LabError(f"rabbitmqctl {' '.join(args)}: {result.stderr or result.stdout}")
        return result.stdout

    def connections(self) -> list[tuple[int, str]]:
        """(node index, connection name) of every client connection of the cluster, as a
        running node lists them; oslo and common/rpc name theirs `<program>:<pid>:...`."""
        by_port = {n.port: n.index for n in self.nodes}
        for node in self.nodes:
            if node.pid() is None:
                continue
            out = self.rabbitmqctl(
                "list_connections",
                "port",
                "client_properties",
                "--formatter",
                "json",
                node=node.index,
            )
            found = []
            for conn in json.loads(out or "[]"):
                props = {p[0]: p[2] for p in conn.get("client_properties", []) if len(p) == 3}
                found.append((by_port.get(conn.get("port"), 0), str(props.get("connection_name"))))
            return found
        raise LabError(f"cluster {self.name}: no node is running")

    def busiest_node(self, programs: tuple[str, ...]) -> int:
        """The node holding most connections of `programs` (e.g. the agents)."""
        counts: dict[int, int] = {}
        for index, name in self.connections():
            if name.split(":", 1)[0] in programs:
                counts[index] = counts.get(index, 0) + 1
        if not counts:
            raise LabError(f"cluster {self.name}: no connection of {programs}")
        return max(counts, key=lambda i: counts[i])

    def status(self) -> dict[str, Any]:
        """Per node: pid, AMQP up; the cluster's running nodes as a running node sees
        them (empty when none answers)."""
        out: dict[str, Any] = {
            "name": self.name,
            "dir": str(self.dir),
            "transport_url": self.transport_url,
            "nodes": [
                {"name": n.name, "port": n.port, "pid": n.pid(), "amqp": n.accepting()}
                for n in self.nodes
            ],
            "running_nodes": [],
        }
        for node in self.nodes:
            if node.pid() is None:
                continue
            with contextlib.suppress(LabError, subprocess.TimeoutExpired, ValueError):
                doc = json.loads(
                    self.rabbitmqctl(
                        "cluster_status", "--formatter", "json", node=node.index, timeout=30
                    )
                )
                out["running_nodes"] = sorted(doc.get("running_nodes", []))
                out["disk_nodes"] = sorted(doc.get("disk_nodes", []))
                break
        return out

    def pids(self) -> list[int]:
        """Every process of this cluster (VMs and their helpers), by their mark."""
        own = str(self.dir)
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and _marked(int(entry.name)) == own:
                with contextlib.suppress(OSError):
                    # epmd, if a node had to start it, serves the whole machine: leave it
                    if (entry / "comm").read_text().strip() == "epmd":
                        continue
                found.append(int(entry.name))
        return found

    def down(self, grace: float = 20) -> None:
        """Stop every process of the cluster (SIGTERM, SIGKILL after `grace`) and remove
        its directory: nothing of it is left."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            pids = self.pids()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            for proc in self._procs.values():
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=0.01)
            with contextlib.suppress(TimeoutError):
                wait_for(lambda: not self.pids(), wait, 0.1, what="cluster processes to exit")
        for proc in self._procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self._procs.clear()
        if self.pids():
            raise LabError(f"cluster {self.name}: processes {self.pids()} did not exit")
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.dir.parent == CLUSTER_STATE:  # the default root too, once no cluster is left
            with contextlib.suppress(OSError):
                CLUSTER_STATE.rmdir()

    def log(self, node: BrokerNode, chars: int = 4000) -> str:
        logs = sorted((node.dir / "log").glob("*.log"))
        return "\n".join(f"--- {p}\n{tail(p, chars)}" for p in logs)


def free_base_port(nodes: int = 3, low: int = 20000, high: int = 30000) -> int:
    """A base_port whose AMQP, TLS and distribution ports are all free now (tests run
    clusters side by side, each on its own ports)."""
    for _ in range(200):
        base = random.randrange(low, high - nodes)
        ports = [base + off + i for off in (0, 1000, 2000) for i in range(nodes)]
        if all(_port_free(p) for p in ports):
            return base
    raise LabError(f"no free block of ports for {nodes} nodes in {low}-{high}")


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
