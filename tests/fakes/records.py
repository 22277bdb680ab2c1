"""The matching engine's records and refusals, shared by the account, its faults and the
skins (which import them through ``matching``)."""

from __future__ import annotations

from typing import Literal

import msgspec

Kind = Literal["spot", "perpetual"]
Side = Literal["buy", "sell"]
OrderType = Literal["market", "limit", "stop", "stop_limit", "take_profit", "take_profit_limit"]
TriggerNow = Literal["refuse", "fill"]
TimeInForce = Literal["GTC", "IOC", "FOK", "GTX"]
Status = Literal["new", "partially_filled", "filled", "canceled", "rejected", "expired"]
GateKind = Literal["place", "cancel", "amend"]

ERROR_CODES = (
    "insufficient_balance",
    "min_notional",
    "lot_size",
    "tick_size",
    "unknown_order",
    "duplicate_client_id",
    "reduce_only_rejected",
    "would_trigger_immediately",
    "post_only_rejected",
    "bad_symbol",
    "bad_request",
)
OPEN: frozenset[str] = frozenset({"new", "partially_filled"})
ORDER_TYPES: frozenset[str] = frozenset(
    {"market", "limit", "stop", "stop_limit", "take_profit", "take_profit_limit"}
)
TRIGGERED_TYPES: frozenset[str] = frozenset(
    {"stop", "stop_limit", "take_profit", "take_profit_limit"}
)
LIMIT_TYPES: frozenset[str] = frozenset({"limit", "stop_limit", "take_profit_limit"})
"""Types with a limit price: they rest (once triggered) and may fill as a maker."""
TAKE_PROFIT_TYPES: frozenset[str] = frozenset({"take_profit", "take_profit_limit"})
"""Triggered types that trigger when the price comes their way (a buy below, a sell above)."""


class OrderError(Exception):
    """A refusal; ``code`` is one of ``ERROR_CODES``, which skins map to their own."""

    def __init__(self, code: str, message: str = "") -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown OrderError code {code!r}")
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message or code


class NoAnswer(Exception):
    """The request gets no answer at all: the core closes the connection."""


class FakeOrder(msgspec.Struct):
    order_id: int
    client_id: str
    symbol: str
    side: Side
    type: OrderType
    qty: float
    price: float | None
    stop_price: float | None
    reduce_only: bool
    tif: TimeInForce
    algo: bool
    status: Status
    filled: float = 0.0
    avg_price: float = 0.0
    fee_paid: float = 0.0
    created_ns: int = 0
    updated_ns: int = 0
    triggered: bool = False
    external: bool = False
    """Placed through ``faults.external`` (someone else's order)."""

    @property
    def remaining(self) -> float:
        return max(0.0, self.qty - self.filled)

    @property
    def is_open(self) -> bool:
        return self.status in OPEN


class FakeFill(msgspec.Struct, frozen=True):
    trade_id: int
    order_id: int
    client_id: str
    symbol: str
    side: str
    qty: float
    price: float
    fee: float
    fee_currency: str
    maker: bool
    ts_ns: int
