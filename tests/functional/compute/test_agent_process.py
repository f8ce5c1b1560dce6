"""The compute-agent as a real process on the real broker, libvirt test driver.

Covers the walking skeleton (build -> vif wait -> define -> start -> notifications) and
the call API (ping, list_instances, get_instance, get_console_log).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from common.errors import RemoteError
from common.messages import InstanceInfo, InstanceList, InstanceRef, PingReply

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
        "instance.create.progress",
        "instance.create.progress",
        "instance.create.progress",
        "instance.create.end",
    ]
    steps = [
        e.payload.step
        for e in controller.events
        if e.event_type == "instance.create.progress" and e.payload.instance_uuid == spec.uuid
    ]
    assert steps == ["ports_plugged", "guest_defined", "guest_started"]

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


def test_get_instance_of_unknown_uuid_is_a_remote_error(
    deployment: Deployment, controller: Controller, image_dir: Path, agent_factory: Any
) -> None:
    agent_factory(write_config(deployment, image_dir))
    with pytest.raises(RemoteError, match="not on this host"):
        controller.compute.call("get_instance", InstanceRef(instance_uuid=uuid.uuid4()))
