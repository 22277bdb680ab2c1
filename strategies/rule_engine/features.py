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

from strategies.indicators import ADX, ATR, EMA, RSI, BollingerBands, Donchian, Stochastic


class Features(msgspec.Struct, frozen=True):
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
    """Indicator state of one series; part of the strategy's snapshot.

    ``update`` advances the indicators without allocating; ``features`` builds the snapshot
    of the last bar from their fields, only when something needs it.
    """

    ema_fast: EMA
    ema_slow: EMA
    adx: ADX
    atr: ATR
    rsi: RSI
    bb: BollingerBands
    stoch: Stochastic
    dc_fast: Donchian
    dc_slow: Donchian
    warm: bool = False  # every value of ``features`` exists (it then stays so)
    # whether the Stochastic and both channels were warm on the previous bar (warm-up only)
    prev_ready: bool = False
    close: float = 0.0
    # the previous bar's Stochastic and channels (meaningful once warm)
    prev_stoch_k: float = 0.0
    prev_stoch_d: float = 0.0
    high_fast: float = 0.0
    low_fast: float = 0.0
    high_slow: float = 0.0
    low_slow: float = 0.0
    # this bar's values the regime detector and the rules read
    last_adx: float | None = None
    last_ema_fast: float | None = None
    last_ema_slow: float | None = None
    last_rsi: float | None = None

    def update(self, high: float, low: float, close: float) -> bool:
        """Advance every indicator by one bar; True once the bar has a ``Features`` snapshot."""
        stoch, dc_fast, dc_slow = self.stoch, self.dc_fast, self.dc_slow
        self.close = close
        self.prev_stoch_k = stoch.k
        self.prev_stoch_d = stoch.d
        channel = dc_fast.window
        self.high_fast = channel.upper
        self.low_fast = channel.lower
        channel = dc_slow.window
        self.high_slow = channel.upper
        self.low_slow = channel.lower
        ema_fast = self.last_ema_fast = self.ema_fast.update(close)
        ema_slow = self.last_ema_slow = self.ema_slow.update(close)
        adx = self.last_adx = self.adx.advance(high, low, close)
        atr = self.atr.update(high, low, close)
        rsi = self.last_rsi = self.rsi.update(close)
        bb_ready = self.bb.advance(close)
        stoch_ready = stoch.advance(high, low, close)
        fast_ready = dc_fast.advance(high, low)
        slow_ready = dc_slow.advance(high, low)
        if self.warm:
            return True
        prev_ready = self.prev_ready
        self.prev_ready = stoch_ready and fast_ready and slow_ready
        self.warm = (
            prev_ready
            and bb_ready
            and stoch_ready
            and ema_fast is not None
            and ema_slow is not None
            and adx is not None
            and atr is not None
            and rsi is not None
        )
        return self.warm

    def features(self) -> Features:
        """The snapshot of the last bar; only valid once ``update`` has returned True."""
        rsi, ema_fast, ema_slow = self.last_rsi, self.last_ema_fast, self.last_ema_slow
        adx, atr, close = self.last_adx, self.atr.value, self.close
        assert rsi is not None and ema_fast is not None and ema_slow is not None
        assert adx is not None and atr is not None
        bb, stoch = self.bb, self.stoch
        return Features(
            close,
            rsi,
            ema_fast,
            ema_slow,
            adx,
            atr,
            100.0 * atr / close,
            bb.mid,
            bb.upper,
            bb.lower,
            stoch.k,
            stoch.d,
            self.prev_stoch_k,
            self.prev_stoch_d,
            self.high_fast,
            self.low_fast,
            self.high_slow,
            self.low_slow,
        )
