"""Fixtures for compute-agent functional tests: a private exchange and topics on the real
broker, an image directory, and the agent run as a real process (or in-process).

Isolation (other engineers run tests on this broker at the same time): every test gets
its own control exchange, events topic and host name; the queues those names create are
deleted at teardown, and only those.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kombu
import pytest

from agents.lab.configs import unit_command
from agents.lab.procs import REPO, broker_available, unique, wait_for
from common.config import MessagingSettings
from common.messages import (
    BuildInstance,
    InstanceSpec,
    Port,
    VifEvent,
    new_request_id,
)
from common.rpc import COMPUTE_TOPIC, Event, EventWatcher, Messaging, vif_events_topic

pytestmark = pytest.mark.functional

SHARED_CONF = REPO / "etc" / "shared.conf"
NET1 = uuid.UUID("5d3c0f6e-8a3b-4c1e-9f2a-0b7e6d5c4a31")  # network net1 of etc/shared.conf


def _delete_queues(names: list[str]) -> None:
    with kombu.Connection("amqp://guest:guest@127.0.0.1:5672//", connect_timeout=3) as conn:
        for name in names:
            channel = conn.channel()
            with contextlib.suppress(Exception):
                channel.queue_delete(queue=name)
            with contextlib.suppress(Exception):
                channel.close()


def _delete_exchange(name: str) -> None:
    with kombu.Connection("amqp://guest:guest@127.0.0.1:5672//", connect_timeout=3) as conn:
        channel = conn.channel()
        with contextlib.suppress(Exception):
            channel.exchange_delete(exchange=name)


@dataclass
class Deployment:
    """One isolated deployment on the broker: exchange, events topic, host name."""

    exchange: str
    events_topic: str
    host: str
    tmp: Path
    hosts: list[str] = field(default_factory=list)

    @property
    def settings(self) -> MessagingSettings:
        return MessagingSettings(
            control_exchange=self.exchange, events_topic=self.events_topic, rpc_timeout=10
        )

    def new_host(self) -> str:
        host = unique("cmp")
        self.hosts.append(host)
        return host

    def queue_names(self) -> list[str]:
        names = []
        for topic in (self.events_topic, *(vif_events_topic(h) for h in [self.host, *self.hosts])):
            names += [
                f"{topic}.{p}"
                for p in ("audit", "debug", "info", "warn", "error", "critical", "sample")
            ]
        for host in [self.host, *self.hosts]:
            names.append(f"{COMPUTE_TOPIC}.{host}")
        return names


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    if not broker_available():
        pytest.skip("RabbitMQ is not running on 127.0.0.1:5672")
    suffix = uuid.uuid4().hex[:10]
    dep = Deployment(
        exchange=f"test-{suffix}", events_topic=f"ev-{suffix}", host=unique("cmp"), tmp=tmp_path
    )
    yield dep
    _delete_queues(dep.queue_names())
    _delete_exchange(dep.exchange)


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(images / "tiny.qcow2"), "16M"], check=True
    )
    kernel = images / "kernelimg"
    kernel.mkdir()
    (kernel / "kernel").write_bytes(b"not a real kernel: the test driver never reads it")
    (kernel / "initrd").write_bytes(b"not a real initrd")
    (kernel / "cmdline").write_text("quiet\n")
    return images


def write_config(dep: Deployment, image_dir: Path, host: str | None = None, **compute: Any) -> Path:
    host = host or dep.host
    settings = {
        "libvirt_uri": "test:///default",
        "domain_type": "test",
        "image_dir": str(image_dir),
        "instances_dir": str(dep.tmp / f"instances-{host}"),
        "vif_plugging_timeout": "5",
        "heartbeat_interval": "30",
        **{k: str(v) for k, v in compute.items()},
    }
    lines = [
        "[DEFAULT]",
        f"host = {host}",
        f"state_dir = {dep.tmp / f'state-{host}'}",
        "log_format = json",
        "log_level = DEBUG",
        "[messaging]",
        f"control_exchange = {dep.exchange}",
        f"events_topic = {dep.events_topic}",
        "[metrics]",
        "listen = 127.0.0.1:0",
        "[compute]",
        *(f"{k} = {v}" for k, v in settings.items()),
    ]
    # laid out as /etc/agents is, so the agent runs with its unit's command line
    etc = dep.tmp / f"etc-{host}"
    etc.mkdir(exist_ok=True)
    (etc / "shared.conf").write_text(SHARED_CONF.read_text())
    path = etc / "compute-agent.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


class Controller:
    """What agentctl and the l2-agent would send, for tests: casts, calls, vif events."""

    def __init__(self, dep: Deployment, host: str | None = None) -> None:
        self.dep = dep
        self.host = host or dep.host
        self.messaging = Messaging(dep.settings)
        self.compute = self.messaging.rpc_client(COMPUTE_TOPIC, self.host)
        self.vif_notifier = self.messaging.notifier(
            f"l2-agent.{self.host}", vif_events_topic(self.host)
        )
        self.watcher = EventWatcher(
            dep.settings, [f"{dep.events_topic}.#.info", f"{dep.events_topic}.#.error"]
        )
        self.events: list[Event] = []

    def close(self) -> None:
        self.watcher.close()
        self.messaging.close()

    def spec(self, ports: int = 1, image: str = "tiny", name: str | None = None) -> InstanceSpec:
        iid = uuid.uuid4()
        return InstanceSpec(
            uuid=iid,
            name=name or unique("vm"),
            flavor="m1.tiny",
            image=image,
            ports=[
                Port(
                    id=uuid.uuid4(),
                    network_id=NET1,
                    mac=f"fa:16:3e:00:{i:02x}:{n:02x}",
                    fixed_ip=f"10.10.0.{10 + n}",
                    instance_uuid=iid,
                )
                for n, i in ((n, uuid.uuid4().int % 256) for n in range(ports))
            ],
        )

    def build(self, spec: InstanceSpec) -> str:
        rid = new_request_id()
        self.compute.cast(
            "build_instance", BuildInstance(request_id=rid, host=self.host, instance=spec), rid
        )
        return rid

    def plug(
        self, port: Port, event_type: str = "port.vif_plugged", reason: str | None = None
    ) -> None:
        event = VifEvent(host=self.host, port_id=port.id, network_id=port.network_id, reason=reason)
        if event_type == "port.plug_failed":
            self.vif_notifier.error(event_type, event)
        else:
            self.vif_notifier.info(event_type, event)

    def wait_event(self, instance: uuid.UUID, event_types: set[str], timeout: float = 15) -> Event:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for ev in self.watcher.poll(0.2):
                self.events.append(ev)
            for ev in self.events:
                payload = ev.payload
                if (
                    ev.event_type in event_types
                    and getattr(payload, "instance_uuid", None) == instance
                ):
                    return ev
        raise TimeoutError(
            f"no {event_types} for {instance}; saw {[e.event_type for e in self.events]}"
        )

    def events_for(self, instance: uuid.UUID) -> list[str]:
        for ev in self.watcher.poll(0.05):
            self.events.append(ev)
        return [
            e.event_type
            for e in self.events
            if getattr(e.payload, "instance_uuid", None) == instance
        ]


@pytest.fixture
def controller(deployment: Deployment) -> Iterator[Controller]:
    ctl = Controller(deployment)
    yield ctl
    ctl.close()


@dataclass
class AgentProcess:
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
        return self.proc.wait(timeout=timeout)


def start_agent(
    config: Path, ctl: Controller, extra_env: dict[str, str] | None = None
) -> AgentProcess:
    log = config.with_suffix(".log")
    fh = log.open("ab")
    proc = subprocess.Popen(
        unit_command("compute-agent", config.parent),  # config: write_config()'s
        stdout=fh,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, **(extra_env or {})},
    )
    fh.close()
    agent = AgentProcess(proc, log)

    def answers() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"compute-agent exited {proc.returncode}:\n{agent.output()}")
        try:
            ctl.compute.call("ping", timeout=1)
            return True
        except Exception:
            return False

    try:
        wait_for(answers, 20, interval=0.2, what="compute-agent to answer ping")
    except BaseException:
        agent.stop(signal.SIGKILL)
        raise
    return agent


@pytest.fixture
def agent_factory(controller: Controller) -> Iterator[Any]:
    started: list[AgentProcess] = []

    def start(config: Path, **kw: Any) -> AgentProcess:
        agent = start_agent(config, controller, **kw)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        with contextlib.suppress(Exception):
            agent.stop(signal.SIGKILL, timeout=10)
