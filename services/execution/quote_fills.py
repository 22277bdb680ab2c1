"""Paper fills from quotes (``[execution] fill = "quote"``): the quote buffer and the rules.

An order fills at the first quote of its venue and symbol whose exchange time is strictly
after the order's time, whether that quote reached the venue before or after the order: the
venue keeps the recent quotes of every market, so an order that arrives late (quotes stream
while it is being decided) is matched against the quotes it missed, exactly as a replay fed
in event-time order matches it. ``docs/fill-models.md`` (section 9) states every rule with a
worked example; in short:

- market: buy at the ask, sell at the bid, plus ``slippage_bps`` of that price and
  ``slippage_range_frac`` of the spread (taker);
- limit: marketable on its first working quote (buy: ask <= limit; sell: bid >= limit)
  fills at the ask / bid as a taker; otherwise it rests and fills at its limit, as a maker,
  on a later quote that crosses it;
- stop / stop_limit: trigger on the side that would trade (buy: ask >= stop; sell:
  bid <= stop), then act as a market / limit order on the trigger quote;
- ``max_participation``: at most that fraction of the quote's size on the side the order
  meets (a size of 0: the feed gave none, no cap); the rest keeps working;
- IOC / FOK act on the first working quote only; latency skips whole quotes; a quote past
  the order's ``expire_at`` does not reach it.
"""

from __future__ import annotations

import bisect
import operator
from collections.abc import Callable
from typing import Generic, NamedTuple, Protocol, TypeVar

import msgspec

from contracts.events import Event, ExecStatus, ExecutionReport, OrderCommand, Quote

QUOTES_KEPT = 256  # at least the last this many quotes per market are kept...
QUOTE_AGE_NS = 60_000_000_000  # ...and every quote within this much exchange time of the newest
QUOTE_CAP = 4096  # but never more than this (plus a trim batch): memory stays bounded
_QUOTE_TRIM = 64  # quotes are dropped in batches of at least this many
# relative: a bar or quote that can fill all but this fraction of the order fills it all
DUST = 1e-9


class QuotePrices(msgspec.Struct, array_like=True):
    """A quote as a snapshot keeps it: the buffer's key names the market."""

    ts: int
    bid: float
    ask: float
    bid_size: float
    ask_size: float


Quoted = Quote | QuotePrices
"""A quote in a buffer: the ``Quote`` as it came, or its prices restored from a snapshot."""


def compact(quote: Quoted) -> QuotePrices:
    if isinstance(quote, QuotePrices):
        return quote
    return QuotePrices(quote.ts, quote.bid, quote.ask, quote.bid_size, quote.ask_size)


def keep(history: list[Quoted]) -> int:
    """Trim a market's buffer after an append. Keeps whichever is more of the last
    ``QUOTES_KEPT`` quotes and the quotes within ``QUOTE_AGE_NS`` of the newest, at most
    ``QUOTE_CAP``; returns the time of the newest quote dropped (0: none dropped). What is
    dropped depends on the quotes alone, never on orders or on when they arrived."""
    n = len(history)
    if n < QUOTES_KEPT + _QUOTE_TRIM:
        return 0
    aged = bisect.bisect_left(history, history[-1].ts - QUOTE_AGE_NS, key=_ts)
    cut = max(min(n - QUOTES_KEPT, aged), n - QUOTE_CAP)
    if cut < _QUOTE_TRIM:
        return 0
    dropped = history[cut - 1].ts
    del history[:cut]
    return dropped


def first_after(history: list[Quoted], ts: int) -> int:
    """Index of the first quote strictly after ``ts`` (the buffer is in time order)."""
    return bisect.bisect_right(history, ts, key=_ts)


class Working(Protocol):
    """What the rules read and move of a working order (the venue's ``_Pending``)."""

    order: OrderCommand
    venue_order_id: str
    wait: int
    triggered: bool
    filled: float
    rested: bool
    seen: int


W = TypeVar("W", bound=Working)


