"""A venue gateway's metrics and heartbeat (docs/observability.md, "Venue gateways").

The gateway serves its own Prometheus endpoint like every worker and beats on
``sys.heartbeat.gateway-<venue>`` with the endpoint's port, so ``keel status`` and
Prometheus find it the way they find the others. Every series carries ``worker`` and
``venue`` (a configured name, never a key); the other labels are fixed enumerations (answer
kinds and sources, order actions, discrepancy kinds, gateway states) or ccxt's exception
class names: never a client id, order id or price.

Counting inside the order calls and the reconciler goes through the two subclasses below,
so ``ccxt_orders.py`` and ``reconciling.py`` stay free of telemetry.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, TypeVar, get_args

import ccxt.pro
from opentelemetry.metrics import CallbackOptions, Observation

from contracts.envelope import Envelope
from contracts.venue_events import AnswerKind, Discrepancy, GatewayState, VenueAction
from eventstore.bus import Bus
from services.runtime.clock import Clock
from services.runtime.heartbeat import publish_heartbeat
from services.runtime.metrics_export import DictCounter, DictGauge, MetricsEndpoint
from services.runtime.worker import WorkerOptions
from services.venues.ccxt_exchange import Redactor
from services.venues.gateway.ccxt_orders import OrderCalls, classify
from services.venues.gateway.private_stream import PrivateStream
from services.venues.gateway.reconciling import Reconciler
from services.venues.journal import VenueJournal

if TYPE_CHECKING:
    from services.venues.gateway.worker import Gateway

T = TypeVar("T")
HEARTBEAT_S = WorkerOptions().heartbeat_s
"""The workers' beat interval, which ``keel status`` assumes."""
GATEWAY_STATES: tuple[str, ...] = get_args(GatewayState)
RECONCILE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
"""Seconds: a reconciliation is a handful of REST calls, from tens of ms to minutes."""


class GatewayMetrics:
    """Every instrument of one gateway. Counters are bumped by the gateway as things happen;
    the private stream's and the order calls' own tallies are read when Prometheus scrapes
    (plain int reads); the leg gauges are refreshed on the event loop at every heartbeat."""

    def __init__(self, worker: str, venue: str, port: int | None, addr: str) -> None:
        mine = {"worker": worker, "venue": venue}
        self._endpoint = MetricsEndpoint(worker, port, addr, mine)
        self.port = self._endpoint.port
        meter = self._endpoint.meter
        self._mine = mine
        self.stream: PrivateStream | None = None
        self.calls: OrderCalls | None = None
        self.clock: Clock | None = None

        def total(name: str, unit: str, description: str, *labels: str) -> DictCounter:
            return DictCounter(meter, name, unit, description, labels, mine)

        def gauge(name: str, unit: str, description: str, *labels: str) -> DictGauge:
            return DictGauge(meter, name, unit, description, labels, mine)

        def read(kind: str, name: str, unit: str, description: str, value: Callable) -> None:
            create = getattr(meter, f"create_observable_{kind}")
            create(name, callbacks=[self._reader(value)], unit=unit, description=description)

        self.orders = total(
            "keel.gateway.orders", "{order}", "orders the gateway acted on, by action", "action"
        )
        self.answers = total(
            "keel.gateway.answers",
            "{answer}",
            "venue answers stored (not duplicates), by kind and source",
            *("kind", "source"),
        )
        self.legs_open = gauge("keel.gateway.legs.open", "{leg}", "legs not known to be over")
        self.legs_in_doubt = gauge(
            "keel.gateway.legs.in_doubt",
            "{leg}",
            "legs whose outcome is unknown until a query settles it",
        )
        self.stream_up = gauge(
            "keel.gateway.stream.up",
            "1",
            "1 while the private stream answers, 0 while it fails (fills by REST polling)",
        )
        read(
            "counter",
            "keel.gateway.stream.frames",
            "{frame}",
            "results the private stream's watches returned",
            lambda: self.stream.frames if self.stream else None,
        )
        read(
            "counter",
            "keel.gateway.stream.failures",
            "{failure}",
            "private stream watches that failed (each is watched again after a backoff)",
            lambda: self.stream.failures if self.stream else None,
        )
        read(
            "gauge",
            "keel.gateway.stream.silence",
            "s",
            "exchange seconds since the private stream last returned anything",
            self._silence,
        )
        self.polls = total(
            "keel.gateway.polls", "{poll}", "REST polls standing in for a silent private stream"
        )
        self.reconciliations = total(
            "keel.gateway.reconciliations", "{run}", "reconciliation runs by result", "result"
        )
        self.reconcile_seconds = meter.create_histogram(
            "keel.gateway.reconciliation.duration",
            unit="s",
            description="wall time of one reconciliation (its REST queries included)",
            explicit_bucket_boundaries_advisory=RECONCILE_BUCKETS,
        )
        self.discrepancies = total(
            "keel.gateway.discrepancies", "{discrepancy}", "discrepancies stored, by kind", "kind"
        )
        self.halted = gauge(
            "keel.gateway.halted", "1", "1 while the venue is halted (no new entries)"
        )
        self.state = gauge(
            "keel.gateway.state",
            "1",
            "1 for the gateway's current state, 0 for the others",
            "state",
        )
        read(
            "counter",
            "keel.gateway.backoffs",
            "{backoff}",
            "rate-limit answers waited out before the same request was sent again",
            lambda: self.calls.backoffs if self.calls else None,
        )
        self.rest_errors = total(
            "keel.gateway.rest.errors",
            "{error}",
            "exchange REST calls that raised, by ccxt exception class and what it means",
            *("error", "outcome"),
        )
        self.start_time = gauge("keel.worker.start_time", "s", "when this process started")

        self.start_time.set((), time.time())
        self.polls.add((), 0)
        self.legs_open.set((), 0)
        self.legs_in_doubt.set((), 0)
        self.stream_up.set((), 1)
        self.set_state("starting")
        for action in get_args(VenueAction):
            self.orders.add((action,), 0)
        for result in ("ok", "failed"):
            self.reconciliations.add((result,), 0)

    def watch(self, stream: PrivateStream, calls: OrderCalls, clock: Clock) -> None:
        """Read the stream's and the calls' own tallies from now on."""
        self.stream, self.calls, self.clock = stream, calls, clock

    def _reader(self, value: Callable[[], float | None]) -> Callable:
        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            got = value()
            return [] if got is None else [Observation(got, self._mine)]

        return observe

    def _silence(self) -> float | None:
        if self.stream is None or self.clock is None:
            return None
        return max(0.0, (self.clock.now_ns() - self.stream.last_ns) / 1e9)

    # -- hooks ------------------------------------------------------------------------------

    def answered(self, kind: AnswerKind, source: str) -> None:
        self.answers.add((kind, source))

    def set_state(self, state: GatewayState) -> None:
        for known in GATEWAY_STATES:
            self.state.set((known,), 1 if known == state else 0)
        self.halted.set((), 1 if state == "halted" else 0)

    def refresh(self, journal: VenueJournal) -> None:
        """The leg gauges, from the venue journal (on the event loop: it mutates there)."""
        self.legs_open.set((), len(journal.legs_open()))
        self.legs_in_doubt.set((), len(journal.unsettled()))

    def reconciled(self, result: str, seconds: float) -> None:
        self.reconciliations.add((result,))
        self.reconcile_seconds.record(seconds, self._mine)

    def rest_error(self, exc: BaseException) -> None:
        self.rest_errors.add((type(exc).__name__, classify(exc)))

    def close(self) -> None:
        self._endpoint.close()


