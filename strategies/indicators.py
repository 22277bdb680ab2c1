"""Incremental indicators: O(1) per update (the channels: see ``_Channel``), state kept in
msgspec structs so a worker's snapshot can carry them. ``update`` returns the current value or
None while warming up. The indicators whose value is a tuple also have ``advance``: the same
step without building the tuple (a NamedTuple costs more than the step itself in CPython);
hot loops read the value from the struct's fields instead."""

from __future__ import annotations

import math
from typing import NamedTuple

import msgspec


class SMA(msgspec.Struct, tag=True):
    period: int
    buf: list[float] = msgspec.field(default_factory=list)
    pos: int = 0
    total: float = 0.0

    def __post_init__(self) -> None:
        if self.period < 1:
            raise ValueError("SMA period must be >= 1")

    def update(self, value: float) -> float | None:
        buf = self.buf
        n = self.period
        if len(buf) < n:
            buf.append(value)
            self.total += value
            if len(buf) < n:
                return None
        else:
            pos = self.pos
            self.total += value - buf[pos]
            buf[pos] = value
            self.pos = pos + 1 if pos + 1 < n else 0
        return self.total / n


class EMA(msgspec.Struct, tag=True):
    """Exponential average seeded with the simple average of its first ``period`` values."""

    period: int
    value: float | None = None
    seed_sum: float = 0.0
    seen: int = 0

    def __post_init__(self) -> None:
        if self.period < 1:
            raise ValueError("EMA period must be >= 1")

    def update(self, value: float) -> float | None:
        v = self.value
        if v is None:
            self.seen += 1
            self.seed_sum += value
            if self.seen == self.period:
                self.value = self.seed_sum / self.period
            return self.value
        v += 2.0 / (self.period + 1) * (value - v)
        self.value = v
        return v


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


class ADXValue(NamedTuple):
    adx: float
    plus_di: float
    minus_di: float


class DonchianValue(NamedTuple):
    upper: float
    lower: float


