"""Pure rules of one order against the market, shared by the account and its faults: its
shape, when it triggers, when a limit crosses, and the price it takes at."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tests.fakes.prices import SymbolSpec
from tests.fakes.records import (
    LIMIT_TYPES,
    ORDER_TYPES,
    TAKE_PROFIT_TYPES,
    TRIGGERED_TYPES,
    FakeOrder,
    OrderError,
    OrderType,
    Side,
)

if TYPE_CHECKING:
    from tests.fakes.core import Update


def check_shape(
    spec: SymbolSpec, type: OrderType, price: float | None, stop_price: float | None
) -> None:
    """The prices an order type needs, on the tick; raises ``OrderError``."""
    if type not in ORDER_TYPES:
        raise OrderError("bad_request", f"bad order type {type!r}")
    if type in LIMIT_TYPES and (price is None or price <= 0):
        raise OrderError("bad_request", f"a {type} order needs a positive price")
    if type in TRIGGERED_TYPES and (stop_price is None or stop_price <= 0):
        raise OrderError("bad_request", f"a {type} order needs a positive stop price")
    for value in (price, stop_price):
        if value is not None and not on_step(value, spec.tick_size):
            raise OrderError("tick_size", f"price {value} is not a multiple of the tick")


def triggers(side: Side, type: OrderType, stop: float | None, last: float) -> bool:
    """Stops trigger as the price moves against the side, take-profits as it moves for it."""
    if stop is None:
        return False
    rising = (side == "buy") == (type not in TAKE_PROFIT_TYPES)
    return last >= stop if rising else last <= stop


def crosses(order: FakeOrder, tick: Update) -> bool:
    assert order.price is not None
    return tick.ask <= order.price if order.side == "buy" else tick.bid >= order.price


def touch(order: FakeOrder, tick: Update) -> float:
    return tick.ask if order.side == "buy" else tick.bid


def on_step(value: float, step: float) -> bool:
    ratio = value / step
    return abs(ratio - round(ratio)) < 1e-6
