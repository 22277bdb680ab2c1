"""Closed candles out of a kline stream: only a closed bar is a fact.

A kline stream keeps re-sending the forming candle with its running values. A candle is
closed once a candle with a later open time has been seen, and its values are the last ones
seen for it; the exchange sends the final update of a candle before the first of the next,
so those are its closing values. Rows that go back in time are counted and ignored, so a
candle closes at most once.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from contracts.events import Bar
from contracts.intervals import interval_ns

_MS = 1_000_000
_MAX_MS = (2**63 - 1) // _MS - 1
_FIELDS = ("open", "high", "low", "close", "volume")


class MalformedFrame(ValueError):
    """A row or trade from the exchange that cannot be used; the message is one line that
    names the field (for a dead letter or a logged reason)."""


class Candle(msgspec.Struct, frozen=True, gc=False):
    """One candle of one symbol; ``open_ns`` is its open time in ns since the epoch (UTC)."""

    open_ns: int
    open: float
    high: float
    low: float
    close: float
    volume: float


def candle_from_ccxt(row: Any) -> Candle:
    """A ccxt OHLCV row ``[open time ms, open, high, low, close, volume]``, checked against
    the rules a ``Bar`` enforces (prices > 0 and finite, volume >= 0, high >= low)."""
    if not isinstance(row, Sequence) or isinstance(row, str | bytes):
        raise MalformedFrame(f"kline row is a {type(row).__name__}, not a list")
    if len(row) < 6:
        raise MalformedFrame(
            f"kline row has {len(row)} fields, expected 6 (time, open, high, low, close, volume)"
        )
    open_ms = row[0]
    if isinstance(open_ms, float) and math.isfinite(open_ms) and open_ms.is_integer():
        open_ms = int(open_ms)
    if isinstance(open_ms, bool) or not isinstance(open_ms, int):
        raise MalformedFrame(f"open time {open_ms!r} is not a whole number of milliseconds")
    if not 0 <= open_ms <= _MAX_MS:
        raise MalformedFrame(f"open time {open_ms!r} is out of range")
    values = [_value(name, value) for name, value in zip(_FIELDS, row[1:6], strict=True)]
    open_, high, low, close, volume = values
    for name, price in zip(_FIELDS, values[:4], strict=False):
        if price <= 0:
            raise MalformedFrame(f"{name} {price!r} is not > 0")
    if volume < 0:
        raise MalformedFrame(f"volume {volume!r} is negative")
    if high < low:
        raise MalformedFrame(f"high {high!r} is below low {low!r}")
    return Candle(open_ms * _MS, open_, high, low, close, volume)


def _value(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedFrame(f"{name} {value!r} is not a number")
    number = float(value)
    if not math.isfinite(number):
        raise MalformedFrame(f"{name} {value!r} is not finite")
    return number


@functools.lru_cache(maxsize=64)
def _step_ns(interval: str) -> int:
    return interval_ns(interval)


def to_bar(venue: str, symbol: str, interval: str, candle: Candle) -> Bar:
    """The Bar event of a closed candle: known at its close (``ts`` = ``close_time``)."""
    close_ns = candle.open_ns + _step_ns(interval)
    return Bar(
        ts=close_ns,
        venue=venue,
        symbol=symbol,
        interval=interval,
        open_time=candle.open_ns,
        close_time=close_ns,
        open=float(candle.open),
        high=float(candle.high),
        low=float(candle.low),
        close=float(candle.close),
        volume=float(candle.volume),
    )


class ClosedCandles:
    """Per symbol, the forming candle and the open time of the last one closed.

    ``out_of_order`` counts rows ignored because they went back in time (older than the
    forming candle, or not after the last closed one)."""

    def __init__(self) -> None:
        self._forming: dict[str, Candle] = {}
        self._closed: dict[str, int] = {}
        self.out_of_order = 0

    def update(self, symbol: str, rows: Iterable[Any]) -> list[Candle]:
        """The candles this batch of rows (one ``watch_ohlcv`` result, in order) closed.

        Every row is checked before any is used: a frame with one malformed row raises
        ``MalformedFrame`` and changes nothing."""
        candles = [candle_from_ccxt(row) for row in rows]
        forming = self._forming.get(symbol)
        floor = self._closed.get(symbol)
        closed: list[Candle] = []
        for candle in candles:
            if floor is not None and candle.open_ns <= floor:
                self.out_of_order += 1
            elif forming is None or candle.open_ns == forming.open_ns:
                forming = candle
            elif candle.open_ns > forming.open_ns:
                closed.append(forming)
                floor = forming.open_ns
                forming = candle
            else:
                self.out_of_order += 1
        if forming is not None:
            self._forming[symbol] = forming
        if floor is not None:
            self._closed[symbol] = floor
        return closed

    def forming(self, symbol: str) -> Candle | None:
        """The candle still open for ``symbol``, as last seen."""
        return self._forming.get(symbol)

    def forget(self, symbol: str) -> Candle | None:
        """Drop the forming candle (call it when the stream reconnects: updates may have been
        missed, so its last values are not known to be final; REST history then supplies the
        closed bar). The last closed open time is kept, so nothing closes twice."""
        return self._forming.pop(symbol, None)
