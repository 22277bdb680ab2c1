"""Builders for the portfolio tests: fills, bars, funding, instruments, equity snapshots."""

from __future__ import annotations

from contracts.events import Bar, EquitySnapshot, ExecutionReport, FundingRate, Instrument

MINUTE = 60_000_000_000
HOUR = 60 * MINUTE
T0 = 1_700_000_000_000_000_000


def fill(
    side: str,
    qty: float,
    price: float,
    *,
    symbol: str = "BTC/USDT",
    venue: str = "test",
    fee: float = 0.0,
    fee_currency: str = "",
    strategy: str = "s1",
    model_tag: str = "",
    ts: int = T0,
) -> ExecutionReport:
    return ExecutionReport(
        ts=ts,
        status="filled",
        client_order_id="o",
        strategy=strategy,
        venue=venue,
        symbol=symbol,
        side=side,  # type: ignore[arg-type]
        order_qty=qty,
        fill_price=price,
        fill_qty=qty,
        cum_qty=qty,
        fee=fee,
        fee_currency=fee_currency,
        model_tag=model_tag,
    )


def bar(close: float, *, symbol: str = "BTC/USDT", venue: str = "test", ts: int = T0) -> Bar:
    return Bar(
        ts=ts,
        venue=venue,
        symbol=symbol,
        interval="1m",
        open_time=ts - MINUTE,
        close_time=ts,
        open=close,
        high=close,
        low=close,
        close=close,
        volume=1.0,
    )


def funding(
    rate: float,
    *,
    symbol: str = "BTC/USDT:USDT",
    venue: str = "test",
    ts: int = T0,
    next_time: int = 0,
) -> FundingRate:
    return FundingRate(ts=ts, venue=venue, symbol=symbol, rate=rate, next_time=next_time)


def instrument(
    symbol: str,
    *,
    venue: str = "test",
    kind: str = "spot",
    contract_size: float = 1.0,
    max_leverage: float = 0.0,
    ts: int = T0,
) -> Instrument:
    base, _, rest = symbol.partition("/")
    return Instrument(
        ts=ts,
        venue=venue,
        symbol=symbol,
        base=base,
        quote=rest.partition(":")[0],
        kind=kind,  # type: ignore[arg-type]
        contract_size=contract_size,
        max_leverage=max_leverage,
    )


def snap(ts: int, equity: float, exposure: float = 0.0) -> EquitySnapshot:
    """A book all in cash (``exposure`` aside): equity == cash."""
    return EquitySnapshot(
        ts=ts,
        cash=equity,
        equity=equity,
        realized_pnl=0.0,
        unrealized_pnl=0.0,
        fees=0.0,
        gross_exposure=exposure,
    )
