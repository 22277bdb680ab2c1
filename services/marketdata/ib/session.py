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
from collections.abc import Iterator, Sequence
from typing import Any

from ib_async import IB

from eventstore.bus import Bus
from eventstore.errors import KeelError
from services.config import MarketConfig
from services.marketdata.feed_session import STOP_GRACE_S, FeedSession
from services.marketdata.ib.flow import IbBarFlow
from services.marketdata.ib.history import IbHistory, bar_size
from services.marketdata.ib.pacing import HistoryPacing
from services.marketdata.ib.qualify import Qualified, choose, qualify
from services.marketdata.ib.realtime import RealTimeBars
from services.marketdata.live.calls import Backoff
from services.marketdata.live.continuity import Continuity
from services.marketdata.live.instruments import InstrumentBook
from services.marketdata.live.shards import in_shard
from services.runtime.clock import Clock
from services.venues.config import VenueConfig
from services.venues.ib.bars import BarFolder
from services.venues.ib.connection import IbConnection
from services.venues.ib.settings import IbSettings

log = logging.getLogger("keel.marketdata")

SETTLE_S = 2.0


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


class IbSession(FeedSession):
    """One IB venue's live feed until ``stop()``."""

    RELOAD_EVERY_S = 3600.0

    def __init__(
        self, bus: Bus, venue: VenueConfig, market: MarketConfig, clock: Clock, **options: Any
    ) -> None:
        """``options`` are ``FeedSession``'s (name, consumers, backfill_bars, ...)."""
        super().__init__(bus, venue, market, clock, **options)
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
        self.qualified: dict[str, Qualified] = {}
        self.contracts: dict[str, Any] = {}
        self.shows: dict[str, str] = {}
        self.calendars: dict[str, Any] = {}
        self.resubscribes = 0
        self._started = False

    # -- running -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _scope(self) -> Iterator[None]:
        self.ib = IB()
        self.connection = IbConnection(feed_settings(self.venue), self.clock, ib=self.ib)
        self.history = IbHistory(self.ib, self.calls, HistoryPacing(self.seed))
        yield

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
        between = self._fence()
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
        await self._supervise((self.flow.run(), self._watchdog(), self._reload(specs, book)))

    async def _silence(self) -> None:
        """IB's bars stop with the connection, closed after the last flush."""

    async def _close(self) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(STOP_GRACE_S):
                await self.connection.close()

    async def _seed(self, symbols: Sequence[str]) -> tuple[InstrumentBook, Continuity]:
        """Where the log left off: the last Instrument and the last bar of each symbol."""
        known, last = await self._last_stored()
        book = InstrumentBook(i for i in known if i.symbol in symbols)
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
        tick = self._tick_s()
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
