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
from contracts.keys import InstrumentId

# An order reaches the venue milliseconds after its bar; these bounds cover that many times
# over and keep a snapshot of hundreds of markets far under the server's payload limit.
QUOTES_KEPT = 32  # at least the last this many quotes per market are kept...
QUOTE_AGE_NS = 10_000_000_000  # ...and every quote within this much exchange time of the newest
QUOTE_CAP = 512  # but never more than this (plus a trim batch): memory stays bounded
_QUOTE_TRIM = 16  # quotes are dropped in batches of at least this many
# relative: a bar or quote that can fill all but this fraction of the order fills it all
DUST = 1e-9


class QuotePrices(msgspec.Struct, array_like=True, gc=False):
    """A quote as the buffer and its snapshot keep it: the buffer's key names the market,
    so the snapshot needs no conversion."""

    ts: int
    bid: float
    ask: float
    bid_size: float
    ask_size: float


def compact(quote: Quote) -> QuotePrices:
    return QuotePrices(quote.ts, quote.bid, quote.ask, quote.bid_size, quote.ask_size)


def keep(history: list[QuotePrices]) -> int:
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


def first_after(history: list[QuotePrices], ts: int) -> int:
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

    def advance(self, pending: W, quote: QuotePrices, out: list[Event]) -> bool:
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

    def price(self, pending: W, quote: QuotePrices) -> QuoteFill | None:
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


class QuoteBooks(Generic[W]):
    """The quote side of a paper venue: each market's buffer (the lists and the drop times
    live in the venue's state, for its snapshot), the working orders of each market, and
    the orders that reached the venue after quotes past their time (late orders)."""

    def __init__(self, rule: QuoteRule[W]) -> None:
        self.rule = rule
        self.catch_up = True  # a new order is matched against the buffer at once
        self._quotes: dict[InstrumentId, list[QuotePrices]] = {}
        self._dropped: dict[InstrumentId, int] = {}
        self._books: dict[str, dict[str, list[QuotePrices]]] = {}
        self._working: dict[str, dict[str, list[W]]] = {}
        self._late: list[W] = []
        self._encoded: dict[InstrumentId, msgspec.Raw] = {}  # buffers unchanged since encoded

    def load(
        self,
        quotes: dict[InstrumentId, list[QuotePrices]],
        dropped: dict[InstrumentId, int],
        pending: list[W],
    ) -> None:
        """Index the venue's state (a new one, or one just restored)."""
        self._quotes, self._dropped = quotes, dropped
        self._books = {}
        for market, history in quotes.items():
            self._books.setdefault(market.venue, {})[market.symbol] = history
        self._working = {}
        for working in pending:
            self._listed(working).append(working)
        self._late = []
        self._encoded = {}

    def encoded(self) -> dict[InstrumentId, msgspec.Raw]:
        """Every buffer as msgpack, for the venue's snapshot (taken after every batch): a
        buffer no quote has changed since the last snapshot is not encoded again."""
        cache = self._encoded
        out: dict[InstrumentId, msgspec.Raw] = {}
        for market, history in self._quotes.items():
            raw = cache.get(market)
            if raw is None:
                raw = cache[market] = msgspec.Raw(msgspec.msgpack.encode(history))
            out[market] = raw
        return out

    def stale(self, order: OrderCommand) -> bool:
        """Whether a quote after the order has already left its market's buffer."""
        return self._dropped.get(InstrumentId(order.venue, order.symbol), 0) > order.ts

    def new_order(self, pending: W, out: list[Event]) -> bool:
        """Match a new order against the buffered quotes after it, or, when the caller steps
        through them (``catch_up`` off), note it as late; True when it is done."""
        order = pending.order
        history = self._books.get(order.venue, {}).get(order.symbol)
        if history:
            start = first_after(history, order.ts)
            if start < len(history) and not self.catch_up:
                self._late.append(pending)
            elif start < len(history):
                advance = self.rule.advance
                for quote in history[start:]:
                    if advance(pending, quote, out):
                        return True
        self._listed(pending).append(pending)
        return False

    def on_quote(self, quote: Quote, out: list[Event]) -> list[W]:
        """Buffer a quote and give it to the working orders of its market; the orders it
        finished. A quote not after the newest one kept (a redelivery after a restart) was
        already judged."""
        try:
            history = self._books[quote.venue][quote.symbol]
        except KeyError:
            history = self._books.setdefault(quote.venue, {})[quote.symbol] = []
            self._quotes[InstrumentId(quote.venue, quote.symbol)] = history
        if history and quote.ts <= history[-1].ts:
            return []
        prices = compact(quote)
        history.append(prices)
        market = InstrumentId(quote.venue, quote.symbol)
        self._encoded.pop(market, None)
        dropped = keep(history)
        if dropped:
            self._dropped[market] = dropped
        working = self._working.get(quote.venue, {}).get(quote.symbol)
        return self._give(prices, list(working), out) if working else []

    def behind(self, out: list[Event]) -> tuple[int, list[W]] | None:
        """Give the earliest buffered quote a late order has not been given yet to the late
        orders of its market: its time and the orders it finished; None when no order is
        behind any more."""
        best: tuple[QuotePrices, OrderCommand] | None = None
        late = self._late
        for pending in late:
            order = pending.order
            if not any(w is pending for w in self._listed(pending)):
                continue  # done, or canceled
            history = self._books[order.venue][order.symbol]
            i = first_after(history, max(order.ts, pending.seen))
            if i < len(history) and (best is None or history[i].ts < best[0].ts):
                best = history[i], order
        if best is None:
            late.clear()
            return None
        quote, first = best
        due = [
            p
            for p in late
            if p.order.venue == first.venue
            and p.order.symbol == first.symbol
            and any(w is p for w in self._listed(p))
        ]
        return quote.ts, self._give(quote, due, out)

    def forget(self, pending: W) -> None:
        """A working order is done or canceled."""
        listed = self._listed(pending)
        for i, working in enumerate(listed):
            if working is pending:
                del listed[i]
                return

    def _give(self, quote: QuotePrices, orders: list[W], out: list[Event]) -> list[W]:
        advance = self.rule.advance
        done: list[W] = []
        for working in orders:
            if advance(working, quote, out):
                done.append(working)
                self.forget(working)
        return done

    def _listed(self, pending: W) -> list[W]:
        order = pending.order
        return self._working.setdefault(order.venue, {}).setdefault(order.symbol, [])


_ts = operator.attrgetter("ts")
