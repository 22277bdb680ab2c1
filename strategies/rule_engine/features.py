"""The per-bar features the rules read, and the incremental tracker that builds them.

Every indicator is updated on every bar; the features exist only once all of them are warm
(with default params from bar 56: the slow Donchian channel of the previous bar needs 55 bars
before the current one). The breakout channels are the PREVIOUS bar's Donchian channels (the
current bar's channel includes its own high and low, so ``close > upper`` could never hold);
the Stochastic of the previous bar is kept for crosses.

Two shapes, one set of values: ``Features`` is a frozen record (tests, debugging, decision
records of a restored series); ``LiveFeatures`` is a warm series' state in plain attributes,
advanced in place every bar, which the rules read directly (both are a ``FeatureView``).
"""

from __future__ import annotations

from math import sqrt
from typing import TYPE_CHECKING, Protocol

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

if TYPE_CHECKING:
    from strategies.indicators import _Channel, _Moments


class FeatureView(Protocol):
    """What a rule predicate may read; ``Features`` and ``LiveFeatures`` both provide it."""

    @property
    def close(self) -> float: ...
    @property
    def rsi(self) -> float: ...
    @property
    def ema_fast(self) -> float: ...
    @property
    def ema_slow(self) -> float: ...
    @property
    def adx(self) -> float: ...
    @property
    def atr(self) -> float: ...
    @property
    def atr_pct(self) -> float: ...
    @property
    def bb_mid(self) -> float: ...
    @property
    def bb_upper(self) -> float: ...
    @property
    def bb_lower(self) -> float: ...
    @property
    def stoch_k(self) -> float: ...
    @property
    def stoch_d(self) -> float: ...
    @property
    def prev_stoch_k(self) -> float: ...
    @property
    def prev_stoch_d(self) -> float: ...
    @property
    def high_fast(self) -> float: ...
    @property
    def low_fast(self) -> float: ...
    @property
    def high_slow(self) -> float: ...
    @property
    def low_slow(self) -> float: ...


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
    """Indicator state of one series: what the strategy's snapshot carries.

    ``update`` advances each indicator with its own methods, which handle warm-up; it is the
    reference path. Once warm, the engine advances a ``LiveFeatures`` over this tracker
    instead, which gives the same state bit for bit, faster.
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
        """Advance every indicator by one bar; True once the bar has features."""
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
        """The record of the last bar; only valid once ``update`` has returned True."""
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


class _LiveChannel:
    """The scalars of a full ``_Channel`` (its lists are shared, so they need no write-back)."""

    __slots__ = ("channel", "highs", "lower", "lows", "period", "pos", "upper")

    def __init__(self, channel: _Channel, period: int) -> None:
        self.channel = channel
        self.highs = channel.highs
        self.lows = channel.lows
        self.pos = channel.pos
        self.upper = channel.upper
        self.lower = channel.lower
        self.period = period

    def store(self) -> None:
        channel = self.channel
        channel.pos = self.pos
        channel.upper = self.upper
        channel.lower = self.lower


class _LiveMoments:
    """The scalars of a full ``_Moments`` (its buffer is shared) and its period's constants."""

    __slots__ = (
        "buf",
        "last",
        "n",
        "period",
        "pos",
        "resync_at",
        "run",
        "s1",
        "s2",
        "shift",
        "since",
        "window",
    )

    def __init__(self, window: _Moments, period: int) -> None:
        self.window = window
        self.buf = window.buf
        self.pos = window.pos
        self.shift = window.shift
        self.s1 = window.s1
        self.s2 = window.s2
        self.since = window.since_resync
        self.last = window.last
        self.run = window.run
        self.period = period
        self.n = float(period)  # as a float: the same results, on CPython's faster path
        self.resync_at = RESYNC_FACTOR * period

    def resync(self) -> None:
        """``_Moments._resync`` on the shared buffer, then its sums back in here."""
        window = self.window
        window._resync()
        self.shift = window.shift
        self.s1 = window.s1
        self.s2 = window.s2
        self.since = 0

    def store(self) -> None:
        window = self.window
        window.pos = self.pos
        window.shift = self.shift
        window.s1 = self.s1
        window.s2 = self.s2
        window.since_resync = self.since
        window.last = self.last
        window.run = self.run


