"""Typed settings, read from INI files once in main() and passed down.

Files are OpenStack-style INI (operators know them): later `--config-file` arguments
override earlier ones key by key, so an agent can read its own file plus the
`networks.conf` that every host shares. Sections named `network:NAME` and
`flavor:NAME` become entries of `networks` and `flavors`.

Every error names the file, section, key and offending value. Nothing here keeps
module-level state: `load()` returns a fresh validated object.
"""

from __future__ import annotations

import configparser
import ipaddress
import socket
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from common.errors import ConfigError, ConfigFileError, ConfigSectionError
from common.messages import UUID, HostName, Mtu, Name

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


def _check_transport_url(value: str) -> str:
    """oslo's form: `rabbit://user:pass@host:port[,user:pass@host:port...]/vhost`; every
    host of a multi-node list is checked, so a typo fails at load, not at failover."""
    parts = urlsplit(value)
    if parts.scheme not in ("rabbit", "kombu+memory", "fake"):
        raise ValueError("must start with rabbit:// (or kombu+memory:// / fake:// in tests)")
    if parts.scheme != "rabbit":
        return value
    netloc = value[len("rabbit://") :].partition("/")[0]
    if not netloc:
        raise ValueError("names no broker host (rabbit://user:pass@host:5672/)")
    seen: set[str] = set()
    for i, entry in enumerate(netloc.split(","), start=1):
        host_port = entry.rpartition("@")[2]
        host, sep, port = host_port.rpartition(":") if "]" not in host_port[-1:] else ("", "", "")
        if not sep:
            host, port = host_port, "5672"
        if not host.strip("[]") or any(c in host for c in " /?#"):
            raise ValueError(f"broker {i} ({entry.rpartition('@')[2]!r}) has no valid host")
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"broker {i} ({host_port!r}) has a bad port {port!r}")
        if host_port in seen:
            raise ValueError(f"broker {i} ({host_port!r}) is listed twice")
        seen.add(host_port)
    return value


def _check_listen(value: str) -> str:
    _host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("must be HOST:PORT, like 127.0.0.1:9101 (port 0: any free port)")
    return value


def _check_pem_file(value: Path) -> Path:
    """A file that exists, can be read by this process and holds a PEM block."""
    try:
        head = value.read_bytes()[:1_000_000]
    except OSError as err:
        raise ValueError(f"cannot read {value}: {err.strerror or err}") from err
    if b"-----BEGIN " not in head:
        raise ValueError(f"{value} is not a PEM file (no -----BEGIN line)")
    return value


