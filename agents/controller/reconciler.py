"""Re-drive and host sync: the controller's two level-triggered loops.

Re-drive: each pass asks the database which open operations have had no news for
`redrive_after` seconds and casts them again with the same ids (the agents are
idempotent by uuid), or fails them once `operation_timeout` has passed or
`max_attempts` casts went unanswered. A lost cast, a restarted agent or a broker that
dropped a message all end the same way: done, or failed with a named reason.

Host sync (`hostsync.HostSync`, every `host_sync_interval` seconds, on a thread of its
own so a slow host never delays the re-drive): each live compute host's
`list_instances` compared with the database; observed states and faults follow what
the hosts have, nothing is cast.
"""

from __future__ import annotations

import threading
import time

import structlog

from agents.controller.bus import Bus
from agents.controller.db.engine import DatabaseError
from agents.controller.db.store import Store
from agents.controller.hostsync import HostSync
from agents.controller.settings import ControllerSettings

log = structlog.get_logger()

PRUNE_EVERY_S = 3600.0


class Reconciler:
    def __init__(self, store: Store, bus: Bus, settings: ControllerSettings) -> None:
        self.store = store
        self.bus = bus
        self.settings = settings
        self.host_sync = HostSync(store, bus, timeout=settings.host_sync_timeout)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sync_thread: threading.Thread | None = None
        self.last_pass: float = time.monotonic()
        self._last_prune = 0.0

    def run_once(self) -> tuple[int, int]:
        s = self.settings
        casts, failed = self.store.stalled(s.redrive_after, s.operation_timeout, s.max_attempts)
        if casts:
            log.info("operations_redriven", casts=len(casts))
            self.bus.publish(casts)
        if failed:
            log.warning("operations_given_up", count=len(failed))
            self.bus.hub.notify()
        now = time.monotonic()
        if now - self._last_prune > PRUNE_EVERY_S:
            self._last_prune = now
            self.store.prune_events(s.events_retention_days)
        return len(casts), len(failed)

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.reconcile_interval):
            try:
                self.run_once()
            except DatabaseError as err:
                log.error("reconcile_failed", error=err.reason)
            except Exception as err:  # the loop must outlive a bug in one pass
                log.exception("reconcile_crashed", error=str(err))
            self.last_pass = time.monotonic()

    def _sync_loop(self) -> None:
        while not self._stop.wait(self.settings.host_sync_interval):
            try:
                self.host_sync.run_once()
            except DatabaseError as err:
                log.error("host_sync_pass_failed", error=err.reason)
            except Exception as err:  # the loop must outlive a bug in one pass
                log.exception("host_sync_crashed", error=str(err))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="reconciler", daemon=True)
        self._thread.start()
        if self.settings.host_sync_interval > 0:
            self._sync_thread = threading.Thread(
                target=self._sync_loop, name="host-sync", daemon=True
            )
            self._sync_thread.start()

    def healthy(self) -> bool:
        return time.monotonic() - self.last_pass < max(60.0, 10 * self.settings.reconcile_interval)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        for thread in (self._thread, self._sync_thread):
            if thread is not None:
                thread.join(timeout)
