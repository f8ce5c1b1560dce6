"""The real daemons under the systemd notify protocol, without systemd.

Each agent runs as a process with NOTIFY_SOCKET pointing at a unix datagram socket the
test listens on (tests.notify) and WATCHDOG_USEC set, as systemd would start it from
its unit. The test checks what the unit relies on: READY=1 only once the agent
answers RPC, WATCHDOG=1 keeps coming, SIGHUP reloads the log level, SIGTERM gives
STOPPING=1 and exit code 0, stdout is JSON lines for the journal. The l2-agent runs
inside a throwaway namespace with its capabilities cut to CAP_NET_ADMIN, as its unit's
CapabilityBoundingSet= does, and still wires a port. A build through both daemons
ends with a scrape of both metrics endpoints.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import kombu
import pytest

from agents.lab.netns import NamespaceHost
from agents.lab.procs import REPO, console_script, free_ports, run, wait_for
from common.config import MessagingSettings
from common.messages import (
    BuildInstance,
    InstanceSpec,
    PingReply,
    Port,
    PortCreated,
    new_request_id,
)
from common.rpc import COMPUTE_TOPIC, L2_TOPIC, EventWatcher, Messaging, queue_state
from tests.conftest import BrokerScope
from tests.notify import NotifyListener

pytestmark = pytest.mark.functional

NET1 = uuid.UUID("5d3c0f6e-8a3b-4c1e-9f2a-0b7e6d5c4a31")  # vxlan net1 of etc/shared.conf
CAP_NET_ADMIN = 12
WATCHDOG_USEC = "1000000"  # a ping every 0.5 s


@dataclass
class Deployment:
    """A private exchange, events topic and host name on the shared broker."""

    scope: BrokerScope
    tmp: Path
    host: str
    events_topic: str

    @property
    def settings(self) -> MessagingSettings:
        return MessagingSettings(
            control_exchange=self.scope.exchange, events_topic=self.events_topic, rpc_timeout=5
        )

    def shared_conf(self) -> Path:
        path = self.tmp / "shared.conf"
        text = (REPO / "etc" / "shared.conf").read_text()
        exchange, topic = self.scope.exchange, self.events_topic
        text = text.replace("control_exchange = agents", f"control_exchange = {exchange}")
        text = text.replace("events_topic = agents_events", f"events_topic = {topic}")
        path.write_text(text)
        return path


@pytest.fixture
def deployment(broker_scope: BrokerScope, tmp_path: Path) -> Iterator[Deployment]:
    dep = Deployment(
        scope=broker_scope,
        tmp=tmp_path,
        host=broker_scope.host("sd"),
        events_topic=f"ev-{broker_scope.suffix}",
    )
    yield dep
    # broker_scope deletes the agents' own queues and the exchange; the events topic's
    # notification queues are this test's too.
    with (
        contextlib.suppress(Exception),
        kombu.Connection("amqp://guest:guest@127.0.0.1:5672//", connect_timeout=3) as conn,
    ):
        for priority in ("info", "error"):
            channel = conn.channel()
            with contextlib.suppress(Exception):
                channel.queue_delete(f"{dep.events_topic}.{priority}")


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    notify: NotifyListener
    extra: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def output(self) -> str:
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")

    def json_lines(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.stdout.read_text().splitlines() if line]

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited {self.proc.returncode}:\n{self.output()[-3000:]}")
            return self.notify.has("READY=1")

        wait_for(ready, timeout, interval=0.01, what="READY=1")

    def terminate(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        for proc in [self.proc, *self.extra]:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        self.notify.close()


def start_daemon(cmd: list[str], tmp: Path, name: str, prefix: list[str] | None = None) -> Daemon:
    notify = NotifyListener()
    stdout, stderr = tmp / f"{name}.out", tmp / f"{name}.err"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(
            [*(prefix or []), *cmd],
            stdout=out,
            stderr=err,
            env={**os.environ, "NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": WATCHDOG_USEC},
        )
    return Daemon(proc, stdout, stderr, notify)


def compute_conf(dep: Deployment, *, transport_url: str, log_level: str, metrics: int) -> Path:
    images = dep.tmp / "images"
    images.mkdir(exist_ok=True)
    if not (images / "tiny.qcow2").exists():
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", str(images / "tiny.qcow2"), "16M"],
            check=True,
        )
    path = dep.tmp / "compute-agent.conf"
    path.write_text(
        f"[DEFAULT]\nhost = {dep.host}\nlog_level = {log_level}\nlog_format = json\n"
        f"state_dir = {dep.tmp / 'state'}\n"
        f"[messaging]\ntransport_url = {transport_url}\n"
        f"[metrics]\nlisten = 127.0.0.1:{metrics}\n"
        "[compute]\nlibvirt_uri = test:///default\ndomain_type = test\n"
        f"image_dir = {images}\ninstances_dir = {dep.tmp / 'instances'}\n"
        "vif_plugging_timeout = 20\nheartbeat_interval = 30\nstop_grace = 5\n"
    )
    return path


def l2_conf(dep: Deployment, *, metrics: int, log_level: str = "INFO") -> Path:
    path = dep.tmp / "l2-agent.conf"
    path.write_text(
        f"[DEFAULT]\nhost = {dep.host}\nlog_level = {log_level}\nlog_format = json\n"
        f"state_dir = {dep.tmp / 'state'}\n"
        f"[metrics]\nlisten = 127.0.0.1:{metrics}\n"
        # namespace empty: the agent is itself started inside the test's namespace
        "[l2]\nnamespace =\nheartbeat_interval = 30\n"
    )
    return path


def agent_cmd(agent: str, dep: Deployment, conf: Path) -> list[str]:
    # exactly the unit's ExecStart=, with the test's files in place of /etc/agents
    shared = str(dep.shared_conf())
    return [console_script(agent), "--config-file", shared, "--config-file", str(conf)]


def ping(messaging: Messaging, topic: str, host: str) -> PingReply:
    # One call, no retry: at READY=1 the agent must answer.
    reply = messaging.rpc_client(topic, host, timeout=5).call("ping")
    assert isinstance(reply, PingReply), reply
    return reply


def effective_caps(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no CapEff for {pid}")


def test_every_daemon_answers_version() -> None:
    for script in ("compute-agent", "l2-agent", "agentctl"):
        result = subprocess.run(
            [console_script(script), "--version"], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"{script} {version('agents')}"


def test_compute_agent_ready_only_once_serving_watchdog_reload_stop(
    deployment: Deployment,
) -> None:
    """READY=1 waits for the broker; then ping answers at once; HUP; TERM -> exit 0."""
    relay_port, metrics_port = free_ports(2)
    conf = compute_conf(
        deployment,
        transport_url=f"rabbit://guest:guest@127.0.0.1:{relay_port}/",
        log_level="WARNING",
        metrics=metrics_port,
    )
    messaging = Messaging(deployment.settings)
    daemon = start_daemon(agent_cmd("compute-agent", deployment, conf), deployment.tmp, "compute")
    try:
        # The broker is unreachable (nothing listens on the relay port yet): the agent
        # keeps retrying and must not claim to be ready.
        time.sleep(3)
        assert daemon.proc.poll() is None, daemon.output()[-3000:]
        assert not daemon.notify.has("READY=1")
        assert not queue_state(deployment.settings, f"{COMPUTE_TOPIC}.{deployment.host}").exists

        relay = subprocess.Popen(
            [
                "socat",
                f"TCP-LISTEN:{relay_port},bind=127.0.0.1,reuseaddr,fork",
                "TCP:127.0.0.1:5672",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        daemon.extra.append(relay)
        daemon.wait_ready(60)

        reply = ping(messaging, COMPUTE_TOPIC, deployment.host)
        assert (reply.host, reply.kind, reply.version) == (
            deployment.host,
            "compute",
            version("agents"),
        )
        assert queue_state(deployment.settings, f"{COMPUTE_TOPIC}.{deployment.host}").exists

        daemon.notify.wait_for(lambda: daemon.notify.count("WATCHDOG=1") >= 3, timeout=10)

        # SIGHUP re-reads the log level: at WARNING the info line of the reload itself
        # would be filtered, at INFO it shows.
        assert "service_ready" not in daemon.stdout.read_text()
        conf.write_text(conf.read_text().replace("log_level = WARNING", "log_level = INFO"))
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.notify.wait_for(lambda: daemon.notify.count("READY=1") >= 2)
        assert "RELOADING=1" in daemon.notify.states()
        wait_for(
            lambda: "service_reloaded" in daemon.stdout.read_text(), 10, what="service_reloaded"
        )

        code = daemon.terminate(30)
        assert code == 0, daemon.output()[-3000:]
        daemon.notify.wait_for(lambda: daemon.notify.has("STOPPING=1"))
        states = daemon.notify.states()
        assert states.index("READY=1") < states.index("STOPPING=1")
        # journal-ready logs: every stdout line is one JSON object with an event name
        lines = daemon.json_lines()
        assert lines and all("event" in line and "level" in line for line in lines)
    finally:
        daemon.kill()
        messaging.close()


def test_compute_agent_stops_cleanly_while_waiting_for_the_broker(
    deployment: Deployment,
) -> None:
    """`systemctl stop` (or TimeoutStartSec=) during a start that waits for the broker."""
    dead_port, metrics_port = free_ports(2)
    conf = compute_conf(
        deployment,
        transport_url=f"rabbit://guest:guest@127.0.0.1:{dead_port}/",  # nobody listens
        log_level="INFO",
        metrics=metrics_port,
    )
    daemon = start_daemon(agent_cmd("compute-agent", deployment, conf), deployment.tmp, "compute")
    try:
        wait_for(
            lambda: "Connection refused" in daemon.output(), 30, what="a failed broker connect"
        )
        began = time.monotonic()
        code = daemon.terminate(15)
        assert code == 0, daemon.output()[-3000:]
        assert time.monotonic() - began < 10
        daemon.notify.wait_for(lambda: daemon.notify.has("STOPPING=1"))
        assert not daemon.notify.has("READY=1")
        out = daemon.stdout.read_text()
        # Blocked in oslo's connect loop: abandoned after the bound, as after kill -9.
        assert "start_interrupted" in out and "start_abandoned" in out, out[-3000:]
    finally:
        daemon.kill()


@pytest.mark.usefixtures("root")
def test_l2_agent_with_only_cap_net_admin_serves_wires_and_stops(
    deployment: Deployment,
) -> None:
    messaging = Messaging(deployment.settings)
    conf = l2_conf(deployment, metrics=0, log_level="WARNING")
    # What CapabilityBoundingSet=CAP_NET_ADMIN + NoNewPrivileges=yes leave a root service.
    caps = ["setpriv", "--bounding-set=-all,+net_admin", "--inh-caps=-all", "--no-new-privs"]
    with NamespaceHost() as host:
        daemon = start_daemon(
            agent_cmd("l2-agent", deployment, conf),
            deployment.tmp,
            "l2",
            prefix=["ip", "netns", "exec", host.name, *caps],
        )
        try:
            daemon.wait_ready(60)
            reply = ping(messaging, L2_TOPIC, deployment.host)
            assert (reply.host, reply.kind) == (deployment.host, "l2")
            # `ip netns exec` and setpriv exec in place: the pid is the agent's
            assert "l2-agent" in Path(f"/proc/{daemon.proc.pid}/cmdline").read_text()
            assert effective_caps(daemon.proc.pid) == 1 << CAP_NET_ADMIN

            topic = f"vif_events.{deployment.host}"
            with contextlib.closing(
                EventWatcher(deployment.settings, [f"{topic}.info", f"{topic}.error"])
            ) as watcher:
                port = Port(id=uuid.uuid4(), network_id=NET1, mac="fa:16:3e:00:5d:01")
                rid = new_request_id()
                messaging.rpc_client(L2_TOPIC, deployment.host).cast(
                    "port_created", PortCreated(request_id=rid, host=deployment.host, port=port)
                )
                seen: list[str] = []

                def plugged() -> bool:
                    for event in watcher.poll(0.2):
                        seen.append(event.event_type)
                        if getattr(event.payload, "port_id", None) == port.id:
                            assert event.event_type == "port.vif_plugged", event.payload
                            return True
                    return False

                wait_for(plugged, 15, interval=0, what="port.vif_plugged")
            tap = f"tap{str(port.id)[:11]}"
            links = json.loads(host.exec_check(["ip", "-j", "link", "show"]).stdout)
            assert tap in {link["ifname"] for link in links}

            daemon.notify.wait_for(lambda: daemon.notify.count("WATCHDOG=1") >= 3, timeout=10)

            # SIGHUP: WARNING -> INFO, so the reload's own info line shows
            assert "service_reloaded" not in daemon.stdout.read_text()
            conf.write_text(conf.read_text().replace("log_level = WARNING", "log_level = INFO"))
            daemon.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: "service_reloaded" in daemon.stdout.read_text(), 10, what="reload")

            code = daemon.terminate(45)
            assert code == 0, daemon.output()[-3000:]
            daemon.notify.wait_for(lambda: daemon.notify.has("STOPPING=1"))
        finally:
            daemon.kill()
            messaging.close()


def scrape(url: str, netns: str | None = None) -> dict[str, float]:
    """Prometheus text format -> {'name{labels}': value} (comments dropped)."""
    if netns is None:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    else:  # the namespace's loopback is only reachable from inside it
        text = run(["ip", "netns", "exec", netns, "curl", "-sf", url]).stdout
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


@pytest.mark.usefixtures("root")
@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_metrics_after_a_build_through_both_daemons(deployment: Deployment) -> None:
    """l2-agent in a namespace, compute-agent beside it (test driver), one build."""
    messaging = Messaging(deployment.settings)
    l2_port, compute_port = free_ports(2)
    daemons: list[Daemon] = []
    with NamespaceHost() as host:
        try:
            daemons.append(
                start_daemon(
                    agent_cmd("l2-agent", deployment, l2_conf(deployment, metrics=l2_port)),
                    deployment.tmp,
                    "l2",
                    prefix=["ip", "netns", "exec", host.name],
                )
            )
            conf = compute_conf(
                deployment,
                transport_url="rabbit://guest:guest@127.0.0.1:5672/",
                log_level="INFO",
                metrics=compute_port,
            )
            daemons.append(
                start_daemon(agent_cmd("compute-agent", deployment, conf), deployment.tmp, "cmp")
            )
            for daemon in daemons:
                daemon.wait_ready(60)

            events = f"{deployment.events_topic}"
            with contextlib.closing(
                EventWatcher(deployment.settings, [f"{events}.#.info", f"{events}.#.error"])
            ) as watcher:
                iid = uuid.uuid4()
                port = Port(
                    id=uuid.uuid4(), network_id=NET1, mac="fa:16:3e:00:5d:02", instance_uuid=iid
                )
                spec = InstanceSpec(
                    uuid=iid, name="metrics-vm", flavor="m1.tiny", image="tiny", ports=[port]
                )
                rid = new_request_id()
                messaging.rpc_client(L2_TOPIC, deployment.host).cast(
                    "port_created", PortCreated(request_id=rid, host=deployment.host, port=port)
                )
                messaging.rpc_client(COMPUTE_TOPIC, deployment.host).cast(
                    "build_instance",
                    BuildInstance(request_id=rid, host=deployment.host, instance=spec),
                )
                seen: list[str] = []

                def finished() -> str | None:
                    for event in watcher.poll(0.2):
                        if getattr(event.payload, "instance_uuid", None) == iid:
                            seen.append(event.event_type)
                            if event.event_type in ("instance.create.end", "instance.create.error"):
                                return event.event_type
                    return None

                outcome = wait_for(finished, 30, interval=0, what="the build to finish")
                assert outcome == "instance.create.end", (seen, daemons[1].output()[-3000:])

            compute = scrape(f"http://127.0.0.1:{compute_port}/metrics")
            assert compute['compute_agent_builds_total{result="ok"}'] == 1
            for step in ("vif_wait", "define", "start", "total"):
                assert compute[f'compute_agent_build_step_seconds_count{{step="{step}"}}'] == 1
            assert compute.get("compute_agent_vif_plugging_timeouts_total", 0) == 0

            l2 = scrape(f"http://127.0.0.1:{l2_port}/metrics", netns=host.name)
            plugs = {k: v for k, v in l2.items() if k.startswith("l2_agent_plugs_total")}
            assert plugs == {'l2_agent_plugs_total{result="wired"}': 1.0}
            plug_seconds = [v for k, v in l2.items() if k.startswith("l2_agent_plug_seconds_count")]
            assert sum(plug_seconds) == 1

            for daemon in reversed(daemons):
                assert daemon.terminate(45) == 0, daemon.output()[-3000:]
        finally:
            for daemon in daemons:
                daemon.kill()
            messaging.close()
