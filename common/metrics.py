"""Prometheus metrics: a registry per process (no global), served on a local address.

Agents create their own counters and histograms on the `Registry` they are handed, so a
test can build two agents in one process without their metrics colliding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# Step latencies here run from sub-millisecond (test driver) to tens of seconds (TCG boot).
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
)


class Registry:
    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.registry = CollectorRegistry()
        self._server: Any = None

    def counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
        return Counter(
            name, doc, labelnames=labels, namespace=self.namespace, registry=self.registry
        )

    def gauge(self, name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
        return Gauge(name, doc, labelnames=labels, namespace=self.namespace, registry=self.registry)

    def histogram(self, name: str, doc: str, labels: Sequence[str] = ()) -> Histogram:
        return Histogram(
            name,
            doc,
            labelnames=labels,
            namespace=self.namespace,
            registry=self.registry,
            buckets=LATENCY_BUCKETS,
        )

    def serve(self, listen: str) -> int | None:
        """Serve /metrics on HOST:PORT; port 0 picks a free one. Returns the bound port."""
        host, _, port = listen.rpartition(":")
        server, _thread = start_http_server(
            int(port), addr=host or "127.0.0.1", registry=self.registry
        )
        self._server = server
        return int(server.server_port)

    def close(self) -> None:
        """Stop serving and release the port (a restarted agent binds it again at once)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
