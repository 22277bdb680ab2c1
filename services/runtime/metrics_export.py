"""Where a process's metrics go: a meter provider with a Prometheus endpoint on its own
registry, OTLP when configured, and dict-backed instruments that are cheap per event.

``telemetry.py`` defines what Keel measures on top of these.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, start_http_server

from eventstore.errors import KeelError
from services.runtime.heartbeat import on_beat


def otlp_enabled(signal: str) -> bool:
    """OTLP export of ``signal`` (traces, metrics): on when an OTLP endpoint is configured,
    unless ``OTEL_SDK_DISABLED=true`` or ``OTEL_<SIGNAL>_EXPORTER`` leaves out ``otlp``."""
    env = os.environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    chosen = env.get(f"OTEL_{signal.upper()}_EXPORTER", "otlp").lower()
    if "otlp" not in {part.strip() for part in chosen.split(",")}:
        return False
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
    )


def resource(service: str) -> Resource:
    return Resource.create({"service.name": f"keel-{service}", "service.namespace": "keel"})


class MetricsEndpoint:
    """A meter provider with a Prometheus endpoint on its own registry (several workers in
    one process each serve only their own metrics), plus OTLP when configured.

    Every endpoint carries ``keel.heartbeat.timestamp``, labelled ``labels`` (by default
    ``worker`` = ``service``): the time of the last beat this process made as ``service``
    announcing this endpoint's port. Prometheus compares it with its own clock to tell a
    hung event loop from a live one, since this endpoint answers from its own thread."""

    def __init__(
        self, service: str, port: int | None, addr: str, labels: dict[str, str] | None = None
    ) -> None:
        self.registry = CollectorRegistry()
        readers: list[MetricReader] = [
            PrometheusMetricReader(registry=self.registry, scope_info_enabled=False)
        ]
        if otlp_enabled("metrics"):
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                OTLPMetricExporter,
            )

            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
        self.provider = MeterProvider(
            metric_readers=readers,
            resource=resource(service),
            shutdown_on_exit=False,
            exemplar_filter=AlwaysOffExemplarFilter(),  # Keel reads no exemplars; they cost a lookup per measurement
        )
        self.meter = self.provider.get_meter("keel")
        if port is None:
            self._server = None
            self.port = 0
        else:  # port 0: the OS picks a free one, announced in heartbeats
            try:
                self._server, self._thread = start_http_server(
                    port, addr=addr, registry=self.registry
                )
            except OSError as exc:
                self.provider.shutdown()
                raise KeelError(f"cannot serve metrics on {addr}:{port}: {exc}") from None
            self.port = self._server.server_port
        beat = DictGauge(
            self.meter,
            "keel.heartbeat.timestamp",
            "s",
            "when this process's event loop last made a heartbeat (Unix time)",
            (),
            labels or {"worker": service},
        )
        self._forget_beats = on_beat(service, self.port, lambda unix_s: beat.set((), unix_s))

    def close(self) -> None:
        self._forget_beats()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.provider.shutdown()


class DictCounter:
    """A counter kept in a dict and read by the SDK when it collects: a synchronous OTel
    counter costs about 10 us per ``add`` in Python, this a dict update. Collection runs on
    the scrape thread; copying the items is one C-level call, atomic under the GIL."""

    def __init__(
        self,
        meter: Meter,
        name: str,
        unit: str,
        description: str,
        labels: tuple[str, ...],
        fixed: dict[str, str],
    ) -> None:
        self.labels = labels
        self.fixed = fixed
        self.values: dict[tuple[str, ...], float] = {}
        self._attrs: dict[tuple[str, ...], dict[str, str]] = {}
        self._create(meter)(name, callbacks=[self._observe], unit=unit, description=description)

    def _create(self, meter: Meter) -> Callable:
        return meter.create_observable_counter

    def add(self, key: tuple[str, ...], amount: float = 1) -> None:
        self.values[key] = self.values.get(key, 0) + amount

    def _observe(self, _options: CallbackOptions) -> Iterable[Observation]:
        out = []
        for key, value in list(self.values.items()):
            attrs = self._attrs.get(key)
            if attrs is None:
                attrs = self._attrs[key] = {
                    **self.fixed,
                    **dict(zip(self.labels, key, strict=True)),
                }
            out.append(Observation(value, attrs))
        return out


class DictGauge(DictCounter):
    """A gauge kept the same way: the last value set per label set."""

    def _create(self, meter: Meter) -> Callable:
        return meter.create_observable_gauge

    def set(self, key: tuple[str, ...], value: float) -> None:
        self.values[key] = value
