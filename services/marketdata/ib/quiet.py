"""When a closed market is an expected quiet: the trading calendar, read with care.

IB lists sessions from some day on; before the first listed session the calendar is not
taken at its word (IB may list today from the session that opens tonight while the one
that opened last night still runs): there, as past the listed days, every bar is expected.
So the calendar can only ever excuse a silence, never hide a stalled feed during a session.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping

import msgspec

from services.venues.ib.calendar import TradingCalendar


class Closed(msgspec.Struct, frozen=True):
    """The market is between sessions: the last one ended at ``ended_ns``; the next opens
    at ``opens_ns`` (None when the listed days hold none)."""

    ended_ns: int
    opens_ns: int | None


def expected_closes(
    calendar: TradingCalendar | None, after_ns: int, until_ns: int, interval_ns: int
) -> int:
    """Bars closing in ``(after_ns, until_ns]`` a working feed delivers."""
    if calendar is None or not calendar.sessions or after_ns < calendar.sessions[0].open_ns:
        return max(0, until_ns // interval_ns - after_ns // interval_ns)
    return calendar.expected_closes(after_ns, until_ns, interval_ns)


def closed_at(calendar: TradingCalendar | None, now_ns: int) -> Closed | None:
    """Whether the calendar, taken at its word, says the market is closed at ``now_ns``:
    inside the listed days, after the first listed session has opened, in no session.
    Anywhere the calendar is not trusted the market counts as open."""
    if calendar is None or not calendar.sessions or now_ns < calendar.sessions[0].open_ns:
        return None
    if not calendar.known(now_ns) or calendar.is_open(now_ns):
        return None
    i = bisect.bisect_right([s.close_ns for s in calendar.sessions], now_ns) - 1
    return Closed(calendar.sessions[i].close_ns, calendar.next_open(now_ns))


class CalendarWatchdog:
    """``Watchdog`` with a trading calendar per symbol: a symbol's next bar is due at the
    close of the first bar after its last one that the calendar puts in a session."""

    def __init__(
        self, step_ns: int, grace_ns: int, calendars: Mapping[str, TradingCalendar]
    ) -> None:
        if step_ns <= 0 or grace_ns < 0:
            raise ValueError("step_ns must be > 0 and grace_ns >= 0")
        self.step_ns = step_ns
        self.grace_ns = grace_ns
        self.calendars = calendars
        self._last_close: dict[str, int] = {}
        self._reported: dict[str, int] = {}

    def bar_stored(self, symbol: str, close_ns: int) -> None:
        last = self._last_close.get(symbol)
        if last is None or close_ns > last:
            self._last_close[symbol] = close_ns
            self._reported.pop(symbol, None)

    def forget(self, symbol: str) -> None:
        self._last_close.pop(symbol, None)
        self._reported.pop(symbol, None)

    def expected(self, symbol: str, last_close: int) -> int:
        """The close of the next bar the calendar expects after ``last_close``."""
        calendar = self.calendars.get(symbol)
        step = self.step_ns
        if calendar is None or expected_closes(calendar, last_close, last_close + step, step):
            return last_close + step
        opens = calendar.next_open(last_close)
        if opens is None:
            return last_close + step  # past the listed days: the calendar knows nothing
        return opens - opens % step + step

    def due(self, now_ns: int) -> list[tuple[str, int]]:
        late: list[tuple[str, int]] = []
        for symbol, last in self._last_close.items():
            if symbol in self._reported:
                continue
            missing = self.expected(symbol, last)
            if missing + self.grace_ns <= now_ns:
                self._reported[symbol] = missing
                late.append((symbol, missing))
        late.sort(key=lambda item: (item[1], item[0]))
        return late

    def stalled(self, symbol: str) -> int | None:
        return self._reported.get(symbol)
