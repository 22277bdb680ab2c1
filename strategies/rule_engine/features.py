"""The per-bar feature snapshot the rules read, and the incremental tracker that builds it.

Every indicator is updated on every bar; a ``Features`` snapshot exists only once all of
them are warm (with default params from bar 56: the slow Donchian channel of the previous
bar needs 55 bars before the current one). The breakout channels in a snapshot are the
PREVIOUS bar's Donchian channels (the current bar's channel includes its own high and low,
so ``close > upper`` could never hold); the Stochastic of the previous bar is kept for
crosses.
"""

from __future__ import annotations

from math import sqrt

import msgspec

from strategies.indicators import (
    ADX,
    ATR,
    CANCELLATION_GUARD,
    EMA,
    RESYNC_FACTOR,
    RSI,
    BollingerBands,
    Donchian,
    Stochastic,
)


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


class FeatureTracker(msgspec.Struct, dict=True):
    """Indicator state of one series; part of the strategy's snapshot.

    ``update`` advances the indicators without allocating; ``features`` builds the snapshot
    of the last bar from their fields, only when something needs it.

    Until warm, ``update`` calls each indicator's own method. Once warm (every window full,
    every average seeded, which then stays so) it is one fused step: the steady-state
    arithmetic of the nine indicators written out inline, operation for operation as their
    methods do it, on the same state fields, so snapshots are unchanged. In CPython a call per
    indicator costs more than most of their steps. ``tests/test_rule_engine.py`` checks the
    step against the indicators' own methods.
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

    def __post_init__(self) -> None:
        # The fused step's constants, derived from the indicators (``__post_init__`` also runs
        # on decode) and kept out of the snapshot (``dict=True``). Periods as floats give the
        # same results as the integers on CPython's faster float-with-float path. The channels
        # are the tracker's own windows (its indicators are never replaced).
        self._constants = (
            2.0 / (self.ema_fast.period + 1),
            2.0 / (self.ema_slow.period + 1),
            float(self.atr.period),
            float(self.atr.period - 1),
            float(self.rsi.period),
            float(self.rsi.period - 1),
            float(self.adx.period),
            float(self.adx.period - 1),
            float(self.bb.period),
            float(self.stoch.d_period),
        )
        self._channels = (
            (self.stoch.window, self.stoch.k_period),
            (self.dc_fast.window, self.dc_fast.period),
            (self.dc_slow.window, self.dc_slow.period),
        )

    def update(self, high: float, low: float, close: float) -> bool:
        """Advance every indicator by one bar; True once the bar has a ``Features`` snapshot."""
        if not self.warm:
            return self._warm_up(high, low, close)
        alpha_fast, alpha_slow, atr_n, atr_m, rsi_n, rsi_m, adx_n, adx_m, bb_n, d_n = (
            self._constants
        )
        stoch, dc_fast, dc_slow = self.stoch, self.dc_fast, self.dc_slow
        channel = dc_fast.window
        self.high_fast = channel.upper
        self.low_fast = channel.lower
        channel = dc_slow.window
        self.high_slow = channel.upper
        self.low_slow = channel.lower
        self.prev_stoch_k = stoch.k
        self.prev_stoch_d = stoch.d
        prev_close = self.close  # every indicator saw the same bars: it is their previous close
        self.close = close
        # the true range, as ATR.update and ADX.advance compute it
        tr = high - low
        gap = abs(high - prev_close)
        if gap > tr:
            tr = gap
        gap = abs(low - prev_close)
        if gap > tr:
            tr = gap

        # EMA.update
        ema = self.ema_fast
        value = ema.value
        value += alpha_fast * (close - value)
        ema.value = self.last_ema_fast = value
        ema = self.ema_slow
        value = ema.value
        value += alpha_slow * (close - value)
        ema.value = self.last_ema_slow = value

        # ATR.update
        atr = self.atr
        atr.prev_close = close
        atr.value = (atr.value * atr_m + tr) / atr_n

        # RSI.update
        rsi = self.rsi
        rsi.prev = close
        change = close - prev_close
        gain = change if change > 0.0 else 0.0
        loss = -change if change < 0.0 else 0.0
        avg_gain = rsi.avg_gain = (rsi.avg_gain * rsi_m + gain) / rsi_n
        avg_loss = rsi.avg_loss = (rsi.avg_loss * rsi_m + loss) / rsi_n
        if avg_loss == 0.0:
            self.last_rsi = 100.0 if avg_gain > 0.0 else 50.0
        else:
            self.last_rsi = 100.0 - 100.0 / (1.0 + avg_gain / avg_loss)

        # ADX.advance
        adx = self.adx
        adx.count += 1
        up = high - adx.prev_high
        down = adx.prev_low - low
        adx.prev_high = high
        adx.prev_low = low
        adx.prev_close = close
        plus_dm = up if up > down and up > 0.0 else 0.0
        minus_dm = down if down > up and down > 0.0 else 0.0
        tr_sum = adx.tr_sum
        tr_sum += tr - tr_sum / adx_n
        plus_sum = adx.plus_dm_sum
        plus_sum += plus_dm - plus_sum / adx_n
        minus_sum = adx.minus_dm_sum
        minus_sum += minus_dm - minus_sum / adx_n
        adx.tr_sum = tr_sum
        adx.plus_dm_sum = plus_sum
        adx.minus_dm_sum = minus_sum
        if tr_sum > 0.0:
            plus_di = 100.0 * plus_sum / tr_sum
            minus_di = 100.0 * minus_sum / tr_sum
        else:
            plus_di = minus_di = 0.0
        adx.plus_di = plus_di
        adx.minus_di = minus_di
        di_sum = plus_di + minus_di
        dx = 100.0 * abs(plus_di - minus_di) / di_sum if di_sum > 0.0 else 0.0
        adx.adx = self.last_adx = (adx.adx * adx_m + dx) / adx_n

        # BollingerBands.advance: _Moments.push (window full), mean, variance
        bb = self.bb
        window = bb.window
        n = bb.period
        buf = window.buf
        if close == window.last:
            run = window.run = window.run + 1
        else:
            run = 1
            if window.run != 1:
                window.run = 1
        window.last = close
        shift = window.shift
        pos = window.pos
        dn = close - shift
        do = buf[pos] - shift
        buf[pos] = close
        window.pos = pos + 1 if pos + 1 < n else 0
        s1 = window.s1 = window.s1 + (dn - do)
        s2 = window.s2 = window.s2 + (dn * dn - do * do)
        since = window.since_resync + 1
        if since >= RESYNC_FACTOR * n:
            window._resync()
            shift, s1, s2 = window.shift, window.s1, window.s2
        else:
            window.since_resync = since
        if run >= n:
            mid = close
            variance = 0.0
        else:
            mid = shift + s1 / bb_n
            ss = s2 - s1 * s1 / bb_n
            if ss < CANCELLATION_GUARD * s2:
                window._resync()
                ss = window.s2 - window.s1 * window.s1 / bb_n
            variance = ss / bb_n if ss > 0.0 else 0.0
        width = bb.k * sqrt(variance)
        bb.mid = mid
        bb.upper = mid + width
        bb.lower = mid - width

        # _Channel.push (window full) of the Stochastic and both Donchian channels
        for channel, n in self._channels:
            pos = channel.pos
            highs = channel.highs
            evicted = highs[pos]
            highs[pos] = high
            if high >= channel.upper:
                channel.upper = high
            elif evicted == channel.upper:
                channel.upper = max(highs)
            lows = channel.lows
            evicted = lows[pos]
            lows[pos] = low
            if low <= channel.lower:
                channel.lower = low
            elif evicted == channel.lower:
                channel.lower = min(lows)
            channel.pos = pos + 1 if pos + 1 < n else 0
        # Stochastic.advance
        channel = stoch.window
        hh = channel.upper
        ll = channel.lower
        k = 50.0 if hh == ll else 100.0 * (close - ll) / (hh - ll)
        window = stoch.ks  # _Moments.push (window full), mean
        n = stoch.d_period
        buf = window.buf
        if k == window.last:
            run = window.run = window.run + 1
        else:
            run = 1
            if window.run != 1:
                window.run = 1
        window.last = k
        shift = window.shift
        pos = window.pos
        dn = k - shift
        do = buf[pos] - shift
        buf[pos] = k
        window.pos = pos + 1 if pos + 1 < n else 0
        s1 = window.s1 = window.s1 + (dn - do)
        window.s2 += dn * dn - do * do
        since = window.since_resync + 1
        if since >= RESYNC_FACTOR * n:
            window._resync()
            shift, s1 = window.shift, window.s1
        else:
            window.since_resync = since
        stoch.k = k
        stoch.d = k if run >= n else shift + s1 / d_n
        return True

    def _warm_up(self, high: float, low: float, close: float) -> bool:
        """``update`` until warm: each indicator's own method, which handles its warm-up."""
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
