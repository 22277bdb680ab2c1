"""What the order manager holds, all msgspec structs so a snapshot carries it whole: the
working orders, the groups that protect positions (brackets and validator stops), trailing
state, OCO groups, positions, ATRs and the last closes."""

from __future__ import annotations

from typing import Literal

import msgspec

from contracts.events import OrderCommand
from contracts.keys import BookId, InstrumentId
from services.execution.atr import Atr

DUST = 1e-9  # relative quantity tolerance

LegKind = Literal["order", "take_profit", "stop_loss"]


def number_text(value: float) -> str:
    """A price or quantity as reasons quote it."""
    return f"{value:.10g}"


class OcoGroupId(msgspec.Struct, frozen=True, cache_hash=True, array_like=True, gc=False):
    """An explicit OCO group: its name is scoped by the strategy that gave it."""

    strategy: str
    name: str


class Trail(msgspec.Struct):
    """A trailing stop: ``best`` is the best price since ``since`` (highest high for a stop
    that sells, lowest low for one that buys; 0 = none yet); the distance is ``pct`` percent
    of it, or ``mult`` times ``atr`` (0: the order manager's ATR of the market)."""

    sell: bool
    pct: float = 0.0
    mult: float = 0.0
    atr: float = 0.0
    best: float = 0.0
    since: int = 0


class Order(msgspec.Struct):
    """One order of the order manager. ``qty`` is the current total (an amendment changes
    it); ``leg_base`` is what earlier venue legs filled; ``managed`` orders get reports built
    here, plain ones pass the venue's reports through unchanged."""

    cmd: OrderCommand
    book: BookId
    qty: float
    status: str = "new"
    cum_qty: float = 0.0
    venue_order_id: str = ""
    stop_price: float | None = None
    limit_price: float | None = None
    kind: LegKind = "order"
    group: str = ""  # bracket entry: its own group; leg: the group it protects
    oco: OcoGroupId | None = None
    leg_base: float = 0.0
    leg_live: bool = False
    managed: bool = False
    trail: Trail | None = None  # a trailing stop order (bracket legs trail through the group)
    expire_at: int = 0
    closing: bool = False  # closes a position (kill switch, a rejected stop): reduce-only
    in_flight: bool = False  # a leg was sent and its venue has not answered it yet


class Group(msgspec.Struct):
    """What protects one part of a position: a bracket (entry ``entry``) or a stop the
    validator placed (``protect``). ``open`` is the quantity it protects, ``cost`` its entry
    value; ``take_profit``/``stop_loss`` the legs' prices (0 = no such leg); ``tp_id``/
    ``sl_id`` the working legs; ``tp_off``/``sl_off``: the leg was canceled from outside and
    is not re-placed (the validator may re-place a stop)."""

    id: str
    book: BookId
    long: bool
    model_tag: str = ""
    entry: str = ""
    protect: bool = False
    open: float = 0.0
    cost: float = 0.0
    take_profit: float = 0.0
    stop_loss: float = 0.0
    trail: Trail | None = None
    tp_id: str = ""
    sl_id: str = ""
    tp_n: int = 0
    sl_n: int = 0
    tp_off: bool = False
    sl_off: bool = False
    filled_leg: str = ""  # the leg that filled last (named when its sibling is canceled)

    @property
    def avg(self) -> float:
        return self.cost / self.open if self.open > 0 else 0.0


class Position(msgspec.Struct):
    """A strategy's position on one market as its own fills made it: ``qty`` signed,
    ``cost`` = |qty| x average entry price."""

    book: BookId
    qty: float = 0.0
    cost: float = 0.0

    @property
    def avg(self) -> float:
        return self.cost / abs(self.qty) if self.qty else 0.0

    def add_fill(self, buy: bool, fill: float, price: float) -> None:
        """A reduction keeps the average entry price; a flip opens the rest at ``price``."""
        before = self.qty
        signed = fill if buy else -fill
        after = before + signed
        if not before or (before > 0) == (signed > 0):
            self.cost += fill * price
        elif abs(after) <= DUST * abs(before) or (after > 0) == (before > 0):
            self.cost *= abs(after) / abs(before)
        else:
            self.cost = abs(after) * price
        if abs(after) <= DUST * max(abs(before), fill):
            after = 0.0
            self.cost = 0.0
        self.qty = after


class OmsState(msgspec.Struct):
    orders: dict[str, Order] = msgspec.field(default_factory=dict)  # not final
    done: dict[str, str] = msgspec.field(default_factory=dict)  # finished id -> status
    groups: dict[str, Group] = msgspec.field(default_factory=dict)
    positions: dict[BookId, Position] = msgspec.field(default_factory=dict)
    atr: dict[InstrumentId, Atr] = msgspec.field(default_factory=dict)
    oco: dict[OcoGroupId, list[str]] = msgspec.field(default_factory=dict)
    trailing: list[str] = msgspec.field(default_factory=list)
    expiring: list[str] = msgspec.field(default_factory=list)
    closes: dict[InstrumentId, float] = msgspec.field(default_factory=dict)  # last close
