"""Continuity of the stored bars: each follows the previous one by exactly one interval.

Per symbol it keeps the open time of the last stored bar (seeded from the log) and says of a
closed bar whether it is the ``next`` one, an ``old`` one (already stored: never published
twice) or comes after a ``gap`` (the missing bars are fetched by REST first).

The empty-minute rule: a minute without trades is whatever the exchange's REST history says.
If the history returns a bar for it, that bar is stored; if it returns no bar for it but does
return a later one, the minute is confirmed empty (``confirm_empty``) and the bar after it is
accepted as continuous. Only REST can say a minute was empty; the stream alone never does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

Verdict = Literal["next", "old", "gap"]


class Continuity:
    def __init__(self, step_ns: int, last_open: Mapping[str, int] | None = None) -> None:
        """``last_open``: the open time of the last stored bar per symbol, from the log."""
        if step_ns <= 0:
            raise ValueError("step_ns must be > 0")
        self.step_ns = step_ns
        self._last: dict[str, int] = dict(last_open or {})
        self._empty_to: dict[str, int] = {}

    def start(self, symbol: str, open_ns: int) -> None:
        """Want bars from ``open_ns`` on (a configured backfill start), unless the log
        already holds bars of ``symbol``: what is stored decides where continuity resumes."""
        if symbol not in self._last:
            self._last[symbol] = open_ns - self.step_ns

    def last(self, symbol: str) -> int | None:
        """Open time of the last stored bar (or the one before a configured start)."""
        return self._last.get(symbol)

    def check(self, symbol: str, open_ns: int) -> Verdict:
        last = self._last.get(symbol)
        if last is None:
            return "next"
        if open_ns <= last:
            return "old"
        if open_ns <= self._accepted_to(symbol, last):
            return "next"
        return "gap"

    def missing(self, symbol: str, open_ns: int) -> tuple[int, int] | None:
        """Open times (first, last, both included) of the bars to fetch before the bar at
        ``open_ns`` can be stored; None when nothing is missing (or nothing is known of the
        symbol: the first bar ever needs no backfill unless a start was given)."""
        if self.check(symbol, open_ns) != "gap":
            return None
        last = self._last[symbol]
        first = max(last + self.step_ns, self._empty_to.get(symbol, last))
        return first, open_ns - self.step_ns

    def advance(self, symbol: str, open_ns: int) -> None:
        """The bar at ``open_ns`` was stored."""
        last = self._last.get(symbol)
        if last is None or open_ns > last:
            self._last[symbol] = open_ns
        empty_to = self._empty_to.get(symbol)
        if empty_to is not None and open_ns >= empty_to:
            del self._empty_to[symbol]

    def confirm_empty(self, symbol: str, up_to_open_ns: int) -> None:
        """REST history has no bar after the last stored one and before ``up_to_open_ns``
        (minutes without trades): a bar opening at or before it is the next one."""
        last = self._last.get(symbol)
        if last is None or up_to_open_ns <= last + self.step_ns:
            return
        self._empty_to[symbol] = max(self._empty_to.get(symbol, up_to_open_ns), up_to_open_ns)

    def _accepted_to(self, symbol: str, last: int) -> int:
        return max(last + self.step_ns, self._empty_to.get(symbol, last))
