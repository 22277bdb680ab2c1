"""What of the quote and trade streams is published (and therefore what replays).

Quotes are thinned by exchange time, never by the wall clock, so the decision depends only
on the frames: a quote is published when its bid or ask changed, it is later than the last
one published, and (with a rate) at least ``1 / per_s`` seconds of exchange time after it.
Trades are published once each, in time order.
"""

from __future__ import annotations

_S = 1_000_000_000


class QuoteThrottle:
    """Per symbol, the last admitted quote; ``per_s`` = 0 admits every change."""

    def __init__(self, per_s: float) -> None:
        if not per_s >= 0:
            raise ValueError("per_s must be >= 0")
        self.per_s = per_s
        self.gap_ns = round(_S / per_s) if per_s > 0 else 0
        self._last: dict[str, tuple[int, float, float]] = {}
        self.dropped = 0

    def admit(self, symbol: str, ts_ns: int, bid: float, ask: float) -> bool:
        last = self._last.get(symbol)
        if last is not None:
            last_ts, last_bid, last_ask = last
            if (
                ts_ns <= last_ts
                or (bid == last_bid and ask == last_ask)
                or ts_ns - last_ts < self.gap_ns
            ):
                self.dropped += 1
                return False
        self._last[symbol] = (ts_ns, bid, ask)
        return True


class TradeFilter:
    """Per symbol, the time of the newest admitted trade and the ids admitted at that time:
    a trade older than it, or an id already admitted at it, is a repeat (a re-sent frame, a
    reconnect replaying its cache). Trades without an id cannot be told apart and pass when
    not older. Memory stays at the ids of one timestamp per symbol."""

    def __init__(self) -> None:
        self._newest: dict[str, tuple[int, set[str]]] = {}
        self.dropped = 0

    def admit(self, symbol: str, trade_id: str, ts_ns: int) -> bool:
        newest = self._newest.get(symbol)
        if newest is None or ts_ns > newest[0]:
            self._newest[symbol] = (ts_ns, {trade_id} if trade_id else set())
            return True
        newest_ts, ids = newest
        if ts_ns < newest_ts or (trade_id and trade_id in ids):
            self.dropped += 1
            return False
        if trade_id:
            ids.add(trade_id)
        return True
