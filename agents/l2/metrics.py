"""The l2-agent's Prometheus instruments, created on the `Registry` it is handed.

Names only; no logic. Served by common.metrics on [metrics] listen.
"""

from __future__ import annotations

from common.metrics import Registry


class L2Metrics:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.plugs = registry.counter(
            "plugs", "Port plug attempts by result (wired, down, failed)", ["result"]
        )
        self.unplugs = registry.counter(
            "unplugs", "Port unplugs by result (ok, failed)", ["result"]
        )
        self.step_seconds = registry.histogram(
            "step_seconds",
            "Latency of each wiring step (bridge, uplink, tap, attach, verify, unplug)",
            ["step"],
        )
        self.plug_seconds = registry.histogram(
            "plug_seconds", "port_created received -> vif event emitted", ["result"]
        )
        self.rpc_errors = registry.counter(
            "rpc_errors", "Messages refused at the RPC boundary", ["method", "problem"]
        )
        self.reconcile = registry.counter(
            "reconcile",
            "Reconcile actions (replugged, failed, removed_device, pruned_tombstone)",
            ["action"],
        )
        self.reconcile_seconds = registry.histogram(
            "reconcile_seconds", "Duration of a start-up reconcile"
        )
        self.link_events = registry.counter(
            "link_events", "Netlink link events seen for our devices", ["kind"]
        )
        self.stale_messages = registry.counter(
            "stale_messages", "Port messages older than the recorded revision, ignored"
        )
        self.rewires = registry.counter(
            "rewires", "Re-wires after a device vanished behind our back", ["result"]
        )
        self.ports = registry.gauge("ports", "Recorded ports by state", ["state"])
