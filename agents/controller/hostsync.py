"""Level-triggered host sync: what each compute host has, compared with the database.

Every `[controller] host_sync_interval` seconds the reconciler asks each live compute
host for `list_instances` (bounded by `host_sync_timeout`; hosts are asked in parallel
on a small thread pool, and one that fails or does not answer is logged and skipped,
never stopping the others) and hands the answer to `Records.apply_listing`, which
makes the observed state match: a guest gone behind the agents' back turns its
instance to `error` with a fault naming the host, a guest stopped behind their back
turns `running` to `shutoff` with the fault "stopped outside agents", each with a
timeline event `instance.sync`. Desired state is then driven back: a gone guest's
ports are unwired and their addresses released; a stopped one is started again by a
hard-reboot operation of its own (tracked and re-driven like any other). Nothing is
ever deleted on a host from here; what a host has that the database does not know is
logged (`foreign_instance_on_host`) and left alone.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import structlog

from agents.controller.bus import Bus
from agents.controller.db.records import ListingReport, Records
from agents.controller.db.store import Store, utcnow
from common.errors import AgentsError
from common.messages import InstanceList
from common.rpc import expect

log = structlog.get_logger()


class HostSync:
    def __init__(self, store: Store, bus: Bus, timeout: float = 5.0, workers: int = 8) -> None:
        self.store = store
        self.bus = bus
        self.records = Records(store)
        self.timeout = timeout
        self.workers = workers
        # (host, kind of finding, uuid) already logged as a warning: said once, then quiet
        self._reported: set[tuple[str, str, str]] = set()
        self._lock = threading.Lock()

    def run_once(self) -> dict[str, ListingReport | None]:
        """One pass over every live compute host; per host its report, None if skipped."""
        hosts = self.store.live_hosts("compute")
        if not hosts:
            return {}
        with ThreadPoolExecutor(
            max_workers=min(self.workers, len(hosts)), thread_name_prefix="host-sync"
        ) as pool:
            results = dict(zip(hosts, pool.map(self._guarded, hosts), strict=True))
        casts = [c for r in results.values() if r is not None for c in r.casts]
        if casts:
            self.bus.publish(casts)
        elif any(r is not None and r.changed for r in results.values()):
            self.bus.hub.notify()
        return results

    def _guarded(self, host: str) -> ListingReport | None:
        try:
            return self.sync_host(host)
        except AgentsError as err:  # DatabaseError and the like: this host, this pass
            log.warning("host_sync_failed", host=host, error=err.reason)
        except Exception as err:  # a bug must not stop the other hosts
            log.exception("host_sync_crashed", host=host, error=str(err))
        return None

    def sync_host(self, host: str) -> ListingReport | None:
        asked_at = utcnow()
        try:
            reply = self.bus.client("compute", host, timeout=self.timeout).call("list_instances")
            listing = expect(reply, InstanceList)
        except AgentsError as err:
            log.warning("host_sync_unanswered", host=host, error=err.reason)
            return None
        assert isinstance(listing, InstanceList)
        if listing.host != host:
            log.warning("host_sync_wrong_host", host=host, answered_for=listing.host)
            return None
        report = self.records.apply_listing(host, listing.instances, asked_at)
        self._log(host, report)
        return report

    def _log(self, host: str, report: ListingReport) -> None:
        for c in report.changed:
            log.warning(
                "instance_sync",
                host=host,
                instance_uuid=c.uuid,
                instance=c.name,
                old=c.old,
                new=c.new,
                fault=c.fault,
            )
        findings: list[tuple[str, str, dict[str, str]]] = (
            [("foreign_instance_on_host", u, {}) for u in report.foreign]
            + [("deleted_instance_on_host", u, {}) for u in report.deleted]
            + [("instance_on_other_host", u, {"db_host": h}) for u, h in report.elsewhere]
            + [("failed_instance_on_host", u, {}) for u in report.failed]
        )
        current = {(host, what, u) for what, u, _ in findings}
        with self._lock:
            fresh = current - self._reported
            self._reported = {r for r in self._reported if r[0] != host} | current
        for what, uuid, extra in findings:
            level = log.warning if (host, what, uuid) in fresh else log.debug
            level(what, host=host, instance_uuid=uuid, **extra)
