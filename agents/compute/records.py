"""The instance record as libvirt holds it, and the views built from it.

The host is the source of truth: an instance is a domain carrying our metadata element
(guest.METADATA_NS). This module owns the `GuestHost` protocol (what the compute core
needs from the libvirt edge), reading and rewriting that record, and turning a domain
plus its record into the `InstanceInfo` that list/get calls answer.

It must not decide anything about builds, deletes or reconcile, and never imports
libvirt (hypervisor.py is the implementation of `GuestHost`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol
from uuid import UUID

import structlog

from agents.compute.errors import GuestXmlError
from agents.compute.guest import METADATA_NS, METADATA_PREFIX, InstanceMetadata, parse_guest
from common.messages import InstanceInfo, InstanceSpec, InstanceState, Port

log = structlog.get_logger()


@dataclass(frozen=True)
class Domain:
    """A domain as the hypervisor edge reports it."""

    uuid: UUID
    name: str
    state: InstanceState
    active: bool
    xml: str  # the inactive (persistent) definition, with our metadata


class GuestHost(Protocol):
    """What the compute core needs from the hypervisor edge (hypervisor.Hypervisor)."""

    def define(self, uuid: UUID, xml: str) -> None: ...
    def start(self, uuid: UUID) -> None: ...
    def destroy(self, uuid: UUID) -> bool: ...
    def undefine(self, uuid: UUID) -> bool: ...
    def reboot(self, uuid: UUID, hard: bool) -> None: ...
    def set_metadata(self, uuid: UUID, element_xml: str, prefix: str, namespace: str) -> None: ...
    def get(self, uuid: UUID) -> Domain | None: ...
    def list_with_metadata(self, namespace: str) -> list[Domain]: ...
    def alive(self) -> bool: ...
    # Hot-(un)plug of a running guest's devices (replug.py).
    def live_xml(self, uuid: UUID) -> str | None: ...
    def detach_device(self, uuid: UUID, device_xml: str) -> None: ...
    def attach_device(self, uuid: UUID, device_xml: str) -> None: ...


def read_record(domain: Domain) -> InstanceMetadata | None:
    """The domain's instance record; None when the domain is not ours (or unreadable)."""
    try:
        return parse_guest(domain.xml).metadata
    except GuestXmlError as err:
        log.warning("domain_xml_unreadable", domain=domain.name, error=str(err))
        return None


def write_record(hv: GuestHost, uuid: UUID, record: InstanceMetadata) -> None:
    """Replace the record of a defined domain in place (virDomainSetMetadata)."""
    hv.set_metadata(uuid, record.to_bare_xml(), METADATA_PREFIX, METADATA_NS)


def owned_domains(hv: GuestHost) -> list[tuple[Domain, InstanceMetadata]]:
    found = []
    for domain in hv.list_with_metadata(METADATA_NS):
        record = read_record(domain)
        if record is not None:
            found.append((domain, record))
    return found


def instance_info(
    domain: Domain, record: InstanceMetadata, host: str, building: bool
) -> InstanceInfo:
    state: InstanceState = domain.state
    if record.fault is not None:
        state = "error"
    elif building:
        state = "building"
    uptime = None
    if domain.active and record.started_at is not None:
        uptime = max(0.0, (datetime.now(UTC) - record.started_at).total_seconds())
    return InstanceInfo(
        uuid=domain.uuid,
        name=record.name,
        host=host,
        state=state,
        flavor=record.flavor,
        image=record.image,
        ports=[
            Port.model_validate(
                {
                    "id": p.id,
                    "network_id": p.network_id,
                    "mac": p.mac,
                    "fixed_ip": p.fixed_ip,
                    "mtu": p.mtu,
                    "vif_type": p.vif_type,
                    "nic_model": p.nic_model,
                    "instance_uuid": record.uuid,
                }
            )
            for p in record.ports
        ],
        created_at=record.created_at,
        uptime_s=uptime,
        fault=record.fault,
    )


def building_info(spec: InstanceSpec, host: str) -> InstanceInfo:
    """An accepted build whose domain is not defined yet."""
    return InstanceInfo(
        uuid=spec.uuid,
        name=spec.name,
        host=host,
        state="building",
        flavor=spec.flavor,
        image=spec.image,
        ports=list(spec.ports),
        created_at=spec.created_at,
    )
