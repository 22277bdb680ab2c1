"""The simulated (paper) venue: fills orders against bars by exact, documented rules.

Which bar fills an order depends only on event times, never on when the order happened to
arrive, so a live paper session and its replay give the same fills. ``docs/fill-models.md``
states every rule with a worked example; in short:

- eligible bars: the bars of the order's venue and symbol that open at or after the order
  time, plus, for a market order in ``fill="close"`` mode, the bar that closes exactly at
  the order time (the bar the signal was decided on). With latency ``d`` (``latency_bars``
  plus a seeded per-order jitter) the order skips its first ``d`` eligible bars;
- market: ``next_open`` fills at the bar's open; ``close`` fills at the close of the bar
  that closed at the order time, else like ``next_open``;
- limit: fills when the bar's range reaches the limit (buy: low <= limit; sell: high >=
  limit), at the limit price;
- stop: triggers when the range reaches the stop, fills at the stop or at the open when the
  bar gaps through it; the unfilled part of a triggered stop is a market order;
- stop_limit: triggers like a stop, then rests as a limit at ``limit_price``; on the
  trigger bar it fills only if prices known to follow the trigger reach the limit;
- taker fills (market, stop) pay ``fee_bps`` and take slippage (``slippage_bps`` of the
  price plus ``slippage_range_frac`` of the bar's range); maker fills (limit, stop_limit)
  pay ``maker_fee_bps`` (default: ``fee_bps``) and take no slippage; every fill price is
  clamped into the bar's [low, high];
- with ``max_participation`` a bar fills at most that fraction of its volume; the rest
  keeps working (``partially_filled`` reports carry ``cum_qty``);
- IOC and FOK orders act on their first eligible bar only (IOC cancels what is unfilled,
  FOK fills completely or not at all); GTC orders wait. An order older than every bar the
  venue still keeps (the last ``history_bars`` per symbol) is rejected as stale.

With ``fill = "quote"`` quotes fill orders instead of bars (``quote_fills.py``): the venue
keeps a bounded buffer of recent quotes per market, and bars are ignored.

The per-bar path with no working order is one history append.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import operator
from typing import Annotated, Generic, Literal, TypeVar, cast

import msgspec
from msgspec import Meta

from contracts.events import Bar, Event, ExecStatus, ExecutionReport, OrderCommand, Quote
from contracts.keys import InstrumentId
from services.execution.quote_fills import (
    DUST,
    QUOTE_AGE_NS,
    QUOTES_KEPT,
    QuoteBooks,
    QuotePrices,
    QuoteRule,
)

HISTORY_MARGIN = 1024  # bars beyond the configured latency an order may still be matched to
_TRIM = 256  # a history is trimmed back once it holds this many bars more than it keeps
MAX_LATENCY_BARS = 1000


Bps = Annotated[float, Meta(ge=0, le=1000)]
LatencyBars = Annotated[int, Meta(ge=0, le=MAX_LATENCY_BARS)]


class PaperVenueConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The ``[execution]`` section of the fleet config (docs/fill-models.md): next-open
    fills, a 10 bps fee, no slippage, latency or volume limit by default. Ranges are checked
    when the config is decoded (``services/config.py``)."""

    fill: Literal["next_open", "close", "quote"] = "next_open"  # "quote": quotes fill, not bars
    fee_bps: Bps = 10.0  # taker fee: market and stop fills
    # limit and stop_limit fills; None = fee_bps; negative: a rebate
    maker_fee_bps: Annotated[float, Meta(ge=-1000, le=1000)] | None = None
    slippage_bps: Bps = 0.0
    slippage_range_frac: Annotated[float, Meta(ge=0, le=1)] = 0.0
    latency_bars: LatencyBars = 0
    latency_jitter_bars: LatencyBars = 0
    seed: int = 0
    max_participation: Annotated[float, Meta(gt=0, le=1)] | None = None


