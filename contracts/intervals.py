"""Bar intervals and durations: the one parser every config, file reader and metric uses.

An interval is a whole number and a unit (``1m``, ``4h``, ``1d``); a duration may also be
fractional and in milliseconds (``250ms``, ``1.5h``). Months and years have no fixed length
and are refused; anything that does not parse is an error, never a default.
"""

from __future__ import annotations

import re
from typing import Literal

import msgspec

IntervalUnit = Literal["s", "m", "h", "d", "w"]

UNIT_NS: dict[str, int] = {
    "w": 604_800_000_000_000,
    "d": 86_400_000_000_000,
    "h": 3_600_000_000_000,
    "m": 60_000_000_000,
    "s": 1_000_000_000,
    "ms": 1_000_000,
}
"""Nanoseconds per unit, longest first (``Interval.from_ns`` picks the longest that fits)."""

YEAR_NS = 365 * UNIT_NS["d"]
"""Every calendar day counts: ``1d`` bars are 365 periods a year."""

_UNITS: dict[str, IntervalUnit] = {"s": "s", "m": "m", "h": "h", "d": "d", "w": "w"}
_INTERVAL = re.compile(r"([1-9][0-9]*)([smhdw])")
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d|w)")


class IntervalError(ValueError):
    """An interval or duration that does not parse, in one line naming the text."""


class Interval(msgspec.Struct, frozen=True, cache_hash=True):
    """A bar interval: ``Interval.parse("4h")``; ``str()`` gives the text back."""

    count: int
    unit: IntervalUnit

    @classmethod
    def parse(cls, text: str, what: str = "interval") -> Interval:
        match = _INTERVAL.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise IntervalError(
                f"{what} {text!r}: expected a whole number > 0 and a unit s/m/h/d/w, "
                "e.g. '1m' or '1d' (months have no fixed length)"
            )
        return cls(int(match.group(1)), _UNITS[match.group(2)])

    @classmethod
    def from_ns(cls, nanoseconds: int) -> Interval | None:
        """The interval of this length in its largest whole unit; None when it is not a
        positive whole number of seconds."""
        if nanoseconds <= 0:
            return None
        for unit, size in UNIT_NS.items():
            if unit in _UNITS and nanoseconds % size == 0:
                return cls(nanoseconds // size, _UNITS[unit])
        return None

    @property
    def ns(self) -> int:
        return self.count * UNIT_NS[self.unit]

    @property
    def periods_per_year(self) -> float:
        return YEAR_NS / self.ns

    def __str__(self) -> str:
        return f"{self.count}{self.unit}"


def interval_ns(text: str, what: str = "interval") -> int:
    """Length of an interval such as ``"1m"`` or ``"4h"``, in nanoseconds."""
    return Interval.parse(text, what).ns


def periods_per_year(text: str) -> float:
    """Bars per year for an interval (365 calendar days a year)."""
    return Interval.parse(text).periods_per_year


def duration_ns(text: str, what: str = "duration") -> int:
    """``"6h"``, ``"1.5d"``, ``"250ms"`` -> nanoseconds; ``"0s"`` is zero."""
    match = _DURATION.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise IntervalError(
            f"{what} ({text!r}) must be a duration like 250ms, 90s, 5m, 6h, 1d or 2w"
        )
    return round(float(match.group(1)) * UNIT_NS[match.group(2)])
