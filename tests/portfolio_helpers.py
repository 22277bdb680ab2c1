"""Builders for the portfolio tests: bars at T0, funding, instruments, equity snapshots."""

from __future__ import annotations

from functools import partial

from contracts.events import EquitySnapshot, FundingRate, Instrument
from tests import factories
from tests.factories import MINUTE, T0

HOUR = 60 * MINUTE

bar = partial(factories.bar, ts=T0)


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
