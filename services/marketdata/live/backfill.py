"""Closed candles from the exchange's REST history (``fetch_ohlcv``), page by page.

What the history returns is what the exchange says happened: a minute it has no row for had
no trades (``Continuity.confirm_empty``). The forming candle is returned too but is not a
fact: only candles whose close has passed on the session's clock are closed, and the open
time of the newest row (forming or not) tells the watchdog whether the exchange has moved on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import ccxt.pro
import msgspec

from services.marketdata.live.calls import VenueCalls
from services.marketdata.live.candles import Candle, MalformedFrame, candle_from_ccxt

PAGE_LIMIT = {"kraken": 720, "bybit": 1000, "binance": 1000, "binanceusdm": 1000}
"""Rows per ``fetch_ohlcv`` request (the exchange's maximum, or ccxt's default of 500)."""
MAX_PAGES = 200


class History(msgspec.Struct):
    """``closed`` candles in time order; ``newest_open``: open time of the newest row the
    exchange returned, forming included (0 when none); ``malformed``: one reason per
    unusable row."""

    closed: list[Candle] = msgspec.field(default_factory=list)
    newest_open: int = 0
    malformed: list[str] = msgspec.field(default_factory=list)


async def fetch_history(
    exchange: ccxt.pro.Exchange,
    calls: VenueCalls,
    symbol: str,
    timeframe: str,
    since_ns: int,
    step_ns: int,
    now: Callable[[], int],
) -> History:
    """Every candle from ``since_ns`` on the exchange returns, paged until the forming one."""
    limit = PAGE_LIMIT.get(exchange.id, 500)
    history = History()
    candles: dict[int, Candle] = {}
    since = since_ns
    for _ in range(MAX_PAGES):
        since_ms = since // 1_000_000

        async def page(since_ms: int = since_ms) -> list[Any]:
            return await exchange.fetch_ohlcv(symbol, timeframe, since_ms, limit)

        rows = await calls.call(f"fetch_ohlcv {symbol}", page)
        newest = since - step_ns
        for row in rows or ():
            try:
                candle = candle_from_ccxt(row)
            except MalformedFrame as exc:
                history.malformed.append(f"fetch_ohlcv {symbol}: {exc}")
                continue
            newest = max(newest, candle.open_ns)
            history.newest_open = max(history.newest_open, candle.open_ns)
            if candle.open_ns >= since_ns:
                candles[candle.open_ns] = candle
        now_ns = now()
        if not rows or newest + step_ns > now_ns - step_ns or newest < since:
            break  # the forming candle reached, or no progress
        since = newest + step_ns
    now_ns = now()
    history.closed = [candles[t] for t in sorted(candles) if t + step_ns <= now_ns]
    return history
