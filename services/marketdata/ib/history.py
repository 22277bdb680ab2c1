"""Closed bars from IB's historical data (``reqHistoricalData``), paced and page by page.

Pages run forward from the first missing bar, each ending on a bar boundary no later than
the last one closed ``SETTLE_NS`` ago, so every row returned is a closed bar; a page
the trading calendar says holds no session is not asked at all (a weekend costs nothing).
Each request waits its turn under IB's pacing rules (``HistoryPacing``); a 162 or 420
answer backs off and asks again, never fails the backfill. What the history returns is
IB's word: a bar it has no row for had no data (``Continuity.confirm_empty``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable

from ib_async import IB, BarData, Contract

from services.marketdata.ib.pacing import HistoryPacing
from services.marketdata.ib.quiet import expected_closes
from services.marketdata.live.backfill import History
from services.marketdata.live.calls import VenueCalls
from services.marketdata.live.candles import Candle
from services.venues.ib.calendar import TradingCalendar

log = logging.getLogger("keel.marketdata")

NS = 1_000_000_000
DAY_S = 86_400
PACING_CODES = frozenset({162, 420})
MAX_PAGES = 400
REQUEST_TIMEOUT_S = 60.0
SETTLE_NS = 5 * NS
"""Bars are asked only once they closed this long ago: IB's clock may run a little behind
ours, and a bar it has not closed yet would come back in part."""

BAR_SIZES: dict[int, str] = {
    5: "5 secs",
    10: "10 secs",
    15: "15 secs",
    30: "30 secs",
    60: "1 min",
    120: "2 mins",
    180: "3 mins",
    300: "5 mins",
    600: "10 mins",
    900: "15 mins",
    1200: "20 mins",
    1800: "30 mins",
    3600: "1 hour",
    7200: "2 hours",
    10800: "3 hours",
    14400: "4 hours",
    28800: "8 hours",
}
"""IB's bar sizes below a day; Keel's interval must be one of them (bars align to the epoch,
IB's daily bars to the exchange's midnight)."""


class HistoryError(Exception):
    """IB refused a historical request for a reason other than pacing (one line)."""


def bar_size(step_ns: int) -> str | None:
    return BAR_SIZES.get(step_ns // NS) if step_ns % NS == 0 else None


def page_seconds(bar_s: int) -> int:
    """The longest span one request may cover for this bar size (IB's "valid duration and
    bar size" table)."""
    if bar_s <= 5:
        return 3_600
    if bar_s < 60:
        return 14_400
    if bar_s < 120:
        return DAY_S
    if bar_s < 180:
        return 2 * DAY_S
    if bar_s < 1800:
        return 7 * DAY_S
    return 30 * DAY_S


def duration_text(seconds: int) -> str:
    """IB counts seconds only up to a day; longer spans are whole days."""
    if seconds <= DAY_S:
        return f"{seconds} S"
    return f"{-(-seconds // DAY_S)} D"


def candle_of(row: BarData) -> Candle | None:
    """A row as a candle; None when IB's values cannot make a bar (logged by the caller)."""
    when = row.date
    if not isinstance(when, dt.datetime):
        return None
    values = (row.open, row.high, row.low, row.close)
    if not all(v > 0 for v in values) or row.high < row.low:
        return None
    return Candle(
        round(when.timestamp()) * NS, row.open, row.high, row.low, row.close, max(row.volume, 0.0)
    )


class IbHistory:
    """The feed's one way to IB's historical bars."""

    def __init__(self, ib: IB, calls: VenueCalls, pacing: HistoryPacing) -> None:
        self.ib = ib
        self.calls = calls
        self.pacing = pacing
        self.requests = 0
        self._errors: dict[int, tuple[int, str]] = {}
        ib.errorEvent += self._on_error

    def _on_error(self, req_id: int, code: int, message: str, contract: object) -> None:
        if req_id > 0:
            self._errors[req_id] = (code, message)

    async def fetch(
        self,
        contract: Contract,
        show: str,
        since_ns: int,
        step_ns: int,
        now: Callable[[], int],
        calendar: TradingCalendar | None,
    ) -> History:
        """Every closed bar from ``since_ns`` on that IB has."""
        size = bar_size(step_ns)
        if size is None:
            raise HistoryError(f"IB has no {step_ns // NS} s bars")
        chunk = page_seconds(step_ns // NS) * NS
        settled = now() - SETTLE_NS
        end_limit = settled - settled % step_ns
        history = History()
        candles: dict[int, Candle] = {}
        since = since_ns
        for _ in range(MAX_PAGES):
            if since >= end_limit:
                break
            end = min(since + chunk, end_limit)
            if expected_closes(calendar, since, end, step_ns) > 0:
                rows = await self._request(contract, show, end, (end - since) // NS, size)
                for row in rows:
                    candle = candle_of(row)
                    if candle is None:
                        history.malformed.append(f"{contract.localSymbol}: unusable row {row}")
                        continue
                    history.newest_open = max(history.newest_open, candle.open_ns)
                    if since_ns <= candle.open_ns < end_limit:
                        candles[candle.open_ns] = candle
            since = end
        history.closed = [candles[t] for t in sorted(candles)]
        return history

    async def _request(
        self, contract: Contract, show: str, end_ns: int, seconds: int, size: str
    ) -> list[BarData]:
        end = dt.datetime.fromtimestamp(end_ns / NS, dt.UTC)
        duration = duration_text(seconds)
        key = (str(contract.conId), end.isoformat(), duration, size, show)
        while True:
            wait = self.pacing.wait_ns(key[0], key, self.calls.clock.now_ns())
            if wait > 0:
                await self.calls.pause(wait / NS)
                continue
            self.pacing.sent(key[0], key, self.calls.clock.now_ns())
            self.requests += 1
            loop = asyncio.get_running_loop()
            asked = loop.time()
            bars = await self.ib.reqHistoricalDataAsync(
                contract, end, duration, size, show, False, 2, timeout=REQUEST_TIMEOUT_S
            )
            if not bars and loop.time() - asked >= REQUEST_TIMEOUT_S:
                # ib_async answers a timeout with an empty list: not "no data".
                raise HistoryError(f"IB did not answer {contract.localSymbol} history in time")
            error = self._errors.pop(bars.reqId, None)
            self._errors.clear()  # one request at a time: any other id is not ours to keep
            if error is None:
                self.pacing.answered()
                return list(bars)
            code, message = error
            if code in PACING_CODES:
                backoff = self.pacing.violated(self.calls.clock.now_ns())
                log.warning(
                    "IB pacing violation %d on %s history: waiting %.0f s",
                    code,
                    contract.localSymbol,
                    backoff,
                )
                continue
            raise HistoryError(f"IB refused {contract.localSymbol} history: {code} {message}")
