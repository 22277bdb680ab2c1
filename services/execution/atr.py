"""Wilder's average true range of each market's bars: what ``stop_atr`` stops and
``trail_atr`` trails measure their distance in."""

from __future__ import annotations

import msgspec

from contracts.events import Bar
from contracts.keys import InstrumentId


class Atr(msgspec.Struct, array_like=True):
    """The ATR of one market's bars of one interval: ``value`` is the running sum of true
    ranges until ``count`` reaches the period, then the average."""

    interval: str
    prev_close: float
    value: float
    count: int


def update_atr(atrs: dict[InstrumentId, Atr], market: InstrumentId, bar: Bar, period: int) -> None:
    """Fold one bar into its market's ATR (one interval per market: the first one seen)."""
    atr = atrs.get(market)
    if atr is None:
        atrs[market] = Atr(bar.interval, bar.close, bar.high - bar.low, 1)
        return
    if atr.interval != bar.interval:
        return
    prev = atr.prev_close
    tr = max(bar.high - bar.low, abs(bar.high - prev), abs(bar.low - prev))
    if atr.count < period:
        atr.value += tr
        atr.count += 1
        if atr.count == period:
            atr.value /= period
    else:
        atr.value = (atr.value * (period - 1) + tr) / period
    atr.prev_close = bar.close


def atr_value(atrs: dict[InstrumentId, Atr], market: InstrumentId, period: int) -> float | None:
    """A market's ATR; None until ``period`` bars were seen (or with no period)."""
    atr = atrs.get(market)
    if atr is None or not period or atr.count < period:
        return None
    return atr.value
