"""Funding rates of a venue's perpetuals, polled by REST and stored when they change.

``fetch_funding_rates`` for all perpetuals in one call where the exchange has it, else
``fetch_funding_rate`` per symbol. A rate is a new fact only when its rate, next funding time
or interval changed, so a poll that finds nothing new stores nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import ccxt
import ccxt.pro

from services.marketdata.live.calls import Stopped, VenueCalls, one_line
from services.marketdata.live.candles import MalformedFrame
from services.marketdata.live.facts import funding_of
from services.marketdata.live.publisher import Publisher
from services.runtime.clock import Clock

log = logging.getLogger("keel.marketdata")

DeadLetters = Callable[[str, str, Any], None]


def polls_funding(exchange: ccxt.pro.Exchange) -> bool:
    return bool(exchange.has.get("fetchFundingRates") or exchange.has.get("fetchFundingRate"))


class FundingPoller:
    def __init__(
        self,
        exchange: ccxt.pro.Exchange,
        calls: VenueCalls,
        publisher: Publisher,
        clock: Clock,
        venue: str,
        dead_letter: DeadLetters,
    ) -> None:
        self.exchange = exchange
        self.calls = calls
        self.publisher = publisher
        self.clock = clock
        self.venue = venue
        self.dead_letter = dead_letter
        self._last: dict[str, tuple[float, int, float]] = {}

    async def run(self, every_s: float, perpetuals: Callable[[], list[str]]) -> None:
        if not polls_funding(self.exchange):
            return
        while True:
            symbols = perpetuals()
            if symbols:
                await self.poll(symbols)
            await self.calls.pause(every_s)

    async def poll(self, symbols: list[str]) -> None:
        try:
            rates = await self._fetch(symbols)
        except ccxt.BaseError as exc:
            log.warning("%s: funding rates: %s", self.venue, one_line(exc))
            return
        except Stopped:
            raise
        except Exception as exc:  # a response ccxt could not parse
            self.dead_letter(f"rest.{self.exchange.id}.funding", one_line(exc), None)
            return
        now = self.clock.now_ns()
        for symbol in symbols:
            info = rates.get(symbol)
            if not isinstance(info, Mapping) or info.get("fundingRate") is None:
                continue
            try:
                rate = funding_of(self.venue, symbol, info, now)
            except MalformedFrame as exc:
                self.dead_letter(f"rest.{self.exchange.id}.funding.{symbol}", str(exc), info)
                continue
            key = (rate.rate, rate.next_time, rate.interval_h)
            if self._last.get(symbol) != key:
                self._last[symbol] = key
                self.publisher.fact(rate)
        self.publisher.send()

    async def _fetch(self, symbols: list[str]) -> Mapping[str, Any]:
        if self.exchange.has.get("fetchFundingRates"):
            return await self.calls.call(
                "fetch_funding_rates", lambda: self.exchange.fetch_funding_rates(symbols)
            )
        rates = {}
        for symbol in symbols:
            rates[symbol] = await self.calls.call(
                f"fetch_funding_rate {symbol}",
                lambda s=symbol: self.exchange.fetch_funding_rate(s),
            )
        return rates
