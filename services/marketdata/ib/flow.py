"""The IB feed's bars: the live feed's ``BarFlow`` with IB's history and trading calendar.

Continuity, the pending bars held during a backfill, the stall states and the lockstep steps
are the ccxt feed's own (``services.marketdata.live.bars``); two things differ. Missing bars
come from IB's historical data (``IbHistory``, paced). And the watchdog expects a bar only
where the symbol's trading calendar has a session: a market that is closed is an expected
quiet (``CalendarWatchdog``), so a weekend or a night is never ``stale``, while a bar
missing inside a session still is.

Once the calendar says the session ended and every bar of it is stored, the symbol is
``closed`` (``ts`` the session's close, the next open in the reason): risk takes no entries
until the first bar of the next session arrives, which makes it ``streaming`` again. That
bar, not the open time, lifts the block: only then is there a price of the new session to
size an entry on, and a feed that does not deliver at the open goes ``stale`` as ever. The
hours between the sessions are no gap to backfill: the calendar says they hold no bar.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime

from ib_async import Contract

from contracts.events import FeedState
from services.marketdata.ib.history import HistoryError, IbHistory
from services.marketdata.ib.quiet import CalendarWatchdog, closed_at, expected_closes
from services.marketdata.live.backfill import History
from services.marketdata.live.bars import BarFlow
from services.marketdata.live.calls import VenueCalls, one_line
from services.marketdata.live.candles import Candle
from services.marketdata.live.continuity import Continuity
from services.marketdata.live.publisher import Publisher
from services.runtime.clock import Clock
from services.venues.ib.calendar import TradingCalendar

log = logging.getLogger("keel.marketdata")


class IbBarFlow(BarFlow):
    """``BarFlow`` whose history is IB's; ``contracts``, ``shows`` and ``calendars`` are the
    session's (kept current across reconnects and front-month rolls); ``ready`` tells
    whether IB can answer now."""

    def __init__(
        self,
        history: IbHistory,
        calls: VenueCalls,
        publisher: Publisher,
        clock: Clock,
        *,
        venue: str,
        interval: str,
        step_ns: int,
        grace_s: float,
        poll_every_s: float,
        continuity: Continuity,
        contracts: Mapping[str, Contract],
        shows: Mapping[str, str],
        calendars: Mapping[str, TradingCalendar],
        ready: Callable[[], bool],
        between_steps: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        # BarFlow's exchange serves only its ``_history``, which IB's replaces.
        super().__init__(
            None,  # type: ignore[arg-type]
            calls,
            publisher,
            clock,
            venue=venue,
            interval=interval,
            step_ns=step_ns,
            grace_s=grace_s,
            poll_every_s=poll_every_s,
            continuity=continuity,
            between_steps=between_steps,
        )
        self.history = history
        self.contracts = contracts
        self.shows = shows
        self.calendars = calendars
        self.ready = ready
        self.watchdog = CalendarWatchdog(step_ns, int(grace_s * 1e9), calendars)  # type: ignore[assignment]
        self.failed_backfills = 0
        self._closed_at: dict[str, int] = {}

    def state(self, symbol: str) -> FeedState | None:
        return self.states.get(self.venue, symbol)

    # -- the closed market ---------------------------------------------------------------

    def mark_closed(self, now_ns: int) -> None:
        """Each watchdog tick: the symbols whose session ended with all its bars stored go
        ``closed``. One that owes bars (stale, backfilling, waiting) settles them first:
        the calendar excuses a silence, never a stall."""
        for symbol in self.active:
            if self.state(symbol) == "closed" or not self._owes_nothing(symbol, now_ns):
                continue
            shut = closed_at(self.calendars.get(symbol), now_ns)
            if shut is None:
                continue
            self.stale.pop(symbol, None)
            self._closed_at[symbol] = shut.ended_ns
            opens = shut.opens_ns
            reason = (
                f"market closed until {_iso(opens)}"
                if opens is not None
                else "market closed; the next open is past the trading calendar's days"
            )
            self.set_state(symbol, "closed", shut.ended_ns, reason)
            self.publisher.send()

    def _owes_nothing(self, symbol: str, now_ns: int) -> bool:
        """Closed now by the calendar, every bar of the session that ended stored."""
        shut = closed_at(self.calendars.get(symbol), now_ns)
        if shut is None or symbol in self.backfilling or self.pending.get(symbol):
            return False
        last = self.continuity.last(symbol)
        return last is None or last + self.step_ns >= shut.ended_ns

    def from_stream(self, symbol: str, candles: Sequence[Candle], live: bool = True) -> None:
        # The first bar after a closed spell follows the last one across hours the calendar
        # says hold no bar: that is no gap to backfill.
        last = self.continuity.last(symbol)
        calendar = self.calendars.get(symbol)
        if candles and last is not None and calendar is not None and self.state(symbol) == "closed":
            first = candles[0].open_ns
            quiet = expected_closes(calendar, last + self.step_ns, first, self.step_ns) == 0
            if first > last + self.step_ns and quiet:
                self.continuity.confirm_empty(symbol, first)
        super().from_stream(symbol, candles, live)

    def _all_clear(self, symbol: str, candle: Candle) -> None:
        # A bar of the session that ended (delivered again) does not reopen the market.
        if candle.open_ns + self.step_ns <= self._closed_at.get(symbol, -1):
            return
        super()._all_clear(symbol, candle)

    async def backfill(self, symbols: Sequence[str]) -> None:
        # A closed market with its session's bars stored has nothing to fetch until it opens.
        now_ns = self.clock.now_ns()
        await super().backfill([s for s in symbols if not self._owes_nothing(s, now_ns)])

    async def _history(self, symbol: str) -> History | None:
        contract = self.contracts.get(symbol)
        if contract is None or not self.ready():
            return None  # asked again once IB is back (the reconnect requests a backfill)
        last = self.continuity.last(symbol)
        now_ns = self.clock.now_ns()
        since = last + self.step_ns if last is not None else now_ns - now_ns % self.step_ns
        try:
            history = await self.history.fetch(
                contract,
                self.shows.get(symbol, "TRADES"),
                since,
                self.step_ns,
                self.clock.now_ns,
                self.calendars.get(symbol),
            )
        except (ConnectionError, TimeoutError, HistoryError) as exc:
            # Asked again at the next reconnect, poll or gap: a backfill never crashes.
            self.failed_backfills += 1
            log.warning("%s: IB history of %s: %s", self.venue, symbol, one_line(exc))
            return None
        for reason in history.malformed:
            self.publisher.dead_letter(now_ns, "ib.historical", reason)
        return history


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns // 1_000_000_000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
