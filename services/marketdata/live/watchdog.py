"""Stall detection, and the feed state each symbol is in.

A websocket can stay open and go silent. The watchdog knows when each symbol's next closed
bar is due (last close + one interval) and reports it once ``grace_ns`` later if no bar came:
the adapter then marks the symbol ``stale`` and asks REST. ``FeedStates`` turns the
adapter's view of each feed into ``FeedStatus`` events, one per change of state.
"""

from __future__ import annotations

from contracts.events import FeedState, FeedStatus


class Watchdog:
    def __init__(self, step_ns: int, grace_ns: int) -> None:
        if step_ns <= 0 or grace_ns < 0:
            raise ValueError("step_ns must be > 0 and grace_ns >= 0")
        self.step_ns = step_ns
        self.grace_ns = grace_ns
        self._last_close: dict[str, int] = {}
        self._reported: dict[str, int] = {}

    def bar_stored(self, symbol: str, close_ns: int) -> None:
        """A bar of ``symbol`` closing at ``close_ns`` was stored (also how a symbol starts
        being watched: with the last stored close, or the open of the forming candle when
        nothing is stored yet). A newer bar ends a reported stall."""
        last = self._last_close.get(symbol)
        if last is None or close_ns > last:
            self._last_close[symbol] = close_ns
            self._reported.pop(symbol, None)

    def forget(self, symbol: str) -> None:
        """Stop watching ``symbol`` (delisted, or no longer configured)."""
        self._last_close.pop(symbol, None)
        self._reported.pop(symbol, None)

    def due(self, now_ns: int) -> list[tuple[str, int]]:
        """Symbols whose next bar (closing at the returned time) has not come by its close +
        grace; each stall is reported once, until a newer bar is stored. Oldest first."""
        late: list[tuple[str, int]] = []
        for symbol, last in self._last_close.items():
            missing = last + self.step_ns
            if missing + self.grace_ns <= now_ns and symbol not in self._reported:
                self._reported[symbol] = missing
                late.append((symbol, missing))
        late.sort(key=lambda item: (item[1], item[0]))
        return late

    def next_due(self) -> int | None:
        """The earliest time a stall could be reported (when to wake up next); None when
        nothing is watched or every watched symbol is already reported."""
        pending = [
            last + self.step_ns + self.grace_ns
            for symbol, last in self._last_close.items()
            if symbol not in self._reported
        ]
        return min(pending, default=None)

    def stalled(self, symbol: str) -> int | None:
        """The missing close reported for ``symbol``, while its stall lasts."""
        return self._reported.get(symbol)


class FeedStates:
    """The last state published per (venue, symbol); the first ``set`` always publishes."""

    def __init__(self) -> None:
        self._state: dict[tuple[str, str], FeedState] = {}

    def get(self, venue: str, symbol: str) -> FeedState | None:
        return self._state.get((venue, symbol))

    def set(
        self,
        venue: str,
        symbol: str,
        state: FeedState,
        ts: int,
        reason: str = "",
        last_close: int = 0,
    ) -> FeedStatus | None:
        """The ``FeedStatus`` to publish, or None when the state did not change (a new
        reason alone is not a new fact)."""
        key = (venue, symbol)
        if self._state.get(key) == state:
            return None
        status = FeedStatus(
            ts=ts, venue=venue, symbol=symbol, state=state, reason=reason, last_close=last_close
        )
        self._state[key] = state
        return status
