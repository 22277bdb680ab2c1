"""Typed events: the only thing workers share.

Every fact in Keel is one of these frozen structs, encoded as JSON with a ``type`` tag so a
subject tap can decode any message without knowing its subject. Times are integer
nanoseconds since the Unix epoch (UTC). Schema evolution: add fields only with defaults,
never change a field's type, bump ``SCHEMA_VERSION`` when a meaning changes.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Literal, get_args

import msgspec

SCHEMA_VERSION = 1

InstrumentKind = Literal["spot", "perpetual"]
Side = Literal["buy", "sell"]
OrderAction = Literal["new", "cancel"]
OrderType = Literal["market", "limit", "stop", "stop_limit"]
TimeInForce = Literal["GTC", "IOC", "FOK"]
ExecStatus = Literal["accepted", "partially_filled", "filled", "canceled", "rejected"]
GovernanceAction = Literal["kill", "resume"]
TradingMode = Literal["long_only", "long_short"]


class Event(msgspec.Struct, frozen=True, tag=True, tag_field="type", kw_only=True):
    """Base of every event; ``ts`` is the event time the producer's clock assigned.

    Float fields must be finite: JSON cannot carry NaN or infinity, so such an event could
    be stored but never read back.
    """

    ts: int

    def __post_init__(self) -> None:
        required, optional = _float_fields(type(self))
        values = required(self) if required else ()
        try:
            finite = math.isfinite(math.fsum(values))
        except OverflowError:
            finite = False
        if not finite or (optional and not _all_finite(optional(self))):
            for field in self.__struct_fields__:
                value = getattr(self, field)
                if isinstance(value, float) and not math.isfinite(value):
                    raise ValueError(f"{field} must be finite")


_FloatGetter = Callable[[Event], tuple[float | None, ...]]
_FLOAT_FIELDS: dict[type, tuple[_FloatGetter | None, _FloatGetter | None]] = {}


def _getter(names: list[str]) -> _FloatGetter | None:
    if not names:
        return None
    get = operator.attrgetter(*names)
    return get if len(names) > 1 else lambda event: (get(event),)


def _float_fields(cls: type) -> tuple[_FloatGetter | None, _FloatGetter | None]:
    """Getters of a class's float fields (required, optional): the finite check runs on every
    event built, so it is done with one ``fsum`` over the values, not a loop per field."""
    cached = _FLOAT_FIELDS.get(cls)
    if cached is None:
        fields = msgspec.structs.fields(cls)
        required = [f.name for f in fields if f.type is float]
        optional = [f.name for f in fields if f.type is not float and float in get_args(f.type)]
        cached = _FLOAT_FIELDS[cls] = (_getter(required), _getter(optional))
    return cached


def _all_finite(values: tuple[float | None, ...]) -> bool:
    return all(v is None or math.isfinite(v) for v in values)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


class Instrument(Event, frozen=True):
    venue: str
    symbol: str
    base: str
    quote: str
    kind: InstrumentKind = "spot"
    tick_size: float = 0.0
    lot_size: float = 0.0
    min_notional: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(
            self.tick_size >= 0 and self.lot_size >= 0 and self.min_notional >= 0,
            "tick_size, lot_size and min_notional must be >= 0",
        )


class Bar(Event, frozen=True):
    """An OHLCV bar; ``ts`` equals ``close_time`` (a bar is known when it closes)."""

    venue: str
    symbol: str
    interval: str
    open_time: int
    close_time: int
    open: float
    high: float
    low: float
    close: float
    volume: float

    def __post_init__(self) -> None:
        super().__post_init__()
        if (
            self.low > 0
            and self.high >= self.low
            and min(self.open, self.close) > 0
            and self.volume >= 0
            and self.close_time > self.open_time
            and self.ts == self.close_time
        ):
            return
        _require(min(self.open, self.high, self.low, self.close) > 0, "prices must be > 0")
        _require(self.volume >= 0, "volume must be >= 0")
        _require(self.high >= self.low, "high below low")
        _require(self.close_time > self.open_time, "close_time must be after open_time")
        _require(self.ts == self.close_time, "ts must equal close_time")


class Trade(Event, frozen=True):
    venue: str
    symbol: str
    price: float
    qty: float
    side: Side
    trade_id: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.price > 0 and self.qty > 0, "price and qty must be > 0")


class Quote(Event, frozen=True):
    venue: str
    symbol: str
    bid: float
    ask: float
    bid_size: float = 0.0
    ask_size: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(0 < self.bid <= self.ask, "need 0 < bid <= ask")


class Signal(Event, frozen=True):
    """A strategy's intent: a target position (preferred) or a side and size."""

    strategy: str
    venue: str
    symbol: str
    model_tag: str = ""
    target_position: float | None = None
    side: Side | None = None
    size: float | None = None
    confidence: float = 1.0
    stop: float | None = None
    target: float | None = None
    atr: float | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        by_target = self.target_position is not None and self.side is None and self.size is None
        by_side = self.target_position is None and self.side is not None and self.size is not None
        _require(by_target or by_side, "give either target_position or both side and size")
        _require(0.0 <= self.confidence <= 1.0, "confidence must be within [0, 1]")
        _require(self.size is None or self.size > 0, "size must be > 0")


