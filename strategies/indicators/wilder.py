"""Wilder's indicators: RSI, ATR and ADX, each with a slotted form.

All three start from a simple average (ADX's true range and directional movement: a simple
sum) of their first ``period`` inputs, then smooth with weight ``1/period`` on the new input.
"""

from __future__ import annotations

from typing import NamedTuple

import msgspec

from strategies.indicators.checks import check_period
from strategies.indicators.slotted import slotted_form


class ADXValue(NamedTuple):
    adx: float
    plus_di: float
    minus_di: float


def true_range(high: float, low: float, prev_close: float) -> float:
    """``max(high - low, |high - prev_close|, |low - prev_close|)``, without the call to max()."""
    tr = high - low
    gap = abs(high - prev_close)
    if gap > tr:
        tr = gap
    gap = abs(low - prev_close)
    if gap > tr:
        tr = gap
    return tr


class _RSIStep:
    """The arithmetic of ``RSI``, shared by its slotted form."""

    __slots__ = ()

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


class RSI(msgspec.Struct, _RSIStep, tag=True):
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
        check_period("RSI", "period", self.period)


class _ATRStep:
    """The arithmetic of ``ATR``, shared by its slotted form."""

    __slots__ = ()

    def update(self, high: float, low: float, close: float) -> float | None:
        pc = self.prev_close
        self.prev_close = close
        tr = high - low if pc is None else true_range(high, low, pc)
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


class ATR(msgspec.Struct, _ATRStep, tag=True):
    """Wilder's average true range, seeded with the simple average of the first ``period`` true
    ranges (the first bar has no previous close, so its true range is high - low)."""

    period: int = 14
    prev_close: float | None = None
    seen: int = 0
    seed_sum: float = 0.0
    value: float | None = None

    def __post_init__(self) -> None:
        check_period("ATR", "period", self.period)


class _ADXStep:
    """The arithmetic of ``ADX``, shared by its slotted form."""

    __slots__ = ()

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
        tr = true_range(high, low, pc)
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


class ADX(msgspec.Struct, _ADXStep, tag=True):
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
        check_period("ADX", "period", self.period)


SlottedRSI = slotted_form(RSI, _RSIStep)
SlottedATR = slotted_form(ATR, _ATRStep)
SlottedADX = slotted_form(ADX, _ADXStep)
