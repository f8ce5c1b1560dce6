"""Waiting for the vif events of a build's ports, without losing any.

The l2-agent is cast `port_created` before the compute-agent is cast `build_instance`,
so a `port.vif_plugged` may arrive before the build begins to wait, or even before the
build message is read. Therefore:
- every vif event of this host is kept for `retention` seconds (bounded in number),
  whether anyone waits for it or not;
- `expect(ports)` registers the per-port waiters and consults those recent events in
  one step under one lock, so no event can fall between the two;
- `Expectation.wait()` has one monotonic deadline for all ports together;
- a `port.plug_failed` fails the wait at once with its reason, and `abort()` (a delete
  or a SIGTERM) wakes it at once too.

It owns this bookkeeping only: it does not subscribe to the broker (the manager feeds
it events) and does not decide what a timeout means for the build.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from uuid import UUID

from agents.compute.errors import BuildAborted, VifPlugFailed, VifPlugTimeout

PLUGGED = "port.vif_plugged"
UNPLUGGED = "port.vif_unplugged"
FAILED = "port.plug_failed"


@dataclass(frozen=True)
class _Seen:
    event_type: str
    reason: str | None
    at: float


class Expectation:
    """The pending vif events of one build."""

    def __init__(self, owner: VifWaiter, ports: set[UUID]) -> None:
        self._owner = owner
        self.pending = set(ports)
        self.failed: tuple[UUID, str] | None = None
        self.aborted: str | None = None
        self.cond = threading.Condition(owner.lock)

    def wait(self, timeout: float) -> None:
        """Return once every port plugged; raise VifPlugFailed/VifPlugTimeout/BuildAborted."""
        deadline = self._owner.clock() + timeout
        with self.cond:
            while True:
                if self.aborted is not None:
                    raise BuildAborted(instance="(vif wait)", reason=self.aborted)
                if self.failed is not None:
                    port, reason = self.failed
                    raise VifPlugFailed(port=str(port), reason=reason)
                if not self.pending:
                    return
                remaining = deadline - self._owner.clock()
                if remaining <= 0:
                    raise VifPlugTimeout(
                        timeout=timeout, ports=", ".join(sorted(str(p) for p in self.pending))
                    )
                self.cond.wait(remaining)

    def abort(self, reason: str) -> None:
        with self.cond:
            self.aborted = reason
            self.cond.notify_all()

    def close(self) -> None:
        self._owner.forget(self)

    def __enter__(self) -> Expectation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # called by VifWaiter with the lock held
    def _apply(self, port: UUID, seen: _Seen) -> None:
        if port not in self.pending and seen.event_type != FAILED:
            return
        if seen.event_type == PLUGGED:
            self.pending.discard(port)
        elif seen.event_type == FAILED and port in self.pending:
            self.failed = (port, seen.reason or "no reason given")
        self.cond.notify_all()


class VifWaiter:
    def __init__(
        self,
        retention: float = 300.0,
        max_remembered: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lock = threading.Lock()
        self.clock = clock
        self._retention = retention
        self._max = max_remembered
        self._recent: OrderedDict[UUID, _Seen] = OrderedDict()
        self._waiting: dict[UUID, list[Expectation]] = {}

    def on_event(self, event_type: str, port_id: UUID, reason: str | None = None) -> None:
        """Record a vif event of this host and wake whoever waits for its port."""
        with self.lock:
            seen = _Seen(event_type, reason, self.clock())
            self._recent[port_id] = seen  # the latest event of a port is what counts
            self._recent.move_to_end(port_id)
            self._prune()
            for expectation in self._waiting.get(port_id, ()):
                expectation._apply(port_id, seen)

    def expect(self, ports: Iterable[UUID]) -> Expectation:
        """Register waiters for `ports`, already satisfied by events seen recently."""
        with self.lock:
            self._prune()
            expectation = Expectation(self, set(ports))
            for port in list(expectation.pending):
                self._waiting.setdefault(port, []).append(expectation)
                seen = self._recent.get(port)
                if seen is not None:
                    expectation._apply(port, seen)
            return expectation

    def forget(self, expectation: Expectation) -> None:
        with self.lock:
            for port, waiting in list(self._waiting.items()):
                if expectation in waiting:
                    waiting.remove(expectation)
                if not waiting:
                    del self._waiting[port]

    def _prune(self) -> None:
        horizon = self.clock() - self._retention
        while self._recent:
            port, seen = next(iter(self._recent.items()))
            if seen.at >= horizon and len(self._recent) <= self._max:
                break
            del self._recent[port]

    def remembered(self) -> int:
        with self.lock:
            return len(self._recent)
