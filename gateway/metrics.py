"""Prometheus metrics of one gateway, kept as plain integers on the hot path.

prometheus-client's ``Counter.inc()`` takes a lock; the fan-out path counts
bytes and frames for every socket, so it adds to plain attributes instead and a
custom collector turns them into metric families when ``/metrics`` is scraped.
Each :class:`~gateway.server.Gateway` has its own registry, so tests can run
several in one process.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

PREFIX = "streamfan_gateway_"

#: Delivery lag buckets, seconds (now minus the entry id's millisecond timestamp).
LAG_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class Metrics:
    """Counters of one gateway; gauges are read from the gateway when scraped."""

    def __init__(self) -> None:
        self.connections_total = 0
        self.events_delivered = 0
        self.bytes_sent = 0
        self.frames_sent = 0
        self.slow_disconnects = 0
        self.flood_disconnects = 0
        self.redis_reconnects = 0
        self.history_reads = 0
        self.direct_deliveries = 0
        self.memory_trims = 0
        self.memory_trim_s = 0.0
        self.errors: dict[str, int] = {}
        self._lag_counts = [0] * (len(LAG_BUCKETS) + 1)
        self._lag_sum = 0.0
        # Set by the gateway: live values read at scrape time.
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}

    def observe_lag(self, seconds: float) -> None:
        self._lag_counts[bisect.bisect_left(LAG_BUCKETS, seconds)] += 1
        self._lag_sum += seconds

    def error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1

    def families(self) -> Iterator[Metric]:
        counters = (
            ("connections", "WebSocket connections accepted", self.connections_total),
            (
                "events_delivered",
                "Events queued to sockets (one per socket)",
                self.events_delivered,
            ),
            ("bytes_sent", "Bytes of WebSocket payload written to sockets", self.bytes_sent),
            ("frames_sent", "WebSocket frames written to sockets", self.frames_sent),
            ("slow_disconnects", "Clients cut for not reading (too_slow)", self.slow_disconnects),
            ("flood_disconnects", "Clients cut for sending too fast", self.flood_disconnects),
            ("redis_reconnects", "Reconnects of the pub/sub connection", self.redis_reconnects),
            ("history_reads", "XRANGE pages read from Redis", self.history_reads),
            (
                "direct_deliveries",
                "Wake-ups delivered straight from the pub/sub message",
                self.direct_deliveries,
            ),
            (
                "memory_trims",
                "Memory handed back after many connections left (gc + malloc_trim)",
                self.memory_trims,
            ),
            ("memory_trim_seconds", "CPU seconds spent in memory trims", self.memory_trim_s),
        )
        for name, doc, value in counters:
            yield CounterMetricFamily(PREFIX + name, doc, value=value)
        errors = CounterMetricFamily(
            PREFIX + "errors", "error messages sent to clients", labels=["code"]
        )
        for code, count in sorted(self.errors.items()):
            errors.add_metric([code], count)
        yield errors
        for name, (doc, read) in self.gauges.items():
            yield GaugeMetricFamily(PREFIX + name, doc, value=read())
        cumulative, buckets = 0, []
        for bound, count in zip((*LAG_BUCKETS, float("inf")), self._lag_counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        yield HistogramMetricFamily(
            PREFIX + "delivery_lag_seconds",
            "Now minus the entry id's timestamp when a batch is handed to sockets",
            buckets=buckets,
            sum_value=self._lag_sum,
        )


class _Collector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return self.metrics.families()

    def describe(self) -> list[Metric]:
        # Describing would call collect() at registration; nothing is known yet.
        return []


def make_registry(metrics: Metrics) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(metrics))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
