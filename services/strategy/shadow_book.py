"""A variant's shadow book for one market: its would-be signals filled by the paper venue's
rules, marked at each bar's close, so every variant is measured on every opportunity.

Fills follow ``services/execution/paper_venue.py`` for a market order (what a target
signal becomes): with ``fill = "next_open"`` (and ``"quote"``: a shadow book sees bars
only) a signal decided on a bar fills at the next bar's open; with ``fill = "close"`` at the
close of the bar it was decided on. ``latency_bars`` skips that many eligible bars first.
The price is slipped like a taker fill (``slippage_bps`` of the price plus
``slippage_range_frac`` of the filling bar's range, against the order) and clamped into
that bar's [low, high]; the fee is ``fee_bps`` of the filled notional. Shadow fills are
whole (no ``max_participation``) and take no latency jitter (it is seeded by the real
order's id): the book compares the models' decisions, not the venue's luck.

Returns are fractions of notional:
- a step's return is the book's equity change over the step (cash plus position at the
  close, fees and slippage included) divided by the notional held at the step's start
  (``|position| * previous close``), or, when it started flat, by the notional the step's
  fill committed (``|qty| * fill price``); 0 when flat throughout;
- a trade runs from leaving flat to reaching flat again (a flip closes one trade and opens
  the next, the fill's fee split by quantity); its return is its net PnL (both fills' fees
  and slippage included) divided by its entry notional (the sum of ``|qty| * price`` of the
  fills that grew the position).
"""

from __future__ import annotations

import msgspec


class FillRules(msgspec.Struct, frozen=True):
    """The paper venue's rules a shadow fill follows (``[execution]``)."""

    at_close: bool = False  # fill = "close"
    fee_bps: float = 10.0
    slippage_bps: float = 0.0
    slippage_range_frac: float = 0.0
    latency_bars: int = 0


class Book(msgspec.Struct, array_like=True):
    """One variant's shadow account in one market; ``cash`` starts at 0 (only changes
    count), ``mark`` is the last close (0: no bar yet)."""

    position: float = 0.0
    cash: float = 0.0
    mark: float = 0.0
    target: float | None = None  # a shadow order waiting for its bar
    wait: int = 0  # eligible bars still to skip (latency)
    trade_start: float = 0.0  # cash when the open trade left flat
    trade_notional: float = 0.0  # entry notional of the open trade


class Step(msgspec.Struct, frozen=True):
    position: float
    step_return: float
    trade_return: float | None


def base_position(book: Book) -> float:
    """What a side-and-size signal moves from: the waiting order's target, else the position."""
    return book.position if book.target is None else book.target


def place(book: Book, target: float, rules: FillRules) -> None:
    """A shadow order decided off its market's bars (another market's bar, an external
    event): it waits for the market's next bar, like a market order at the paper venue."""
    book.target = target
    book.wait = rules.latency_bars


def step(
    book: Book,
    bar: tuple[float, float, float, float],
    ordered: float | None,
    rules: FillRules,
) -> Step:
    """One bar (open, high, low, close) of the book's market and the target the variant
    decided on it (None: no signal): fill what is due at the open, place the new order (at
    once at the close with ``at_close`` and no latency), mark at the close, and say the
    step's and any closed trade's return."""
    open_, high, low, close = bar
    start_notional = abs(book.position) * book.mark
    start_equity = book.cash + book.position * book.mark
    committed, closed = 0.0, None
    if book.target is not None:
        if book.wait > 0:
            book.wait -= 1
        else:
            target, book.target = book.target, None
            committed, closed = fill(book, target, open_, high, low, rules)
    if ordered is not None:
        if rules.at_close and rules.latency_bars == 0:  # then nothing ever waits
            committed, closed = fill(book, ordered, close, high, low, rules)
        else:  # the signal's bar counts as the first eligible one when filling at the close
            book.target = ordered
            book.wait = rules.latency_bars - 1 if rules.at_close else rules.latency_bars
    book.mark = close
    pnl = book.cash + book.position * close - start_equity
    base = start_notional or committed
    return Step(book.position, pnl / base if base > 0 else 0.0, closed)


def fill(
    book: Book, target: float, price: float, high: float, low: float, rules: FillRules
) -> tuple[float, float | None]:
    """Move the book to ``target`` at ``price`` slipped and clamped like a taker fill: the
    notional it opened and, when it reached flat or flipped, the closed trade's return."""
    qty = target - book.position
    if qty == 0:
        return 0.0, None
    sign = 1.0 if qty > 0 else -1.0
    price *= 1.0 + sign * rules.slippage_bps / 10_000.0
    if rules.slippage_range_frac:
        price += sign * rules.slippage_range_frac * (high - low)
    price = min(max(price, low), high)
    fee = abs(qty) * price * rules.fee_bps / 10_000.0
    position, closed = book.position, None
    if position and (target == 0 or (target > 0) != (position > 0)):
        closing_fee = fee * abs(position) / abs(qty)
        book.cash += position * price - closing_fee
        fee -= closing_fee
        if book.trade_notional > 0:
            closed = (book.cash - book.trade_start) / book.trade_notional
        book.position = position = 0.0
        qty = target
    if not position:
        book.trade_start, book.trade_notional = book.cash, 0.0
    opened = abs(qty) * price if abs(target) > abs(position) else 0.0
    book.trade_notional += opened
    book.cash -= qty * price + fee
    book.position = target
    return opened, closed
