"""Pydantic wire models: the only schema of what travels between processes.

Every message is a `Message` subclass with a schema name and a version. On the wire it
travels as an envelope ``{"schema": ..., "version": "M.m", "data": {...}}`` (see
`envelope()` / `open_envelope()`), so a receiver can tell what it got and refuse what it
cannot read. Minor versions only add optional fields (unknown fields are ignored, so an
older receiver reads a newer minor); a major version change is refused.

This module validates and nothing else: it never talks to the broker, never logs.
Field validation is strict on purpose: a name, MAC or MTU that reaches an agent has
already been checked here, whichever program sent it.
"""

from __future__ import annotations

import re
import uuid as uuidlib
from datetime import UTC, datetime
from ipaddress import IPv4Address
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
)

from common.errors import InvalidMessage

# --------------------------------------------------------------------------- fields

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_HOST_RE = re.compile(
    r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")

MTU_MIN = 68  # RFC 791: the smallest MTU an IPv4 host must accept
MTU_MAX = 9000  # jumbo frames; larger values are refused by most NICs and bridges anyway
MAX_IMAGES = 1000  # images a compute-agent reports in its heartbeat


def _check_name(value: str) -> str:
    if not _NAME_RE.fullmatch(value):
        raise ValueError(
            "must be 1-63 characters of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def _check_host(value: str) -> str:
    if len(value) > 253 or not _HOST_RE.fullmatch(value):
        raise ValueError("must be a DNS host name (letters, digits, '-', dot-separated labels)")
    return value


def _check_mac(value: str) -> str:
    mac = value.lower()
    if not _MAC_RE.fullmatch(mac):
        raise ValueError("must be six colon-separated hex octets, like fa:16:3e:12:34:56")
    first = int(mac[:2], 16)
    if first & 0x01:
        raise ValueError("is a multicast address; a port needs a unicast MAC")
    if mac == "00:00:00:00:00:00":
        raise ValueError("is the all-zero address")
    if first == 0xFE:
        # libvirt and the l2-agent give host-side tap ends a 0xFE first byte so a bridge
        # never adopts it as its own address; a guest MAC there would collide with that.
        raise ValueError("starts with 0xfe, which is reserved for host-side tap devices")
    return mac


def _check_request_id(value: str) -> str:
    if not _REQUEST_ID_RE.fullmatch(value):
        raise ValueError("must be 1-128 characters of letters, digits, '.', '_', ':' or '-'")
    return value


Name = Annotated[str, AfterValidator(_check_name)]
HostName = Annotated[str, AfterValidator(_check_host)]
MacAddress = Annotated[str, AfterValidator(_check_mac)]
RequestId = Annotated[str, AfterValidator(_check_request_id)]
Mtu = Annotated[int, Field(ge=MTU_MIN, le=MTU_MAX)]
UUID = uuidlib.UUID


def new_request_id() -> str:
    return f"req-{uuidlib.uuid4()}"


def utcnow() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- base


class Model(BaseModel):
    """Strict value objects: frozen, typed, unknown keys ignored for minor-version compat."""

    model_config = ConfigDict(frozen=True, extra="ignore", strict=False)


class Message(Model):
    """A top-level wire message: it has a schema name and a version."""

    SCHEMA: ClassVar[str]
    VERSION: ClassVar[str] = "1.0"


# --------------------------------------------------------------------------- ports

VifType = Literal["ethernet", "bridge"]
NicModel = Literal["virtio", "e1000", "rtl8139"]


class Port(Model):
    """A port as the controller decided it: what the l2-agent wires and the guest sees."""

    id: UUID
    network_id: UUID
    mac: MacAddress
    fixed_ip: IPv4Address | None = None
    # None means "the network's MTU", which the l2-agent knows from its config.
    mtu: Mtu | None = None
    vif_type: VifType = "ethernet"
    nic_model: NicModel = "virtio"
    admin_state_up: bool = True
    instance_uuid: UUID | None = None
    # The controller's revision of this port (neutron's revision_number): it grows with
    # every change, deletion included, so an agent can tell a stale message (a create
    # delivered after the delete) from a newer one. None: unversioned (old senders).
    revision: Annotated[int, Field(ge=0)] | None = None


class PortCreated(Message):
    SCHEMA = "port_created"
    VERSION = "1.1"  # Port.revision
    request_id: RequestId
    host: HostName
    port: Port


class PortUpdated(Message):
    SCHEMA = "port_updated"
    VERSION = "1.1"  # Port.revision
    request_id: RequestId
    host: HostName
    port: Port


class PortDeleted(Message):
    """1.1: `revision`, the port's revision at its deletion (see Port.revision)."""

    SCHEMA = "port_deleted"
    VERSION = "1.1"
    request_id: RequestId
    host: HostName
    port_id: UUID
    network_id: UUID | None = None
    revision: Annotated[int, Field(ge=0)] | None = None


# --------------------------------------------------------------------------- instances


class InstanceSpec(Model):
    """Everything the compute-agent needs to build one instance."""

    uuid: UUID
    name: Name
    flavor: Name
    image: Name
    ports: Annotated[list[Port], Field(min_length=0, max_length=16)] = []
    owner: Name | None = None
    created_at: datetime = Field(default_factory=utcnow)


class BuildInstance(Message):
    SCHEMA = "build_instance"
    VERSION = "1.1"  # Port.revision
    request_id: RequestId
    host: HostName
    instance: InstanceSpec


class DeleteInstance(Message):
    SCHEMA = "delete_instance"
    request_id: RequestId
    host: HostName
    instance_uuid: UUID


class RebootInstance(Message):
    SCHEMA = "reboot_instance"
    request_id: RequestId
    host: HostName
    instance_uuid: UUID
    hard: bool = False


class InstanceRef(Message):
    """Argument of calls that name one instance (get_instance, get_console_log)."""

    SCHEMA = "instance_ref"
    instance_uuid: UUID
    max_bytes: Annotated[int, Field(ge=1, le=100 * 1024)] = 100 * 1024


# --------------------------------------------------------------------------- events

VifEventType = Literal["port.vif_plugged", "port.vif_unplugged", "port.plug_failed"]


class VifEvent(Message):
    """Payload of the vif notifications a l2-agent emits on `vif_events.<host>`.

    1.1: `received_at`, when the l2-agent took the port message that led to this event
    (for the controller's timeline).
    """

    SCHEMA = "vif_event"
    VERSION = "1.1"
    request_id: RequestId | None = None
    host: HostName
    port_id: UUID
    network_id: UUID | None = None
    instance_uuid: UUID | None = None
    device: str | None = None
    bridge: str | None = None
    reason: str | None = None
    received_at: datetime | None = None
    at: datetime = Field(default_factory=utcnow)


InstanceState = Literal[
    "building", "running", "paused", "shutoff", "crashed", "deleting", "deleted", "error", "unknown"
]


class InstanceEvent(Message):
    """Payload of instance.* notifications for the operator."""

    SCHEMA = "instance_event"
    request_id: RequestId | None = None
    host: HostName
    instance_uuid: UUID
    name: str | None = None
    state: InstanceState | None = None
    step: str | None = None
    reason: str | None = None
    elapsed_ms: float | None = None
    at: datetime = Field(default_factory=utcnow)


AgentKind = Literal["compute", "l2"]


class AgentHeartbeat(Message):
    """1.1: a compute-agent reports the capacity the controller's scheduler places into.
    1.2: and the images it can boot (None: not said, an older agent)."""

    SCHEMA = "agent_heartbeat"
    VERSION = "1.2"
    host: HostName
    kind: AgentKind
    version: str
    started_at: datetime
    uptime_s: float
    counts: dict[str, int] = {}
    vcpus: Annotated[int, Field(ge=0, le=65536)] | None = None
    memory_mb: Annotated[int, Field(ge=0, le=1 << 32)] | None = None
    images: Annotated[list[Name], Field(max_length=MAX_IMAGES)] | None = None
    at: datetime = Field(default_factory=utcnow)


class MessageRejected(Message):
    """Payload of `agent.message_rejected`: a message an agent could not read.

    1.1: the instance and port the message named, when they could be salvaged: for the
    timeline only. A refused message ends no operation (a garbled copy may carry the
    ids of a real one in flight).
    """

    SCHEMA = "message_rejected"
    VERSION = "1.1"
    host: HostName
    kind: AgentKind
    method: str
    problem: str
    instance_uuid: UUID | None = None
    port_id: UUID | None = None
    at: datetime = Field(default_factory=utcnow)


# --------------------------------------------------------------------------- call replies


class PingReply(Message):
    SCHEMA = "ping_reply"
    host: HostName
    kind: AgentKind
    version: str
    uptime_s: float


class InstanceInfo(Message):
    """One instance as its compute-agent sees it (libvirt state + the domain's metadata)."""

    SCHEMA = "instance_info"
    VERSION = "1.1"  # Port.revision
    uuid: UUID
    name: str
    host: HostName
    state: InstanceState
    flavor: str | None = None
    image: str | None = None
    ports: list[Port] = []
    created_at: datetime | None = None
    uptime_s: float | None = None
    fault: str | None = None


class InstanceList(Message):
    SCHEMA = "instance_list"
    VERSION = "1.1"  # Port.revision
    host: HostName
    instances: list[InstanceInfo] = []


class ConsoleLog(Message):
    SCHEMA = "console_log"
    instance_uuid: UUID
    text: str
    truncated: bool = False


PortState = Literal["wired", "down", "failed", "pending"]


class PortInfo(Message):
    """One port as its l2-agent recorded and wired it."""

    SCHEMA = "port_info"
    VERSION = "1.1"  # Port.revision
    port: Port
    host: HostName
    state: PortState
    device: str
    bridge: str
    reason: str | None = None


class PortList(Message):
    SCHEMA = "port_list"
    VERSION = "1.1"  # Port.revision
    host: HostName
    ports: list[PortInfo] = []


# --------------------------------------------------------------------------- resync


class DesiredStateRequest(Message):
    """An agent asks the controller (topic `controller`) what its host should have."""

    SCHEMA = "desired_state_request"
    host: HostName
    kind: AgentKind


class DesiredState(Message):
    """The controller's answer: what `host` should have, and what it knows to be gone.

    An agent deletes only what is listed as gone here (or gone by its own record):
    something merely absent from `instances`/`ports` may be another system's.
    """

    SCHEMA = "desired_state"
    VERSION = "1.1"  # Port.revision
    host: HostName
    kind: AgentKind
    # compute: every instance that should exist on the host (not deleted, not failed)
    instances: list[InstanceSpec] = []
    # l2: every port that should be wired on the host
    ports: list[Port] = []
    # known to be gone: deleted instances and released ports of this host, recent ones
    deleted_instances: list[UUID] = []
    released_ports: list[UUID] = []
    at: datetime = Field(default_factory=utcnow)


MESSAGES: dict[str, type[Message]] = {
    cls.SCHEMA: cls
    for cls in (
        PortCreated,
        PortUpdated,
        PortDeleted,
        BuildInstance,
        DeleteInstance,
        RebootInstance,
        InstanceRef,
        VifEvent,
        InstanceEvent,
        AgentHeartbeat,
        MessageRejected,
        PingReply,
        InstanceInfo,
        InstanceList,
        ConsoleLog,
        PortInfo,
        PortList,
        DesiredStateRequest,
        DesiredState,
    )
}


# --------------------------------------------------------------------------- envelope


def envelope(message: Message) -> dict[str, Any]:
    return {
        "schema": message.SCHEMA,
        "version": message.VERSION,
        "data": message.model_dump(mode="json"),
    }


def is_envelope(value: object) -> bool:
    return isinstance(value, dict) and "schema" in value and "data" in value


def describe_errors(err: ValidationError) -> str:
    """One line naming each bad field and the value it had."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(message)"
        value = e.get("input")
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        parts.append(f"{loc} = {shown}: {e['msg']}")
    return "; ".join(parts)


def open_envelope(value: object, expect: type[Message] | None = None) -> Message:
    """Validate an envelope (or a bare dict of `expect`) into its model.

    Raises InvalidMessage naming the schema and every bad field.
    """
    schema_name = expect.SCHEMA if expect else "unknown"
    if is_envelope(value):
        assert isinstance(value, dict)
        schema_name = str(value.get("schema"))
        cls = MESSAGES.get(schema_name)
        if cls is None:
            raise InvalidMessage(schema=schema_name, problem="unknown schema")
        if expect is not None and cls is not expect:
            raise InvalidMessage(schema=schema_name, problem=f"expected {expect.SCHEMA}")
        version = str(value.get("version", ""))
        major = version.split(".", 1)[0]
        if major != cls.VERSION.split(".", 1)[0]:
            raise InvalidMessage(
                schema=schema_name,
                problem=f"version {version!r} is not readable (this side speaks {cls.VERSION})",
            )
        data = value.get("data")
    elif expect is not None:
        cls, data = expect, value
    else:
        raise InvalidMessage(schema="unknown", problem=f"not a message envelope: {value!r:.80}")
    if not isinstance(data, dict):
        raise InvalidMessage(
            schema=schema_name, problem=f"data must be an object, got {data!r:.80}"
        )
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise InvalidMessage(schema=schema_name, problem=describe_errors(err)) from err


def salvage_uuid(value: object, *keys: str) -> UUID | None:
    """Best effort: find a valid uuid under one of `keys` in a message that failed validation.

    Used only to address an error notification to the right instance; never to act.
    """
    stack: list[object] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key in keys:
                candidate = item.get(key)
                if isinstance(candidate, str):
                    try:
                        return uuidlib.UUID(candidate)
                    except ValueError:
                        pass
            stack.extend(v for v in item.values() if isinstance(v, dict))
    return None
