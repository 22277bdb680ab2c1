"""The IB marketdata worker: one ib venue's bars into the log, as the ccxt feed publishes them.

Same subjects, same events (``Instrument`` changes since the log's last word, closed
``Bar``s once each, ``FeedStatus`` on ``md.status.<venue>.<symbol>`` (with ``closed``
between a market's sessions, by its trading calendar), the heartbeat), so
risk, strategies, status and replay do not know which feed ran. IB's 5-second real-time
bars are folded into the configured interval (``BarFolder``); a bar the stream saw only in
part (a subscription started or lost mid-bar) is not stored from the stream: IB's history
gives it whole. Backfill runs at start, after every reconnect and link restore (1101/1102),
and on any gap, paced within IB's historical limits. The connection is ``IbConnection``'s
(reconnect with backoff and jitter, 326, 1100-1102); ib_async forgets its subscriptions with
the socket, so every (re)connect and every 1101 subscribes again.

The feed connects with ``client_id + 1``: the venue's ``client_id`` is its gateway's, and IB
refuses a second session with one id (326).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ib_async import IB

from contracts.events import Bar, Instrument
from contracts.intervals import interval_ns
from contracts.subjects import name_token
from eventstore.bus import Bus
from eventstore.errors import KeelError
from eventstore.log_reader import last_per_subject
from services.config import MarketConfig
from services.marketdata.feed import HEARTBEAT_S, lockstep
from services.marketdata.ib.flow import IbBarFlow
from services.marketdata.ib.history import IbHistory, bar_size
from services.marketdata.ib.pacing import HistoryPacing
from services.marketdata.ib.qualify import Qualified, choose, qualify
from services.marketdata.ib.realtime import RealTimeBars
from services.marketdata.live.calls import Backoff, Stopped, VenueCalls
from services.marketdata.live.continuity import Continuity
from services.marketdata.live.instruments import InstrumentBook
from services.marketdata.live.publisher import Publisher
from services.marketdata.live.session import SessionResult
from services.marketdata.live.shards import in_shard
from services.runtime.clock import Clock
from services.runtime.heartbeat import StoreWatch, publish_heartbeat
from services.venues.config import VenueConfig
from services.venues.ib.bars import BarFolder
from services.venues.ib.connection import IbConnection
from services.venues.ib.settings import IbSettings

log = logging.getLogger("keel.marketdata")

TICK_S = 1.0
MIN_TICK_WALL_S = 0.02
SETTLE_S = 2.0
RELOAD_EVERY_S = 3600.0
STOP_GRACE_S = 2.0


def feed_settings(venue: VenueConfig) -> IbSettings:
    """The venue's IB settings with the feed's own client id."""
    settings = venue.ib
    if settings is None:
        raise KeelError(f'venue {venue.name}: kind = "ib" needs an ib table')
    return IbSettings(
        host=settings.host,
        port=settings.port,
        client_id=settings.client_id + 1,
        account=settings.account,
        connect_timeout_s=settings.connect_timeout_s,
        contracts=settings.contracts,
    )


class IbSession:
    """One IB venue's live feed until ``stop()``."""

    def __init__(
        self,
        bus: Bus,
        venue: VenueConfig,
        market: MarketConfig,
        clock: Clock,
        *,
        name: str = "marketdata",
        consumers: set[str] | None = None,
        backfill_bars: int = 0,
        heartbeat_s: float = HEARTBEAT_S,
        reload_every_s: float = RELOAD_EVERY_S,
        seed: int = 0,
        shard: int = 0,
    ) -> None:
        self.bus = bus
        self.venue = venue
        self.market = market
        self.clock = clock
        self.name = name
        self.consumers = consumers or set()
        self.backfill_bars = backfill_bars
        self.heartbeat_s = heartbeat_s
        self.reload_every_s = reload_every_s
        self.seed = seed
        self.shard = shard
        self.instance = f"{socket.gethostname()}-{os.getpid()}"
        self.stopping = asyncio.Event()
        self.step_ns = interval_ns(market.interval)
        if bar_size(self.step_ns) is None:
            raise KeelError(
                f"[market] interval {market.interval!r}: IB's bars go from 5 s to 8 h "
                "(5s, 10s, 15s, 30s, 1m, 2m, 3m, 5m, 10m, 15m, 20m, 30m, 1h, 2h, 3h, 4h, 8h)"
            )
        if market.universe:
            raise KeelError(
                f"[market] universe {market.universe!r}: an ib venue streams the contracts "
                "its [[venues.ib.contracts]] name, chosen by [market] symbols"
            )
        self.result = SessionResult()
        self.qualified: dict[str, Qualified] = {}
        self.contracts: dict[str, Any] = {}
        self.shows: dict[str, str] = {}
        self.calendars: dict[str, Any] = {}
        self.resubscribes = 0
        self._started = False
        self._tasks: list[asyncio.Task[Any]] = []

    def stop(self) -> None:
        self.stopping.set()

    # -- running -------------------------------------------------------------------------

    async def run(self) -> SessionResult:
        self.ib = IB()
        self.connection = IbConnection(feed_settings(self.venue), self.clock, ib=self.ib)
        self.calls = VenueCalls(self.venue.name, self.clock, self.stopping, self.seed)
        self.history = IbHistory(self.ib, self.calls, HistoryPacing(self.seed))
        watch = StoreWatch(self.bus, self.name, self.instance)
        self.publisher = Publisher(self.bus, self.name, watch, self.stopping)
        beating = asyncio.create_task(self._heartbeat())
        serving = asyncio.create_task(self._started_up(watch))
        stopped = asyncio.create_task(self.stopping.wait())
        try:
            await asyncio.wait({serving, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not serving.done():
                done, _ = await asyncio.wait({serving}, timeout=STOP_GRACE_S)
                if not done:
                    serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving
        finally:
            serving.cancel()
            stopped.cancel()
            beating.cancel()
            await self._shutdown()
        return self.result

    async def _started_up(self, watch: StoreWatch) -> None:
        with contextlib.suppress(Stopped):
            await watch.resume()
            await self._serve()

    async def _serve(self) -> None:
        specs = choose(self.venue.name, feed_settings(self.venue).contracts, self.market.symbols)
        mine = set(in_shard([s.name for s in specs], self.shard, self.market.shards))
        specs = [s for s in specs if s.name in mine]
        if not specs:
            log.warning("%s: shard %d has no symbols: idle", self.venue.name, self.shard)
            await self.stopping.wait()
            return
        symbols = [s.name for s in specs]
        if self.market.trades or self.market.quotes:
            log.warning(
                "%s: IB's feed publishes bars only: [market] trades and quotes are ignored",
                self.venue.name,
            )
        book, continuity = await self._seed(symbols)
        self.connection.on_connected.append(self._connected)
        self.connection.on_link.append(self._link)
        self._tasks.append(asyncio.create_task(self.publisher.run()))
        while True:
            await self.connection.start()
            try:
                found = [
                    await qualify(self.ib, self.venue.name, s, self.clock.now_ns()) for s in specs
                ]
                break
            except ConnectionError as exc:
                log.warning("%s: qualifying contracts: %s; once reconnected", self.venue.name, exc)
                await self.calls.pause(1.0)
        self._apply(found, book)
        between = self._settle() if self.market.lockstep and self.consumers else None
        self.publisher.fence = between
        self.flow = IbBarFlow(
            self.history,
            self.calls,
            self.publisher,
            self.clock,
            venue=self.venue.name,
            interval=self.market.interval,
            step_ns=self.step_ns,
            grace_s=self.market.stall_grace_s,
            poll_every_s=self.market.poll_every_s,
            continuity=continuity,
            contracts=self.contracts,
            shows=self.shows,
            calendars=self.calendars,
            ready=lambda: self.connection.ready,
            between_steps=between,
        )
        folder = BarFolder(self.venue.name, self.market.interval, self.step_ns, int(SETTLE_S * 1e9))
        self.stream = RealTimeBars(
            self.ib, self.clock, folder, self.flow, self.publisher, self.contracts, self.shows
        )
        now = self.clock.now_ns()
        # Bars from the forming one on (or ``backfill_bars`` before it) when the log has none:
        # the stream sees the forming bar only in part, so IB's history gives it whole.
        start = now - now % self.step_ns - self.backfill_bars * self.step_ns
        for symbol in symbols:
            continuity.start(symbol, start)
        self.flow.track(symbols, now)
        await self.flow.backfill(symbols)
        await self.publisher.flush()
        self.stream.subscribe(symbols)
        self._started = True
        log.info(
            "%s: streaming %d IB contracts (%s bars from 5-second bars)",
            self.venue.name,
            len(symbols),
            self.market.interval,
        )
        self._tasks += [
            asyncio.create_task(self.flow.run()),
            asyncio.create_task(self._watchdog()),
            asyncio.create_task(self._reload(specs, book)),
        ]
        stopped = asyncio.create_task(self.stopping.wait())
        running: set[asyncio.Task[Any]] = {stopped, *self._tasks}
        try:
            while not stopped.done():
                done, running = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task is not stopped and not task.cancelled() and task.exception():
                        raise task.exception()  # type: ignore[misc]
        finally:
            stopped.cancel()

    def _settle(self) -> Callable[[], Awaitable[None]]:
        wait = lockstep(self.bus, self.consumers)
        guard = asyncio.Lock()

        async def settle() -> None:
            async with guard:
                await wait()

        return settle

    async def _seed(self, symbols: Sequence[str]) -> tuple[InstrumentBook, Continuity]:
        """Where the log left off: the last Instrument and the last bar of each symbol."""
        venue = name_token(self.venue.name, "venue")
        instruments = await self.bus.retry(
            f"{self.name}: read",
            lambda: last_per_subject(self.bus, "MARKET", f"md.instrument.{venue}.*"),
            stop=self.stopping,
        )
        interval = name_token(self.market.interval)
        bars = await self.bus.retry(
            f"{self.name}: read",
            lambda: last_per_subject(self.bus, "MARKET", f"md.bar.{venue}.*.{interval}"),
            stop=self.stopping,
        )
        book = InstrumentBook(
            s.event
            for s in instruments
            if isinstance(s.event, Instrument) and s.event.symbol in symbols
        )
        last = {s.event.symbol: s.event.open_time for s in bars if isinstance(s.event, Bar)}
        return book, Continuity(self.step_ns, {s: last[s] for s in symbols if s in last})

    def _apply(self, found: Sequence[Qualified], book: InstrumentBook) -> list[str]:
        """Take the qualified contracts; publish the Instruments that changed. Returns the
        symbols whose contract changed (a front month that rolled)."""
        moved = [
            q.symbol
            for q in found
            if q.symbol in self.contracts and self.contracts[q.symbol].conId != q.contract.conId
        ]
        for q in found:
            self.qualified[q.symbol] = q
            self.contracts[q.symbol] = q.contract
            self.shows[q.symbol] = q.show
            if q.calendar is not None:
                self.calendars[q.symbol] = q.calendar
        changed = book.update([q.instrument for q in found], self.clock.now_ns())
        for instrument in changed:
            self.publisher.fact(instrument)
        self.result.instruments += len(changed)
        self.publisher.send()
        return moved

    # -- connection life -----------------------------------------------------------------

    def _connected(self, first: bool) -> None:
        """A new socket: ib_async has forgotten every subscription; bars missed meanwhile
        come from the history."""
        if first or not self._started:
            return
        self.result.reconnects += 1
        symbols = list(self.flow.active)
        self.stream.subscribe(symbols, cancel_old=False)
        self.flow.request(symbols)

    def _link(self, restored: bool, data_lost: bool) -> None:
        """IB's own link (1100, 1101, 1102): no bars came while it was down; after 1101
        IB dropped the subscriptions too."""
        if not restored or not self._started:
            return
        symbols = list(self.flow.active)
        if data_lost:
            self.stream.subscribe(symbols)
        self.flow.request(symbols)

    # -- periodic jobs -------------------------------------------------------------------

    async def _watchdog(self) -> None:
        tick = max(TICK_S, MIN_TICK_WALL_S / max(self.clock.wall_seconds(1.0), 1e-9))
        backoffs: dict[str, Backoff] = {}
        again_at: dict[str, int] = {}
        quiet = int(self.market.stall_grace_s * 1e9)
        while True:
            await self.calls.pause(tick)
            now = self.clock.now_ns()
            self.flow.request(self.stream.close_due(now))
            self.flow.check_stalls(now)
            self.flow.mark_closed(now)
            for symbol in list(self.flow.stale):
                backoff = backoffs.setdefault(symbol, Backoff(seed=self.seed + len(backoffs)))
                silent = now - self.stream.seen.get(symbol, 0) > quiet
                if silent and self.connection.ready and now >= again_at.get(symbol, 0):
                    log.warning("%s: %s sends no bars: subscribing again", self.venue.name, symbol)
                    self.stream.subscribe([symbol])
                    self.resubscribes += 1
                    again_at[symbol] = now + int(backoff.next() * 1e9)
            for symbol in [s for s in backoffs if s not in self.flow.stale]:
                del backoffs[symbol]
                again_at.pop(symbol, None)
            self.publisher.send()

    async def _reload(self, specs: Sequence[Any], book: InstrumentBook) -> None:
        """Contract details again: IB's trading hours move forward a day at a time, and a
        front month rolls."""
        while True:
            await self.calls.pause(self.reload_every_s)
            if not self.connection.ready:
                continue
            try:
                found = [
                    await qualify(self.ib, self.venue.name, s, self.clock.now_ns()) for s in specs
                ]
            except (ConnectionError, KeelError) as exc:
                log.warning("%s: reloading contracts: %s", self.venue.name, exc)
                continue
            moved = self._apply(found, book)
            if moved:
                log.info("%s: front month rolled: %s", self.venue.name, ", ".join(moved))
                self.stream.subscribe(moved)

    async def _heartbeat(self) -> None:
        seq = 0
        while not self.stopping.is_set():
            seq += 1
            processed = self.flow.bars if hasattr(self, "flow") else 0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    publish_heartbeat(
                        self.bus, self.name, self.instance, "running", seq, processed
                    ),
                    self.heartbeat_s,
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.heartbeat_s)

    async def _shutdown(self) -> None:
        if self._tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.publisher.flush(), STOP_GRACE_S)
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if hasattr(self, "flow"):
            self.result.bars = self.flow.bars
            self.result.empty_minutes = self.flow.empty_minutes
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.connection.close(), STOP_GRACE_S)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                publish_heartbeat(self.bus, self.name, self.instance, "stopped"), STOP_GRACE_S
            )