def next_behind(
    working: list[W], books: dict[str, dict[str, list[Quoted]]]
) -> tuple[Quoted, OrderCommand] | None:
    """The earliest buffered quote that a working order is due but has not been given yet
    (one after its time and after the last quote it was given), with that order; or None.
    Ties between markets go to the order that has worked longest."""
    best: tuple[Quoted, OrderCommand] | None = None
    for pending in working:
        order = pending.order
        history = books.get(order.venue, {}).get(order.symbol)
        if not history:
            continue
        i = first_after(history, max(order.ts, pending.seen))
        if i < len(history) and (best is None or history[i].ts < best[0].ts):
            best = history[i], order
    return best


class QuoteFill(NamedTuple):
    price: float
    taker: bool
    size: float  # the quote's size on the side the order meets; 0 = not given


class QuoteRule(Generic[W]):
    """The quote rule of one venue config; the venue gives it its report builders."""

    def __init__(
        self,
        slippage_bps: float,
        slippage_range_frac: float,
        max_participation: float | None,
        fill: Callable[[W, ExecStatus, float, float, float, int, bool], ExecutionReport],
        final_fill: Callable[[W, float, int, bool], ExecutionReport],
        canceled: Callable[[W, int, str], ExecutionReport],
    ) -> None:
        self._slip = slippage_bps / 10_000.0
        self._spread_frac = slippage_range_frac
        self._participation = max_participation
        self._fill = fill
        self._final_fill = final_fill
        self._canceled = canceled

    def advance(self, pending: W, quote: Quoted, out: list[Event]) -> bool:
        """Give one quote to a working order, appending its reports to ``out``; True when
        the order is done. Reports carry the quote's time."""
        order = pending.order
        ts = quote.ts
        if ts <= order.ts or ts <= pending.seen:
            return False  # not after the order, or given to it already
        pending.seen = ts
        expire = order.expire_at
        if expire and ts > expire:
            return False  # past its good-till date: the order manager expires it on a bar
        if pending.wait:
            pending.wait -= 1  # latency: the order has not reached the venue yet
            return False
        now = ts
        fill = self.price(pending, quote)
        if order.order_type == "limit" or pending.triggered:
            pending.rested = True  # a limit still open after this quote rests on the book
        tif = order.time_in_force
        if fill is None:
            if tif == "GTC":
                return False
            out.append(self._canceled(pending, now, "not fillable"))
            return True
        price, taker, size = fill
        remaining = order.qty - pending.filled
        cap = self._participation * size if self._participation is not None and size else None
        if cap is None or cap >= remaining - DUST * order.qty:
            out.append(self._final_fill(pending, price, now, taker))
            return True
        if tif == "FOK":
            out.append(self._canceled(pending, now, "FOK: the quote's size cannot fill it all"))
            return True
        pending.filled += cap
        out.append(self._fill(pending, "partially_filled", price, cap, pending.filled, now, taker))
        if tif == "IOC":
            out.append(self._canceled(pending, now, "IOC: unfilled remainder canceled"))
            return True
        return False

    def price(self, pending: W, quote: Quoted) -> QuoteFill | None:
        """The price, fee side and size this quote fills the order at, or None."""
        order = pending.order
        kind = order.order_type
        buy = order.side == "buy"
        touch = quote.ask if buy else quote.bid
        size = quote.ask_size if buy else quote.bid_size
        if (kind == "stop" or kind == "stop_limit") and not pending.triggered:
            stop = order.stop_price or 0.0
            if touch < stop if buy else touch > stop:
                return None
            pending.triggered = True
        if kind == "market" or kind == "stop":
            sign = 1.0 if buy else -1.0
            slipped = touch * (1.0 + sign * self._slip)
            if self._spread_frac:
                slipped += sign * self._spread_frac * (quote.ask - quote.bid)
            return QuoteFill(slipped, True, size)
        limit = order.limit_price or 0.0
        if touch > limit if buy else touch < limit:
            return None
        if pending.rested:
            return QuoteFill(limit, False, size)  # crossed while resting: maker at the limit
        return QuoteFill(touch, True, size)  # marketable on arrival (or trigger): taker


_ts = operator.attrgetter("ts")
