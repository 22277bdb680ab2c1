"""IB's 5-second real-time bars, one subscription per symbol, folded into the interval.

A bar the stream saw whole goes to the flow as a closed candle; a bar it saw only in part
(the subscription started, or was lost and renewed, inside it) is not stored from the
stream: IB's history is asked for it once it has settled, and gives it whole. ib_async
keeps every bar it receives in the subscription's list; each is read once and the list
emptied, so memory stays flat all day.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence

from ib_async import IB, Contract, RealTimeBarList

from services.marketdata.ib.history import SETTLE_NS
from services.marketdata.live.bars import BarFlow
from services.marketdata.live.candles import Candle
from services.marketdata.live.publisher import Publisher
from services.runtime.clock import Clock
from services.venues.ib.bars import BarFolder, ClosedBar, slot_of

log = logging.getLogger("keel.marketdata")


class RealTimeBars:
    def __init__(
        self,
        ib: IB,
        clock: Clock,
        folder: BarFolder,
        flow: BarFlow,
        publisher: Publisher,
        contracts: Mapping[str, Contract],
        shows: Mapping[str, str],
    ) -> None:
        self.ib = ib
        self.clock = clock
        self.folder = folder
        self.flow = flow
        self.publisher = publisher
        self.contracts = contracts
        self.shows = shows
        self.subscriptions: dict[str, RealTimeBarList] = {}
        self.seen: dict[str, int] = {}  # symbol -> clock time of its last 5-second bar
        self.incomplete = 0
        self._refetch: dict[str, int] = {}  # symbol -> when to ask IB's history

    def subscribe(self, symbols: Sequence[str], cancel_old: bool = True) -> None:
        """(Re)subscribe; ``cancel_old`` False after a new socket, where the old
        subscriptions died with the old one."""
        for symbol in symbols:
            old = self.subscriptions.pop(symbol, None)
            if old is not None and cancel_old:
                with contextlib.suppress(ConnectionError):
                    self.ib.cancelRealTimeBars(old)
            try:
                bars = self.ib.reqRealTimeBars(self.contracts[symbol], 5, self.shows[symbol], False)
            except ConnectionError as exc:
                log.warning("subscribing %s: %s (again once IB is back)", symbol, exc)
                continue
            bars.updateEvent += self._receiver(symbol)
            self.subscriptions[symbol] = bars

    def _receiver(self, symbol: str) -> Callable[[RealTimeBarList, bool], None]:
        def received(bars: RealTimeBarList, has_new: bool) -> None:
            rows = list(bars)
            bars.clear()
            self.seen[symbol] = self.clock.now_ns()
            for row in rows:
                for closed in self.folder.add(symbol, slot_of(row)):
                    self._closed(symbol, closed, live=True)
            self.publisher.send()

        return received

    def close_due(self, now_ns: int) -> list[str]:
        """Close the bars IB stopped sending slots for; returns the symbols whose history is
        due (a bar seen in part, now settled)."""
        for closed in self.folder.close_due(now_ns):
            self._closed(closed.bar.symbol, closed, live=False)
        due = [s for s, t in self._refetch.items() if t <= now_ns]
        for symbol in due:
            del self._refetch[symbol]
        return due

    def _closed(self, symbol: str, closed: ClosedBar, live: bool) -> None:
        if closed.missing:
            self.incomplete += 1
            self._refetch[symbol] = closed.bar.close_time + SETTLE_NS
            return
        bar = closed.bar
        candle = Candle(bar.open_time, bar.open, bar.high, bar.low, bar.close, bar.volume)
        self.flow.from_stream(symbol, [candle], live)
