"""The IB feed's bars: the live feed's ``BarFlow`` with IB's history and trading calendar.

Continuity, the pending bars held during a backfill, the stall states and the lockstep steps
are the ccxt feed's own (``services.marketdata.live.bars``); two things differ. Missing bars
come from IB's historical data (``IbHistory``, paced). And the watchdog expects a bar only
where the symbol's trading calendar has a session: a market that is closed is an expected
quiet (``CalendarWatchdog``), so a weekend or a night is never ``stale``, while a bar
missing inside a session still is.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

from ib_async import Contract

from contracts.events import FeedState
from services.marketdata.ib.history import HistoryError, IbHistory
from services.marketdata.ib.quiet import CalendarWatchdog
from services.marketdata.live.backfill import History
from services.marketdata.live.bars import BarFlow
from services.marketdata.live.calls import VenueCalls, one_line
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

    def state(self, symbol: str) -> FeedState | None:
        return self.states.get(self.venue, symbol)

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
