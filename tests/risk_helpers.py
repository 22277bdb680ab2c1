"""Event builders shared by the risk tests."""

from __future__ import annotations

from contracts.events import (
    Bar,
    EquitySnapshot,
    Event,
    ExecutionReport,
    FundingRate,
    GovernanceCommand,
    Instrument,
    OrderCommand,
    RiskAlert,
    RiskDecision,
    Signal,
    SystemStatus,
)
from contracts.keys import BookId, InstrumentId

MINUTE = 60_000_000_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
T0 = 1_700_006_400_000_000_000  # 2023-11-15 00:00:00 UTC, a day boundary
VENUE = "test"
BTC = "BTC/USDT"
ETH = "ETH/USDT"


def market(symbol: str = BTC, venue: str = VENUE) -> InstrumentId:
    return InstrumentId(venue, symbol)


def book(strategy: str = "s1", symbol: str = BTC, venue: str = VENUE) -> BookId:
    return BookId(strategy, InstrumentId(venue, symbol))


def sig(
    target: float | None = None,
    *,
    side: str | None = None,
    size: float | None = None,
    ts: int = T0,
    strategy: str = "s1",
    symbol: str = BTC,
    venue: str = VENUE,
    atr: float | None = None,
) -> Signal:
    return Signal(
        ts=ts,
        strategy=strategy,
        venue=venue,
        symbol=symbol,
        model_tag="mt",
        target_position=target,
        side=side,  # type: ignore[arg-type]
        size=size,
        atr=atr,
    )


def bar(
    close: float, symbol: str = BTC, ts: int = T0, venue: str = VENUE, interval: str = "1m"
) -> Bar:
    return Bar(
        ts=ts,
        venue=venue,
        symbol=symbol,
        interval=interval,
        open_time=ts - MINUTE,
        close_time=ts,
        open=close,
        high=close,
        low=close,
        close=close,
        volume=1.0,
    )


def equity(value: float, ts: int = T0) -> EquitySnapshot:
    return EquitySnapshot(
        ts=ts,
        cash=value,
        equity=value,
        realized_pnl=0.0,
        unrealized_pnl=0.0,
        fees=0.0,
        gross_exposure=0.0,
    )


def report(
    order: OrderCommand, status: str, fill_qty: float = 0.0, price: float = 0.0, ts: int = 0
) -> ExecutionReport:
    return ExecutionReport(
        ts=ts or order.ts + 1,
        status=status,  # type: ignore[arg-type]
        client_order_id=order.client_order_id,
        strategy=order.strategy,
        venue=order.venue,
        symbol=order.symbol,
        side=order.side,
        order_qty=order.qty,
        fill_price=price,
        fill_qty=fill_qty,
        cum_qty=fill_qty,
    )


def instrument(
    symbol: str = BTC,
    *,
    lot: float = 0.0,
    tick: float = 0.0,
    min_notional: float = 0.0,
    kind: str = "spot",
    venue: str = VENUE,
) -> Instrument:
    base, _, quote = symbol.partition("/")
    return Instrument(
        ts=T0,
        venue=venue,
        symbol=symbol,
        base=base,
        quote=quote.partition(":")[0],
        kind=kind,  # type: ignore[arg-type]
        tick_size=tick,
        lot_size=lot,
        min_notional=min_notional,
    )


def funding(rate: float, symbol: str = "BTC/USDT:USDT", ts: int = T0) -> FundingRate:
    return FundingRate(ts=ts, venue=VENUE, symbol=symbol, rate=rate)


def kill(reason: str = "", ts: int = T0) -> GovernanceCommand:
    return GovernanceCommand(ts=ts, action="kill", reason=reason, issued_by="ops")


def resume(ts: int = T0) -> GovernanceCommand:
    return GovernanceCommand(ts=ts, action="resume", issued_by="ops")


def of(out: list[Event], kind: type) -> list:
    return [e for e in out if isinstance(e, kind)]


def order_of(out: list[Event]) -> OrderCommand:
    orders = [e for e in out if isinstance(e, OrderCommand)]
    assert len(orders) == 1 and len(out) == 1, out
    return orders[0]


def rejection(out: list[Event], rule: str | None = None) -> RiskDecision:
    assert len(out) == 1, out
    decision = out[0]
    assert isinstance(decision, RiskDecision) and not decision.approved, decision
    if rule is not None:
        assert decision.rule == rule, decision
    return decision


def statuses(out: list[Event]) -> list[SystemStatus]:
    return of(out, SystemStatus)


def alerts(out: list[Event]) -> list[RiskAlert]:
    return of(out, RiskAlert)
