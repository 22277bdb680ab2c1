"""Market regime (trend or range, confirmed over consecutive bars) and volatility regime.

Trend regime, from ADX and the fast/slow EMAs of the same bar:

- ``BULL_TREND``: ADX > ``adx_trend`` and EMA fast > EMA slow on each of the last
  ``trend_bars`` bars (defaults 25 and 3);
- ``BEAR_TREND``: the mirror, ADX > ``adx_trend`` and EMA fast < EMA slow;
- ``RANGE``: ADX < ``adx_range`` on each of the last ``range_bars`` bars (defaults 20 and 5);
- ``UNKNOWN``: anything else, including warm-up (an indicator still None breaks every run).

The three raw conditions exclude each other, so at most one run is confirmed. The regime is
not sticky: the bar that breaks a run ends the regime (back to ``UNKNOWN`` until another run
is confirmed).

Volatility regime, from ATR% = 100 * ATR / close, with bands ``low < high < extreme``
(defaults 0.5, 1.5, 3.0 percent): ``LOW`` below ``low``; ``NORMAL`` from ``low`` to ``high``
inclusive; ``HIGH`` above ``high`` up to ``extreme`` inclusive; ``EXTREME`` above ``extreme``.
"""

from __future__ import annotations

from typing import Literal

import msgspec

Regime = Literal["BULL_TREND", "BEAR_TREND", "RANGE", "UNKNOWN"]
VolRegime = Literal["LOW", "NORMAL", "HIGH", "EXTREME"]

BULL_TREND: Regime = "BULL_TREND"
BEAR_TREND: Regime = "BEAR_TREND"
RANGE: Regime = "RANGE"
UNKNOWN: Regime = "UNKNOWN"
REGIMES: tuple[Regime, ...] = (BULL_TREND, BEAR_TREND, RANGE, UNKNOWN)


class RegimeDetector(msgspec.Struct):
    """Counts consecutive bars of each raw condition; ``update`` returns the bar's regime."""

    adx_trend: float = 25.0
    adx_range: float = 20.0
    trend_bars: int = 3
    range_bars: int = 5
    bull_run: int = 0
    bear_run: int = 0
    range_run: int = 0

    def update(self, adx: float | None, ema_fast: float | None, ema_slow: float | None) -> Regime:
        bull = bear = ranging = False
        if adx is not None:
            ranging = adx < self.adx_range
            if adx > self.adx_trend and ema_fast is not None and ema_slow is not None:
                bull, bear = ema_fast > ema_slow, ema_fast < ema_slow
        # the runs, then ``current`` inlined (this runs on every bar); a run is stored only
        # when it changes, since a struct field store costs more than the test
        bull_run, bear_run, range_run = self.bull_run, self.bear_run, self.range_run
        if bull:
            bull_run = self.bull_run = bull_run + 1
        elif bull_run:
            bull_run = self.bull_run = 0
        if bear:
            bear_run = self.bear_run = bear_run + 1
        elif bear_run:
            bear_run = self.bear_run = 0
        if ranging:
            range_run = self.range_run = range_run + 1
        elif range_run:
            range_run = self.range_run = 0
        if bull_run >= self.trend_bars:
            return BULL_TREND
        if bear_run >= self.trend_bars:
            return BEAR_TREND
        return RANGE if range_run >= self.range_bars else UNKNOWN

    @property
    def current(self) -> Regime:
        if self.bull_run >= self.trend_bars:
            return BULL_TREND
        if self.bear_run >= self.trend_bars:
            return BEAR_TREND
        if self.range_run >= self.range_bars:
            return RANGE
        return UNKNOWN


def vol_regime(atr_pct: float, low: float, high: float, extreme: float) -> VolRegime:
    """The volatility band of an ATR% (percent, e.g. 0.8 for 0.8 %)."""
    if atr_pct < low:
        return "LOW"
    if atr_pct <= high:
        return "NORMAL"
    if atr_pct <= extreme:
        return "HIGH"
    return "EXTREME"
