"""The per-bar feature snapshot the rules read, and the incremental tracker that builds it.

Every indicator is updated on every bar; a ``Features`` snapshot exists only once all of
them are warm (with default params from bar 56: the slow Donchian channel of the previous
bar needs 55 bars before the current one). The breakout channels in a snapshot are the
PREVIOUS bar's Donchian channels (the current bar's channel includes its own high and low,
so ``close > upper`` could never hold); the Stochastic of the previous bar is kept for
crosses.
"""

from __future__ import annotations

import msgspec

from strategies.indicators import (
    ADX,
    ATR,
    EMA,
    RSI,
    BollingerBands,
    Donchian,
    DonchianValue,
    Stochastic,
    StochasticValue,
)


class Features(msgspec.Struct, frozen=True, kw_only=True):
    """What the rules may look at on one bar (all values of that bar unless noted)."""

    close: float
    rsi: float
    ema_fast: float
    ema_slow: float
    adx: float
    atr: float
    atr_pct: float  # 100 * atr / close
    bb_mid: float
    bb_upper: float
    bb_lower: float
    stoch_k: float
    stoch_d: float
    prev_stoch_k: float  # previous bar
    prev_stoch_d: float  # previous bar
    high_fast: float  # previous bar's Donchian(breakout_fast) upper, default 20 bars
    low_fast: float  # previous bar's Donchian(breakout_fast) lower
    high_slow: float  # previous bar's Donchian(breakout_slow) upper, default 55 bars
    low_slow: float  # previous bar's Donchian(breakout_slow) lower


class FeatureTracker(msgspec.Struct):
    """Indicator state of one series; part of the strategy's snapshot."""

    ema_fast: EMA
    ema_slow: EMA
    adx: ADX
    atr: ATR
    rsi: RSI
    bb: BollingerBands
    stoch: Stochastic
    dc_fast: Donchian
    dc_slow: Donchian
    prev_dc_fast: DonchianValue | None = None
    prev_dc_slow: DonchianValue | None = None
    prev_stoch: StochasticValue | None = None
    # the two values the regime detector reads, kept from the last update
    last_adx: float | None = None
    last_ema_fast: float | None = None
    last_ema_slow: float | None = None

    def update(self, high: float, low: float, close: float) -> Features | None:
        ema_fast = self.last_ema_fast = self.ema_fast.update(close)
        ema_slow = self.last_ema_slow = self.ema_slow.update(close)
        adx = self.adx.update(high, low, close)
        self.last_adx = adx.adx if adx is not None else None
        atr = self.atr.update(high, low, close)
        rsi = self.rsi.update(close)
        bb = self.bb.update(close)
        stoch = self.stoch.update(high, low, close)
        dc_fast = self.dc_fast.update(high, low, close)
        dc_slow = self.dc_slow.update(high, low, close)
        prev_fast, prev_slow, prev_stoch = self.prev_dc_fast, self.prev_dc_slow, self.prev_stoch
        self.prev_dc_fast, self.prev_dc_slow, self.prev_stoch = dc_fast, dc_slow, stoch
        if (
            ema_fast is None
            or ema_slow is None
            or adx is None
            or atr is None
            or rsi is None
            or bb is None
            or stoch is None
            or prev_stoch is None
            or prev_fast is None
            or prev_slow is None
        ):
            return None
        return Features(
            close=close,
            rsi=rsi,
            ema_fast=ema_fast,
            ema_slow=ema_slow,
            adx=adx.adx,
            atr=atr,
            atr_pct=100.0 * atr / close,
            bb_mid=bb.mid,
            bb_upper=bb.upper,
            bb_lower=bb.lower,
            stoch_k=stoch.k,
            stoch_d=stoch.d,
            prev_stoch_k=prev_stoch.k,
            prev_stoch_d=prev_stoch.d,
            high_fast=prev_fast.upper,
            low_fast=prev_fast.lower,
            high_slow=prev_slow.upper,
            low_slow=prev_slow.lower,
        )
