"""The worker's Prometheus metrics, served on ``STREAMFAN_WORKER_METRICS_PORT``.

One registry per worker process (tests run several workers in one process).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

PREFIX = "streamfan_worker_"
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.streams_running = Gauge(
            PREFIX + "streams_running", "Attempts running in this process", registry=r
        )
        self.attempts = Counter(
            PREFIX + "attempts",
            "Attempts ended, by outcome (done, error, cancelled, retry, superseded)",
            ["outcome"],
            registry=r,
        )
        self.upstream_errors = Counter(
            PREFIX + "upstream_errors", "Upstream failures, by error code", ["code"], registry=r
        )
        self.events_written = Counter(
            PREFIX + "events_written", "Events appended to Redis", registry=r
        )
        self.writes = Counter(
            PREFIX + "writes",
            "Appends of one stream (one per network read with events)",
            registry=r,
        )
        self.append_round_trips = Counter(
            PREFIX + "append_round_trips",
            "Round trips to Redis carrying appends (each carries every stream ready to write)",
            registry=r,
        )
        self.upstream_reads = Counter(
            PREFIX + "upstream_reads", "Network reads from the upstream", registry=r
        )
        self.first_token = Histogram(
            PREFIX + "time_to_first_event_seconds",
            "From the upstream request to its first event",
            buckets=TTFT_BUCKETS,
            registry=r,
        )

        self.jobs_declined = Counter(
            PREFIX + "jobs_declined",
            "Jobs left to another worker because this one had no room (worker/admission.py)",
            registry=r,
        )
        self.loop_lag = Gauge(
            PREFIX + "loop_lag_seconds",
            "Worst event-loop lag over the last 2 s (admission's signal)",
            registry=r,
        )
        self.cpu = Gauge(
            PREFIX + "cpu_cores",
            "This process's CPU over the last 2 s, in cores (admission's signal)",
            registry=r,
        )

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)
