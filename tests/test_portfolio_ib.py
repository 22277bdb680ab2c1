"""Broker instruments in the portfolio (docs/portfolio.md): a future is margined with its
multiplier (only its PnL and fees move cash, no funding), a stock and an FX pair are bought
outright like spot."""

from __future__ import annotations

import msgspec
import pytest

from contracts.events import EquitySnapshot, Event, Instrument, PositionChanged
from services.portfolio.accounts import Portfolio
from services.portfolio.config import PortfolioConfig
from tests import factories
from tests.factories import MINUTE, T0, fill, funding

VENUE = "ibkr"


def ib_instrument(symbol: str, kind: str, base: str, quote: str, size: float = 1.0) -> Instrument:
    return Instrument(
        ts=T0,
        venue=VENUE,
        symbol=symbol,
        base=base,
        quote=quote,
        kind=kind,  # type: ignore[arg-type]
        tick_size=0.25,
        lot_size=1.0,
        contract_size=size,
        settle=quote if kind == "future" else "",
    )


def book() -> Portfolio:
    config = msgspec.convert({"starting_cash": 100_000.0, "base_currency": "USD"}, PortfolioConfig)
    p = Portfolio(config)
    for instrument in (
        ib_instrument("ES", "future", "ES", "USD", 50.0),
        ib_instrument("AAPL", "stock", "AAPL", "USD"),
        ib_instrument("EUR/USD", "fx", "EUR", "USD"),
    ):
        assert p.decide(instrument, T0) == []
    return p


def run(p: Portfolio, event: Event) -> list[Event]:
    return p.decide(event, event.ts)


def equity(out: list[Event]) -> EquitySnapshot:
    snaps = [e for e in out if isinstance(e, EquitySnapshot)]
    assert snaps, out
    return snaps[-1]


def bar(close: float, symbol: str, ts: int) -> Event:
    return factories.bar(close, symbol=symbol, venue=VENUE, ts=ts)


def test_a_future_is_margined_with_its_multiplier_and_pays_no_funding() -> None:
    p = book()
    run(p, bar(5_000.0, "ES", T0))
    pos, eq = run(p, fill("buy", 2, 5_000.0, 4.5, symbol="ES", venue=VENUE))
    assert isinstance(pos, PositionChanged) and (pos.qty, pos.avg_price) == (2, 5_000.0)
    # No notional changes hands: cash pays only the commission.
    assert eq.cash == pytest.approx(99_995.5) and eq.equity == pytest.approx(99_995.5)
    assert eq.gross_exposure == pytest.approx(2 * 50 * 5_000.0)

    eq = equity(run(p, bar(5_010.0, "ES", T0 + MINUTE)))
    assert eq.unrealized_pnl == pytest.approx(1_000.0)  # 2 x 50 x (5,010 - 5,000)
    assert eq.equity == pytest.approx(100_995.5)
    # A funding rate for the symbol (none exists for futures) charges nothing.
    assert run(p, funding(0.001, symbol="ES", venue=VENUE, ts=T0 + 2 * MINUTE)) == []

    pos, eq = run(p, fill("sell", 2, 5_020.0, 4.5, symbol="ES", venue=VENUE, ts=T0 + 3 * MINUTE))
    assert pos.qty == 0 and pos.realized_pnl == pytest.approx(2_000.0)  # 2 x 50 x 20
    assert eq.cash == pytest.approx(100_000.0 + 2_000.0 - 9.0)
    assert eq.equity == pytest.approx(eq.cash) and not eq.funding
    (view,) = p.positions()
    assert (view.kind, view.currency, view.realized_pnl) == ("future", "USD", 2_000.0)


def test_a_stock_and_an_fx_pair_are_bought_outright() -> None:
    p = book()
    run(p, bar(180.0, "AAPL", T0))
    run(p, bar(1.10, "EUR/USD", T0))
    _, eq = run(p, fill("buy", 10, 180.0, 1.0, symbol="AAPL", venue=VENUE))
    assert eq.cash == pytest.approx(100_000.0 - 1_800.0 - 1.0)
    _, eq = run(p, fill("buy", 1_000, 1.10, 2.0, symbol="EUR/USD", venue=VENUE))
    assert eq.cash == pytest.approx(100_000.0 - 1_801.0 - 1_102.0)
    run(p, bar(190.0, "AAPL", T0 + MINUTE))
    eq = equity(run(p, bar(1.20, "EUR/USD", T0 + MINUTE)))
    assert eq.unrealized_pnl == pytest.approx(10 * 10.0 + 1_000 * 0.10)
    assert eq.equity == pytest.approx(100_000.0 - 3.0 + 200.0)
    views = {v.symbol: v for v in p.positions()}
    assert (views["AAPL"].kind, views["AAPL"].margin_used) == ("stock", 0.0)
    assert (views["EUR/USD"].kind, views["EUR/USD"].qty) == ("fx", 1_000.0)
