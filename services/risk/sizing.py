"""Position sizing: how many base units one unit of a signal is, and the venue's rounding.

A signal's ``target_position`` (or ``size``) counts *units*; with ``mode = "signal"`` a unit
is one base unit (the signal's number is the quantity). Otherwise one unit is:

| mode | one unit (base units) |
|---|---|
| ``fixed_qty`` | ``qty`` |
| ``fixed_notional`` | ``notional / price`` |
| ``pct_equity`` | ``equity * pct / 100 / price`` |
| ``turtle`` | ``equity * risk_pct / 100 / (ATR * atr_multiple)`` (ATR from ``Signal.atr``) |
| ``vol_target`` | ``equity * target_vol_pct / 100 / (sigma_annual * price)`` |

``sigma_annual`` is the standard deviation (ddof 1) of the last ``vol_window`` close-to-close
returns times ``sqrt(periods_per_year)`` (the rule's, else the bars' interval's; a bar
interval that does not parse cannot be sized). ``Sizer`` remembers what a target was sized
to and scales sized orders down to the caps. Quantities are then rounded toward zero to the
instrument's lot size; prices to its tick size (``round_price``).
"""

from __future__ import annotations

import math

import msgspec

from contracts.events import OrderCommand, Signal
from contracts.intervals import Interval, IntervalError
from contracts.keys import BookId, InstrumentId
from services.risk.book import EPS, Book
from services.risk.limits import RiskLimits, SizingRule
from services.risk.state import RiskState


def split_symbol(symbol: str) -> tuple[str, str, bool]:
    """``BTC/USDT`` -> (BTC, USDT, spot); ``BTC/USDT:USDT`` -> (BTC, USDT, perpetual);
    anything else -> (symbol, "", spot)."""
    base, slash, rest = symbol.partition("/")
    if not slash:
        return symbol, "", False
    quote, colon, _settle = rest.partition(":")
    return base, quote, bool(colon)


def stdev(values: list[float]) -> float:
    n = len(values)
    if n < 2:
        return 0.0
    mean = math.fsum(values) / n
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def unit_qty(
    rule: SizingRule,
    price: float | None,
    equity: float | None,
    atr: float | None,
    returns: list[float] | None,
    interval: str,
) -> tuple[float, str]:
    """One unit in base units, or (0, why it cannot be sized)."""
    mode = rule.mode
    if mode == "signal":
        return 1.0, ""
    if mode == "fixed_qty":
        return rule.qty or 0.0, ""
    if mode == "turtle":  # needs no price: the ATR is the risk per unit
        if equity is None or equity <= 0:
            return 0.0, _no_equity(equity)
        if atr is None or not atr > 0:
            return 0.0, "the signal carries no ATR (atr) for N-unit sizing"
        risk = equity * rule.risk_pct / 100.0
        return risk / (atr * rule.atr_multiple), ""
    if not price:
        return 0.0, "no price seen yet"
    if mode == "fixed_notional":
        return (rule.notional or 0.0) / price, ""
    if equity is None or equity <= 0:
        return 0.0, _no_equity(equity)
    if mode == "pct_equity":
        return equity * (rule.pct or 0.0) / 100.0 / price, ""
    # vol_target
    window = (returns or [])[-rule.vol_window :]
    if len(window) < rule.vol_window:
        return 0.0, f"{len(window)} returns seen, vol_window needs {rule.vol_window}"
    per_year = rule.periods_per_year
    if per_year is None:
        try:
            per_year = Interval.parse(interval, "bar interval").periods_per_year
        except IntervalError as exc:
            return 0.0, f"{exc}; set [sizing] periods_per_year"
    sigma = stdev(window) * math.sqrt(per_year)
    if not sigma > 0:
        return 0.0, "volatility is 0"
    return equity * (rule.target_vol_pct or 0.0) / 100.0 / (sigma * price), ""


def _no_equity(equity: float | None) -> str:
    return "no equity snapshot yet" if equity is None else f"equity {equity:.2f} <= 0"


def round_qty(qty: float, lot: float) -> float:
    """``qty`` (>= 0) rounded toward zero to a multiple of ``lot`` (0 = no rounding)."""
    if lot <= 0:
        return qty
    steps = math.floor(qty / lot + 1e-9)
    return _clean(steps * lot, lot)


def round_price(price: float, tick: float, up: bool) -> float:
    """``price`` rounded to the tick grid, up or down (0 = no rounding)."""
    if tick <= 0:
        return price
    ratio = price / tick
    steps = math.ceil(ratio - 1e-9) if up else math.floor(ratio + 1e-9)
    return _clean(steps * tick, tick)