class LiveFeatures:
    """A warm tracker's state in plain attributes, advanced by one fused step per bar.

    Why: the steady-state step stores about 50 values a bar, and in CPython a store into a
    msgspec struct field costs about 12 ns more than one into a ``__slots__`` attribute;
    building a ``Features`` record every bar costs more than the rules that read it. So the
    values live here while the series runs, the rules read them here (a ``FeatureView``), and
    ``store`` writes them back into the tracker when its state is observed (a snapshot). The
    ring buffers are the tracker's own lists.

    ``update`` is the steady-state arithmetic of the nine indicators written out inline,
    operation for operation as their methods do it (a call per indicator costs more than most
    of their steps); ``tests/test_rule_engine.py`` holds it to those methods bit for bit. It
    relies on every indicator having seen the same bars, so their previous close is ``close``.
    """

    __slots__ = (
        "adx",
        "adx_count",
        "adx_m",
        "adx_n",
        "alpha_fast",
        "alpha_slow",
        "atr",
        "atr_m",
        "atr_n",
        "avg_gain",
        "avg_loss",
        "bb_k",
        "bb_lower",
        "bb_mid",
        "bb_upper",
        "channels",
        "close",
        "dc_fast",
        "dc_slow",
        "ema_fast",
        "ema_slow",
        "high_fast",
        "high_slow",
        "ks",
        "low_fast",
        "low_slow",
        "minus_di",
        "minus_dm_sum",
        "moments",
        "plus_di",
        "plus_dm_sum",
        "prev_high",
        "prev_low",
        "prev_stoch_d",
        "prev_stoch_k",
        "rsi",
        "rsi_m",
        "rsi_n",
        "stoch_d",
        "stoch_k",
        "stoch_window",
        "tr_sum",
        "tracker",
    )

    def __init__(self, tracker: FeatureTracker) -> None:
        """Take over a warm tracker (``tracker.warm``): its values and its buffers."""
        assert tracker.warm
        self.tracker = tracker
        ema_fast, ema_slow, atr, rsi, adx = (
            tracker.ema_fast,
            tracker.ema_slow,
            tracker.atr,
            tracker.rsi,
            tracker.adx,
        )
        bb, stoch = tracker.bb, tracker.stoch
        # constants; periods as floats give the same results on CPython's faster path
        self.alpha_fast = 2.0 / (ema_fast.period + 1)
        self.alpha_slow = 2.0 / (ema_slow.period + 1)
        self.atr_n = float(atr.period)
        self.atr_m = float(atr.period - 1)
        self.rsi_n = float(rsi.period)
        self.rsi_m = float(rsi.period - 1)
        self.adx_n = float(adx.period)
        self.adx_m = float(adx.period - 1)
        self.bb_k = bb.k
        # the view
        assert ema_fast.value is not None and ema_slow.value is not None
        assert adx.adx is not None and atr.value is not None and tracker.last_rsi is not None
        self.close = tracker.close
        self.rsi = tracker.last_rsi
        self.ema_fast = ema_fast.value
        self.ema_slow = ema_slow.value
        self.adx = adx.adx
        self.atr = atr.value
        self.bb_mid = bb.mid
        self.bb_upper = bb.upper
        self.bb_lower = bb.lower
        self.stoch_k = stoch.k
        self.stoch_d = stoch.d
        self.prev_stoch_k = tracker.prev_stoch_k
        self.prev_stoch_d = tracker.prev_stoch_d
        self.high_fast = tracker.high_fast
        self.low_fast = tracker.low_fast
        self.high_slow = tracker.high_slow
        self.low_slow = tracker.low_slow
        # the rest of the indicators' state
        self.avg_gain = rsi.avg_gain
        self.avg_loss = rsi.avg_loss
        self.adx_count = adx.count
        self.prev_high = adx.prev_high
        self.prev_low = adx.prev_low
        self.tr_sum = adx.tr_sum
        self.plus_dm_sum = adx.plus_dm_sum
        self.minus_dm_sum = adx.minus_dm_sum
        self.plus_di = adx.plus_di
        self.minus_di = adx.minus_di
        self.moments = _LiveMoments(bb.window, bb.period)
        self.ks = _LiveMoments(stoch.ks, stoch.d_period)
        self.stoch_window = _LiveChannel(stoch.window, stoch.k_period)
        self.dc_fast = _LiveChannel(tracker.dc_fast.window, tracker.dc_fast.period)
        self.dc_slow = _LiveChannel(tracker.dc_slow.window, tracker.dc_slow.period)
        self.channels = (self.stoch_window, self.dc_fast, self.dc_slow)

    @property
    def atr_pct(self) -> float:
        return 100.0 * self.atr / self.close

    def update(self, high: float, low: float, close: float) -> None:
        """Advance every indicator by one bar (the tracker's ``update``, once warm)."""
        channel = self.dc_fast
        self.high_fast = channel.upper
        self.low_fast = channel.lower
        channel = self.dc_slow
        self.high_slow = channel.upper
        self.low_slow = channel.lower
        self.prev_stoch_k = self.stoch_k
        self.prev_stoch_d = self.stoch_d
        prev_close = self.close
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
        value = self.ema_fast
        value += self.alpha_fast * (close - value)
        self.ema_fast = value
        value = self.ema_slow
        value += self.alpha_slow * (close - value)
        self.ema_slow = value

        # ATR.update
        self.atr = (self.atr * self.atr_m + tr) / self.atr_n

        # RSI.update
        rsi_m, rsi_n = self.rsi_m, self.rsi_n
        change = close - prev_close
        gain = change if change > 0.0 else 0.0
        loss = -change if change < 0.0 else 0.0
        avg_gain = self.avg_gain = (self.avg_gain * rsi_m + gain) / rsi_n
        avg_loss = self.avg_loss = (self.avg_loss * rsi_m + loss) / rsi_n
        if avg_loss == 0.0:
            self.rsi = 100.0 if avg_gain > 0.0 else 50.0
        else:
            self.rsi = 100.0 - 100.0 / (1.0 + avg_gain / avg_loss)

        # ADX.advance
        adx_n = self.adx_n
        self.adx_count += 1
        up = high - self.prev_high
        down = self.prev_low - low
        self.prev_high = high
        self.prev_low = low
        plus_dm = up if up > down and up > 0.0 else 0.0
        minus_dm = down if down > up and down > 0.0 else 0.0
        tr_sum = self.tr_sum
        tr_sum += tr - tr_sum / adx_n
        plus_sum = self.plus_dm_sum
        plus_sum += plus_dm - plus_sum / adx_n
        minus_sum = self.minus_dm_sum
        minus_sum += minus_dm - minus_sum / adx_n
        self.tr_sum = tr_sum
        self.plus_dm_sum = plus_sum
        self.minus_dm_sum = minus_sum
        if tr_sum > 0.0:
            plus_di = 100.0 * plus_sum / tr_sum
            minus_di = 100.0 * minus_sum / tr_sum
        else:
            plus_di = minus_di = 0.0
        self.plus_di = plus_di
        self.minus_di = minus_di
        di_sum = plus_di + minus_di
        dx = 100.0 * abs(plus_di - minus_di) / di_sum if di_sum > 0.0 else 0.0
        self.adx = (self.adx * self.adx_m + dx) / adx_n

        # BollingerBands.advance: _Moments.push (window full), mean, variance
        w = self.moments
        run = w.run = w.run + 1 if close == w.last else 1
        w.last = close
        shift = w.shift
        pos = w.pos
        buf = w.buf
        dn = close - shift
        do = buf[pos] - shift
        buf[pos] = close
        pos += 1
        w.pos = pos if pos < w.period else 0
        s1 = w.s1 = w.s1 + (dn - do)
        s2 = w.s2 = w.s2 + (dn * dn - do * do)
        since = w.since + 1
        if since >= w.resync_at:
            w.resync()
            shift, s1, s2 = w.shift, w.s1, w.s2
        else:
            w.since = since
        n = w.n
        if run >= w.period:
            mid = close
            variance = 0.0
        else:
            mid = shift + s1 / n
            ss = s2 - s1 * s1 / n
            if ss < CANCELLATION_GUARD * s2:
                w.resync()
                ss = w.s2 - w.s1 * w.s1 / n
            variance = ss / n if ss > 0.0 else 0.0
        width = self.bb_k * sqrt(variance)
        self.bb_mid = mid
        self.bb_upper = mid + width
        self.bb_lower = mid - width

        # _Channel.push (window full) of the Stochastic and both Donchian channels
        for channel in self.channels:
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
            pos += 1
            channel.pos = pos if pos < channel.period else 0

        # Stochastic.advance
        channel = self.stoch_window
        hh = channel.upper
        ll = channel.lower
        k = 50.0 if hh == ll else 100.0 * (close - ll) / (hh - ll)
        w = self.ks  # _Moments.push (window full), mean
        run = w.run = w.run + 1 if k == w.last else 1
        w.last = k
        shift = w.shift
        pos = w.pos
        buf = w.buf
        dn = k - shift
        do = buf[pos] - shift
        buf[pos] = k
        pos += 1
        w.pos = pos if pos < w.period else 0
        s1 = w.s1 = w.s1 + (dn - do)
        w.s2 += dn * dn - do * do
        since = w.since + 1
        if since >= w.resync_at:
            w.resync()
            shift, s1 = w.shift, w.s1
        else:
            w.since = since
        self.stoch_k = k
        self.stoch_d = k if run >= w.period else shift + s1 / w.n

    def store(self) -> None:
        """Write the live values back into the tracker, which is then current (the ring
        buffers already are)."""
        t = self.tracker
        close = self.close
        t.close = close
        t.prev_stoch_k = self.prev_stoch_k
        t.prev_stoch_d = self.prev_stoch_d
        t.high_fast = self.high_fast
        t.low_fast = self.low_fast
        t.high_slow = self.high_slow
        t.low_slow = self.low_slow
        t.last_adx = self.adx
        t.last_ema_fast = t.ema_fast.value = self.ema_fast
        t.last_ema_slow = t.ema_slow.value = self.ema_slow
        t.last_rsi = self.rsi
        atr = t.atr
        atr.prev_close = close
        atr.value = self.atr
        rsi = t.rsi
        rsi.prev = close
        rsi.avg_gain = self.avg_gain
        rsi.avg_loss = self.avg_loss
        adx = t.adx
        adx.count = self.adx_count
        adx.prev_high = self.prev_high
        adx.prev_low = self.prev_low
        adx.prev_close = close
        adx.tr_sum = self.tr_sum
        adx.plus_dm_sum = self.plus_dm_sum
        adx.minus_dm_sum = self.minus_dm_sum
        adx.plus_di = self.plus_di
        adx.minus_di = self.minus_di
        adx.adx = self.adx
        bb = t.bb
        bb.mid = self.bb_mid
        bb.upper = self.bb_upper
        bb.lower = self.bb_lower
        self.moments.store()
        stoch = t.stoch
        stoch.k = self.stoch_k
        stoch.d = self.stoch_d
        self.ks.store()
        for channel in self.channels:
            channel.store()
