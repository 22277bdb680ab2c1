"""Moving averages: simple, exponential (with a slotted form) and linearly weighted."""

from __future__ import annotations

import math

import msgspec

from strategies.indicators.checks import check_period
from strategies.indicators.rolling import RESYNC_FACTOR
from strategies.indicators.slotted import slotted_form


class SMA(msgspec.Struct, tag=True):
    period: int
    buf: list[float] = msgspec.field(default_factory=list)
    pos: int = 0
    total: float = 0.0

    def __post_init__(self) -> None:
        check_period("SMA", "period", self.period)

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


class _EMAStep:
    """The arithmetic of ``EMA``, shared by its slotted form."""

    __slots__ = ()

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


class EMA(msgspec.Struct, _EMAStep, tag=True):
    """Exponential average seeded with the simple average of its first ``period`` values."""

    period: int
    value: float | None = None
    seed_sum: float = 0.0
    seen: int = 0

    def __post_init__(self) -> None:
        check_period("EMA", "period", self.period)


class WMA(msgspec.Struct, tag=True):
    """Linearly weighted average: the newest value weighs ``period``, the oldest 1."""

    period: int
    buf: list[float] = msgspec.field(default_factory=list)
    pos: int = 0
    total: float = 0.0
    weighted: float = 0.0
    since_resync: int = 0

    def __post_init__(self) -> None:
        check_period("WMA", "period", self.period)

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


SlottedEMA = slotted_form(EMA, _EMAStep)
