"""IB's 5-second real-time bars folded into closed bars of the configured interval.

Intervals are aligned to the Unix epoch, as every Keel bar is (``open_time`` a multiple of
the interval), so they must be a whole number of 5-second slots. The rule, per symbol:

- a bar is emitted once its interval is complete: its last 5-second slot has arrived, or a
  slot of a later interval has, or ``close_due`` is told a time at least ``settle_ns`` past
  its end (IB stopped sending: a halt, the session's end, a lost subscription);
- a gap (missing slots) does not hold a bar back or invent prices: the bar is made of the
  slots that came, and ``ClosedBar.missing`` says how many did not, for the feed to count,
  report and backfill from IB's history if it wants the bar whole;
- an interval with no slot at all gives no bar (as IB's own history leaves it out);
- a slot at or before the last one folded (a repeat after a resubscription, or one for a
  bar already emitted) is dropped and counted: an emitted bar is never revised;
- a slot off the 5-second grid, with a price that is not a finite number above zero, or
  with a high below its low, is refused and counted (``invalid``): the rest of the bar still forms.

The fold is a pure function of the slots and times it is given: deterministic in replay.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Protocol

import msgspec

from contracts.events import Bar

SLOT_NS = 5_000_000_000


class Slot(msgspec.Struct, frozen=True):
    """One 5-second bar: ``open_ns`` its start; ``volume`` 0 when IB sends none (-1 for
    midpoint data)."""

    open_ns: int
    open: float
    high: float
    low: float
    close: float
    volume: float


class RealTimeBarLike(Protocol):
    """What a slot is read from: ib_async's ``RealTimeBar`` (``time`` its start)."""

    time: dt.datetime
    open_: float
    high: float
    low: float
    close: float
    volume: float


def slot_of(bar: RealTimeBarLike) -> Slot:
    """A slot from ib_async's ``RealTimeBar``; IB's -1 "no volume" (midpoint data) is 0."""
    return Slot(
        round(bar.time.timestamp()) * 1_000_000_000,
        bar.open_,
        bar.high,
        bar.low,
        bar.close,
        max(bar.volume, 0.0),
    )


class ClosedBar(msgspec.Struct, frozen=True):
    """A bar and how many of its 5-second slots never arrived."""

    bar: Bar
    missing: int


class _Forming(msgspec.Struct):
    open_ns: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    slots: int
    last_ns: int


class BarFolder:
    """The forming bar of each symbol of one venue and interval."""

    def __init__(self, venue: str, interval: str, interval_ns: int, settle_ns: int = 0) -> None:
        if interval_ns <= 0 or interval_ns % SLOT_NS:
            raise ValueError(f"interval {interval}: must be a whole number of 5-second bars")
        if settle_ns < 0:
            raise ValueError("settle_ns must be >= 0")
        self.venue = venue
        self.interval = interval
        self.interval_ns = interval_ns
        self.settle_ns = settle_ns
        self._forming: dict[str, _Forming] = {}
        self._last: dict[str, int] = {}
        self.dropped = 0
        self.invalid = 0

    def add(self, symbol: str, slot: Slot) -> list[ClosedBar]:
        """Fold one slot in; returns the bars it completes (the one before it, if the slot
        starts a later interval, and its own, if it is that interval's last slot)."""
        if not _sound(slot):
            self.invalid += 1
            return []
        if slot.open_ns <= self._last.get(symbol, -1):
            self.dropped += 1
            return []
        self._last[symbol] = slot.open_ns
        out: list[ClosedBar] = []
        start = slot.open_ns - slot.open_ns % self.interval_ns
        forming = self._forming.get(symbol)
        if forming is not None and forming.open_ns != start:
            out.append(self._close(symbol, forming))
            forming = None
        if forming is None:
            self._forming[symbol] = _Forming(
                start, slot.open, slot.high, slot.low, slot.close, slot.volume, 1, slot.open_ns
            )
        else:
            forming.high = max(forming.high, slot.high)
            forming.low = min(forming.low, slot.low)
            forming.close = slot.close
            forming.volume += slot.volume
            forming.slots += 1
            forming.last_ns = slot.open_ns
        if slot.open_ns + SLOT_NS == start + self.interval_ns:
            out.append(self._close(symbol, self._forming[symbol]))
        return out

    def close_due(self, now_ns: int) -> list[ClosedBar]:
        """The forming bars whose interval ended at least ``settle_ns`` before ``now_ns``,
        in symbol order."""
        due = [
            symbol
            for symbol, forming in sorted(self._forming.items())
            if forming.open_ns + self.interval_ns + self.settle_ns <= now_ns
        ]
        return [self._close(symbol, self._forming[symbol]) for symbol in due]

    def _close(self, symbol: str, forming: _Forming) -> ClosedBar:
        del self._forming[symbol]
        # Nothing of this interval may come after it is emitted.
        self._last[symbol] = max(
            self._last.get(symbol, -1), forming.open_ns + self.interval_ns - SLOT_NS
        )
        close_ns = forming.open_ns + self.interval_ns
        bar = Bar(
            self.venue,
            symbol,
            self.interval,
            forming.open_ns,
            close_ns,
            forming.open,
            forming.high,
            forming.low,
            forming.close,
            forming.volume,
            ts=close_ns,
        )
        return ClosedBar(bar, self.interval_ns // SLOT_NS - forming.slots)


def _sound(slot: Slot) -> bool:
    prices = (slot.open, slot.high, slot.low, slot.close)
    return (
        slot.open_ns % SLOT_NS == 0
        and all(math.isfinite(p) and p > 0 for p in prices)
        and slot.low <= min(slot.open, slot.close)
        and slot.high >= max(slot.open, slot.close)
        and math.isfinite(slot.volume)
        and slot.volume >= 0
    )
