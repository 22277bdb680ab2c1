"""The portfolio on real data (../shared/data, skipped when absent): a book in USD holding USDC
and USDT on Binance.US through the USDC depeg of March 2023 (SVB), valued through the
BTC/USD, BTC/USDC and BTC/USDT cross rates, with a BTC position bought with USDC before the
depeg and sold after it."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from contracts.events import Bar, EquitySnapshot
from services.marketdata.sources import read_bars
from services.portfolio.accounts import Portfolio
from services.portfolio.config import PortfolioConfig
from tests.factories import fill

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "binanceus-1m-2023-03"
FILES = (("BTCUSD.csv", "BTC/USD"), ("BTCUSDC.csv", "BTC/USDC"), ("BTCUSDT.csv", "BTC/USDT"))

pytestmark = pytest.mark.skipif(
    not all((DATA / name).is_file() for name, _ in FILES),
    reason=f"real data not found at {DATA} (../shared/data is outside the project)",
)


def ns(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()) * 10**9


def merged() -> list[Bar]:
    """The three files' bars by close time; at one time in the files' order."""
    rows = []
    for order, (name, symbol) in enumerate(FILES):
        for b in read_bars(DATA / name, venue="binanceus", symbol=symbol).bars:
            rows.append((b.ts, order, b))
    rows.sort(key=lambda row: (row[0], row[1]))
    return [b for _, _, b in rows]


def test_usdc_depeg_in_a_usd_book() -> None:
    config = msgspec.convert(
        {
            "starting_cash": 0.0,
            "base_currency": "USD",
            "venues": {"binanceus": {"balances": {"USDC": 100_000.0, "USDT": 50_000.0}}},
        },
        PortfolioConfig,
    )
    p = Portfolio(config)
    buy_at, sell_at = ns("2023-03-10T00:00:00"), ns("2023-03-13T12:00:00")
    last: dict[str, float] = {}
    trough = (math.inf, 0)
    bought = sold = None
    checked = 0
    for b in merged():
        out = p.decide(b, b.ts)
        last[b.symbol] = b.close
        eq = out[-1]
        assert isinstance(eq, EquitySnapshot)
        rate = p.state.fx.rates["USDC"]
        trough = min(trough, (rate, b.ts))
        gap = eq.equity - (
            config.initial_equity
            + eq.fx_pnl
            + eq.realized_pnl
            + eq.unrealized_pnl
            - eq.fees
            - eq.funding
        )
        assert abs(gap) <= 1e-9 * 200_000, (b, eq)
        holding = bought is not None and sold is None
        if b.symbol == "BTC/USDT" and holding and p.state.fx.source["USDC"] == "cross":
            # The BTC bought with USDC is worth BTC/USD in the book, whatever USDC does.
            legs = p.state.fx.legs["BTC"]
            if legs[""][0] == legs["USDC"][0] == b.ts:
                assert eq.net == pytest.approx(last["BTC/USD"], rel=1e-9)
                checked += 1
        if b.symbol == "BTC/USDT" and b.ts == buy_at:
            bought = last["BTC/USDC"]
            p.decide(fill("buy", 1.0, bought, symbol="BTC/USDC", venue="binanceus", ts=b.ts), b.ts)
        if b.symbol == "BTC/USDT" and b.ts == sell_at:
            sold = last["BTC/USDC"]
            out = p.decide(
                fill("sell", 1.0, sold, symbol="BTC/USDC", venue="binanceus", ts=b.ts), b.ts
            )
            eq = out[-1]
            assert isinstance(eq, EquitySnapshot)
            assert p.state.realized["USDC"] == pytest.approx(sold - bought)
            assert eq.realized_pnl == pytest.approx((sold - bought) * p.state.fx.rates["USDC"])
    assert bought is not None and sold is not None
    assert checked > 1_000
    # One USDC fell to about 0.87 USD on 2023-03-11 and was back by the 13th.
    rate, when = trough
    assert 0.85 < rate < 0.90
    assert datetime.fromtimestamp(when / 1e9, UTC).date().isoformat() == "2023-03-11"
    final = p.equity(b.ts)
    assert abs(p.state.fx.rates["USDC"] - 1.0) < 0.01
    assert abs(final.fx_pnl) < 0.01 * 150_000
    assert p.state.fx.source == {"": "base", "USDC": "cross", "USDT": "cross"}