class OrderCommand(Event, frozen=True):
    action: OrderAction
    client_order_id: str
    strategy: str
    venue: str
    symbol: str
    side: Side
    qty: float
    order_type: OrderType = "market"
    limit_price: float | None = None
    stop_price: float | None = None
    time_in_force: TimeInForce = "GTC"
    model_tag: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.qty > 0, "qty must be > 0")
        _require(self.order_type != "limit" or self.limit_price is not None, "limit needs price")
        _require(self.order_type != "stop" or self.stop_price is not None, "stop needs stop_price")
        _require(
            self.order_type != "stop_limit"
            or (self.stop_price is not None and self.limit_price is not None),
            "stop_limit needs both stop_price and limit_price",
        )


class RiskDecision(Event, frozen=True):
    approved: bool
    strategy: str
    venue: str
    symbol: str
    client_order_id: str = ""
    rule: str = ""
    reason: str = ""


class ExecutionReport(Event, frozen=True):
    status: ExecStatus
    client_order_id: str
    strategy: str
    venue: str
    symbol: str
    side: Side
    order_qty: float
    venue_order_id: str = ""
    fill_price: float = 0.0
    fill_qty: float = 0.0
    cum_qty: float = 0.0
    fee: float = 0.0
    fee_currency: str = ""
    model_tag: str = ""
    reason: str = ""


class PositionChanged(Event, frozen=True):
    venue: str
    symbol: str
    qty: float
    avg_price: float
    realized_pnl: float
    strategy: str = ""


class EquitySnapshot(Event, frozen=True):
    cash: float
    equity: float
    realized_pnl: float
    unrealized_pnl: float
    fees: float
    gross_exposure: float


class ParamsTuned(Event, frozen=True):
    """A strategy moved one of its own parameters (auto-tuning); kept for audit and replay."""

    strategy: str
    symbol: str
    param: str
    old: float
    new: float
    reason: str = ""


class GovernanceCommand(Event, frozen=True):
    action: GovernanceAction
    reason: str = ""
    issued_by: str = ""


class Heartbeat(Event, frozen=True):
    worker: str
    instance: str
    seq: int
    processed: int
    status: str = "running"
    metrics_port: int = 0


class DeadLetter(Event, frozen=True):
    """A message a worker could not use, kept with the reason so nothing is silently lost."""

    worker: str
    subject: str
    reason: str
    payload: bytes
    stream: str = ""
    stream_seq: int = 0


AnyEvent = (
    Instrument
    | Bar
    | Trade
    | Quote
    | Signal
    | OrderCommand
    | RiskDecision
    | ExecutionReport
    | PositionChanged
    | EquitySnapshot
    | ParamsTuned
    | GovernanceCommand
    | Heartbeat
    | DeadLetter
)

EVENT_TYPES: tuple[type[Event], ...] = AnyEvent.__args__  # type: ignore[attr-defined]
