"""Incremental indicators: O(1) per update, state kept in msgspec structs so a worker's
snapshot can carry them. ``update`` returns the current value or None while warming up."""

from __future__ import annotations

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
        if len(self.buf) < self.period:
            self.buf.append(value)
            self.total += value
        else:
            self.total += value - self.buf[self.pos]
            self.buf[self.pos] = value
            self.pos = (self.pos + 1) % self.period
        return self.total / self.period if len(self.buf) == self.period else None


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
        if self.value is None:
            self.seen += 1
            self.seed_sum += value
            if self.seen == self.period:
                self.value = self.seed_sum / self.period
            return self.value
        alpha = 2.0 / (self.period + 1)
        self.value += alpha * (value - self.value)
        return self.value
