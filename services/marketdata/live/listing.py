"""What a venue lists, checked against the configuration and published as Instruments.

A configured symbol the venue does not list, no longer trades or Keel does not support, or
an interval it does not stream, is the user's mistake: one line naming the key
(``market.symbols``, ``market.interval``). After that, each reading of the markets (at start
and every reload) publishes only what changed; a tracked symbol that vanished or stopped
trading becomes ``active=False`` once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import ccxt.pro

from contracts.events import Instrument
from eventstore.errors import KeelError
from services.config import MarketConfig
from services.marketdata.live.calls import VenueCalls
from services.marketdata.live.instruments import (
    InstrumentBook,
    VenueMarket,
    instrument_of,
    select_symbols,
    venue_markets,
)
from services.marketdata.live.publisher import Publisher
from services.runtime.clock import Clock

log = logging.getLogger("keel.marketdata")


class Listing:
    def __init__(
        self,
        exchange: ccxt.pro.Exchange,
        calls: VenueCalls,
        publisher: Publisher,
        clock: Clock,
        venue: str,
        market: MarketConfig,
    ) -> None:
        self.exchange = exchange
        self.calls = calls
        self.publisher = publisher
        self.clock = clock
        self.venue = venue
        self.market = market
        self.book = InstrumentBook()
        self.published = 0

    async def load(self) -> dict[str, VenueMarket]:
        """The venue's markets, loaded afresh (network trouble is backed off)."""
        await self.calls.call("load_markets", lambda: self.exchange.load_markets(True))
        markets, problems = venue_markets(self.exchange.markets, self.exchange.precisionMode)
        for problem in problems[:5]:
            log.warning("%s: %s", self.venue, problem)
        return markets

    def validate(self, markets: Mapping[str, VenueMarket]) -> list[str]:
        """The symbols to stream, or one line naming the configuration key at fault."""
        where = f"{self.venue} ({self.exchange.id})"
        selection = select_symbols(markets, self.market.symbols, self.market.universe)
        if selection.unknown:
            raise KeelError(f"market.symbols: {selection.unknown[0]!r} is not listed by {where}")
        if not selection.ok:
            raise KeelError(f"market.symbols: {selection.problems()[0]} ({where})")
        if not selection.markets:
            raise KeelError(f"market.symbols: no symbol to stream from {where}")
        timeframes = self.exchange.timeframes or {}
        if self.exchange.has.get("watchOHLCV") and self.market.interval not in timeframes:
            offered = ", ".join(list(timeframes)[:12])
            raise KeelError(
                f"market.interval: {self.market.interval!r} is not offered by {where} "
                f"(it offers {offered})"
            )
        return list(selection.symbols)

    def publish(
        self, markets: Mapping[str, VenueMarket], symbols: Sequence[str]
    ) -> list[Instrument]:
        """Only what changed since the log's last word (the book is seeded from it)."""
        ts = self.clock.now_ns()
        tracked = dict.fromkeys([*symbols, *self.book.symbols])
        current = [
            instrument_of(self.venue, markets[s], ts)
            for s in tracked
            if s in markets and markets[s].kind is not None
        ]
        changed = self.book.update(current, ts)
        for instrument in changed:
            self.publisher.fact(instrument)
        self.publisher.send()
        self.published += len(changed)
        return changed

    def perpetuals(self, symbols: Sequence[str]) -> list[str]:
        return [s for s in symbols if (i := self.book.get(s)) is not None and i.kind == "perpetual"]
