"""A live session's bars: continuous, never twice, stream first and REST to fill the holes.

Closed candles from the stream are stored the moment they are known when they are the next
bar of their symbol (``Continuity``); an old one is dropped; one after a gap waits while the
missing bars are fetched by REST. Backfills (at start, after a reconnect, on a gap, and to
poll a stale symbol) run one at a time in ``run``; a burst of several time steps is stored
step by step, with ``between_steps`` (the fleet's lockstep) awaited between them.

The watchdog rule (docs/venues.md): no closed bar by close + grace makes the symbol ``stale``
and asks REST. The bar is there: it is stored, state ``polling`` until the stream delivers
again (``streaming``, the all-clear). REST shows a later candle but not this one: the minute
had no trades, continuity confirms it, state ``streaming``. REST has nothing newer: still
``stale``, asked again every ``poll_every_s``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence

import ccxt
import ccxt.pro

from contracts.events import FeedState
from services.marketdata.live.backfill import History, fetch_history
from services.marketdata.live.calls import VenueCalls, one_line
from services.marketdata.live.candles import Candle, to_bar
from services.marketdata.live.continuity import Continuity
from services.marketdata.live.publisher import Publisher
from services.marketdata.live.watchdog import FeedStates, Watchdog
from services.runtime.clock import Clock

log = logging.getLogger("keel.marketdata")

FRESH: tuple[FeedState, ...] = ("streaming", "polling")


class BarFlow:
    def __init__(
        self,
        exchange: ccxt.pro.Exchange,
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
        between_steps: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self.exchange = exchange
        self.calls = calls
        self.publisher = publisher
        self.clock = clock
        self.venue = venue
        self.interval = interval
        self.step_ns = step_ns
        self.poll_ns = int(poll_every_s * 1e9)
        self.continuity = continuity
        self.between_steps = between_steps
        self.watchdog = Watchdog(step_ns, int(grace_s * 1e9))
        self.states = FeedStates()
        self.active: dict[str, None] = {}
        self.stale: dict[str, int] = {}  # symbol -> the missing close, while stale or polling
        self.backfilling: set[str] = set()
        self.pending: dict[str, list[tuple[Candle, bool]]] = {}
        self.bars = 0
        self.empty_minutes = 0
        self._wanted: dict[str, None] = {}
        self._poll_at: dict[str, int] = {}
        self._wake = asyncio.Event()

    # -- the stream side: no awaits ------------------------------------------------------

    def track(self, symbols: Iterable[str], now_ns: int) -> None:
        """Watch these symbols from now on (at start: from their last stored close)."""
        boundary = now_ns - now_ns % self.step_ns
        for symbol in symbols:
            self.active[symbol] = None
            last = self.continuity.last(symbol)
            self.watchdog.bar_stored(symbol, last + self.step_ns if last is not None else boundary)

    def drop(self, symbol: str) -> None:
        self.active.pop(symbol, None)
        self.stale.pop(symbol, None)
        self.pending.pop(symbol, None)
        self.watchdog.forget(symbol)

    def from_stream(self, symbol: str, candles: Sequence[Candle], live: bool = True) -> None:
        """Closed candles a stream delivered, in order; ``live`` False for a candle closed
        by the clock (bars from trades), which is no sign that the stream is up."""
        if symbol not in self.active:
            return
        for candle in candles:
            if symbol in self.backfilling or self.pending.get(symbol):
                self.pending.setdefault(symbol, []).append((candle, live))
                continue
            if self._take(symbol, candle, live) == "gap":
                self.pending.setdefault(symbol, []).append((candle, live))
                self.request([symbol])

    def _take(self, symbol: str, candle: Candle, live: bool) -> str:
        verdict = self.continuity.check(symbol, candle.open_ns)
        if verdict == "next":
            self._store(symbol, candle)
        if live and (verdict == "next" or candle.open_ns == self.continuity.last(symbol)):
            self._all_clear(symbol, candle)  # the stream delivers, or caught up with REST
        return verdict

    def request(self, symbols: Iterable[str]) -> None:
        """Backfill these symbols soon (those already current cost nothing)."""
        for symbol in symbols:
            if symbol in self.active:
                self._wanted[symbol] = None
        if self._wanted:
            self._wake.set()

    def set_state(self, symbol: str, state: FeedState, ts: int, reason: str = "") -> None:
        last = self.continuity.last(symbol)
        last_close = last + self.step_ns if last is not None else 0
        status = self.states.set(self.venue, symbol, state, max(ts, 1), reason, last_close)
        if status is not None:
            self.publisher.status(status)

    def _store(self, symbol: str, candle: Candle) -> None:
        bar = to_bar(self.venue, symbol, self.interval, candle)
        self.publisher.bar(bar)
        self.continuity.advance(symbol, candle.open_ns)
        self.watchdog.bar_stored(symbol, bar.close_time)
        self.bars += 1

    def _all_clear(self, symbol: str, candle: Candle) -> None:
        if self.states.get(self.venue, symbol) != "streaming":
            self.stale.pop(symbol, None)
            self.set_state(symbol, "streaming", candle.open_ns + self.step_ns, "stream delivers")

    # -- the watchdog --------------------------------------------------------------------

    def check_stalls(self, now_ns: int) -> list[str]:
        """Symbols that went stale just now (each marked and asked of REST), and REST polls
        of the symbols still stale or polling whose turn has come."""
        newly = []
        for symbol, missing in self.watchdog.due(now_ns):
            if symbol not in self.active:
                continue
            known = symbol in self.stale
            self.stale[symbol] = missing
            self._poll_at[symbol] = now_ns
            if known:
                continue  # already stale or polling: the next REST look decides
            newly.append(symbol)
            grace = (now_ns - missing) / 1e9
            self.set_state(symbol, "stale", missing, f"no closed bar {grace:.0f}s after its close")
        waiting = [*self.stale, *(s for s in self.pending if s not in self.stale)]
        due = [s for s in waiting if self._poll_at.get(s, 0) <= now_ns]
        for symbol in due:
            self._poll_at[symbol] = now_ns + self.poll_ns
        self.request(due)
        if newly or due:
            self.publisher.send()
        return newly

    # -- backfills, one at a time --------------------------------------------------------

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            symbols = [s for s in self._wanted if s in self.active]
            self._wanted.clear()
            if symbols:
                await self.backfill(symbols)

    async def backfill(self, symbols: Sequence[str]) -> None:
        now_ns = self.clock.now_ns()
        boundary = now_ns - now_ns % self.step_ns
        todo = []
        for symbol in symbols:
            last = self.continuity.last(symbol)
            behind = last is not None and last + 2 * self.step_ns <= boundary
            if behind or symbol in self.stale or self.pending.get(symbol):
                todo.append(symbol)
        if not todo:
            return
        self.backfilling.update(todo)
        for symbol in todo:
            if self.states.get(self.venue, symbol) not in ("stale", "polling"):
                self.set_state(symbol, "backfilling", boundary, "fetching missed bars by REST")
        self.publisher.send()
        try:
            histories = {symbol: await self._history(symbol) for symbol in todo}
            await self._store_history(histories)
        finally:
            self.backfilling.difference_update(todo)
        for symbol in todo:
            history = histories.get(symbol)
            if history is not None:
                self._settle(symbol, history)
            self._drain(symbol)
        self.publisher.send()

    async def _history(self, symbol: str) -> History | None:
        last = self.continuity.last(symbol)
        now_ns = self.clock.now_ns()
        since = last + self.step_ns if last is not None else now_ns - now_ns % self.step_ns
        try:
            history = await fetch_history(
                self.exchange,
                self.calls,
                symbol,
                self.interval,
                since,
                self.step_ns,
                self.clock.now_ns,
            )
        except ccxt.BaseError as exc:
            log.warning("%s: REST history of %s: %s", self.venue, symbol, one_line(exc))
            return None
        except Exception as exc:  # ccxt could not parse the response: a reason, not a crash
            reason = f"fetch_ohlcv {symbol}: {one_line(exc)}"
            self.publisher.dead_letter(now_ns, f"rest.{self.exchange.id}.fetch_ohlcv", reason)
            return None
        for reason in history.malformed:
            self.publisher.dead_letter(now_ns, f"rest.{self.exchange.id}.fetch_ohlcv", reason)
        return history

    async def _store_history(self, histories: dict[str, History | None]) -> None:
        steps: dict[int, list[tuple[str, Candle]]] = {}
        for symbol, history in histories.items():
            for candle in history.closed if history else ():
                if self.continuity.check(symbol, candle.open_ns) != "old":
                    steps.setdefault(candle.open_ns, []).append((symbol, candle))
        lockstep = self.between_steps if len(steps) > 1 else None
        if lockstep is not None:
            await self.publisher.flush()
            await lockstep()
        for n, open_ns in enumerate(sorted(steps)):
            for symbol, candle in steps[open_ns]:
                if symbol not in self.active:
                    continue
                if self.continuity.check(symbol, candle.open_ns) == "gap":
                    # REST is the exchange's word: no row for those minutes, no trades.
                    self.continuity.confirm_empty(symbol, candle.open_ns)
                    self.empty_minutes += 1
                self._store(symbol, candle)
            self.publisher.send()
            if lockstep is not None and n < len(steps) - 1:
                await self.publisher.flush()
                await lockstep()

    def _settle(self, symbol: str, history: History) -> None:
        """The state after a REST look: the watchdog rule for a stale symbol, else the end
        of a backfill."""
        last = self.continuity.last(symbol)
        last_close = last + self.step_ns if last is not None else 0
        missing = self.stale.get(symbol)
        if missing is None:
            if self.states.get(self.venue, symbol) == "backfilling":
                self.set_state(symbol, "streaming", max(last_close, 1), "backfill done")
            return
        if last_close >= missing:
            self.set_state(symbol, "polling", last_close, "REST polling while the stream is down")
        elif history.newest_open >= missing:
            # A later candle but not the missing one: minutes without trades.
            self.continuity.confirm_empty(symbol, history.newest_open)
            self.watchdog.bar_stored(symbol, history.newest_open)
            self.empty_minutes += 1
            self.stale.pop(symbol, None)
            self.set_state(symbol, "streaming", missing, "no trades in the minute (REST history)")
        else:
            self.set_state(symbol, "stale", missing, "REST has no newer bar either")

    def _drain(self, symbol: str) -> None:
        """Stream candles that waited for the backfill, in order; one still after a gap
        (REST did not have the missing bars yet) waits for the next poll."""
        waiting = self.pending.pop(symbol, [])
        for n, (candle, live) in enumerate(waiting):
            if self._take(symbol, candle, live) == "gap":
                self.pending[symbol] = waiting[n:]
                self._poll_at[symbol] = self.clock.now_ns() + self.poll_ns
                return
