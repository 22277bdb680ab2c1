"""The websocket side of a live session: which ccxt ``watch*`` loops run, and keeping them up.

Bars come from ``watch_ohlcv_for_symbols`` where the exchange has it (symbols chunked per
subscription, e.g. 200 streams per Binance connection), else ``watch_ohlcv`` per symbol,
else (Kraken Futures) from ``watch_trades``. Trades and best bid/ask are optional. Each loop
hands what a call returned to the session (``StreamSink``) without waiting on anything else;
a dropped connection is retried with backoff and jitter (ccxt dials again on the next call)
and reported once, so the session backfills by REST; anything else a call raises is a reason
for a dead letter, and the loop carries on.

A ``watch_*_for_symbols`` call returns the one symbol whose frame resolved it; frames of the
other symbols that arrived meanwhile only reached ccxt's caches. After each call the loop
takes those too (``unread``), so a burst of closes at the minute is published at once rather
than at each symbol's next frame.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import ccxt
import ccxt.pro

from services.marketdata.live.calls import Backoff, Stopped, VenueCalls, VenueOutage

CHUNK = {"binance": 200, "binanceusdm": 200, "bybit": 10}
"""Symbols per ``watch_*_for_symbols`` subscription (the exchange's limit per request or
connection); other exchanges get ``DEFAULT_CHUNK``."""
DEFAULT_CHUNK = 50


class StreamSink(Protocol):
    def candles(self, symbol: str, rows: Sequence[Any]) -> None: ...

    def trades(self, symbol: str, trades: Sequence[Mapping[str, Any]]) -> None: ...

    def quotes(self, tickers: Mapping[str, Mapping[str, Any]]) -> None: ...

    def frame_error(self, where: str, exc: BaseException) -> None: ...

    def disconnected(self, symbols: Sequence[str]) -> None: ...

    def reconnected(self, symbols: Sequence[str]) -> None: ...


def has(exchange: ccxt.pro.Exchange, feature: str) -> bool:
    return bool(exchange.has.get(feature))


def bars_from_trades(exchange: ccxt.pro.Exchange) -> bool:
    """No kline stream (Kraken Futures): bars are built from the trade stream."""
    return not has(exchange, "watchOHLCV")


def chunks(symbols: Sequence[str], size: int) -> list[tuple[str, ...]]:
    return [tuple(symbols[i : i + size]) for i in range(0, len(symbols), size)]


def unread(cache: Any, symbol: str) -> list[Any]:
    """What ccxt cached for ``symbol`` since it was last read (by ccxt's own ``getLimit``
    bookkeeping: an OHLCV cache per symbol and timeframe, a trade cache per symbol)."""
    if cache is None:
        return []
    if hasattr(cache, "_new_updates_by_symbol"):
        if cache._clear_updates_by_symbol.get(symbol) or not cache._new_updates_by_symbol.get(
            symbol
        ):
            return []
    elif getattr(cache, "_clear_updates", True) or not getattr(cache, "_new_updates", 0):
        return []
    n = cache.getLimit(symbol, None)
    return list(cache[-n:]) if n else []


class Streams:
    """The running watch loops of one exchange instance."""

    def __init__(
        self,
        exchange: ccxt.pro.Exchange,
        sink: StreamSink,
        calls: VenueCalls,
        timeframe: str,
        *,
        trades: bool,
        quotes: bool,
        seed: int = 0,
    ) -> None:
        self.exchange = exchange
        self.sink = sink
        self.calls = calls
        self.timeframe = timeframe
        self.want_trades = trades or bars_from_trades(exchange)
        self.want_quotes = quotes
        self.seed = seed
        self.outage = VenueOutage(f"{exchange.id} websocket")
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, symbols: Sequence[str]) -> None:
        if not symbols:
            return
        size = CHUNK.get(self.exchange.id, DEFAULT_CHUNK)
        if has(self.exchange, "watchOHLCVForSymbols"):
            for group in chunks(symbols, size):
                watch = self._ohlcv_many(group)
                self._spawn("watch_ohlcv_for_symbols", group, watch, self._bars(group))
        elif has(self.exchange, "watchOHLCV"):
            for symbol in symbols:
                self._spawn("watch_ohlcv", (symbol,), self._ohlcv_one(symbol), self._rows(symbol))
        if self.want_trades:
            if has(self.exchange, "watchTradesForSymbols"):
                for group in chunks(symbols, size):
                    watch = self._trades_many(group)
                    self._spawn("watch_trades_for_symbols", group, watch, self._t(group))
            else:
                for symbol in symbols:
                    watch = self._trades_one(symbol)
                    self._spawn("watch_trades", (symbol,), watch, self._t(()))
        if self.want_quotes:
            if has(self.exchange, "watchBidsAsks"):
                for group in chunks(symbols, size):
                    watch = self._bids_asks(group)
                    self._spawn("watch_bids_asks", group, watch, self._quotes(group))
            else:
                for symbol in symbols:
                    self._spawn("watch_ticker", (symbol,), self._ticker(symbol), self._one_quote)

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def reconnect(self, symbols: Sequence[str]) -> None:
        """Close every websocket of the exchange and subscribe again (a silent socket that
        still answers pings is only cured by a new connection)."""
        await self.stop()
        with contextlib.suppress(Exception):
            await self.exchange.close_ws_clients()
        self.start(symbols)

    @property
    def running(self) -> int:
        return sum(1 for task in self._tasks if not task.done())

    def _ohlcv_many(self, group: tuple[str, ...]) -> Callable[[], Awaitable[Any]]:
        pairs = [[symbol, self.timeframe] for symbol in group]
        return lambda: self.exchange.watch_ohlcv_for_symbols(pairs)

    def _ohlcv_one(self, symbol: str) -> Callable[[], Awaitable[Any]]:
        return lambda: self.exchange.watch_ohlcv(symbol, self.timeframe)

    def _trades_many(self, group: tuple[str, ...]) -> Callable[[], Awaitable[Any]]:
        return lambda: self.exchange.watch_trades_for_symbols(list(group))

    def _trades_one(self, symbol: str) -> Callable[[], Awaitable[Any]]:
        return lambda: self.exchange.watch_trades(symbol)

    def _bids_asks(self, group: tuple[str, ...]) -> Callable[[], Awaitable[Any]]:
        return lambda: self.exchange.watch_bids_asks(list(group))

    def _ticker(self, symbol: str) -> Callable[[], Awaitable[Any]]:
        return lambda: self.exchange.watch_ticker(symbol)

    def _bars(self, group: tuple[str, ...]) -> Callable[[Any], None]:
        def handle(result: Mapping[str, Mapping[str, Sequence[Any]]]) -> None:
            for symbol, by_timeframe in result.items():
                self.sink.candles(symbol, by_timeframe.get(self.timeframe, ()))
            # Every symbol, the one in the result too: a frame ccxt parsed after the result was
            # taken (the next candle's first, right behind a candle's last) is only cached.
            for symbol in group:
                by_timeframe = self.exchange.ohlcvs.get(symbol) or {}
                rows = unread(by_timeframe.get(self.timeframe), symbol)
                if rows:
                    self.sink.candles(symbol, rows)

        return handle

    def _rows(self, symbol: str) -> Callable[[Sequence[Any]], None]:
        def handle(rows: Sequence[Any]) -> None:
            self.sink.candles(symbol, rows)
            later = unread((self.exchange.ohlcvs.get(symbol) or {}).get(self.timeframe), symbol)
            if later:  # parsed after the result was taken (as for bars of several symbols)
                self.sink.candles(symbol, later)

        return handle

    def _t(self, group: tuple[str, ...]) -> Callable[[Any], None]:
        def handle(trades: Sequence[Mapping[str, Any]]) -> None:
            first = str(trades[0].get("symbol", "")) if trades else ""
            if trades:
                self.sink.trades(first, trades)
            for symbol in group or (first,):  # as for bars; a repeat is dropped by its id
                rows = unread(self.exchange.trades.get(symbol), symbol)
                if rows:
                    self.sink.trades(symbol, rows)

        return handle

    def _quotes(self, group: tuple[str, ...]) -> Callable[[Any], None]:
        seen: dict[str, Any] = {}

        def handle(tickers: Mapping[str, Mapping[str, Any]]) -> None:
            fresh = dict(tickers)
            for symbol in group:  # the cache's newest, the result's symbols too (as for bars)
                ticker = self.exchange.bidsasks.get(symbol)
                if ticker is not None and seen.get(symbol) is not ticker:
                    fresh[symbol] = ticker
            for symbol, ticker in fresh.items():
                seen[symbol] = ticker
            self.sink.quotes(fresh)

        return handle

    def _one_quote(self, ticker: Mapping[str, Any]) -> None:
        self.sink.quotes({str(ticker.get("symbol", "")): ticker})

    def _spawn(
        self,
        where: str,
        symbols: tuple[str, ...],
        watch: Callable[[], Awaitable[Any]],
        handle: Callable[[Any], None],
    ) -> None:
        self._tasks.append(asyncio.create_task(self._loop(where, symbols, watch, handle)))

    async def _loop(
        self,
        where: str,
        symbols: tuple[str, ...],
        watch: Callable[[], Awaitable[Any]],
        handle: Callable[[Any], None],
    ) -> None:
        backoff = Backoff(seed=self.seed + len(self._tasks))
        dropped = False
        call: asyncio.Future[Any] = asyncio.ensure_future(watch())
        try:
            while True:
                try:
                    result = await call
                except ccxt.NetworkError as exc:
                    self.outage.trouble(where, exc)
                    if not dropped:
                        dropped = True
                        self.sink.disconnected(symbols)
                    await self.calls.pause(backoff.next())
                    call = asyncio.ensure_future(watch())
                    continue
                except ccxt.ExchangeClosedByUser:
                    return
                except Exception as exc:  # a frame ccxt could not use: a reason, not a crash
                    self.sink.frame_error(where, exc)
                    await self.calls.pause(backoff.next())
                    call = asyncio.ensure_future(watch())
                    continue
                # The next call first, so that its future is waiting before this result (and
                # what else the caches hold) is handled: a frame that arrives later resolves
                # it, none falls between the two.
                call = asyncio.ensure_future(watch())
                await asyncio.sleep(0)
                if dropped:
                    dropped = False
                    self.outage.cleared()
                    self.sink.reconnected(symbols)
                backoff.reset()
                try:
                    handle(result)
                except Exception as exc:  # a result of an unexpected shape
                    self.sink.frame_error(where, exc)
        except Stopped:
            return
        finally:
            call.cancel()
            with contextlib.suppress(BaseException):
                await call
