"""Average-cost positions: the account's per instrument, and the lots of the strategies' and
model tags' own books."""

from __future__ import annotations

import msgspec

from contracts.keys import InstrumentId
from services.portfolio.fx import BASE

EPS = 1e-12
"""A quantity this close to zero is flat."""


class Lot(msgspec.Struct):
    """An average-cost position: the account's, or a strategy's or model tag's share."""

    qty: float = 0.0
    avg_price: float = 0.0
    realized: float = 0.0
    funding: float = 0.0

    def apply_fill(self, signed_qty: float, price: float, size: float = 1.0) -> float:
        """Apply a fill (``size``: units per contract); returns the PnL it realizes."""
        realized = 0.0
        if abs(self.qty) < EPS or (self.qty > 0) == (signed_qty > 0):
            total = abs(self.qty) + abs(signed_qty)
            self.avg_price = (abs(self.qty) * self.avg_price + abs(signed_qty) * price) / total
            self.qty += signed_qty
        else:
            closed = min(abs(self.qty), abs(signed_qty))
            direction = 1.0 if self.qty > 0 else -1.0
            realized = closed * (price - self.avg_price) * direction * size
            remaining = self.qty + signed_qty
            if abs(remaining) < EPS:
                self.qty, self.avg_price = 0.0, 0.0
            elif (remaining > 0) != (self.qty > 0):
                self.qty, self.avg_price = remaining, price
            else:
                self.qty = remaining
        self.realized += realized
        return realized


class Position(Lot):
    """The account's position in one instrument, with the terms it was opened on:
    ``currency`` (key: "" = base), ``perpetual`` (margined: a perpetual or a future, whose
    PnL alone moves cash), ``kind``, ``size`` (contract size), ``leverage``, ``account``. Terms change only while flat (a new ``Instrument`` applies at the next
    open)."""

    mark: float = 0.0
    currency: str = BASE
    perpetual: bool = False
    kind: str = "spot"
    size: float = 1.0
    leverage: float = 1.0
    account: str = ""
    short_breach: bool = False


class Book(msgspec.Struct):
    """What one strategy's (or one model tag's) own fills made, per currency."""

    lots: dict[InstrumentId, Lot] = msgspec.field(default_factory=dict)
    realized: dict[str, float] = msgspec.field(default_factory=dict)
    fees: dict[str, float] = msgspec.field(default_factory=dict)
    funding: dict[str, float] = msgspec.field(default_factory=dict)
