"""The compute-agent's Prometheus metrics, created on the Registry it is handed.

It owns metric names, labels and help texts; it must not serve HTTP (common.metrics
does) nor keep module-level collectors (two agents in one test process must not
collide).
"""

from __future__ import annotations

from common.metrics import Registry

BUILD_STEPS = ("queued", "prepare", "vif_wait", "define", "start", "total")


class ComputeMetrics:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.builds = registry.counter(
            "builds_total", "build_instance requests by result", labels=("result",)
        )
        self.build_step_seconds = registry.histogram(
            "build_step_seconds",
            "latency of each build step (total: received -> started)",
            labels=("step",),
        )
        self.deletes = registry.counter("deletes_total", "delete_instance by result", ("result",))
        self.reboots = registry.counter("reboots_total", "reboot_instance by result", ("result",))
        self.rpc_errors = registry.counter(
            "rpc_errors_total", "messages rejected or failed at the endpoint", ("method",)
        )
        self.vif_plugging_timeouts = registry.counter(
            "vif_plugging_timeouts_total", "builds whose vif-plugged wait timed out"
        )
        self.reconcile = registry.counter(
            "reconcile_total", "start-up reconcile findings by action", ("action",)
        )
        self.replugs = registry.counter(
            "interface_replugs_total",
            "port.vif_plugged for a running guest, by outcome (replugged, error, or why not)",
            ("result",),
        )
        self.builds_in_flight = registry.gauge("builds_in_flight", "builds accepted, not finished")
        self.instances = registry.gauge("instances", "domains this agent owns, at last count")
