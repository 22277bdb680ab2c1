"""The per-bar features the rules read, and the incremental tracker that builds them.

Every indicator is updated on every bar; the features exist only once all of them are warm
(with default params from bar 56: the slow Donchian channel of the previous bar needs 55 bars
before the current one). The breakout channels are the PREVIOUS bar's Donchian channels (the
current bar's channel includes its own high and low, so ``close > upper`` could never hold);
the Stochastic of the previous bar is kept for crosses.

``FeatureTracker`` is a series' indicator state in msgspec structs: what the strategy's
snapshot carries. ``LiveFeatures`` runs it: the indicators in their slotted forms and the
bar's values in plain attributes, advanced in place every bar, which the rules read directly.
``Features`` is the same values as a frozen record (tests, debugging, decision records of a
restored series). ``LiveFeatures`` and ``Features`` are both a ``FeatureView``.
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from strategies.indicators import (
    ADX,
    ATR,
    EMA,
    RSI,
    BollingerBands,
    Donchian,
    SlottedADX,
    SlottedATR,
    SlottedBollingerBands,
    SlottedChannel,
    SlottedEMA,
    SlottedRSI,
    SlottedStochastic,
    Stochastic,
)


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
    """Indicator state of one series: what the strategy's snapshot carries. ``LiveFeatures``
    advances it; it is current whenever the strategy's state is read."""

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

    def features(self) -> Features:
        """The record of the last bar; only valid once ``warm``."""
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


# (LiveFeatures attribute, FeatureTracker field) of the values kept in both
_TRACKER_FIELDS: tuple[tuple[str, str], ...] = (
    ("warm", "warm"),
    ("prev_ready", "prev_ready"),
    ("close", "close"),
    ("prev_stoch_k", "prev_stoch_k"),
    ("prev_stoch_d", "prev_stoch_d"),
    ("high_fast", "high_fast"),
    ("low_fast", "low_fast"),
    ("high_slow", "high_slow"),
    ("low_slow", "low_slow"),
    ("adx", "last_adx"),
    ("ema_fast", "last_ema_fast"),
    ("ema_slow", "last_ema_slow"),
    ("rsi", "last_rsi"),
)


class LiveFeatures:
    """A series' tracker as it runs: its indicators in their slotted forms (``*_line``,
    ``bands``, ``stochastic``; a Donchian runs as its channel, ``channel_*``, with its period)
    and the bar's values the rules read.

    Why not the tracker itself: a bar stores about 50 values, and in CPython a store into a
    msgspec struct field costs about 20 ns more than one into a ``__slots__`` attribute;
    building a ``Features`` record every bar costs more than the rules that read it. ``store``
    writes everything back into the tracker when its state is observed (a snapshot). The
    values of the view (``rsi``, ``ema_fast`` ...) are None during warm-up, as the
    indicators return them, and all set once ``warm``.
    """

    __slots__ = (
        "adx",
        "adx_line",
        "atr",
        "atr_line",
        "bands",
        "bb_lower",
        "bb_mid",
        "bb_upper",
        "channel_fast",
        "channel_slow",
        "close",
        "ema_fast",
        "ema_fast_line",
        "ema_slow",
        "ema_slow_line",
        "fast_period",
        "high_fast",
        "high_slow",
        "low_fast",
        "low_slow",
        "prev_ready",
        "prev_stoch_d",
        "prev_stoch_k",
        "rsi",
        "rsi_line",
        "slow_period",
        "stoch_d",
        "stoch_k",
        "stochastic",
        "tracker",
        "warm",
    )

    def __init__(self, tracker: FeatureTracker) -> None:
        """Take over a tracker's state (its ring buffers are shared, not copied)."""
        self.tracker = tracker
        self.ema_fast_line = SlottedEMA(tracker.ema_fast)
        self.ema_slow_line = SlottedEMA(tracker.ema_slow)
        self.adx_line = SlottedADX(tracker.adx)
        self.atr_line = SlottedATR(tracker.atr)
        self.rsi_line = SlottedRSI(tracker.rsi)
        self.bands = bands = SlottedBollingerBands(tracker.bb)
        self.stochastic = stochastic = SlottedStochastic(tracker.stoch)
        self.channel_fast = SlottedChannel(tracker.dc_fast.window)
        self.fast_period = tracker.dc_fast.period
        self.channel_slow = SlottedChannel(tracker.dc_slow.window)
        self.slow_period = tracker.dc_slow.period
        for mine, its in _TRACKER_FIELDS:
            setattr(self, mine, getattr(tracker, its))
        self.atr = tracker.atr.value
        self.bb_mid = bands.mid
        self.bb_upper = bands.upper
        self.bb_lower = bands.lower
        self.stoch_k = stochastic.k
        self.stoch_d = stochastic.d

    @property
    def atr_pct(self) -> float:
        return 100.0 * self.atr / self.close

    def update(self, high: float, low: float, close: float) -> bool:
        """Advance every indicator by one bar; True once the bar has features."""
        stochastic, channel_fast, channel_slow = (
            self.stochastic,
            self.channel_fast,
            self.channel_slow,
        )
        self.prev_stoch_k = stochastic.k
        self.prev_stoch_d = stochastic.d
        self.high_fast = channel_fast.upper
        self.low_fast = channel_fast.lower
        self.high_slow = channel_slow.upper
        self.low_slow = channel_slow.lower
        self.close = close
        ema_fast = self.ema_fast = self.ema_fast_line.update(close)
        ema_slow = self.ema_slow = self.ema_slow_line.update(close)
        adx = self.adx = self.adx_line.advance(high, low, close)
        atr = self.atr = self.atr_line.update(high, low, close)
        rsi = self.rsi = self.rsi_line.update(close)
        bands = self.bands
        bb_ready = bands.advance(close)
        self.bb_mid = bands.mid
        self.bb_upper = bands.upper
        self.bb_lower = bands.lower
        stoch_ready = stochastic.advance(high, low, close)
        self.stoch_k = stochastic.k
        self.stoch_d = stochastic.d
        fast_ready = channel_fast.push(high, low, self.fast_period)
        slow_ready = channel_slow.push(high, low, self.slow_period)
        if self.warm:  # a warm indicator stays warm, and so do the features
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

    def store(self) -> None:
        """Write the state back into the tracker, which is then current."""
        for line in (
            self.ema_fast_line,
            self.ema_slow_line,
            self.adx_line,
            self.atr_line,
            self.rsi_line,
            self.bands,
            self.stochastic,
            self.channel_fast,
            self.channel_slow,
        ):
            line.store()
        tracker = self.tracker
        for mine, its in _TRACKER_FIELDS:
            setattr(tracker, its, getattr(self, mine))
