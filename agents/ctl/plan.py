"""Deciding a build: instance and port uuids, MACs under fa:16:3e, fixed IPs, names.

Pure: it takes the configuration and the addresses already held (gathered by the
caller from the live l2-agents) and returns what to send. It never talks to the broker.

Fixed IPs without a central database: the l2-agents' port records are the truth of
which addresses are held on each network, so the caller gathers them (list_ports on
every live l2-agent) and `allocate()` hands out the lowest free addresses of the
network's allocation pool, skipping the gateway. Two agentctl runs at the same moment
can pick the same address (nothing is locked); `conflicts()` finds that once the ports
are recorded, and the build that sees a conflict gives its instance up (see
docs/agentctl.md).
"""

from __future__ import annotations

import random
import uuid as uuidlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address

from pydantic import TypeAdapter, ValidationError

from agents.ctl.errors import NetworkExhausted, UnknownChoice
from agents.ctl.settings import CtlConfig
from common.config import Flavor, NetworkSpec
from common.errors import InvalidInput
from common.messages import (
    UUID,
    BuildInstance,
    HostName,
    InstanceSpec,
    Name,
    Port,
    PortCreated,
    PortInfo,
)

MAC_PREFIX = (0xFA, 0x16, 0x3E)
_NAME: TypeAdapter[str] = TypeAdapter(Name)
_HOST: TypeAdapter[str] = TypeAdapter(HostName)


def new_mac(rng: random.Random) -> str:
    """A MAC under fa:16:3e (the OpenStack prefix operators recognise)."""
    tail = [rng.randrange(256) for _ in range(3)]
    return ":".join(f"{b:02x}" for b in (*MAC_PREFIX, *tail))


def pick_flavor(config: CtlConfig, name: str | None) -> Flavor:
    chosen = name or config.agentctl.default_flavor
    if chosen not in config.flavors:
        raise UnknownChoice(field="flavor", value=chosen, valid=sorted(config.flavors))
    return config.flavors[chosen]


def pick_networks(config: CtlConfig, names: Sequence[str] | None) -> list[NetworkSpec]:
    """The networks asked for (in order), or the first configured one."""
    if not config.networks:
        raise UnknownChoice(field="network", value=(names or ["(default)"])[0], valid=[])
    if not names:
        return [next(iter(config.networks.values()))]
    out = []
    for name in names:
        net = config.networks.get(name) or _by_uuid(config, name)
        if net is None:
            raise UnknownChoice(field="network", value=name, valid=sorted(config.networks))
        out.append(net)
    return out


def _by_uuid(config: CtlConfig, value: str) -> NetworkSpec | None:
    try:
        return config.network_by_uuid(uuidlib.UUID(value))
    except ValueError:
        return None


def check_name(field: str, value: str) -> str:
    try:
        return _NAME.validate_python(value)
    except ValidationError as err:
        problem = err.errors()[0]["msg"].removeprefix("Value error, ")
        raise InvalidInput(field=field, value=value, problem=problem) from err


def check_host(value: str) -> str:
    try:
        return _HOST.validate_python(value)
    except ValidationError as err:
        problem = err.errors()[0]["msg"].removeprefix("Value error, ")
        raise InvalidInput(field="--host", value=value, problem=problem) from err


def instance_names(base: str | None, count: int, rng: random.Random) -> list[str]:
    """`base` for one instance, `base-1..base-K` for several; a random name when none."""
    if count < 1:
        raise InvalidInput(field="--count", value=count, problem="must be at least 1")
    stem = base if base is not None else f"vm-{rng.randrange(16**6):06x}"
    check_name("--name", stem)
    names = [stem] if count == 1 else [f"{stem}-{i}" for i in range(1, count + 1)]
    for name in names:
        check_name("--name", name)
    return names


def held_addresses(ports: Iterable[PortInfo], network_id: UUID) -> set[IPv4Address]:
    return {
        p.port.fixed_ip
        for p in ports
        if p.port.network_id == network_id and p.port.fixed_ip is not None
    }