def history_bars(config: PaperVenueConfig) -> int:
    """Bars kept per market: the configured latency plus a margin for a fleet that runs
    behind its feed (a live fleet without lockstep: an order is stored, and reaches the
    venue, after the bars the feed stored meanwhile)."""
    return HISTORY_MARGIN + config.latency_bars + config.latency_jitter_bars


class _BarPrices(msgspec.Struct, array_like=True):
    """A bar's times, prices and volume as a snapshot keeps them: the history's key names
    the market, so a snapshot does not repeat it (nor the interval) for each of its bars."""

    open_time: int
    close_time: int
    open: float
    high: float
    low: float
    close: float
    volume: float


class _Pending(msgspec.Struct):
    order: OrderCommand
    venue_order_id: str
    wait: int = 0  # eligible bars still to skip (latency)
    triggered: bool = False  # stop / stop_limit: the stop has been reached
    filled: float = 0.0  # cumulative filled quantity
    rested: bool = False  # quote rule: a limit past its first working quote rests (maker)
    seen: int = 0  # quote rule: the time of the last quote given to the order


Prices = Bar | _BarPrices
"""A bar in a history: the ``Bar`` as it came (no copy on the hot path), or its prices as
restored from a snapshot. Both have the fields the fill rules read."""

P = TypeVar("P")
Q = TypeVar("Q")


class PaperVenueState(msgspec.Struct, Generic[P, Q]):
    """``PaperVenueState[Prices, list[QuotePrices]]`` while running; a snapshot stores
    ``PaperVenueState[_BarPrices, msgspec.Raw]`` (each quote buffer encoded once until it
    changes) and restores ``PaperVenueState[_BarPrices, list[QuotePrices]]``: the same
    bytes. ``quotes``: the quote buffers (``fill = "quote"``); ``dropped``: per market, the
    time of the newest quote that left its buffer."""

    bars: dict[InstrumentId, list[P]] = msgspec.field(default_factory=dict)
    pending: list[_Pending] = msgspec.field(default_factory=list)
    next_id: int = 1
    quotes: dict[InstrumentId, Q] = msgspec.field(default_factory=dict)
    dropped: dict[InstrumentId, int] = msgspec.field(default_factory=dict)


