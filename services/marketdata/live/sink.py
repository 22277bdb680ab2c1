"""What the watch loops hand over, turned into facts: closed bars, trades, quotes, and a
dead letter for whatever cannot be used. Called from the stream loops: nothing here awaits,
each frame's events go to the store as one batch."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from services.config import MarketConfig
from services.marketdata.live.bars import BarFlow
from services.marketdata.live.calls import one_line
from services.marketdata.live.candles import ClosedCandles, MalformedFrame
from services.marketdata.live.facts import quote_of, trade_of
from services.marketdata.live.publisher import Publisher
from services.marketdata.live.thinning import QuoteThrottle, TradeFilter
from services.marketdata.live.trade_bars import TradeBars
from services.runtime.clock import Clock
from services.venues.ccxt_exchange import Redactor

log = logging.getLogger("keel.marketdata")


class FrameSink:
    """The ``StreamSink`` of a live session."""

    def __init__(
        self,
        venue: str,
        exchange_id: str,
        market: MarketConfig,
        clock: Clock,
        flow: BarFlow,
        publisher: Publisher,
        redactor: Redactor,
        trade_bars: TradeBars | None,
    ) -> None:
        self.venue = venue
        self.exchange_id = exchange_id
        self.market = market
        self.clock = clock
        self.flow = flow
        self.publisher = publisher
        self.redactor = redactor
        self.trade_bars = trade_bars
        self.closed = ClosedCandles()
        self.trade_filter = TradeFilter()
        self.throttle = QuoteThrottle(market.quotes_per_s)
        self.seen: dict[str, int] = {}  # symbol -> clock time of its last data frame
        self.dead_letters = 0
        self.reconnect_now = False

    def candles(self, symbol: str, rows: Sequence[Any]) -> None:
        self.seen[symbol] = self.clock.now_ns()
        try:
            closed = self.closed.update(symbol, rows)
        except MalformedFrame as exc:
            # The candle's last values are now unknown: it is not closed from the stream;
            # the gap that follows is filled from REST history.
            self.closed.forget(symbol)
            self.dead_letter(f"ws.{self.exchange_id}.ohlcv.{symbol}", str(exc), rows)
            return
        if closed:
            self.flow.from_stream(symbol, closed)
            self.publisher.send()

    def trades(self, symbol: str, trades: Sequence[Mapping[str, Any]]) -> None:
        if self.trade_bars is not None:
            self.seen[symbol] = self.clock.now_ns()
        for trade in trades:
            try:
                event = trade_of(self.venue, symbol, trade)
                if not self.trade_filter.admit(symbol, event.trade_id, event.ts):
                    continue
                if self.market.trades:
                    self.publisher.fact(event)
                if self.trade_bars is not None:
                    closed = self.trade_bars.add(symbol, event.ts, event.price, event.qty)
                    self.flow.from_stream(symbol, closed)
            except MalformedFrame as exc:
                self.dead_letter(f"ws.{self.exchange_id}.trades.{symbol}", str(exc), trade)
        self.publisher.send()

    def quotes(self, tickers: Mapping[str, Mapping[str, Any]]) -> None:
        now = self.clock.now_ns()
        for symbol, ticker in tickers.items():
            if symbol not in self.flow.active:
                continue
            try:
                quote = quote_of(self.venue, symbol, ticker, now)
            except MalformedFrame as exc:
                self.dead_letter(f"ws.{self.exchange_id}.quotes.{symbol}", str(exc), ticker)
                continue
            if self.throttle.admit(symbol, quote.ts, quote.bid, quote.ask):
                self.publisher.fact(quote)
        self.publisher.send()

    def frame_error(self, where: str, exc: BaseException) -> None:
        self.dead_letter(f"ws.{self.exchange_id}.{where}", one_line(exc), None)

    def disconnected(self, symbols: Sequence[str]) -> None:
        for symbol in symbols:
            self.closed.forget(symbol)
        self.flow.request(symbols)

    def reconnected(self, symbols: Sequence[str]) -> None:
        self.flow.request(symbols)

    def loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """A frame ccxt's own parser chokes on raises inside its receive loop, which then
        stops reading (the socket stays open and silent): said as a dead letter, and the
        websockets are reconnected at the next watchdog check instead of after a stall."""
        exc = context.get("exception")
        if exc is None or "receive_loop" not in repr(context.get("handle", "")):
            loop.default_exception_handler(context)
            return
        where = f"ws.{self.exchange_id}.receive"
        self.dead_letter(where, f"ccxt could not parse a frame: {one_line(exc)}", None)
        self.reconnect_now = True

    def dead_letter(self, where: str, reason: str, payload: Any) -> None:
        reason = self.redactor.redact(reason)
        data = b"" if payload is None else _encode(payload)
        log.warning("%s: dead letter: %s: %s", self.venue, where, reason)
        self.publisher.dead_letter(self.clock.now_ns(), where, reason, data)
        self.publisher.send()
        self.dead_letters += 1


def _encode(payload: Any) -> bytes:
    try:
        return msgspec.json.encode(payload)
    except (TypeError, ValueError, OverflowError):
        return repr(payload).encode()[:4096]
