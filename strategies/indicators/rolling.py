"""Indicators over a rolling window of the last ``period`` values or bars.

Two windows carry them, each O(1) a step: ``Moments`` (running sums for a mean and a
variance: Bollinger bands, Stochastic's %D, rolling volatility, z-score) and ``Channel``
(highest high and lowest low: Donchian, Stochastic's %K).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import msgspec

from strategies.indicators.checks import check_period, check_positive
from strategies.indicators.slotted import slotted_form

# Rolling sums are refreshed from their ring buffer every RESYNC_FACTOR * period updates, so
# rounding error cannot build up over long sessions; the O(period) refresh stays O(1) amortised.
RESYNC_FACTOR = 64
# Refresh early when the centred sum of squares is below this fraction of the raw one: at most
# three of sixteen significant digits are then lost to cancellation.
CANCELLATION_GUARD = 1e-3


class BollingerValue(NamedTuple):
    mid: float
    upper: float
    lower: float


class StochasticValue(NamedTuple):
    k: float
    d: float


class DonchianValue(NamedTuple):
    upper: float
    lower: float


class _MomentsStep:
    """The arithmetic of ``Moments``, shared by its slotted form."""

    __slots__ = ()

    def push(self, x: float, period: int) -> float | None:
        """Add ``x`` (evicting the oldest value once full); the window's mean (``mean``) once
        it is full, else None. Returning it saves a call a step to the indicators that need
        it."""
        buf = self.buf
        run = self.run = self.run + 1 if buf and x == self.last else 1
        self.last = x
        shift = self.shift
        if len(buf) < period:
            if buf:
                dn = x - shift
            else:
                self.shift = x
                dn = 0.0
            buf.append(x)
            self.s1 += dn
            self.s2 += dn * dn
            return self.mean() if len(buf) == period else None
        pos = self.pos
        dn = x - shift
        do = buf[pos] - shift
        buf[pos] = x
        self.pos = pos + 1 if pos + 1 < period else 0
        self.s1 += dn - do
        self.s2 += dn * dn - do * do
        since = self.since_resync + 1
        if since >= RESYNC_FACTOR * period:
            self._resync()
        else:
            self.since_resync = since
        return x if run >= period else self.shift + self.s1 / period

    def _resync(self) -> None:
        buf = self.buf
        self.shift = math.fsum(buf) / len(buf)
        deviations = [x - self.shift for x in buf]
        self.s1 = math.fsum(deviations)
        self.s2 = math.fsum(d * d for d in deviations)
        self.since_resync = 0

    def mean(self) -> float:
        n = len(self.buf)
        return self.last if self.run >= n else self.shift + self.s1 / n

    def variance(self, ddof: int = 0) -> float:
        """Population (ddof=0) or sample (ddof=1) variance; never negative.

        When the window is tight compared with its distance from the shift, the subtraction
        would cancel most significant digits, so the sums are first refreshed around the
        current mean (O(period), only for such windows).
        """
        n = len(self.buf)
        if self.run >= n:
            return 0.0
        s1, s2 = self.s1, self.s2
        ss = s2 - s1 * s1 / n
        if ss < CANCELLATION_GUARD * s2:
            self._resync()
            ss = self.s2 - self.s1 * self.s1 / n
        return ss / (n - ddof) if ss > 0.0 else 0.0


class Moments(msgspec.Struct, _MomentsStep):
    """Ring buffer with running sum and sum of squares of ``x - shift``.

    The shift (the window mean at the last refresh) keeps the sums small so the variance does
    not suffer cancellation when prices are far from zero. ``run`` counts trailing identical
    values so a flat window reports exactly zero variance instead of rounding residue.
    """

    buf: list[float] = msgspec.field(default_factory=list)
    pos: int = 0
    shift: float = 0.0
    s1: float = 0.0
    s2: float = 0.0
    since_resync: int = 0
    last: float = 0.0
    run: int = 0


class _ChannelStep:
    """The arithmetic of ``Channel``, shared by its slotted form."""

    __slots__ = ()

    def push(self, high: float, low: float, period: int) -> bool:
        """Add one bar (evicting the oldest once full); True when the window is full."""
        highs = self.highs
        lows = self.lows
        n = len(highs)
        if n < period:
            if not n or high > self.upper:
                self.upper = high
            if not n or low < self.lower:
                self.lower = low
            highs.append(high)
            lows.append(low)
            return n + 1 == period
        pos = self.pos
        evicted = highs[pos]
        highs[pos] = high
        if high >= self.upper:
            self.upper = high
        elif evicted == self.upper:  # the evicted bar may have held the high: rescan
            self.upper = max(highs)
        evicted = lows[pos]
        lows[pos] = low
        if low <= self.lower:
            self.lower = low
        elif evicted == self.lower:
            self.lower = min(lows)
        self.pos = pos + 1 if pos + 1 < period else 0
        return True


class Channel(msgspec.Struct, _ChannelStep):
    """Highest high and lowest low of the last ``period`` bars, kept in two ring buffers.

    Each extreme is cached and rescanned (``max``/``min``, one C call) only when the value a
    bar overwrites equals it and the bar does not beat it: a few Python steps per bar, plus an
    O(period) C scan on the bars where the extreme leaves the window (every bar of a steady
    slide, about one in ten on real-looking data). In CPython this is cheaper than a monotonic
    queue, whose pushes and pops are Python steps on every bar.
    """

    highs: list[float] = msgspec.field(default_factory=list)
    lows: list[float] = msgspec.field(default_factory=list)
    pos: int = 0  # once full, the slot the next bar overwrites (the oldest bar's)
    upper: float = 0.0
    lower: float = 0.0


class _BollingerStep:
    """The arithmetic of ``BollingerBands``, shared by its slotted form."""

    __slots__ = ()

    def advance(self, value: float) -> bool:
        """``update`` without building the tuple: True once warm (bands in mid/upper/lower)."""
        w = self.window
        mid = w.push(value, self.period)
        if mid is None:
            return False
        width = self.k * math.sqrt(w.variance())
        self.mid = mid
        self.upper = mid + width
        self.lower = mid - width
        return True

    def update(self, value: float) -> BollingerValue | None:
        if not self.advance(value):
            return None
        return BollingerValue(self.mid, self.upper, self.lower)


class BollingerBands(msgspec.Struct, _BollingerStep, tag=True):
    """SMA(period) middle band, ``k`` population standard deviations either side."""

    period: int = 20
    k: float = 2.0
    window: Moments = msgspec.field(default_factory=Moments)
    # the last bands, valid once ``advance`` has returned True
    mid: float = 0.0
    upper: float = 0.0
    lower: float = 0.0

    def __post_init__(self) -> None:
        check_period("BollingerBands", "period", self.period)
        check_positive("BollingerBands", "k", self.k)


class _StochasticStep:
    """The arithmetic of ``Stochastic``, shared by its slotted form."""

    __slots__ = ()

    def advance(self, high: float, low: float, close: float) -> bool:
        """``update`` without building the tuple: True once warm (values in ``k`` and ``d``)."""
        w = self.window
        if not w.push(high, low, self.k_period):
            return False
        hh = w.upper
        ll = w.lower
        k = 50.0 if hh == ll else 100.0 * (close - ll) / (hh - ll)
        d = self.ks.push(k, self.d_period)
        if d is None:
            return False
        self.k = k
        self.d = d
        return True

    def update(self, high: float, low: float, close: float) -> StochasticValue | None:
        if not self.advance(high, low, close):
            return None
        return StochasticValue(self.k, self.d)


class Stochastic(msgspec.Struct, _StochasticStep, tag=True):
    """Fast stochastic: %K over ``k_period`` bars including the current one, %D = SMA of %K.

    A bar range of zero (highest high == lowest low) gives %K = 50.
    """

    k_period: int = 14
    d_period: int = 3
    window: Channel = msgspec.field(default_factory=Channel)
    ks: Moments = msgspec.field(default_factory=Moments)
    # the last %K and %D, valid once ``advance`` has returned True
    k: float = 0.0
    d: float = 0.0

    def __post_init__(self) -> None:
        check_period("Stochastic", "k_period", self.k_period)
        check_period("Stochastic", "d_period", self.d_period)


class Donchian(msgspec.Struct, tag=True):
    """Highest high / lowest low of the last ``period`` bars, the current bar included.

    Because the current bar is inside its own channel, a close can never exceed ``upper``: a
    breakout rule compares the close with the previous bar's channel. ``close`` is accepted
    only so every bar indicator shares the ``update(high, low, close)`` signature. A hot loop
    runs the slotted form of its ``window`` (the channel is all of its state but ``period``).
    """

    period: int = 20
    window: Channel = msgspec.field(default_factory=Channel)

    def __post_init__(self) -> None:
        check_period("Donchian", "period", self.period)

    def advance(self, high: float, low: float) -> bool:
        """``update`` without building the tuple: True once warm (``window.upper``/``.lower``)."""
        return self.window.push(high, low, self.period)

    def update(self, high: float, low: float, close: float) -> DonchianValue | None:
        w = self.window
        return DonchianValue(w.upper, w.lower) if w.push(high, low, self.period) else None


class RollingVolatility(msgspec.Struct, tag=True):
    """Sample standard deviation (ddof=1) of the last ``period`` log returns, not annualised.

    Closes must be positive.
    """

    period: int
    prev_close: float | None = None
    window: Moments = msgspec.field(default_factory=Moments)

    def __post_init__(self) -> None:
        check_period("RollingVolatility", "period", self.period, minimum=2)

    def update(self, close: float) -> float | None:
        prev = self.prev_close
        self.prev_close = close
        if prev is None:
            return None
        if self.window.push(math.log(close / prev), self.period) is None:
            return None
        return math.sqrt(self.window.variance(ddof=1))


class ZScore(msgspec.Struct, tag=True):
    """``(value - mean) / std`` over the last ``period`` values including the current one,
    with the population std; a flat window (std 0) gives 0.0."""

    period: int
    window: Moments = msgspec.field(default_factory=Moments)

    def __post_init__(self) -> None:
        check_period("ZScore", "period", self.period, minimum=2)

    def update(self, value: float) -> float | None:
        w = self.window
        if w.push(value, self.period) is None:
            return None
        sd = math.sqrt(w.variance())
        return 0.0 if sd == 0.0 else (value - w.mean()) / sd


SlottedMoments = slotted_form(Moments, _MomentsStep)
SlottedChannel = slotted_form(Channel, _ChannelStep)
SlottedBollingerBands = slotted_form(BollingerBands, _BollingerStep)
SlottedStochastic = slotted_form(Stochastic, _StochasticStep)
