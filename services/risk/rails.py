"""Pre-trade risk rails, as a pure fold over signals, prices, fills and governance.

A signal's target position becomes an order for the difference between the target and what
the strategy holds plus what it already has working, so a repeated signal never doubles an
order. Rules run in a fixed order and the first breach rejects: kill switch, symbol
allowlist, max order notional, max position per symbol (only for orders that grow the
absolute exposure, so a reduction is never blocked by the cap).
"""

from __future__ import annotations

import msgspec

from contracts.events import (
    Bar,
    Event,
    ExecutionReport,
    GovernanceCommand,
    OrderCommand,
    RiskDecision,
    Signal,
)
from contracts.subjects import symbol_token

EPS = 1e-12


class RiskLimits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    allowed_symbols: tuple[str, ...] = ()
    max_order_notional: float | None = None
    max_position: float | None = None

    def __post_init__(self) -> None:
        if self.max_order_notional is not None and self.max_order_notional <= 0:
            raise ValueError("max_order_notional must be > 0")
        if self.max_position is not None and self.max_position <= 0:
            raise ValueError("max_position must be > 0")


class _Working(msgspec.Struct):
    key: str
    symbol_key: str
    remaining: float


class RiskState(msgspec.Struct):
    killed: bool = False
    kill_reason: str = ""
    positions: dict[str, float] = msgspec.field(default_factory=dict)
    working: dict[str, _Working] = msgspec.field(default_factory=dict)
    prices: dict[str, float] = msgspec.field(default_factory=dict)
    orders: dict[str, int] = msgspec.field(default_factory=dict)


def _symbol_key(venue: str, symbol: str) -> str:
    return f"{venue}|{symbol}"


class RiskEngine:
    def __init__(self, limits: RiskLimits) -> None:
        self.limits = limits
        self.state = RiskState()

    def decide(self, event: Event, now: int) -> list[Event]:
        match event:
            case Bar():  # first, and inline (``_symbol_key``): nearly every input is a bar
                self.state.prices[f"{event.venue}|{event.symbol}"] = event.close
            case Signal():
                return [self._on_signal(event, now)] if self._delta(event) else []
            case ExecutionReport():
                self._on_report(event)
            case GovernanceCommand():
                self.state.killed = event.action == "kill"
                self.state.kill_reason = event.reason
        return []

    def _held(self, key: str) -> float:
        working = sum(w.remaining for w in self.state.working.values() if w.key == key)
        return self.state.positions.get(key, 0.0) + working

    def _symbol_exposure(self, symbol_key: str) -> float:
        held = sum(q for k, q in self.state.positions.items() if k.split("#", 1)[1] == symbol_key)
        working = sum(
            w.remaining for w in self.state.working.values() if w.symbol_key == symbol_key
        )
        return held + working

    def _delta(self, signal: Signal) -> float:
        key = f"{signal.strategy}#{_symbol_key(signal.venue, signal.symbol)}"
        if signal.target_position is not None:
            delta = signal.target_position - self._held(key)
        else:
            delta = signal.size if signal.side == "buy" else -(signal.size or 0.0)
        return delta if abs(delta) > EPS else 0.0

    def _on_signal(self, signal: Signal, now: int) -> Event:
        delta = self._delta(signal)
        symbol_key = _symbol_key(signal.venue, signal.symbol)
        qty = abs(delta)
        breach = self._breach(signal, symbol_key, delta)
        if breach is not None:
            rule, reason = breach
            return RiskDecision(
                ts=now,
                approved=False,
                strategy=signal.strategy,
                venue=signal.venue,
                symbol=signal.symbol,
                rule=rule,
                reason=reason,
            )
        key = f"{signal.strategy}#{symbol_key}"
        count = self.state.orders[key] = self.state.orders.get(key, 0) + 1
        order_id = f"{signal.strategy}-{symbol_token(signal.symbol)}-{signal.ts}-{count}"
        self.state.working[order_id] = _Working(key, symbol_key, delta)
        return OrderCommand(
            ts=now,
            action="new",
            client_order_id=order_id,
            strategy=signal.strategy,
            venue=signal.venue,
            symbol=signal.symbol,
            side="buy" if delta > 0 else "sell",
            qty=qty,
            model_tag=signal.model_tag,
        )

    def _breach(self, signal: Signal, symbol_key: str, delta: float) -> tuple[str, str] | None:
        limits = self.limits
        if self.state.killed:
            return "kill_switch", f"trading halted: {self.state.kill_reason or 'kill switch on'}"
        if limits.allowed_symbols and signal.symbol not in limits.allowed_symbols:
            return "symbol_allowlist", f"{signal.symbol} is not in the allowlist"
        if limits.max_order_notional is not None:
            price = self.state.prices.get(symbol_key)
            if price is None:
                return "max_order_notional", f"no price seen for {signal.symbol} yet"
            notional = abs(delta) * price
            if notional > limits.max_order_notional:
                return (
                    "max_order_notional",
                    f"notional {notional:.2f} > limit {limits.max_order_notional:.2f}",
                )
        if limits.max_position is not None:
            before = self._symbol_exposure(symbol_key)
            after = before + delta
            if abs(after) > limits.max_position + EPS and abs(after) > abs(before):
                return (
                    "max_position",
                    f"position {after:g} would exceed limit {limits.max_position:g}",
                )
        return None

    def _on_report(self, report: ExecutionReport) -> None:
        key = f"{report.strategy}#{_symbol_key(report.venue, report.symbol)}"
        signed = report.fill_qty if report.side == "buy" else -report.fill_qty
        if report.fill_qty:
            self.state.positions[key] = self.state.positions.get(key, 0.0) + signed
        working = self.state.working.get(report.client_order_id)
        if working is None:
            return
        working.remaining -= signed
        if report.status in ("filled", "canceled", "rejected"):
            del self.state.working[report.client_order_id]

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(self.state)

    def restore(self, data: bytes) -> None:
        self.state = msgspec.msgpack.decode(data, type=RiskState)
