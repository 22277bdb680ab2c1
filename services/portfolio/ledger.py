"""The portfolio ledger: average-cost positions, cash, realized and unrealized PnL.

Invariant (tested): equity = cash + sum(qty * mark) = starting cash + realized + unrealized
- fees. Each fill emits the position it leaves and the equity after it; each bar marks its
symbol and emits equity.
"""

from __future__ import annotations

import msgspec

from contracts.events import Bar, EquitySnapshot, Event, ExecutionReport, PositionChanged

EPS = 1e-12


class LedgerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    starting_cash: float = 100_000.0

    def __post_init__(self) -> None:
        if not self.starting_cash > 0:
            raise ValueError("starting_cash must be > 0")


class Position(msgspec.Struct):
    qty: float = 0.0
    avg_price: float = 0.0
    realized: float = 0.0
    mark: float = 0.0

    def apply_fill(self, signed_qty: float, price: float) -> float:
        """Apply a fill; returns the PnL it realizes."""
        realized = 0.0
        if abs(self.qty) < EPS or (self.qty > 0) == (signed_qty > 0):
            total = abs(self.qty) + abs(signed_qty)
            self.avg_price = (abs(self.qty) * self.avg_price + abs(signed_qty) * price) / total
            self.qty += signed_qty
        else:
            closed = min(abs(self.qty), abs(signed_qty))
            direction = 1.0 if self.qty > 0 else -1.0
            realized = closed * (price - self.avg_price) * direction
            remaining = self.qty + signed_qty
            if abs(remaining) < EPS:
                self.qty, self.avg_price = 0.0, 0.0
            elif (remaining > 0) != (self.qty > 0):
                self.qty, self.avg_price = remaining, price
            else:
                self.qty = remaining
        self.realized += realized
        return realized


class LedgerState(msgspec.Struct):
    cash: float
    realized: float = 0.0
    fees: float = 0.0
    positions: dict[str, Position] = msgspec.field(default_factory=dict)
    marks: dict[str, float] = msgspec.field(default_factory=dict)


class Ledger:
    def __init__(self, config: LedgerConfig) -> None:
        self.config = config
        self.state = LedgerState(cash=config.starting_cash)

    def decide(self, event: Event, now: int) -> list[Event]:
        match event:
            case Bar():  # first, and inline: nearly every input is a bar
                key = f"{event.venue}|{event.symbol}"
                state = self.state
                state.marks[key] = event.close
                position = state.positions.get(key)
                if position is not None:
                    position.mark = event.close
                return [self.equity(now)]
            case ExecutionReport() if event.fill_qty > 0:
                return [self._on_fill(event, now), self.equity(now)]
        return []

    def _on_fill(self, fill: ExecutionReport, now: int) -> PositionChanged:
        signed = fill.fill_qty if fill.side == "buy" else -fill.fill_qty
        key = f"{fill.venue}|{fill.symbol}"
        position = self.state.positions.setdefault(key, Position())
        position.mark = self.state.marks.get(key, fill.fill_price)
        self.state.realized += position.apply_fill(signed, fill.fill_price)
        self.state.cash -= signed * fill.fill_price + fill.fee
        self.state.fees += fill.fee
        return PositionChanged(
            ts=now,
            venue=fill.venue,
            symbol=fill.symbol,
            qty=position.qty,
            avg_price=position.avg_price,
            realized_pnl=position.realized,
            strategy=fill.strategy,
        )

    def equity(self, now: int) -> EquitySnapshot:
        state = self.state
        value = unrealized = gross = 0.0
        for p in state.positions.values():
            qty = p.qty
            if qty:
                market_value = qty * p.mark
                value += market_value
                unrealized += qty * (p.mark - p.avg_price)
                gross += abs(market_value)
        return EquitySnapshot(
            ts=now,
            cash=state.cash,
            equity=state.cash + value,
            realized_pnl=state.realized,
            unrealized_pnl=unrealized,
            fees=state.fees,
            gross_exposure=gross,
        )

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(self.state)

    def restore(self, data: bytes) -> None:
        self.state = msgspec.msgpack.decode(data, type=LedgerState)
