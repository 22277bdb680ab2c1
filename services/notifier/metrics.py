"""The notifier's ``/metrics``: its notifications by destination, outcome and priority,
and each destination's queue (Prometheus scrapes it; an absent notifier is its own alert
rule, docs/alerts.md "Alert rules")."""

from __future__ import annotations

from services.runtime.metrics_export import DictCounter, DictGauge, MetricsEndpoint


class NotifierMetrics:
    def __init__(self, port: int, addr: str) -> None:
        self._endpoint = MetricsEndpoint("notifier", port, addr)
        self.port = self._endpoint.port
        meter = self._endpoint.meter
        fixed = {"worker": "notifier"}
        self._outcomes = DictCounter(
            meter,
            "keel.notifier.notifications",
            "{notification}",
            "notifications by destination, outcome (sys.notify.<outcome>) and priority",
            ("destination", "outcome", "priority"),
            fixed,
        )
        self._queued = DictGauge(
            meter,
            "keel.notifier.queued",
            "{notification}",
            "notifications waiting for a destination (in flight included)",
            ("destination",),
            fixed,
        )

    def outcome(self, destination: str, outcome: str, priority: str) -> None:
        self._outcomes.add((destination, outcome, priority))

    def queued(self, destination: str, size: int) -> None:
        self._queued.set((destination,), size)

    def close(self) -> None:
        self._endpoint.close()
