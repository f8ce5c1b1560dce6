"""Watching a lab from outside while a scenario runs: events and guest consoles, timed.

What it owns:
- `EventRecorder`: a thread with a private exclusive queue on the lab's exchange
  (common.rpc.EventWatcher) keeping every instance/agent/vif event with the monotonic
  time it arrived, so a scenario can ask "when was this port wired?" afterwards;
- `ConsoleWatch`: a thread that polls the controller's console-log API (proxied to the
  compute-agent) for the guests it was given and remembers when each console marker was
  first seen (`AGENTS-GUEST-READY`, `AGENTS-PING ip=X ok`).

What it must not do: act on the lab. It only reads, through a watcher queue that
disappears with it and the controller's read-only API.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from uuid import UUID

from agents.lab.controller import LabController
from agents.lab.procs import LabError
from common.config import MessagingSettings
from common.rpc import Event, EventWatcher

_PING_OK = re.compile(r"AGENTS-PING ip=(?P<ip>[0-9.]+) ok")
_READY = re.compile(r"AGENTS-GUEST-READY name=\S+ ip=(?P<ip>\S+)")


@dataclass(frozen=True)
class Seen:
    at: float  # time.monotonic()
    event: Event


class EventRecorder:
    """Every notification on `routing_keys` of the lab's exchange, with its arrival time."""

    def __init__(self, settings: MessagingSettings, routing_keys: Iterable[str]) -> None:
        self._settings = settings
        self._keys = list(routing_keys)
        self._seen: list[Seen] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="event-recorder", daemon=True)

    def __enter__(self) -> EventRecorder:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None or not self._ready.is_set():
            raise RuntimeError(f"event watcher did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        try:
            watcher = EventWatcher(self._settings, self._keys)
        except BaseException as err:  # reported by __enter__
            self._error = err
            self._ready.set()
            return
        self._ready.set()
        try:
            while not self._stop.is_set():
                for event in watcher.poll(0.2):
                    with self._lock:
                        self._seen.append(Seen(time.monotonic(), event))
        finally:
            with contextlib.suppress(Exception):
                watcher.close()

    def events(self) -> list[Seen]:
        with self._lock:
            return list(self._seen)

    def first(self, event_type: str, **fields: object) -> float | None:
        """Arrival time of the first `event_type` whose payload has all of `fields`."""
        for seen in self.events():
            payload = seen.event.payload
            if seen.event.event_type == event_type and all(
                getattr(payload, k, None) == v for k, v in fields.items()
            ):
                return seen.at
        return None

    def about(self, since: float = 0.0, **fields: object) -> list[str]:
        """Event types since `since` whose payload has all of `fields`."""
        return [
            s.event.event_type
            for s in self.events()
            if s.at >= since
            and all(getattr(s.event.payload, k, None) == v for k, v in fields.items())
        ]


@dataclass
class _Guest:
    uuid: UUID
    markers: dict[str, float] = field(default_factory=dict)
    text: str = ""


class ConsoleWatch:
    """Poll guests' console logs through the controller; remember when each marker first
    appeared."""

    def __init__(self, controller: LabController, interval: float = 0.25) -> None:
        self._controller = controller
        self._interval = interval
        self._guests: dict[UUID, _Guest] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="console-watch", daemon=True)

    def __enter__(self) -> ConsoleWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def add(self, instance_uuid: UUID) -> None:
        with self._lock:
            self._guests[instance_uuid] = _Guest(instance_uuid)

    def forget(self, instance_uuid: UUID) -> None:
        with self._lock:
            self._guests.pop(instance_uuid, None)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            with self._lock:
                guests = list(self._guests.values())
            for guest in guests:
                try:
                    log = self._controller.get(f"/v1/instances/{guest.uuid}/console-log")
                except LabError:  # an agent restarting: keep polling, the test has deadlines
                    continue
                self._note(guest, str(log.get("text", "")))

    def _note(self, guest: _Guest, text: str) -> None:
        now = time.monotonic()
        found = [f"ping:{m.group('ip')}" for m in _PING_OK.finditer(text)]
        ready = _READY.search(text)
        if ready:
            found.append("ready")
        with self._lock:
            guest.text = text
            for marker in found:
                guest.markers.setdefault(marker, now)

    def seen(self, instance_uuid: UUID, marker: str) -> float | None:
        """When `marker` ("ready" or "ping:<ip>") was first seen on that console."""
        with self._lock:
            guest = self._guests.get(instance_uuid)
            return guest.markers.get(marker) if guest else None

    def text(self, instance_uuid: UUID) -> str:
        with self._lock:
            guest = self._guests.get(instance_uuid)
            return guest.text if guest else ""
