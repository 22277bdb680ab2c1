"""The live marketdata worker: one venue's data through ccxt into the log (docs/venues.md).

Start-up loads the venue's markets (with backoff), checks the configured symbols and interval
(a mistake is one line naming the key), publishes what changed of the Instruments since the
log's last word, and backfills every symbol from its last stored bar by REST before the
websockets stream. Then it runs until stopped: the stream loops (``streams``), the bars'
continuity and backfills (``bars``), the watchdog (stale, REST polling, reconnect with
backoff and jitter), funding polls, a market reload (changes and delistings) and the
heartbeat, all on the injected ``Clock`` so a test can run exchange time fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import ccxt
import ccxt.pro

from eventstore.bus import Bus
from services.config import MarketConfig
from services.marketdata.feed_session import STOP_GRACE_S, FeedSession
from services.marketdata.live.bars import BarFlow
from services.marketdata.live.calls import Backoff, one_line
from services.marketdata.live.continuity import Continuity
from services.marketdata.live.funding import FundingPoller
from services.marketdata.live.instruments import InstrumentBook, VenueMarket, select_symbols
from services.marketdata.live.listing import Listing
from services.marketdata.live.shards import in_shard
from services.marketdata.live.sink import FrameSink
from services.marketdata.live.streams import Streams, bars_from_trades
from services.marketdata.live.trade_bars import TradeBars
from services.runtime.clock import Clock
from services.venues.ccxt_exchange import Redactor, build_exchange, read_secrets
from services.venues.config import VenueConfig

log = logging.getLogger("keel.marketdata")

ExchangeFactory = Callable[[VenueConfig, Mapping[str, str]], ccxt.pro.Exchange]

TRADE_SETTLE_S = 2.0
OHLCV_KEPT = 16
TRADES_KEPT = 100


class LiveSession(FeedSession):
    """One venue's live feed until ``stop()``."""

    RELOAD_EVERY_S = 900.0

    def __init__(
        self,
        bus: Bus,
        venue: VenueConfig,
        market: MarketConfig,
        clock: Clock,
        *,
        exchange_factory: ExchangeFactory = build_exchange,
        **options: Any,
    ) -> None:
        """``options`` are ``FeedSession``'s (name, consumers, backfill_bars, ...)."""
        super().__init__(bus, venue, market, clock, **options)
        self.exchange_factory = exchange_factory
        self.redactor = Redactor({})

    # -- running -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _scope(self) -> Iterator[None]:
        secrets = read_secrets(self.venue)  # none needed for market data; any given are hidden
        self.redactor = Redactor(secrets)
        for target in (logging.getLogger(), *logging.getLogger().handlers):
            target.addFilter(self.redactor)
        self.exchange = self.exchange_factory(self.venue, secrets)
        # ccxt keeps 1,000 candles and 1,000 trades (each a dict with the raw frame) per
        # symbol, growing for hours at hundreds of symbols; the feed reads each result at once
        # and needs far fewer, so memory stays flat (a venue's options may say otherwise).
        for option, kept in (("OHLCVLimit", OHLCV_KEPT), ("tradesLimit", TRADES_KEPT)):
            if option not in self.venue.options:
                self.exchange.options[option] = kept
        loop = asyncio.get_running_loop()
        handler = loop.get_exception_handler()
        loop.set_exception_handler(self._loop_error)
        try:
            yield
        finally:
            loop.set_exception_handler(handler)
            for target in (logging.getLogger(), *logging.getLogger().handlers):
                target.removeFilter(self.redactor)

    async def _serve(self) -> None:
        self.listing = Listing(
            self.exchange, self.calls, self.publisher, self.clock, self.venue.name, self.market
        )
        markets = await self.listing.load()
        symbols = in_shard(self.listing.validate(markets), self.shard, self.market.shards)
        if not symbols:
            log.warning(
                "%s: shard %d of %d has no symbols: idle",
                self.venue.name,
                self.shard,
                self.market.shards,
            )
            await self.stopping.wait()
            return
        await self._seed(symbols)
        self._tasks.append(asyncio.create_task(self.publisher.run()))
        self.listing.publish(markets, symbols)
        between = self._fence()
        self.flow = BarFlow(
            self.exchange,
            self.calls,
            self.publisher,
            self.clock,
            venue=self.venue.name,
            interval=self.market.interval,
            step_ns=self.step_ns,
            grace_s=self.market.stall_grace_s,
            poll_every_s=self.market.poll_every_s,
            continuity=self.continuity,
            between_steps=between,
        )
        now = self.clock.now_ns()
        if self.backfill_bars:
            start = now - now % self.step_ns - self.backfill_bars * self.step_ns
            for symbol in symbols:
                self.continuity.start(symbol, start)
        self.flow.track(symbols, now)
        trade_bars = None
        if bars_from_trades(self.exchange):
            trade_bars = TradeBars(self.step_ns, int(TRADE_SETTLE_S * 1e9))
        self.sink = FrameSink(
            self.venue.name,
            self.exchange.id,
            self.market,
            self.clock,
            self.flow,
            self.publisher,
            self.redactor,
            trade_bars,
        )
        await self.flow.backfill(symbols)
        await self.publisher.flush()
        self.streams = Streams(
            self.exchange,
            self.sink,
            self.calls,
            self.market.interval,
            trades=self.market.trades,
            quotes=self.market.quotes,
            seed=self.seed,
        )
        self.streams.start(list(self.flow.active))
        log.info(
            "%s: streaming %d symbols (%s bars%s%s)",
            self.venue.name,
            len(self.flow.active),
            self.market.interval,
            ", trades" if self.market.trades else "",
            ", quotes" if self.market.quotes else "",
        )
        funding = FundingPoller(
            self.exchange,
            self.calls,
            self.publisher,
            self.clock,
            self.venue.name,
            self.sink.dead_letter,
        )
        jobs = (
            self.flow.run(),
            self._watchdog(),
            funding.run(
                self.market.funding_every_s, lambda: self.listing.perpetuals(list(self.flow.active))
            ),
            self._reload_loop(),
        )
        await self._supervise(jobs)

    async def _silence(self) -> None:
        if hasattr(self, "streams"):
            await self.streams.stop()

    async def _close(self) -> None:
        if hasattr(self, "listing"):
            self.result.instruments = self.listing.published
        if hasattr(self, "sink"):
            self.result.dead_letters = self.sink.dead_letters
        with contextlib.suppress(Exception):
            async with asyncio.timeout(STOP_GRACE_S):
                await self.exchange.close()

    # -- start-up ------------------------------------------------------------------------

    async def _seed(self, symbols: Sequence[str]) -> None:
        """Where the log left off: the last Instrument and the last bar of each symbol."""
        known, last = await self._last_stored()
        self.listing.book = InstrumentBook(
            i for i in known if in_shard([i.symbol], self.shard, self.market.shards)
        )
        self.continuity = Continuity(self.step_ns, {s: last[s] for s in symbols if s in last})

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if hasattr(self, "sink"):
            self.sink.loop_error(loop, context)
        else:
            loop.default_exception_handler(context)

    # -- periodic jobs -------------------------------------------------------------------

    async def _watchdog(self) -> None:
        tick = self._tick_s()
        backoff = Backoff(seed=self.seed + 1)
        reconnect_at = 0
        while True:
            await self.calls.pause(tick)
            now = self.clock.now_ns()
            if self.sink.trade_bars is not None:
                for symbol, candle in self.sink.trade_bars.close_due(now):
                    self.flow.from_stream(symbol, [candle], live=False)
                self.publisher.send()
            newly = self.flow.check_stalls(now)
            if self.sink.reconnect_now:
                self.sink.reconnect_now = False
                await self._reconnect()
            elif not self.flow.stale:
                backoff.reset()
            elif self._silent(now) and now >= reconnect_at:
                if newly:
                    log.warning(
                        "%s: no closed bar by close + %gs for %s; reconnecting the websockets "
                        "(backoff with jitter), REST polling meanwhile",
                        self.venue.name,
                        self.market.stall_grace_s,
                        ", ".join(newly[:3]) + (f" and {len(newly) - 3} more" if newly[3:] else ""),
                    )
                await self._reconnect()
                reconnect_at = now + int(backoff.next() * 1e9)

    def _silent(self, now: int) -> bool:
        """A stale symbol whose stream sent nothing for longer than the grace: only a new
        connection cures a silent socket (one that delivers again needs no reconnect)."""
        quiet = int(self.market.stall_grace_s * 1e9)
        return any(now - self.sink.seen.get(s, 0) > quiet for s in self.flow.stale)

    async def _reconnect(self) -> None:
        for symbol in self.flow.active:
            self.sink.closed.forget(symbol)
        await self.streams.reconnect(list(self.flow.active))
        self.flow.request(self.flow.active)
        self.result.reconnects += 1

    async def _reload_loop(self) -> None:
        while True:
            await self.calls.pause(self.reload_every_s)
            try:
                markets = await self.listing.load()
            except ccxt.BaseError as exc:
                log.warning("%s: reloading markets: %s", self.venue.name, one_line(exc))
                continue
            self._apply_listing(markets)

    def _apply_listing(self, markets: Mapping[str, VenueMarket]) -> None:
        listed = self._newly_listed(markets)
        changed = self.listing.publish(markets, [*self.flow.active, *listed])
        gone = [i.symbol for i in changed if not i.active and i.symbol in self.flow.active]
        now = self.clock.now_ns()
        if listed:
            log.info("%s: newly listed, streaming: %s", self.venue.name, ", ".join(listed))
            self.flow.track(listed, now)
        if not gone and not listed:
            return
        for symbol in gone:
            log.warning("%s: %s is no longer traded: its streams stop", self.venue.name, symbol)
            self.flow.set_state(symbol, "delisted", now, "the venue stopped trading it")
            self.flow.drop(symbol)
        self.publisher.send()
        self._tasks.append(asyncio.create_task(self._restream()))

    def _newly_listed(self, markets: Mapping[str, VenueMarket]) -> list[str]:
        """With a universe, the symbols of this shard the venue listed since the start."""
        if not self.market.universe:
            return []
        chosen = select_symbols(markets, (), self.market.universe).symbols
        known = set(self.flow.active) | set(self.listing.book.symbols)
        fresh = [s for s in chosen if s not in known]
        return in_shard(fresh, self.shard, self.market.shards)

    async def _restream(self) -> None:
        await self.streams.stop()
        self.streams.start(list(self.flow.active))