class MeasuredCalls(OrderCalls):
    """The order calls, counting each call that raises (rate limits are waited out inside
    and counted by ``backoffs``)."""

    def __init__(
        self,
        metrics: GatewayMetrics,
        exchange: ccxt.pro.Exchange,
        clock: Clock,
        backoff_max_s: float,
    ) -> None:
        super().__init__(exchange, clock, backoff_max_s)
        self.metrics = metrics

    async def call(self, make: Callable[[], Awaitable[T]]) -> T:
        try:
            return await super().call(make)
        except Exception as exc:
            self.metrics.rest_error(exc)
            raise


class MeasuredReconciler(Reconciler):
    """The reconciler, timing each run and counting the discrepancies it stores."""

    def __init__(
        self, metrics: GatewayMetrics, gateway: Gateway, calls: OrderCalls, redactor: Redactor
    ) -> None:
        super().__init__(gateway, calls, redactor)
        self.metrics = metrics

    async def run_once(self) -> None:
        started = time.perf_counter()
        try:
            await super().run_once()
        except Exception:
            self.metrics.reconciled("failed", time.perf_counter() - started)
            raise
        self.metrics.reconciled("ok", time.perf_counter() - started)

    async def _store(self, found: Discrepancy, cause: Envelope) -> None:
        await super()._store(found, cause)
        self.metrics.discrepancies.add((found.kind,))


class Beat:
    """The gateway's heartbeat: wall-clock beats every ``HEARTBEAT_S`` while it runs (the
    exchange clock may run faster in tests; ``keel status`` compares with the wall), and a
    last ``stopped`` beat."""

    def __init__(self, bus: Bus, gateway: Gateway, metrics: GatewayMetrics) -> None:
        self.bus = bus
        self.gateway = gateway
        self.metrics = metrics
        self.instance = f"{socket.gethostname()}-{os.getpid()}"

    async def _beat(self, status: str, seq: int) -> None:
        gateway, port = self.gateway, self.metrics.port
        await publish_heartbeat(
            self.bus, gateway.name, self.instance, status, seq, gateway.processed, port
        )

    async def run(self) -> None:
        seq = 0
        stopping = self.gateway.stopping
        while not stopping.is_set():
            seq += 1
            self.metrics.refresh(self.gateway.journal)
            # Bounded: a beat the server never acknowledges must not delay the next one
            # (``asyncio.timeout``: on Python 3.11 ``wait_for`` can drop a cancel).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HEARTBEAT_S):
                    await self._beat("running", seq)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HEARTBEAT_S):
                    await stopping.wait()

    async def stopped(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(HEARTBEAT_S):
                await self._beat("stopped", 0)
