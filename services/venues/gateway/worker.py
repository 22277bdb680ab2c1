"""``keel run gateway --venue NAME``: the one process that talks to a venue's exchange.

At start it takes the venue's API-key lock (``lock.py``), rebuilds what it did from the
``VENUE`` stream (``legs.py`` and the venue journal), reconciles with the exchange before
sending anything new, and settles every leg left without an answer by querying it by client
id (never by sending it again blindly). Then it consumes ``venue.order.<venue>.>`` through
a durable consumer, acknowledging an order only once its answer is stored, and
``venue.adopt.<venue>`` through another (the kill switch is the order manager's: it knows
entries from protective legs on every venue); fills come from the private stream, or from
REST polling while that stream is silent; reconciliation runs every ``reconcile_every_s``.
Like every worker it beats on ``sys.heartbeat.gateway-<venue>`` and serves its metrics
(``telemetry.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ccxt.pro
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from contracts.envelope import Envelope
from contracts.subjects import name_token
from contracts.venue_events import (
    Discrepancy,
    GatewayState,
    VenueAdoption,
    VenueAnswer,
    VenueOrder,
    VenueStatus,
)
from eventstore.bus import Bus, Stored, read_message
from eventstore.errors import KeelError
from services.runtime.cancelling import end_tasks, finish_within
from services.runtime.clock import Clock
from services.venues.ccxt_exchange import Redactor, build_exchange, read_secrets, redact_logs
from services.venues.client_ids import answer_event_id
from services.venues.config import VenueConfig
from services.venues.gateway.ccxt_orders import classify, exchange_reason
from services.venues.gateway.config import GatewayConfig
from services.venues.gateway.dealing import Dealer
from services.venues.gateway.legs import LegBook
from services.venues.gateway.lock import KeyLock
from services.venues.gateway.private_stream import PrivateStream
from services.venues.gateway.telemetry import (
    Beat,
    GatewayMetrics,
    MeasuredCalls,
    MeasuredReconciler,
)
from services.venues.ib.exchange import IbExchange
from services.venues.ib.wiring import ib_exchange, ib_session_key, reconcile_on_resync
from services.venues.journal import VenueJournal

log = logging.getLogger("keel.gateway")
STREAM = "VENUE"
SHUTDOWN_S = 10.0
"""Wall seconds a stopping gateway gives its cancelled tasks and its exchange client's close."""
FETCH_S = 1.0
SNAPSHOT_WAIT_S = 2.0
"""Wall seconds a start waits for the private stream's first frame before reconciling."""
FEE_SNAPSHOT_WAIT_S = 15.0
"""The same, for the fills snapshot of an exchange whose REST fills carry no fee (Kraken
Futures): a fill that only REST gave would be stored for good with fee 0."""
ExchangeFactory = Callable[[VenueConfig, Mapping[str, str]], ccxt.pro.Exchange]