TransportUrl = Annotated[str, AfterValidator(_check_transport_url)]
PemFile = Annotated[Path, AfterValidator(_check_pem_file)]
ListenAddress = Annotated[str, AfterValidator(_check_listen)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DefaultSettings(Section):
    host: HostName = Field(default_factory=lambda: socket.gethostname().split(".")[0])
    log_level: LogLevel = "INFO"
    log_format: Literal["auto", "json", "console"] = "auto"
    state_dir: Path = Path("/var/lib/agents")


class MessagingSettings(Section):
    transport_url: TransportUrl = "rabbit://guest:guest@127.0.0.1:5672/"
    # The exchange every RPC target and notification topic of one deployment lives in;
    # two deployments (or two test runs) on one broker stay apart by using two exchanges.
    control_exchange: Name = "agents"
    queue_type: Literal["classic", "quorum"] = "classic"
    # Quorum queues only: a message handed out this many times and never acknowledged
    # (a consumer that crashes or requeues on it) goes to the dead-letter queue
    # `<control_exchange>.dead-letter` instead of spinning forever.
    delivery_limit: Annotated[int, Field(ge=1, le=1000)] = 20
    durable_queues: bool = True
    rpc_timeout: Annotated[float, Field(gt=0, le=600)] = 30.0
    # How long a cast may wait for the broker before giving up (None = oslo's default,
    # which blocks for the whole outage).
    send_retry: Annotated[int, Field(ge=-1, le=100)] = 3
    heartbeat_timeout: Annotated[int, Field(ge=0, le=600)] = 60
    events_topic: Name = "agents_events"
    # TLS to the broker (docs/security.md): the CA that signed the broker's certificate
    # (set: every connection uses TLS and verifies the broker's certificate and host
    # name), and optionally this daemon's own certificate and key.
    ssl_ca_file: PemFile | None = None
    ssl_cert_file: PemFile | None = None
    ssl_key_file: PemFile | None = None

    @model_validator(mode="after")
    def _ssl_coherent(self) -> MessagingSettings:
        if (self.ssl_cert_file is None) != (self.ssl_key_file is None):
            raise ValueError("ssl_cert_file and ssl_key_file go together (a client certificate)")
        if self.ssl_cert_file is not None and self.ssl_ca_file is None:
            raise ValueError("a client certificate needs ssl_ca_file (TLS to the broker)")
        return self

    @property
    def ssl(self) -> bool:
        return self.ssl_ca_file is not None


class MetricsSettings(Section):
    listen: ListenAddress = "127.0.0.1:0"


class NetworkSpec(Section):
    """A provider network, shared by every agent and agentctl."""

    name: Name = "unnamed"
    uuid: UUID
    type: Literal["flat", "vxlan", "vlan"]
    segmentation_id: Annotated[int, Field(ge=1, le=16777215)] | None = None
    physnet: Name | None = None
    mtu: Mtu = 1500
    cidr: IPv4Network | None = None
    gateway: IPv4Address | None = None
    allocation_start: IPv4Address | None = None
    allocation_end: IPv4Address | None = None

    @model_validator(mode="after")
    def _coherent(self) -> NetworkSpec:
        if self.type == "vxlan" and self.segmentation_id is None:
            raise ValueError("a vxlan network needs segmentation_id (the VNI)")
        if self.type == "vlan":
            if self.segmentation_id is None or not 1 <= self.segmentation_id <= 4094:
                raise ValueError("a vlan network needs segmentation_id between 1 and 4094")
            if self.physnet is None:
                raise ValueError("a vlan network needs physnet")
        if self.type == "flat" and self.physnet is None:
            raise ValueError("a flat network needs physnet")
        if (self.allocation_start or self.allocation_end) and self.cidr is None:
            raise ValueError("an allocation range needs cidr")
        if self.cidr is not None:
            for label, addr in (
                ("allocation_start", self.allocation_start),
                ("allocation_end", self.allocation_end),
                ("gateway", self.gateway),
            ):
                if addr is not None and addr not in self.cidr:
                    raise ValueError(f"{label} {addr} is outside cidr {self.cidr}")
        return self

    def allocation_pool(self) -> tuple[IPv4Address, IPv4Address] | None:
        """First and last address given out to ports, gateway and network edges excluded."""
        if self.cidr is None:
            return None
        # what cidr.hosts() would give first and last, without listing them (asked on
        # every create): /31 and /32 use every address, larger nets drop both edges
        net = self.cidr
        edge = 0 if net.prefixlen >= 31 else 1
        start = self.allocation_start or ipaddress.IPv4Address(int(net.network_address) + edge)
        end = self.allocation_end or ipaddress.IPv4Address(int(net.broadcast_address) - edge)
        if self.gateway is not None and start == self.gateway and self.allocation_start is None:
            start = ipaddress.IPv4Address(int(start) + 1)
        return start, end


class Flavor(Section):
    name: Name = "unnamed"
    vcpus: Annotated[int, Field(ge=1, le=64)]
    memory_mb: Annotated[int, Field(ge=32, le=1024 * 1024)]
    disk_gb: Annotated[int, Field(ge=0, le=16 * 1024)] = 1


class BaseConfig(Section):
    """What every process reads. Agents extend it with their own section."""

    DEFAULT: DefaultSettings = DefaultSettings()
    messaging: MessagingSettings = MessagingSettings()
    metrics: MetricsSettings = MetricsSettings()
    networks: dict[Name, NetworkSpec] = {}
    flavors: dict[Name, Flavor] = {}

    @model_validator(mode="after")
    def _unique_network_uuids(self) -> BaseConfig:
        seen: dict[UUID, str] = {}
        for name, net in self.networks.items():
            if net.uuid in seen:
                raise ValueError(f"networks {seen[net.uuid]!r} and {name!r} share uuid {net.uuid}")
            seen[net.uuid] = name
        return self

    def network_by_uuid(self, net_id: UUID) -> NetworkSpec | None:
        for net in self.networks.values():
            if net.uuid == net_id:
                return net
        return None


C = TypeVar("C", bound=BaseConfig)

_NAMED_SECTIONS = {"network": "networks", "flavor": "flavors"}


def read_ini(files: Sequence[str | Path]) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    """Merge INI files into nested dicts, remembering which file set each key."""
    tree: dict[str, Any] = {}
    origin: dict[tuple[str, ...], str] = {}
    for file in files:
        path = Path(file)
        parser = configparser.ConfigParser(interpolation=None, default_section="\x00none")
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        try:
            with path.open(encoding="utf-8") as fh:
                parser.read_file(fh)
        except OSError as err:
            raise ConfigFileError(file=str(path), problem=err.strerror or str(err)) from err
        except (configparser.Error, UnicodeDecodeError) as err:
            raise ConfigFileError(file=str(path), problem=str(err).splitlines()[0]) from err
        for section in parser.sections():
            kind, sep, name = section.partition(":")
            if sep and kind in _NAMED_SECTIONS:
                plural = _NAMED_SECTIONS[kind]
                target = tree.setdefault(plural, {}).setdefault(
                    name.strip(), {"name": name.strip()}
                )
                prefix: tuple[str, ...] = (plural, name.strip())
            else:
                target = tree.setdefault(section, {})
                prefix = (section,)
            for key, value in parser.items(section, raw=True):
                if value == "":
                    continue  # an empty value means "use the default", as in oslo.config
                target[key] = value
                origin[(*prefix, key)] = str(path)
    return tree, origin


def _section_label(loc: tuple[str, ...]) -> tuple[str, str]:
    if loc and loc[0] in ("networks", "flavors") and len(loc) >= 2:
        kind = "network" if loc[0] == "networks" else "flavor"
        return f"{kind}:{loc[1]}", ".".join(loc[2:]) or "(section)"
    return (loc[0] if loc else "(file)"), ".".join(loc[1:]) or "(section)"


def load(
    model: type[C], files: Sequence[str | Path], overrides: dict[str, dict[str, Any]] | None = None
) -> C:
    """Read and validate `files` into `model`; command-line `overrides` win over files."""
    tree, origin = read_ini(files)
    for section, values in (overrides or {}).items():
        for key, value in values.items():
            if value is not None:
                tree.setdefault(section, {})[key] = value
                origin[(section, key)] = "command line"
    try:
        return model.model_validate(tree)
    except ValidationError as err:
        first = err.errors()[0]
        loc = tuple(str(p) for p in first["loc"])
        section, key = _section_label(loc)
        # A model-level check reports the section; find the file from any key in it.
        file = (
            origin.get(loc)
            or next((f for k, f in origin.items() if k[: len(loc)] == loc), None)
            or (str(files[-1]) if files else "(no file)")
        )
        shown: Any = first.get("input")
        if isinstance(shown, dict):
            shown = "(section)"
        problem = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            problem = "unknown key"
        if key == "(section)":
            raise ConfigSectionError(file=file, section=section, problem=problem) from err
        raise ConfigError(
            file=file, section=section, key=key, value=shown, problem=problem
        ) from err
