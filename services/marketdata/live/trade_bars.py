"""Bars built from trades, for venues without a kline stream (Kraken Futures).

A candle holds the trades whose time falls in its interval. It closes when a trade of a
later interval arrives, or once its close + ``settle_ns`` has passed on the exchange clock
(trades are delivered a little after they happen; ``settle_ns`` is how long to wait for the
stragglers). A trade for a candle already closed is dropped and counted: a published bar is
never revised. A minute without trades gives no candle, as the venue's own history does.
"""

from __future__ import annotations

import math

from services.marketdata.live.candles import Candle, MalformedFrame


class TradeBars:
    """Per symbol, the forming candle and the open time of the last one closed; ``dropped``
    counts trades that arrived after their candle had closed."""

    def __init__(self, interval_ns: int, settle_ns: int) -> None:
        if interval_ns <= 0 or settle_ns < 0:
            raise ValueError("interval_ns must be > 0 and settle_ns >= 0")
        self.interval_ns = interval_ns
        self.settle_ns = settle_ns
        self._forming: dict[str, Candle] = {}
        self._closed: dict[str, int] = {}
        self._last_ts: dict[str, int] = {}
        self.dropped = 0

    def add(self, symbol: str, ts_ns: int, price: float, qty: float) -> list[Candle]:
        """Fold one trade in; returns the candle it closed, if any (at most one). A trade
        older than the latest one of its candle counts for high, low and volume but does not
        set the close."""
        if isinstance(ts_ns, bool) or not isinstance(ts_ns, int):
            raise MalformedFrame(f"trade time {ts_ns!r} is not a whole number of ns")
        if not (_is_number(price) and price > 0):
            raise MalformedFrame(f"trade price {price!r} is not a number > 0")
        if not (_is_number(qty) and qty >= 0):
            raise MalformedFrame(f"trade amount {qty!r} is not a number >= 0")
        open_ns = ts_ns - ts_ns % self.interval_ns
        last_closed = self._closed.get(symbol)
        if last_closed is not None and open_ns <= last_closed:
            self.dropped += 1
            return []
        forming = self._forming.get(symbol)
        price, qty = float(price), float(qty)
        if forming is None or open_ns > forming.open_ns:
            self._forming[symbol] = Candle(open_ns, price, price, price, price, qty)
            self._last_ts[symbol] = ts_ns
            if forming is None:
                return []
            self._closed[symbol] = forming.open_ns
            return [forming]
        if open_ns < forming.open_ns:
            self.dropped += 1
            return []
        latest = ts_ns >= self._last_ts[symbol]
        if latest:
            self._last_ts[symbol] = ts_ns
        self._forming[symbol] = Candle(
            open_ns,
            forming.open,
            max(forming.high, price),
            min(forming.low, price),
            price if latest else forming.close,
            forming.volume + qty,
        )
        return []

    def close_due(self, now_ns: int) -> list[tuple[str, Candle]]:
        """Candles whose close + settle time has come by ``now_ns``, oldest first (then by
        symbol, so the order never depends on arrival)."""
        due = [
            (symbol, candle)
            for symbol, candle in self._forming.items()
            if candle.open_ns + self.interval_ns + self.settle_ns <= now_ns
        ]
        due.sort(key=lambda item: (item[1].open_ns, item[0]))
        for symbol, candle in due:
            del self._forming[symbol]
            del self._last_ts[symbol]
            self._closed[symbol] = candle.open_ns
        return due

    def forming(self, symbol: str) -> Candle | None:
        return self._forming.get(symbol)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