class Gateway:
    def __init__(
        self,
        bus: Bus,
        venue: VenueConfig,
        config: GatewayConfig,
        clock: Clock,
        *,
        exchange_factory: ExchangeFactory = build_exchange,
        work_dir: Path = Path(".keel"),
        metrics_port: int | None = 0,
        metrics_addr: str = "127.0.0.1",
    ) -> None:
        """``metrics_port``: 0 picks a free one (announced in heartbeats); None serves none
        (OTLP still gets the metrics when configured)."""
        self.bus = bus
        self.venue = venue
        self.name = f"gateway-{name_token(venue.name, 'venue')}"
        self.config = config
        self.clock = clock
        self.exchange_factory = exchange_factory
        self.work_dir = work_dir
        self.metrics_port = metrics_port
        self.metrics_addr = metrics_addr
        self.processed = 0
        """Answers this process stored (the heartbeat's ``processed``)."""
        self.book = LegBook()
        self.journal = VenueJournal(venue.name)
        self.stopping = asyncio.Event()
        self.ready = asyncio.Event()
        self.rebuilt_seq = 0
        self.delivered_seq = 0
        """The last order a previous process of this gateway was handed (its durable
        consumer's delivered sequence): an order up to it may have been sent."""
        self.state: GatewayState = "starting"
        self.reason = ""
        self.exchange: ccxt.pro.Exchange | None = None
        self.last_reconcile_ns = 0

    def stop(self) -> None:
        self.stopping.set()

    # -- the log -----------------------------------------------------------------------------

    async def record(self, answer: VenueAnswer, cause: Envelope) -> bool:
        """Store ``answer`` (its id from the exchange fact), then let it count."""
        envelope = Envelope(
            answer_event_id(answer), cause.event_id, cause.correlation_id, answer.ts
        )
        stored = await self.bus.retry(
            f"{self.name}: store an answer",
            lambda: self.bus.publish(answer, envelope, producer=self.name),
        )
        self.book.answer(answer, envelope)
        self.journal.apply(answer)
        if stored:
            self.processed += 1
            self.metrics.answered(answer.kind, answer.source)
        return stored

    async def status(self, state: GatewayState, reason: str = "", discrepancies: int = 0) -> None:
        self.state, self.reason = state, reason
        self.metrics.set_state(state)
        now = self.clock.now_ns()
        event = VenueStatus(
            ts=now,
            venue=self.venue.name,
            mode=self.venue.mode,
            state=state,
            reason=reason,
            discrepancies=discrepancies,
            last_reconcile=self.last_reconcile_ns,
        )
        envelope = Envelope.root(f"{self.name}-status-{now}", now)
        await self.bus.retry(
            f"{self.name}: store a status", lambda: self.bus.publish(event, envelope, self.name)
        )

    async def _rebuild(self) -> None:
        """Fold this venue's orders, answers, reconciliation findings (baselines, halts) and
        adoptions from the log."""
        venue = self.venue.name
        async for item in self.bus.read("venue.>", STREAM):
            if not isinstance(item, Stored):
                continue
            event, self.rebuilt_seq = item.event, item.seq
            if isinstance(event, VenueOrder) and event.venue == venue:
                self.book.order(event, item.envelope, item.seq)
            elif isinstance(event, VenueAnswer) and event.venue == venue:
                self.book.answer(event, item.envelope)
            elif not (isinstance(event, (VenueAdoption, Discrepancy)) and event.venue == venue):
                continue
            self.journal.apply(event)
        log.info(
            "%s: rebuilt %d legs up to seq %d", self.name, len(self.book.legs), self.rebuilt_seq
        )

    # -- running -----------------------------------------------------------------------------

    async def run(self) -> None:
        if self.venue.kind == "ib":  # no keys: one process per IB session (host, port, id)
            secrets: dict[str, str] = {}
            key = ib_session_key(self.venue)
        else:
            secrets = read_secrets(self.venue, required=("api_key", "secret"))
            key = secrets["apiKey"]
        redactor = redact_logs(secrets)
        lock = KeyLock(self.work_dir, self.venue.exchange, key, self.venue.name)
        lock.acquire()
        try:
            self.metrics = GatewayMetrics(
                self.name, self.venue.name, self.metrics_port, self.metrics_addr
            )
            beat = Beat(self.bus, self, self.metrics)
            try:
                await self._run(secrets, redactor, beat)
            finally:
                await beat.stopped()
                self.metrics.close()
        finally:
            lock.release()

    async def _run(self, secrets: Mapping[str, str], redactor: Redactor, beat: Beat) -> None:
        if self.venue.kind == "ib":
            exchange = ib_exchange(self.venue, self.clock)
        else:
            exchange = self.exchange_factory(self.venue, secrets)
        self.exchange = exchange
        metrics = self.metrics
        calls = MeasuredCalls(metrics, exchange, self.clock, self.config.backoff_max_s)
        self.dealer = Dealer(
            calls, self.book, self.record, self.clock, redactor, self.config, self.journal
        )
        self.reconciler = MeasuredReconciler(metrics, self, calls, redactor)
        if isinstance(exchange, IbExchange):  # back from a restart or 1100: reconcile now
            reconcile_on_resync(exchange, self.ready, self.reconciler.run_once)
        tasks: list[asyncio.Task[Any]] = [asyncio.create_task(beat.run())]
        try:
            await self._load_markets(exchange, redactor)
            self.delivered_seq = await self._delivered("orders")
            await self._rebuild()
            await self.status("starting", "reconciling before trading")
            self.stream = PrivateStream(
                exchange,
                self.clock,
                redactor,
                self._on_trades,
                self._on_orders,
                self.config.backoff_max_s,
                self._stream_health,
            )
            metrics.watch(self.stream, calls, self.clock)
            tasks.append(asyncio.create_task(self.stream.run()))
            # Exchanges that open the private stream with a snapshot of recent fills (Kraken
            # Futures) give them with their fees, which their REST fills lack: taken first.
            # ``asyncio.timeout``, not ``wait_for``: on Python 3.11 the latter can drop a cancel.
            if calls.rest_fills_lack_fee:
                first, wait_s = self.stream.first_trades, FEE_SNAPSHOT_WAIT_S
            else:
                first, wait_s = self.stream.first, SNAPSHOT_WAIT_S
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await first.wait()
            await self.reconciler.run_once()
            await self._recover()
            orders = await self._subscribe(
                "orders", [f"venue.order.{self.venue.name}.>"], DeliverPolicy.ALL
            )
            controls = await self._subscribe(
                "controls", [f"venue.adopt.{self.venue.name}"], DeliverPolicy.NEW
            )
            if self.state != "halted" and self.stream.failing_watches:
                await self.status("degraded", "private stream failing: REST polling")
            elif self.state != "halted":
                await self.status("running")
            consumers = [
                asyncio.create_task(self._consume(orders, self._on_order_msg)),
                asyncio.create_task(self._consume(controls, self._on_control_msg)),
            ]
            tasks += [
                *consumers,
                asyncio.create_task(self._poll_loop()),
                asyncio.create_task(self.reconciler.loop()),
            ]
            self.ready.set()
            stopping = asyncio.create_task(self.stopping.wait())
            done, _ = await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            for task in done:
                if task is not stopping:
                    task.result()
            # A clean stop lets each consumer's last pull end and handles what it brought:
            # nothing is left delivered to a process that is gone (a restart would have to
            # treat such an order as maybe sent).
            await asyncio.wait(consumers, timeout=FETCH_S + 30)
        finally:
            try:
                await self._end(tasks)
            finally:
                if not await finish_within(exchange.close(), SHUTDOWN_S):
                    log.error(
                        "%s: the exchange client did not close within %g s", self.name, SHUTDOWN_S
                    )

    async def _end(self, tasks: list[asyncio.Task[Any]]) -> None:
        """Each task cancelled again until it ends (one cancel can be lost: ``cancelling.py``);
        a stop must end, so what would not within ``SHUTDOWN_S`` is named and left."""
        stuck = await end_tasks(tasks, SHUTDOWN_S)
        for task in tasks:
            if task.done() and not task.cancelled():
                task.exception()  # retrieved: the run's own error, if any, is raised already
        for task in stuck:
            log.error(
                "%s: %s did not end within %g s of its cancels",
                self.name,
                task.get_coro(),
                SHUTDOWN_S,
            )

    async def _load_markets(self, exchange: ccxt.pro.Exchange, redactor: Redactor) -> None:
        attempt = 0
        while True:
            try:
                await exchange.load_markets()
                return
            except Exception as exc:
                self.metrics.rest_error(exc)
                if classify(exc) == "rejected":
                    reason = exchange_reason(exc, redactor, exchange.id)
                    raise KeelError(f"venue {self.venue.name}: markets: {reason}") from None
                attempt += 1
                log.warning(
                    "%s: markets: %s", self.name, exchange_reason(exc, redactor, exchange.id)
                )
                await self.clock.sleep(min(self.config.backoff_max_s, 0.5 * 2**attempt))

    async def _recover(self) -> None:
        """Legs handed to a previous process and never answered (it may have sent them):
        unknown until a query by client id settles them (the poll loop asks again; the
        fate rule decides). Orders no process was handed yet are sent as usual."""
        for leg in self.book.legs.values():
            if (
                leg.state == "sent"
                and leg.seq <= self.delivered_seq
                and not self.book.handled(leg.envelope.event_id)
            ):
                reason = "the gateway stopped before the exchange answered: querying"
                await self.record(self.dealer.unknown(leg, "submit", reason), leg.envelope)
                await self.dealer.query(leg)

    async def _delivered(self, part: str) -> int:
        try:
            info = await self.bus.js.consumer_info(STREAM, f"{self.name}-{part}")
        except NotFoundError:
            return 0
        return info.delivered.stream_seq if info.delivered else 0

    async def _subscribe(self, part: str, subjects: list[str], policy: DeliverPolicy):
        durable = f"{self.name}-{part}"
        config = ConsumerConfig(
            durable_name=durable,
            name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=300.0,
            max_ack_pending=256,
            deliver_policy=policy,
            filter_subjects=subjects,
        )
        await self.bus.js.add_consumer(STREAM, config)
        return await self.bus.js.pull_subscribe("", durable=durable, stream=STREAM, config=config)

    async def _consume(self, sub: Any, handle: Callable[[Stored], Any]) -> None:
        while not self.stopping.is_set():
            try:
                msgs = await sub.fetch(16, timeout=FETCH_S)
            except TimeoutError:
                continue
            except Exception as exc:
                self.bus.outage.trouble(f"{self.name}: fetch", exc)
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                item = read_message(msg, STREAM)
                if isinstance(item, Stored):
                    await handle(item)
                await msg.ack()

    async def _on_order_msg(self, item: Stored) -> None:
        order = item.event
        if not isinstance(order, VenueOrder) or order.venue != self.venue.name:
            return
        leg = self.book.order(order, item.envelope, item.seq)
        if self.book.handled(item.envelope.event_id) or (leg is None and order.action != "cancel"):
            return
        self.journal.apply(order)
        if order.action == "cancel":
            if leg is None or not leg.open:
                reason = "no open order with this client id"
                await self.dealer.reject(order, reason, "cancel", item.envelope)
            else:
                self.metrics.orders.add((order.action,))
                await self.dealer.cancel(leg, item.envelope)
            return
        if leg is None or item.seq <= self.delivered_seq:
            return  # maybe sent before this process started: _recover and the poll loop settle it
        if self.state == "halted" and not order.reduce_only:
            reason = f"venue halted: {self.reason}"
            await self.dealer.reject(order, reason, "submit", item.envelope)
            return
        self.metrics.orders.add((order.action,))
        if order.action == "amend":
            await self.dealer.amend(leg, self.book.legs.get(order.replaces), item.envelope)
        else:
            await self.dealer.submit(leg)

    async def _on_control_msg(self, item: Stored) -> None:
        event = item.event
        if isinstance(event, VenueAdoption) and event.venue == self.venue.name:
            await self.reconciler.adopt(event)

    async def _stream_health(self, ok: bool, reason: str) -> None:
        """A failing private stream degrades a running gateway (fills then come by REST
        polling); the next answer of the stream restores it."""
        self.metrics.stream_up.set((), 1 if ok else 0)
        if not ok and self.state == "running":
            await self.status("degraded", f"private stream failing ({reason}): REST polling")
        elif ok and self.state == "degraded":
            await self.status("running", "private stream back")

    async def _on_trades(self, trades: list[Mapping[str, Any]]) -> None:
        for trade in trades:
            await self.dealer.trade(trade, "stream")

    async def _on_orders(self, orders: list[Mapping[str, Any]]) -> None:
        for order in orders:
            leg = self.dealer.leg_of(order)
            if leg is not None:
                await self.dealer.order_state(leg, order, "stream")

    async def _poll_loop(self) -> None:
        """Every ``poll_every_s``: settle unknown legs and cancels; poll by REST when the
        private stream has said nothing for ``poll_after_s`` while legs are working (counted
        from the oldest working leg's order at the earliest: a quiet stream with nothing
        open is not a silent one)."""
        while True:
            await self.clock.sleep(self.config.poll_every_s)
            for leg in self.book.unsettled(self.journal):
                await self.dealer.settle(leg)
            working = [leg for leg in self.book.open_legs() if leg.state == "working"]
            if not working:
                continue
            since = max(self.stream.last_ns, min(leg.envelope.event_time for leg in working))
            if self.clock.now_ns() - since >= self.config.poll_after_s * 1e9:
                self.metrics.polls.add(())
                await self.dealer.poll(working)
