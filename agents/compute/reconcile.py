"""Start-up reconcile: make libvirt and this host's files agree with what the agent owns.

The host is the truth (docs/design.md). On start, before taking any message:
- an owned domain that runs, or that ran and was shut off: counted, left alone;
- an owned domain with a fault in its record: an error record, left for the operator;
- an owned domain defined but never started (the agent died between define and
  start): the build is finished (started) or, if that fails, turned into an error
  record; either way reported (instance.create.end / .error);
- instance files without any domain of that uuid (the agent died before define):
  removed, and the build reported failed;
- a domain carrying our metadata namespace that cannot be read (someone edited it
  with virsh, or a newer agent wrote it): reported, and left alone with its files;
- a domain without our metadata: never looked at beyond that; its uuid's files stay.

It must not take messages or run builds; it runs once, before the agent serves.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime
from uuid import UUID

import structlog

from agents.compute.guest import METADATA_NS, InstanceMetadata
from agents.compute.images import ImageStore
from agents.compute.records import Domain, GuestHost, owned_domains, read_record, write_record
from agents.compute.reporter import Reporter
from agents.compute.telemetry import ComputeMetrics
from common.errors import AgentsError
from common.messages import MessageRejected

log = structlog.get_logger()

ORPHAN_REASON = "build interrupted before the guest was defined; its files were removed"


class Reconciler:
    def __init__(
        self,
        hypervisor: GuestHost,
        images: ImageStore,
        reporter: Reporter,
        metrics: ComputeMetrics,
        host: str = "localhost",
    ) -> None:
        self.host = host
        self.hv = hypervisor
        self.images = images
        self.reporter = reporter
        self.metrics = metrics

    def run(self, replaying: Collection[str] = ()) -> dict[str, int]:
        """`replaying`: instances whose build_instance the journal still holds. The
        replay right after this builds them again, so their files are a build in
        progress, not a failure: they are removed without reporting an error."""
        counts = {
            "running": 0, "stopped": 0, "error": 0, "finished": 0, "failed": 0, "orphans": 0,
            "unreadable": 0,
        }  # fmt: skip
        owned: set[UUID] = set()
        for domain in self.hv.list_with_metadata(METADATA_NS):
            if read_record(domain) is None:
                # Ours by namespace, but not readable: nothing may be destroyed on a guess.
                counts["unreadable"] += 1
                log.error("reconcile_record_unreadable", instance_uuid=str(domain.uuid))
                self.reporter.agent(
                    "agent.instance_unreadable",
                    MessageRejected(
                        host=self.host,
                        kind="compute",
                        method="reconcile",
                        problem=f"domain {domain.uuid} has an instance record this agent"
                        " cannot read; left alone with its files",
                    ),
                    error=True,
                )
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
            if uuid in owned or self.hv.get(uuid) is not None:
                continue  # a domain of that uuid exists: its files are not orphans
            self.images.remove_instance_files(uuid)
            counts["orphans"] += 1
            if str(uuid) in replaying:
                log.info("reconcile_orphan_files_removed", instance_uuid=str(uuid), replayed=True)
                continue
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