def allocate(network: NetworkSpec, held: set[IPv4Address], count: int) -> list[IPv4Address | None]:
    """The `count` lowest free addresses of the network's pool (None when it has no cidr)."""
    pool = network.allocation_pool()
    if pool is None:
        return [None] * count
    start, end = pool
    out: list[IPv4Address | None] = []
    addr = int(start)
    while len(out) < count and addr <= int(end):
        candidate = IPv4Address(addr)
        if candidate not in held and candidate != network.gateway:
            out.append(candidate)
        addr += 1
    if len(out) < count:
        raise NetworkExhausted(network=network.name, start=start, end=end, wanted=count)
    return out


@dataclass(frozen=True)
class BuildPlan:
    """What one `send build` sends: a BuildInstance per instance, a PortCreated per port."""

    host: str
    request_id: str
    builds: list[BuildInstance]
    ports: list[PortCreated]
    # l2-agents whose port records the addresses were allocated against
    l2_hosts: list[str]

    @property
    def allocated(self) -> bool:
        """Did any port get a fixed IP (so a race with another agentctl is possible)?"""
        return any(m.port.fixed_ip is not None for m in self.ports)

    def ports_of(self, instance_uuid: UUID) -> list[Port]:
        for build in self.builds:
            if build.instance.uuid == instance_uuid:
                return list(build.instance.ports)
        return []


def make_plan(
    *,
    host: str,
    request_id: str,
    names: Sequence[str],
    flavor: Flavor,
    image: str,
    networks: Sequence[NetworkSpec],
    held: dict[UUID, set[IPv4Address]],
    rng: random.Random,
    l2_hosts: Sequence[str] = (),
) -> BuildPlan:
    """Instances `names`, each with one port on each of `networks`."""
    check_name("--image", image)
    addresses = {net.uuid: allocate(net, held.get(net.uuid, set()), len(names)) for net in networks}
    macs: set[str] = set()
    builds: list[BuildInstance] = []
    port_msgs: list[PortCreated] = []
    for i, name in enumerate(names):
        instance_uuid = uuidlib.UUID(int=rng.getrandbits(128), version=4)
        ports = []
        for net in networks:
            mac = new_mac(rng)
            while mac in macs:  # 2**24 MACs: a clash within one plan is rare but cheap to avoid
                mac = new_mac(rng)
            macs.add(mac)
            ports.append(
                Port(
                    id=uuidlib.UUID(int=rng.getrandbits(128), version=4),
                    network_id=net.uuid,
                    mac=mac,
                    fixed_ip=addresses[net.uuid][i],
                    mtu=net.mtu,
                    instance_uuid=instance_uuid,
                )
            )
        spec = InstanceSpec(
            uuid=instance_uuid, name=name, flavor=flavor.name, image=image, ports=ports
        )
        builds.append(BuildInstance(request_id=request_id, host=host, instance=spec))
        port_msgs.extend(PortCreated(request_id=request_id, host=host, port=p) for p in ports)
    return BuildPlan(
        host=host, request_id=request_id, builds=builds, ports=port_msgs, l2_hosts=list(l2_hosts)
    )


def conflicts(ports: Iterable[PortInfo], mine: Iterable[Port]) -> dict[UUID, list[UUID]]:
    """For each of `mine` with an address: the other recorded ports holding the same one.

    Checked after our ports are recorded (wired), so of two builds that raced for an
    address the second to check always sees the other; the first may not. Hence the
    rule: whoever sees a conflict gives the address up. Never both keep it; at worst
    both give it up and the operator builds again.
    """
    held: dict[tuple[UUID, IPv4Address], set[UUID]] = {}
    for info in ports:
        if info.port.fixed_ip is not None:
            held.setdefault((info.port.network_id, info.port.fixed_ip), set()).add(info.port.id)
    out: dict[UUID, list[UUID]] = {}
    for port in mine:
        if port.fixed_ip is None:
            continue
        others = held.get((port.network_id, port.fixed_ip), set()) - {port.id}
        if others:
            out[port.id] = sorted(others, key=str)
    return out