def _clean(value: float, step: float) -> float:
    """Drop the binary noise of ``steps * step`` (0.1 * 3 -> 0.3)."""
    decimals = max(0, -math.floor(math.log10(step)) + 6)
    return round(value, decimals)


class Sizer:
    """A signal's units in base units for one book: the unit of its rule (from the price,
    the equity, the signal's ATR or the market's returns), what a target was sized to
    before, and the caps a sized order is scaled down to."""

    def __init__(self, state: RiskState, book: Book, limits: RiskLimits) -> None:
        self.state = state
        self.book = book
        self.limits = limits

    def unit(
        self, market: InstrumentId, signal: Signal, rule: SizingRule, price: float | None
    ) -> tuple[float, str]:
        track = self.state.equity
        series = self.state.returns.get(market)
        return unit_qty(
            rule,
            price,
            track.equity if track is not None else None,
            signal.atr,
            series.rets if series is not None else None,
            series.interval if series is not None else "",
        )

    def target(
        self,
        book: BookId,
        signal: Signal,
        units: float,
        rule: SizingRule,
        price: float | None,
    ) -> tuple[float | None, str]:
        """The quantity of a target of ``units``. A repeated target keeps the quantity it
        was sized to; a smaller one on the same side scales it down proportionally; a larger
        one adds the new units at today's unit size (pyramiding); anything else is sized
        afresh. None and why when a unit cannot be sized."""
        if not units:
            return 0.0, ""
        last = self.state.sized.get(book)
        if last is not None:
            last_units, last_qty = last
            if units == last_units:
                return last_qty, ""
            if (units > 0) == (last_units > 0):
                if abs(units) < abs(last_units):
                    return last_qty * units / last_units, ""
                unit, why = self.unit(book.instrument, signal, rule, price)
                if not unit:
                    return None, why
                return last_qty + (units - last_units) * unit, ""
        unit, why = self.unit(book.instrument, signal, rule, price)
        if not unit:
            return None, why
        return units * unit, ""

    def remember(self, book: BookId, units: float, qty: float) -> None:
        """The target a sized order was placed for (0 units: none any more)."""
        if units:
            self.state.sized[book] = [units, qty]
        else:
            self.state.sized.pop(book, None)

    def capped(
        self, market: InstrumentId, delta: float, before: float, price: float | None
    ) -> float:
        """A sized order scaled down to fit the quantity and exposure caps (an order that
        grows exposure only); the rails still run on the result."""
        after = before + delta
        if abs(after) <= abs(before) + EPS:
            return delta
        lim = self.limits
        room = math.inf  # the largest |after| the caps allow
        if lim.max_position is not None:
            room = lim.max_position
        if price:
            if lim.max_symbol_exposure is not None:
                room = min(room, lim.max_symbol_exposure / price)
            if lim.max_venue_exposure is not None or lim.max_total_exposure is not None:
                venue_gross, total_gross = self.book.gross(market.venue)
                held = abs(before) * price
                if lim.max_venue_exposure is not None:
                    room = min(room, (lim.max_venue_exposure - venue_gross + held) / price)
                if lim.max_total_exposure is not None:
                    room = min(room, (lim.max_total_exposure - total_gross + held) / price)
        largest = (
            room - abs(before) if (after > 0) == (before > 0) or not before else room + abs(before)
        )
        if price and lim.max_order_notional is not None:
            largest = min(largest, lim.max_order_notional / price)
        if largest <= 1e-9 * max(1.0, abs(before), abs(delta)):
            return delta  # no room (rounding dust aside): let the rail reject it with its numbers
        if abs(delta) > largest:
            return math.copysign(largest, delta)
        return delta


def bracket(order: OrderCommand, signal: Signal, tick: float) -> OrderCommand:
    """An entry carrying the signal's stop and target: the order manager places them as an
    OCO pair once the entry fills (docs/orders.md). Prices go on the instrument's tick grid,
    away from the entry: a long's stop down and target up, a short's the other way."""
    long = order.side == "buy"
    legs: dict[str, float] = {}
    if signal.stop is not None:
        legs["stop_loss"] = round_price(signal.stop, tick, up=not long)
    if signal.target is not None:
        legs["take_profit"] = round_price(signal.target, tick, up=long)
    if signal.atr is not None:
        legs["atr"] = signal.atr
    if "stop_loss" not in legs and "take_profit" not in legs:
        return order
    return msgspec.structs.replace(order, **legs)