def _check_period(owner: str, name: str, value: int, minimum: int = 1) -> None:
    """Reject bad lengths at construction (and on decode) rather than deep inside update."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner} {name} must be an integer >= {minimum}, got {value!r}")


class _Moments(msgspec.Struct):
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

    def push(self, x: float, period: int) -> bool:
        """Add ``x`` (evicting the oldest value once full); True when the window is full."""
        buf = self.buf
        self.run = self.run + 1 if buf and x == self.last else 1
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
            return len(buf) == period
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
        return True

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


class _Channel(msgspec.Struct):
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


class WMA(msgspec.Struct, tag=True):
    """Linearly weighted average: the newest value weighs ``period``, the oldest 1."""

    period: int
    buf: list[float] = msgspec.field(default_factory=list)
    pos: int = 0
    total: float = 0.0
    weighted: float = 0.0
    since_resync: int = 0

    def __post_init__(self) -> None:
        _check_period("WMA", "period", self.period)

    def update(self, value: float) -> float | None:
        n = self.period
        buf = self.buf
        if len(buf) < n:
            buf.append(value)
            self.total += value
            self.weighted += len(buf) * value
            if len(buf) < n:
                return None
        else:
            # Shifting the window lowers every weight by one (dropping the oldest, whose weight
            # was 1) and the new value enters with weight n.
            self.weighted += n * value - self.total
            self.total += value - buf[self.pos]
            buf[self.pos] = value
            self.pos = (self.pos + 1) % n
            self.since_resync += 1
            if self.since_resync >= RESYNC_FACTOR * n:
                self._resync()
        return self.weighted / (n * (n + 1) / 2)

    def _resync(self) -> None:
        ordered = self.buf[self.pos :] + self.buf[: self.pos]
        self.total = math.fsum(ordered)
        self.weighted = math.fsum((j + 1) * v for j, v in enumerate(ordered))
        self.since_resync = 0


class RSI(msgspec.Struct, tag=True):
    """Wilder's RSI: seeded with simple averages of the first ``period`` changes, then
    ``avg = (avg * (period - 1) + x) / period``. No losses gives 100; a flat market gives 50."""

    period: int = 14
    prev: float | None = None
    seen: int = 0
    seed_gain: float = 0.0
    seed_loss: float = 0.0
    avg_gain: float | None = None
    avg_loss: float = 0.0

    def __post_init__(self) -> None:
        _check_period("RSI", "period", self.period)

    def update(self, value: float) -> float | None:
        prev = self.prev
        self.prev = value
        if prev is None:
            return None
        change = value - prev
        gain = change if change > 0.0 else 0.0
        loss = -change if change < 0.0 else 0.0
        n = self.period
        avg_gain = self.avg_gain
        if avg_gain is None:
            self.seen += 1
            self.seed_gain += gain
            self.seed_loss += loss
            if self.seen < n:
                return None
            avg_gain = self.seed_gain / n
            avg_loss = self.seed_loss / n
        else:
            avg_gain = (avg_gain * (n - 1) + gain) / n
            avg_loss = (self.avg_loss * (n - 1) + loss) / n
        self.avg_gain = avg_gain
        self.avg_loss = avg_loss
        if avg_loss == 0.0:
            return 100.0 if avg_gain > 0.0 else 50.0
        return 100.0 - 100.0 / (1.0 + avg_gain / avg_loss)


class ATR(msgspec.Struct, tag=True):
    """Wilder's average true range, seeded with the simple average of the first ``period`` true
    ranges (the first bar has no previous close, so its true range is high - low)."""

    period: int = 14
    prev_close: float | None = None
    seen: int = 0
    seed_sum: float = 0.0
    value: float | None = None

    def __post_init__(self) -> None:
        _check_period("ATR", "period", self.period)

    def update(self, high: float, low: float, close: float) -> float | None:
        pc = self.prev_close
        self.prev_close = close
        # max(high - low, |high - pc|, |low - pc|), without the call to max()
        tr = high - low
        if pc is not None:
            gap = abs(high - pc)
            if gap > tr:
                tr = gap
            gap = abs(low - pc)
            if gap > tr:
                tr = gap
        n = self.period
        value = self.value
        if value is None:
            self.seen += 1
            self.seed_sum += tr
            if self.seen == n:
                self.value = self.seed_sum / n
            return self.value
        value = (value * (n - 1) + tr) / n
        self.value = value
        return value


class BollingerBands(msgspec.Struct, tag=True):
    """SMA(period) middle band, ``k`` population standard deviations either side."""

    period: int = 20
    k: float = 2.0
    window: _Moments = msgspec.field(default_factory=_Moments)
    # the last bands, valid once ``advance`` has returned True
    mid: float = 0.0
    upper: float = 0.0
    lower: float = 0.0

    def __post_init__(self) -> None:
        _check_period("BollingerBands", "period", self.period)
        if not (isinstance(self.k, int | float) and math.isfinite(self.k) and self.k > 0):
            raise ValueError(f"BollingerBands k must be a finite number > 0, got {self.k!r}")

    def advance(self, value: float) -> bool:
        """``update`` without building the tuple: True once warm (bands in mid/upper/lower)."""
        w = self.window
        if not w.push(value, self.period):
            return False
        mid = w.mean()
        width = self.k * math.sqrt(w.variance())
        self.mid = mid
        self.upper = mid + width
        self.lower = mid - width
        return True

    def update(self, value: float) -> BollingerValue | None:
        if not self.advance(value):
            return None
        return BollingerValue(self.mid, self.upper, self.lower)


class Stochastic(msgspec.Struct, tag=True):
    """Fast stochastic: %K over ``k_period`` bars including the current one, %D = SMA of %K.

    A bar range of zero (highest high == lowest low) gives %K = 50.
    """

    k_period: int = 14
    d_period: int = 3
    window: _Channel = msgspec.field(default_factory=_Channel)
    ks: _Moments = msgspec.field(default_factory=_Moments)
    # the last %K and %D, valid once ``advance`` has returned True
    k: float = 0.0
    d: float = 0.0

    def __post_init__(self) -> None:
        _check_period("Stochastic", "k_period", self.k_period)
        _check_period("Stochastic", "d_period", self.d_period)

    def advance(self, high: float, low: float, close: float) -> bool:
        """``update`` without building the tuple: True once warm (values in ``k`` and ``d``)."""
        w = self.window
        if not w.push(high, low, self.k_period):
            return False
        hh = w.upper
        ll = w.lower
        k = 50.0 if hh == ll else 100.0 * (close - ll) / (hh - ll)
        ks = self.ks
        if not ks.push(k, self.d_period):
            return False
        self.k = k
        self.d = ks.mean()
        return True

    def update(self, high: float, low: float, close: float) -> StochasticValue | None:
        if not self.advance(high, low, close):
            return None
        return StochasticValue(self.k, self.d)


class ADX(msgspec.Struct, tag=True):
    """Wilder's ADX with +DI/-DI.

    TR, +DM and -DM are Wilder-summed (``S = S - S/period + x``) after a seed of the sum of
    the first ``period`` values (bars 2 .. period+1: the first bar has no predecessor); DX
    starts on bar period+1 and ADX is the mean of the first ``period`` DX values, then
    Wilder-smoothed. The first ADX arrives on bar ``2 * period``. A zero true-range sum gives
    DI = 0 and a zero DI sum gives DX = 0.
    """

    period: int = 14
    count: int = 0
    prev_high: float = 0.0
    prev_low: float = 0.0
    prev_close: float = 0.0
    tr_sum: float = 0.0
    plus_dm_sum: float = 0.0
    minus_dm_sum: float = 0.0
    dx_seen: int = 0
    dx_sum: float = 0.0
    adx: float | None = None
    # the last +DI and -DI, valid once ``advance`` has returned a value
    plus_di: float = 0.0
    minus_di: float = 0.0

    def __post_init__(self) -> None:
        _check_period("ADX", "period", self.period)

    def advance(self, high: float, low: float, close: float) -> float | None:
        """``update`` without building the tuple: the ADX (+DI/-DI in fields) or None."""
        i = self.count
        self.count = i + 1
        ph, pl, pc = self.prev_high, self.prev_low, self.prev_close
        self.prev_high, self.prev_low, self.prev_close = high, low, close
        if i == 0:
            return None
        n = self.period
        up = high - ph
        down = pl - low
        plus_dm = up if up > down and up > 0.0 else 0.0
        minus_dm = down if down > up and down > 0.0 else 0.0
        # max(high - low, |high - pc|, |low - pc|), without the call to max()
        tr = high - low
        gap = abs(high - pc)
        if gap > tr:
            tr = gap
        gap = abs(low - pc)
        if gap > tr:
            tr = gap
        tr_sum, plus_sum, minus_sum = self.tr_sum, self.plus_dm_sum, self.minus_dm_sum
        if i <= n:
            tr_sum += tr
            plus_sum += plus_dm
            minus_sum += minus_dm
        else:
            tr_sum += tr - tr_sum / n
            plus_sum += plus_dm - plus_sum / n
            minus_sum += minus_dm - minus_sum / n
        self.tr_sum, self.plus_dm_sum, self.minus_dm_sum = tr_sum, plus_sum, minus_sum
        if i < n:
            return None
        if tr_sum > 0.0:
            plus_di = 100.0 * plus_sum / tr_sum
            minus_di = 100.0 * minus_sum / tr_sum
        else:
            plus_di = minus_di = 0.0
        self.plus_di = plus_di
        self.minus_di = minus_di
        di_sum = plus_di + minus_di
        dx = 100.0 * abs(plus_di - minus_di) / di_sum if di_sum > 0.0 else 0.0
        adx = self.adx
        if adx is None:
            self.dx_seen += 1
            self.dx_sum += dx
            if self.dx_seen < n:
                return None
            adx = self.dx_sum / n
        else:
            adx = (adx * (n - 1) + dx) / n
        self.adx = adx
        return adx

    def update(self, high: float, low: float, close: float) -> ADXValue | None:
        adx = self.advance(high, low, close)
        return None if adx is None else ADXValue(adx, self.plus_di, self.minus_di)


class Donchian(msgspec.Struct, tag=True):
    """Highest high / lowest low of the last ``period`` bars, the current bar included.

    Because the current bar is inside its own channel, a close can never exceed ``upper``: a
    breakout rule compares the close with the previous bar's channel. ``close`` is accepted
    only so every bar indicator shares the ``update(high, low, close)`` signature.
    """

    period: int = 20
    window: _Channel = msgspec.field(default_factory=_Channel)

    def __post_init__(self) -> None:
        _check_period("Donchian", "period", self.period)

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
    window: _Moments = msgspec.field(default_factory=_Moments)

    def __post_init__(self) -> None:
        _check_period("RollingVolatility", "period", self.period, minimum=2)

    def update(self, close: float) -> float | None:
        prev = self.prev_close
        self.prev_close = close
        if prev is None:
            return None
        if not self.window.push(math.log(close / prev), self.period):
            return None
        return math.sqrt(self.window.variance(ddof=1))


class ZScore(msgspec.Struct, tag=True):
    """``(value - mean) / std`` over the last ``period`` values including the current one,
    with the population std; a flat window (std 0) gives 0.0."""

    period: int
    window: _Moments = msgspec.field(default_factory=_Moments)

    def __post_init__(self) -> None:
        _check_period("ZScore", "period", self.period, minimum=2)

    def update(self, value: float) -> float | None:
        w = self.window
        if not w.push(value, self.period):
            return None
        sd = math.sqrt(w.variance())
        return 0.0 if sd == 0.0 else (value - w.mean()) / sd
