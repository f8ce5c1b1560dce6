"""Start-up reconcile: make libvirt and this host's files agree with what the agent owns.

The host is the truth (docs/design.md). On start, before taking any message:
- an owned domain that runs, or that ran and was shut off: counted, left alone;
- an owned domain with a fault in its record: an error record, left for the operator;
- an owned domain defined but never started (the agent died between define and
  start): the build is finished (started) or, if that fails, turned into an error
  record; either way reported (instance.create.end / .error);
- instance files without a domain (the agent died before define): removed, and the
  build reported failed;
- a domain without our metadata: never looked at beyond that.

It must not take messages or run builds; it runs once, before the agent serves.
"""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID

import structlog

from agents.compute.guest import InstanceMetadata
from agents.compute.images import ImageStore
from agents.compute.records import Domain, GuestHost, owned_domains, write_record
from agents.compute.reporter import Reporter
from agents.compute.telemetry import ComputeMetrics
from common.errors import AgentsError

log = structlog.get_logger()

ORPHAN_REASON = "build interrupted before the guest was defined; its files were removed"


class Reconciler:
    def __init__(
        self,
        hypervisor: GuestHost,
        images: ImageStore,
        reporter: Reporter,
        metrics: ComputeMetrics,
    ) -> None:
        self.hv = hypervisor
        self.images = images
        self.reporter = reporter
        self.metrics = metrics

    def run(self) -> dict[str, int]:
        counts = {"running": 0, "stopped": 0, "error": 0, "finished": 0, "failed": 0, "orphans": 0}
        owned: set[UUID] = set()
        for domain, record in owned_domains(self.hv):
            owned.add(domain.uuid)
            with structlog.contextvars.bound_contextvars(
                instance_uuid=str(domain.uuid), request_id=record.request_id
            ):
                if record.fault is not None:
                    counts["error"] += 1
                elif domain.active:
                    counts["running"] += 1
                elif record.started_at is not None:
                    counts["stopped"] += 1
                else:
                    counts[self._finish_half_built(domain, record)] += 1
        for uuid in self.images.instance_dirs():
            if uuid in owned:
                continue
            self.images.remove_instance_files(uuid)
            counts["orphans"] += 1
            log.warning("reconcile_orphan_files_removed", instance_uuid=str(uuid))
            self.reporter.instance(
                "instance.create.error", uuid, None, error=True, reason=ORPHAN_REASON
            )
        for action, n in counts.items():
            if n:
                self.metrics.reconcile.labels(action).inc(n)
        self.metrics.instances.set(len(owned))
        log.info("reconcile_done", **counts)
        return counts

    def _finish_half_built(self, domain: Domain, record: InstanceMetadata) -> str:
        uuid = domain.uuid
        try:
            self.hv.start(uuid)
            record.started_at = datetime.now(UTC)
            write_record(self.hv, uuid, record)
        except AgentsError as err:
            log.warning("reconcile_finish_failed", error=str(err))
            record.fault = f"half-built at agent start and could not be started: {err}"
            write_record(self.hv, uuid, record)
            self.reporter.instance(
                "instance.create.error", uuid, record.request_id, error=True, reason=record.fault
            )
            return "failed"
        log.info("reconcile_build_finished")
        self.reporter.instance(
            "instance.create.end",
            uuid,
            record.request_id,
            state="running",
            step="reconciled",
            name=record.name,
        )
        return "finished"
