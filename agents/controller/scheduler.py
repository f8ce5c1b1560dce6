"""Choosing a host for an instance: pure, over a snapshot of hosts and their usage.

A host is a candidate when its compute-agent is alive and its reported capacity minus
what the controller already placed there fits the flavor. Least loaded first (the
largest share of memory left, then of vCPUs, then the name, so equal hosts are taken
in a stable order). Like nova's filter scheduler, reduced to the two resources a
flavor names; what is placed is counted from the database, not from the agents.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from common.config import Flavor
from common.errors import AgentsError


class NoHostFits(AgentsError):
    msg_fmt = "no live host has room for flavor {flavor!r} ({vcpus} vCPU, {memory_mb} MiB): {why}"


class HostUnfit(AgentsError):
    msg_fmt = "host {host!r} has no room for flavor {flavor!r}: {why}"


@dataclass(frozen=True)
class HostLoad:
    host: str
    alive: bool
    vcpus: int
    memory_mb: int
    vcpus_used: int = 0
    memory_mb_used: int = 0
    # the images its compute-agent can boot; None: it did not say (taken at its word)
    images: frozenset[str] | None = None

    def has_image(self, image: str) -> bool:
        return self.images is None or image in self.images

    def room_for(self, flavor: Flavor) -> str | None:
        """None when `flavor` fits; otherwise why not, in words."""
        if not self.alive:
            return "its compute-agent is down"
        if self.vcpus - self.vcpus_used < flavor.vcpus:
            return f"{self.vcpus - self.vcpus_used} of {self.vcpus} vCPUs free"
        if self.memory_mb - self.memory_mb_used < flavor.memory_mb:
            return f"{self.memory_mb - self.memory_mb_used} of {self.memory_mb} MiB free"
        return None

    def placed(self, flavor: Flavor) -> HostLoad:
        return replace(
            self,
            vcpus_used=self.vcpus_used + flavor.vcpus,
            memory_mb_used=self.memory_mb_used + flavor.memory_mb,
        )

    def _free_share(self) -> tuple[float, float]:
        mem = (self.memory_mb - self.memory_mb_used) / self.memory_mb if self.memory_mb else 0.0
        cpu = (self.vcpus - self.vcpus_used) / self.vcpus if self.vcpus else 0.0
        return mem, cpu


def place(hosts: list[HostLoad], flavor: Flavor, count: int) -> list[str]:
    """One host per instance, spreading: each pick updates the load the next one sees."""
    loads = {h.host: h for h in hosts}
    chosen: list[str] = []
    for _ in range(count):
        fits = [h for h in loads.values() if h.room_for(flavor) is None]
        if not fits:
            why = "no compute-agent has reported" if not hosts else _summary(hosts, flavor)
            raise NoHostFits(
                flavor=flavor.name, vcpus=flavor.vcpus, memory_mb=flavor.memory_mb, why=why
            )
        best = max(fits, key=lambda h: (*h._free_share(), _reverse(h.host)))
        loads[best.host] = best.placed(flavor)
        chosen.append(best.host)
    return chosen


def check_host(load: HostLoad, flavor: Flavor, count: int) -> None:
    """Raise HostUnfit unless `count` instances of `flavor` fit on `load`'s host."""
    for _ in range(count):
        why = load.room_for(flavor)
        if why is not None:
            raise HostUnfit(host=load.host, flavor=flavor.name, why=why)
        load = load.placed(flavor)


def _reverse(name: str) -> tuple[int, ...]:
    # max() picks the largest key: invert the name so that "node1" beats "node2" on a tie.
    return tuple(-ord(c) for c in name)


def _summary(hosts: list[HostLoad], flavor: Flavor) -> str:
    parts = [f"{h.host}: {h.room_for(flavor)}" for h in sorted(hosts, key=lambda h: h.host)[:5]]
    more = f" (+{len(hosts) - 5} more)" if len(hosts) > 5 else ""
    return "; ".join(parts) + more