class PaperVenue:
    def __init__(self, config: PaperVenueConfig) -> None:
        self.config = config
        self.state: PaperVenueState[Prices, list[QuotePrices]] = PaperVenueState()
        self._close_mode = config.fill == "close"
        self._taker_bps = config.fee_bps
        self._maker_bps = config.fee_bps if config.maker_fee_bps is None else config.maker_fee_bps
        self._participation = config.max_participation
        self._keep = history_bars(config)
        # venue -> symbol -> the list in ``state.bars``: a bar or an order builds no key
        self._histories: dict[str, dict[str, list[Prices]]] = {}
        self._quotes: QuoteBooks[_Pending] | None = None
        if config.fill == "quote":
            rule = QuoteRule(
                config.slippage_bps,
                config.slippage_range_frac,
                config.max_participation,
                self._fill,
                self._final_fill,
                self._canceled,
            )
            self._quotes = QuoteBooks(rule)
            self._quotes.load(self.state.quotes, self.state.dropped, self.state.pending)

    def decide(self, event: Event, now: int) -> list[Event]:
        # Nearly every input is a bar: inline, one history append. An exact type test (it
        # narrows ``event``) costs less than a class pattern, so bars skip the match.
        if type(event) is Bar:
            if self._quotes is not None:
                return []  # quotes fill: bars only mark (the portfolio's business)
            try:
                history = self._histories[event.venue][event.symbol]
            except KeyError:
                history = self._history(event.venue, event.symbol)
            history.append(event)
            if len(history) >= self._keep + _TRIM:
                del history[: -self._keep]
            return self._on_bar(event) if self.state.pending else []
        if type(event) is Quote:
            return self._on_quote(event, self._quotes) if self._quotes is not None else []
        match event:
            case OrderCommand(action="new"):
                return self._on_new(event, now)
            case OrderCommand(action="cancel"):
                return self._on_cancel(event, now)
        return []

    # --- inputs ---------------------------------------------------------------------------

    def _on_new(self, order: OrderCommand, now: int) -> list[Event]:
        if any(p.order.client_order_id == order.client_order_id for p in self.state.pending):
            return [_report(order, "rejected", now, "", reason="duplicate client_order_id")]
        pending = _Pending(order, f"paper-{self.state.next_id}", wait=self.delay(order))
        self.state.next_id += 1
        reports: list[Event] = [_report(order, "accepted", now, pending.venue_order_id)]
        if self._quotes is not None:
            return self._new_on_quotes(pending, now, reports, self._quotes)
        try:
            history = self._histories[order.venue][order.symbol]
        except KeyError:
            history = []  # no bar of this market yet
        first = len(history) - self._keep  # only the kept bars count
        if first >= 0 and history[first].open_time > order.ts:
            reason = f"stale order: older than the last {self._keep} bars the venue keeps"
            reports.append(_report(order, "rejected", now, pending.venue_order_id, reason=reason))
            return reports
        # History is in time order: skip straight past bars that closed before the order (a
        # slice, not islice, which would step through every skipped bar).
        start = bisect.bisect_left(history, order.ts, lo=max(first, 0), key=_close_time)
        for bar in history[start:]:
            if self._advance(pending, bar, reports):
                return reports
        self.state.pending.append(pending)
        return reports

    def _on_cancel(self, order: OrderCommand, now: int) -> list[Event]:
        for pending in self.state.pending:
            if pending.order.client_order_id == order.client_order_id:
                self.state.pending.remove(pending)
                if self._quotes is not None:
                    self._quotes.forget(pending)
                return [
                    _report(
                        pending.order,
                        "canceled",
                        now,
                        pending.venue_order_id,
                        cum_qty=pending.filled,
                    )
                ]
        return [_report(order, "rejected", now, "", reason="cancel of an unknown order")]

    def _new_on_quotes(
        self, pending: _Pending, now: int, reports: list[Event], books: QuoteBooks[_Pending]
    ) -> list[Event]:
        """Match a new order against the buffered quotes after it, then keep it working."""
        order = pending.order
        if books.stale(order):
            reason = (
                "stale order: a quote after it has left the venue's buffer (the last "
                f"{QUOTES_KEPT} quotes or {QUOTE_AGE_NS // 10**9} s are kept)"
            )
            reports.append(_report(order, "rejected", now, pending.venue_order_id, reason=reason))
        elif not books.new_order(pending, reports):
            self.state.pending.append(pending)
        return reports

    def step_late_orders(self) -> bool:
        """Leave the buffered quotes a new order is due to ``behind``, one quote at a time,
        so the caller (the order manager) can act on each fill at its time, as it would in
        a replay. True when this venue buffers quotes (``fill = "quote"``)."""
        if self._quotes is None:
            return False
        self._quotes.catch_up = False
        return True

    def behind(self) -> tuple[int, list[Event]] | None:
        """Give the earliest buffered quote a late order has not been given yet to the late
        orders of its market; its time and the reports, or None when none is behind."""
        if self._quotes is None:
            return None
        reports: list[Event] = []
        step = self._quotes.behind(reports)
        if step is None:
            return None
        ts, done = step
        if done:
            self._finished(done)
        return ts, reports

    def _on_quote(self, quote: Quote, books: QuoteBooks[_Pending]) -> list[Event]:
        reports: list[Event] = []
        done = books.on_quote(quote, reports)
        if done:
            self._finished(done)
        return reports

    def _finished(self, done: list[_Pending]) -> None:
        self.state.pending = [p for p in self.state.pending if not any(p is d for d in done)]

    def _on_bar(self, bar: Bar) -> list[Event]:
        """Advance the working orders of the bar's market (the bar is already in history)."""
        pending = self.state.pending
        reports: list[Event] = []
        done: list[_Pending] = []
        for working in pending:
            order = working.order
            if (
                order.symbol == bar.symbol
                and order.venue == bar.venue
                and self._advance(working, bar, reports)
            ):
                done.append(working)
        if done:
            self.state.pending = [p for p in pending if not any(p is d for d in done)]
        return reports

    # --- rules ----------------------------------------------------------------------------

    def delay(self, order: OrderCommand) -> int:
        """Eligible bars the order skips: ``latency_bars`` plus its seeded jitter.

        The jitter is ``int.from_bytes(sha256(f"{seed}:{client_order_id}")[:8], "big") %
        (latency_jitter_bars + 1)``: a function of the seed and the order id only, so it does
        not depend on which orders came before or on the Python process.
        """
        span = self.config.latency_jitter_bars
        if not span:
            return self.config.latency_bars
        digest = hashlib.sha256(f"{self.config.seed}:{order.client_order_id}".encode()).digest()
        return self.config.latency_bars + int.from_bytes(digest[:8], "big") % (span + 1)

    def _advance(self, pending: _Pending, bar: Prices, out: list[Event]) -> bool:
        """Give one bar of the order's symbol to a working order, appending its reports to
        ``out``; True when the order is done (filled or canceled).

        Report times are the bar's close, whichever input (order or bar) came last.
        """
        order = pending.order
        if bar.open_time < order.ts and not (
            self._close_mode and bar.close_time == order.ts and order.order_type == "market"
        ):
            return False  # not eligible: the bar is before the order
        if pending.wait:
            pending.wait -= 1  # latency: the order has not reached the venue yet
            return False
        now = bar.close_time
        price = self._price(pending, bar)
        tif = order.time_in_force
        if price is None:
            if tif == "GTC":
                return False
            out.append(self._canceled(pending, now, "not fillable"))
            return True
        participation = self._participation
        remaining = order.qty - pending.filled
        # A remainder within DUST of the order quantity is not left working as float dust.
        if participation is None or participation * bar.volume >= remaining - DUST * order.qty:
            out.append(self._final_fill(pending, price, now))
            return True
        if tif == "FOK":
            out.append(self._canceled(pending, now, "FOK: the bar's volume cannot fill it all"))
            return True
        qty = participation * bar.volume
        if qty > 0:
            pending.filled += qty
            out.append(self._fill(pending, "partially_filled", price, qty, pending.filled, now))
        if tif == "IOC":
            reason = "IOC: unfilled remainder canceled" if qty > 0 else "no volume on the bar"
            out.append(self._canceled(pending, now, reason))
            return True
        return False

    def _price(self, pending: _Pending, bar: Prices) -> float | None:
        """The price this bar fills the order at (slipped and clamped), or None."""
        order = pending.order
        kind = order.order_type
        buy = order.side == "buy"
        if kind == "market" or (kind == "stop" and pending.triggered):
            at_close = self._close_mode and kind == "market" and bar.close_time == order.ts
            return self._taker_price(bar.close if at_close else bar.open, buy, bar)
        limit = order.limit_price or 0.0
        if kind == "limit" or pending.triggered:  # a limit, or a triggered stop_limit
            if bar.low <= limit if buy else bar.high >= limit:
                # marketable at the open: the open (no worse than the limit); else the limit
                return min(limit, bar.open) if buy else max(limit, bar.open)
            return None
        stop = order.stop_price or 0.0
        if buy:
            if bar.high < stop:
                return None
            gap = bar.open >= stop
        else:
            if bar.low > stop:
                return None
            gap = bar.open <= stop
        pending.triggered = True
        if kind == "stop":
            return self._taker_price(max(bar.open, stop) if buy else min(bar.open, stop), buy, bar)
        # stop_limit on its trigger bar: only prices known to follow the trigger count; that
        # is the whole bar when it opened through the stop, else the stop price alone.
        # The limit then works like any limit from that first price (the open, or the stop).
        first = bar.open if gap else stop
        if gap:
            reached = bar.low <= limit if buy else bar.high >= limit
        else:
            reached = stop <= limit if buy else stop >= limit
        if not reached:
            return None
        return min(limit, first) if buy else max(limit, first)

    def _taker_price(self, price: float, buy: bool, bar: Prices) -> float:
        sign = 1.0 if buy else -1.0
        price *= 1.0 + sign * self.config.slippage_bps / 10_000.0
        frac = self.config.slippage_range_frac
        if frac:
            price += sign * frac * (bar.high - bar.low)
        return _clamp(price, bar)

    def _final_fill(
        self, pending: _Pending, price: float, now: int, taker: bool | None = None
    ) -> ExecutionReport:
        order = pending.order
        filled = pending.filled
        qty = order.qty
        if filled:
            qty -= filled
            # Keep the sum of fill_qty (accumulated in report order) within order.qty.
            while filled + qty > order.qty:
                qty = math.nextafter(qty, 0.0)
        pending.filled = order.qty
        return self._fill(pending, "filled", price, qty, order.qty, now, taker)

    def _fill(
        self,
        pending: _Pending,
        status: ExecStatus,
        price: float,
        qty: float,
        cum_qty: float,
        now: int,
        taker: bool | None = None,
    ) -> ExecutionReport:
        """``taker`` None: by order type (market and stop take, limits make: the bar rule)."""
        order = pending.order
        if taker is None:
            taker = order.order_type == "market" or order.order_type == "stop"
        fee = price * qty * (self._taker_bps if taker else self._maker_bps) / 10_000.0
        return _report(
            order,
            status,
            now,
            pending.venue_order_id,
            fill_price=price,
            fill_qty=qty,
            cum_qty=cum_qty,
            fee=fee,
        )

    def _canceled(self, pending: _Pending, now: int, reason: str) -> ExecutionReport:
        return _report(
            pending.order,
            "canceled",
            now,
            pending.venue_order_id,
            cum_qty=pending.filled,
            reason=reason,
        )

    def snapshot(self) -> bytes:
        state = self.state
        bars = {key: [_compact(bar) for bar in history] for key, history in state.bars.items()}
        quotes = self._quotes.encoded() if self._quotes is not None else {}
        return msgspec.msgpack.encode(
            PaperVenueState(bars, state.pending, state.next_id, quotes, state.dropped)
        )

    def restore(self, data: bytes) -> None:
        """Strict: bytes that are not this layout raise, and nothing changes."""
        restored = msgspec.msgpack.decode(data, type=PaperVenueState[_BarPrices, list[QuotePrices]])
        self.state = cast(PaperVenueState[Prices, list[QuotePrices]], restored)
        self._histories.clear()
        for market, history in self.state.bars.items():
            self._histories.setdefault(market.venue, {})[market.symbol] = history
        if self._quotes is not None:
            self._quotes.load(self.state.quotes, self.state.dropped, self.state.pending)

    def _history(self, venue: str, symbol: str) -> list[Prices]:
        history = self.state.bars.setdefault(InstrumentId(venue, symbol), [])
        self._histories.setdefault(venue, {})[symbol] = history
        return history


def _compact(bar: Prices) -> _BarPrices:
    if isinstance(bar, _BarPrices):
        return bar
    return _BarPrices(
        bar.open_time, bar.close_time, bar.open, bar.high, bar.low, bar.close, bar.volume
    )


def _clamp(price: float, bar: Prices) -> float:
    """Clamp a fill price into the range the bar traded."""
    if price > bar.high:
        return bar.high
    if price < bar.low:
        return bar.low
    return price


def _report(
    order: OrderCommand,
    status: ExecStatus,
    now: int,
    venue_order_id: str,
    fill_price: float = 0.0,
    fill_qty: float = 0.0,
    cum_qty: float = 0.0,
    fee: float = 0.0,
    reason: str = "",
) -> ExecutionReport:
    return ExecutionReport(
        ts=now,
        status=status,
        client_order_id=order.client_order_id,
        strategy=order.strategy,
        venue=order.venue,
        symbol=order.symbol,
        side=order.side,
        order_qty=order.qty,
        venue_order_id=venue_order_id,
        fill_price=fill_price,
        fill_qty=fill_qty,
        cum_qty=cum_qty,
        fee=fee,
        model_tag=order.model_tag,
        reason=reason,
    )


_close_time = operator.attrgetter("close_time")
