"""The compute-agent as a real process on the real broker, libvirt test driver.

Covers the walking skeleton (build -> vif wait -> define -> start -> notifications) and
the call API (ping, list_instances, get_instance, get_console_log).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from agents.lab.procs import console_script
from common import __version__
from common.errors import RemoteError
from common.messages import (
    AgentHeartbeat,
    BuildInstance,
    InstanceInfo,
    InstanceList,
    InstanceRef,
    PingReply,
    envelope,
)

from .conftest import Controller, Deployment, write_config

pytestmark = pytest.mark.functional


def test_build_waits_for_vif_plugged_then_runs(
    deployment: Deployment, controller: Controller, image_dir: Path, agent_factory: Any
) -> None:
    agent_factory(write_config(deployment, image_dir))
    spec = controller.spec(ports=2)
    controller.build(spec)
    controller.wait_event(spec.uuid, {"instance.create.start"})
    # Not started before its ports are plugged.
    info = controller.compute.call("get_instance", InstanceRef(instance_uuid=spec.uuid))
    assert isinstance(info, InstanceInfo) and info.state == "building"
    for port in spec.ports:
        controller.plug(port)
    end = controller.wait_event(spec.uuid, {"instance.create.end", "instance.create.error"})
    assert end.event_type == "instance.create.end", end.payload
    assert controller.events_for(spec.uuid) == [
        "instance.create.start",
        *["instance.create.progress"] * 4,
        "instance.create.end",
    ]
    steps = [
        e.payload.step
        for e in controller.events
        if e.event_type == "instance.create.progress" and e.payload.instance_uuid == spec.uuid
    ]
    assert steps == ["xml_rendered", "ports_plugged", "guest_defined", "guest_started"]

    info = controller.compute.call("get_instance", InstanceRef(instance_uuid=spec.uuid))
    assert info.state == "running"
    assert info.name == spec.name and info.flavor == "m1.tiny" and info.image == "tiny"
    assert [p.id for p in info.ports] == [p.id for p in spec.ports]
    listed = controller.compute.call("list_instances")
    assert isinstance(listed, InstanceList)
    assert [i.uuid for i in listed.instances] == [spec.uuid]
    ping = controller.compute.call("ping")
    assert isinstance(ping, PingReply) and ping.host == deployment.host and ping.kind == "compute"


def test_vif_event_published_before_the_build_is_not_lost(
    deployment: Deployment, controller: Controller, image_dir: Path, agent_factory: Any
) -> None:
    agent_factory(write_config(deployment, image_dir))
    spec = controller.spec(ports=1)
    controller.plug(spec.ports[0])  # the l2-agent was faster than the build cast
    controller.build(spec)
    end = controller.wait_event(spec.uuid, {"instance.create.end", "instance.create.error"})
    assert end.event_type == "instance.create.end", end.payload


def test_build_fails_with_reason_when_no_vif_plugged(
    deployment: Deployment, controller: Controller, image_dir: Path, agent_factory: Any
) -> None:
    agent_factory(write_config(deployment, image_dir, vif_plugging_timeout=1))
    spec = controller.spec(ports=1)
    controller.build(spec)
    end = controller.wait_event(spec.uuid, {"instance.create.end", "instance.create.error"})
    assert end.event_type == "instance.create.error"
    assert end.priority == "error"
    assert "timeout" in end.payload.reason and str(spec.ports[0].id) in end.payload.reason
    assert end.payload.elapsed_ms >= 1000
    info = controller.compute.call("get_instance", InstanceRef(instance_uuid=spec.uuid))
    assert info.state == "error" and "timeout" in (info.fault or "")
    # Its files were cleaned up: only the error record remains.
    assert not (deployment.tmp / f"instances-{deployment.host}" / str(spec.uuid)).exists()


def test_plug_failed_fails_the_build_at_once(
    deployment: Deployment, controller: Controller, image_dir: Path, agent_factory: Any
) -> None:
    agent_factory(write_config(deployment, image_dir, vif_plugging_timeout=30))
    spec = controller.spec(ports=1)
    controller.build(spec)
    controller.wait_event(spec.uuid, {"instance.create.start"})
    controller.plug(spec.ports[0], "port.plug_failed", reason="bridge brq5d3c0f6e-8a is gone")
    end = controller.wait_event(spec.uuid, {"instance.create.end", "instance.create.error"}, 10)
    assert end.event_type == "instance.create.error"
    assert "bridge brq5d3c0f6e-8a is gone" in end.payload.reason
    assert end.payload.elapsed_ms < 10_000


@pytest.mark.parametrize("method", ["get_instance", "get_console_log"])
def test_unknown_uuid_is_a_remote_error_without_a_traceback(
    deployment: Deployment,
    controller: Controller,
    image_dir: Path,
    agent_factory: Any,
    method: str,
) -> None:
    agent = agent_factory(write_config(deployment, image_dir))
    with pytest.raises(RemoteError, match="not on this host"):
        controller.compute.call(method, InstanceRef(instance_uuid=uuid.uuid4()))
    controller.compute.call("ping")  # the answer above was logged before this one
    # An expected answer ("no such instance"), not a failure of the agent.
    assert "Traceback" not in agent.output()


def test_sigterm_with_a_build_in_flight_hands_it_back_and_exits_0(
    deployment: Deployment, controller: Controller, image_dir: Path, agent_factory: Any
) -> None:
    agent = agent_factory(
        write_config(deployment, image_dir, vif_plugging_timeout=60, stop_grace=1)
    )
    spec = controller.spec(ports=1)
    controller.build(spec)
    controller.wait_event(spec.uuid, {"instance.create.start"})
    start = time.monotonic()
    # The agent alone, as its unit signals it (KillMode=process): a signal to the whole
    # group would also kill a qemu-img the build may be running and fail it for that.
    agent.proc.send_signal(signal.SIGTERM)
    assert agent.proc.wait(timeout=20) == 0, agent.output()
    took = time.monotonic() - start
    # compute_agent_stopped says where a slow stop spent its time, step by step
    assert took < 10, f"stopped after {took:.1f} s\n{agent.output()[-4000:]}"
    back = controller.wait_event(
        spec.uuid, {"instance.create.end", "instance.create.error", "instance.create.handed_back"}
    )
    assert back.event_type == "instance.create.handed_back"
    assert "agent stopped before the build completed" in back.payload.reason


def test_malformed_casts_over_the_wire_are_reported_and_survived(
    deployment: Deployment, controller: Controller, image_dir: Path, agent_factory: Any
) -> None:
    agent_factory(write_config(deployment, image_dir))
    raw_client = controller.compute._client  # bypass our own validation on purpose
    victim = uuid.uuid4()
    bad = envelope(
        BuildInstance(request_id="req-x", host=deployment.host, instance=controller.spec())
    )
    bad["data"]["instance"]["uuid"] = str(victim)
    bad["data"]["instance"]["name"] = "<evil name & 'quotes'>"
    raw_client.cast({}, "build_instance", payload=bad)
    raw_client.cast({}, "build_instance", payload="garbage")
    raw_client.cast({}, "build_instance")
    raw_client.cast({}, "no_such_method", payload=1)
    raw_client.cast({}, "delete_instance", payload={"instance_uuid": "not-a-uuid"})
    # Refused by name, on the salvaged instance's timeline; no instance.create.error.
    err = controller.wait_event(victim, {"agent.message_rejected"})
    assert "instance.name" in err.payload.problem
    # Still consuming: a good build after the bad ones works.
    spec = controller.spec(ports=0)
    controller.build(spec)
    end = controller.wait_event(spec.uuid, {"instance.create.end", "instance.create.error"})
    assert end.event_type == "instance.create.end"
    rejected = [e for e in controller.events if e.event_type == "agent.message_rejected"]
    assert len(rejected) >= 3


def test_metrics_and_heartbeat(
    deployment: Deployment, controller: Controller, image_dir: Path, agent_factory: Any
) -> None:
    agent = agent_factory(write_config(deployment, image_dir))
    spec = controller.spec(ports=0)
    controller.build(spec)
    controller.wait_event(spec.uuid, {"instance.create.end"})
    controller.compute._client.cast({}, "report_state")
    beat = None
    deadline = time.monotonic() + 10
    while beat is None and time.monotonic() < deadline:
        controller.events += controller.watcher.poll(0.2)
        beat = next((e for e in controller.events if e.event_type == "agent.heartbeat"), None)
    assert beat is not None
    assert isinstance(beat.payload, AgentHeartbeat)
    assert beat.payload.kind == "compute" and beat.payload.host == deployment.host
    assert beat.payload.version == __version__ and beat.payload.uptime_s > 0
    assert beat.publisher_id == f"compute.{deployment.host}"

    port = next(
        json.loads(line)["port"]
        for line in agent.output().splitlines()
        if '"metrics_serving"' in line
    )
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    assert 'compute_agent_builds_total{result="ok"} 1.0' in text
    assert 'compute_agent_build_step_seconds_count{step="total"} 1.0' in text
    assert 'compute_agent_build_step_seconds_count{step="define"} 1.0' in text
    assert "compute_agent_vif_plugging_timeouts_total 0.0" in text
    assert "compute_agent_reconcile_total" in text or "compute_agent_instances" in text


def test_version_flag() -> None:
    done = subprocess.run(
        [console_script("compute-agent"), "--version"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0 and done.stdout.strip() == f"compute-agent {__version__}"


def test_a_build_taken_before_a_kill_is_replayed_on_start(
    deployment: Deployment, controller: Controller, image_dir: Path, agent_factory: Any
) -> None:
    """What a kill -9 leaves: a build on the journal that the broker acked long ago."""
    from common.journal import Journal
    from common.messages import BuildInstance, envelope

    config = write_config(deployment, image_dir)
    spec = controller.spec(ports=1)
    journal_dir = deployment.tmp / f"state-{deployment.host}" / "compute-agent"
    journal = Journal(journal_dir / deployment.host / "journal")
    build = BuildInstance(request_id="req-replayed", host=deployment.host, instance=spec)
    journal.add("build_instance", str(spec.uuid), envelope(build))
    journal.close()
    agent_factory(config)
    controller.wait_event(spec.uuid, {"instance.create.start"})
    controller.plug(spec.ports[0])
    end = controller.wait_event(spec.uuid, {"instance.create.end", "instance.create.error"})
    assert end.event_type == "instance.create.end", end.payload
    assert end.payload.request_id == "req-replayed"
    assert not list((journal_dir / deployment.host / "journal").glob("*.json"))
