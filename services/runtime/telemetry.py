"""Per-worker OpenTelemetry metrics, exported for Prometheus on the worker's own port."""

from __future__ import annotations

import msgspec
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import Counter, Histogram
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client import start_http_server

from eventstore.server import free_port


class WorkerMetrics(msgspec.Struct):
    events_in: Counter
    events_out: Counter
    dead_letters: Counter
    handler_seconds: Histogram
    port: int


def start_metrics(worker: str, port: int | None, addr: str = "127.0.0.1") -> WorkerMetrics:
    """Serve ``/metrics``; port 0 or None picks a free one (announced in heartbeats)."""
    chosen = port or free_port()
    reader = PrometheusMetricReader()
    provider = MeterProvider(
        metric_readers=[reader], resource=Resource.create({"service.name": f"keel-{worker}"})
    )
    meter = provider.get_meter("keel.worker")
    start_http_server(chosen, addr=addr)
    return WorkerMetrics(
        events_in=meter.create_counter("keel.events.in", unit="1", description="events consumed"),
        events_out=meter.create_counter(
            "keel.events.out", unit="1", description="events published"
        ),
        dead_letters=meter.create_counter(
            "keel.dead_letters", unit="1", description="messages dead-lettered"
        ),
        handler_seconds=meter.create_histogram(
            "keel.handler.duration", unit="s", description="time in the decision handler"
        ),
        port=chosen,
    )
