"""Typed settings of the compute-agent: the shared sections plus its own [compute].

It owns the names, types, defaults and bounds of the compute-agent's options. It must
not read files itself (common.config.load does that) nor keep module-level state.
The domain type is always taken from config, never guessed from host capabilities:
a host may advertise a `kvm` that hangs (docs/platform.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from common.config import BaseConfig, Section

DomainType = Literal["test", "qemu", "kvm"]


class ComputeSettings(Section):
    # test:///default (in-process, type test), qemu:///embed?root=DIR, qemu:///system
    libvirt_uri: str = "test:///default"
    domain_type: DomainType = "test"
    # Seconds to wait for the port.vif_plugged events of all ports of a build.
    vif_plugging_timeout: Annotated[float, Field(ge=0, le=3600)] = 30.0
    # True: a timeout fails the build (and cleans up); False: start anyway, with a warning.
    vif_plugging_is_fatal: bool = True
    max_concurrent_builds: Annotated[int, Field(ge=1, le=256)] = 10
    image_dir: Path = Path("/var/lib/agents/images")
    instances_dir: Path = Path("/var/lib/agents/instances")
    heartbeat_interval: Annotated[float, Field(gt=0, le=3600)] = 30.0
    # How long a vif event is remembered for a build that has not begun waiting yet.
    vif_event_retention: Annotated[float, Field(gt=0, le=3600)] = 300.0
    # Capacity reported to the controller's scheduler. 0: this host's CPUs times
    # cpu_allocation_ratio, and its memory less reserved_host_memory_mb (nova's knobs).
    vcpus: Annotated[int, Field(ge=0, le=65536)] = 0
    memory_mb: Annotated[int, Field(ge=0, le=1 << 32)] = 0
    cpu_allocation_ratio: Annotated[float, Field(gt=0, le=64)] = 4.0
    reserved_host_memory_mb: Annotated[int, Field(ge=0, le=1 << 20)] = 512
    # Seconds SIGTERM gives in-flight builds to finish before they are failed.
    stop_grace: Annotated[float, Field(ge=0, le=600)] = 20.0


class ComputeConfig(BaseConfig):
    compute: ComputeSettings = ComputeSettings()
