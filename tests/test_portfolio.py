"""The portfolio (services/portfolio/): hand-computed books in one currency, perpetuals with
leverage, margin and funding, several quote currencies valued in a base currency, fees in
another currency, attribution per strategy and model tag, multi-venue accounts, round trips
and the conservation of value (properties), snapshot + tail = full rebuild (property), and
strict snapshot decoding."""

from __future__ import annotations

import math
import random
import re
from functools import partial

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.codec import encode
from contracts.events import EquitySnapshot, Event, PositionChanged
from contracts.keys import InstrumentId
from services.portfolio.accounts import Portfolio
from services.portfolio.config import PortfolioConfig, VenueAccount
from services.portfolio.fx import BASE
from services.portfolio.snapshots import fold, rebuild
from tests import factories
from tests.factories import HOUR, MINUTE, T0, fill, funding, instrument

PERP = "BTC/USDT:USDT"

bar = partial(factories.bar, ts=T0)


def config(**kw) -> PortfolioConfig:
    return msgspec.convert(kw, PortfolioConfig)


def outputs(p: Portfolio, event: Event, now: int | None = None) -> list[Event]:
    return p.decide(event, event.ts if now is None else now)


def last_equity(out: list[Event]) -> EquitySnapshot:
    snaps = [e for e in out if isinstance(e, EquitySnapshot)]
    assert snaps, out
    return snaps[-1]


def identity_gap(p: Portfolio, eq: EquitySnapshot) -> float:
    """equity - (initial equity + fx_pnl + realized + unrealized - fees - funding)."""
    expected = (
        p.config.initial_equity
        + eq.fx_pnl
        + eq.realized_pnl
        + eq.unrealized_pnl
        - eq.fees
        - eq.funding
    )
    return eq.equity - expected


# --- perpetuals ----------------------------------------------------------------------------------


def test_perpetual_long_with_leverage_margin_and_funding() -> None:
    p = Portfolio(config(starting_cash=10_000.0, leverage=5.0, base_currency="USDT"))
    # The venue's contract: 0.01 BTC, leverage capped at 3 (below the configured 5).
    assert outputs(p, instrument(PERP, kind="perpetual", contract_size=0.01, max_leverage=3)) == []
    outputs(p, bar(20_000.0, symbol=PERP))

    pos, eq = outputs(p, fill("buy", 100, 20_000.0, symbol=PERP, fee=2.0))
    assert isinstance(pos, PositionChanged)
    assert (pos.qty, pos.avg_price, pos.realized_pnl, pos.funding) == (100, 20_000.0, 0.0, 0.0)
    assert pos.margin_used == pytest.approx(20_000 / 3)
    # No notional changes hands: cash only pays the fee.
    assert eq.cash == pytest.approx(9_998.0)
    assert eq.equity == pytest.approx(9_998.0)
    assert eq.margin_used == pytest.approx(20_000 / 3)
    assert eq.gross_exposure == pytest.approx(20_000.0)
    assert eq.net_exposure == pytest.approx(20_000.0)

    eq = last_equity(outputs(p, bar(21_000.0, symbol=PERP, ts=T0 + MINUTE)))
    assert eq.unrealized_pnl == pytest.approx(1_000.0)  # 100 x 0.01 x (21,000 - 20,000)
    assert eq.equity == pytest.approx(10_998.0)
    assert eq.margin_used == pytest.approx(7_000.0)

    # Funding 0.01% settled now: the long pays 100 x 0.01 x 21,000 x 0.0001 = 2.1.
    out = outputs(p, funding(0.0001, ts=T0 + 2 * MINUTE))
    paid, eq = out
    assert isinstance(paid, PositionChanged) and paid.funding == pytest.approx(2.1)
    assert paid.strategy == ""
    assert eq.funding == pytest.approx(2.1)
    assert eq.cash == pytest.approx(9_995.9)
    assert eq.equity == pytest.approx(10_995.9)

    # Sell 40 at 21,500: realizes 40 x 0.01 x 1,500 = 600 into cash.
    pos, eq = outputs(p, fill("sell", 40, 21_500.0, symbol=PERP, fee=0.86, ts=T0 + 3 * MINUTE))
    assert pos.qty == 60 and pos.realized_pnl == pytest.approx(600.0)
    assert eq.cash == pytest.approx(10_595.04)
    eq = last_equity(outputs(p, bar(21_500.0, symbol=PERP, ts=T0 + 4 * MINUTE)))
    assert eq.unrealized_pnl == pytest.approx(900.0)
    assert eq.equity == pytest.approx(11_495.04)
    assert eq.realized_pnl == pytest.approx(600.0)
    assert eq.fees == pytest.approx(2.86)
    # 10,000 + 600 + 900 - 2.86 - 2.1
    assert identity_gap(p, eq) == pytest.approx(0.0, abs=1e-9)


def test_positions_report_realized_and_unrealized_per_position() -> None:
    p = Portfolio(config(base_currency="USD", venues={"k": {"balances": {"USDC": 1_000.0}}}))
    outputs(p, fill("buy", 2, 100.0, symbol="SOL/USDC", venue="k"))
    outputs(p, fill("sell", 1, 110.0, symbol="SOL/USDC", venue="k"))
    outputs(p, fill("sell", 3, 50.0, symbol="ETH/USD:USD", venue="k"))
    outputs(p, bar(120.0, symbol="SOL/USDC", venue="k", ts=T0 + MINUTE))
    outputs(p, bar(40.0, symbol="ETH/USD:USD", venue="k", ts=T0 + MINUTE))
    sol, eth = p.positions()
    assert (sol.kind, sol.currency, sol.qty, sol.mark) == ("spot", "USDC", 1.0, 120.0)
    assert (sol.realized_pnl, sol.unrealized_pnl, sol.margin_used) == (10.0, 20.0, 0.0)
    assert (eth.kind, eth.currency, eth.qty) == ("perpetual", "USD", -3.0)
    assert (eth.unrealized_pnl, eth.margin_used) == (30.0, 120.0)


def test_perpetual_short_pays_negative_funding_and_receives_positive() -> None:
    p = Portfolio(config(starting_cash=1_000.0, base_currency="USDT"))
    eth = "ETH/USDT:USDT"
    outputs(p, bar(1_000.0, symbol=eth))
    pos, _ = outputs(p, fill("sell", 2, 1_000.0, symbol=eth))
    assert pos.qty == -2
    paid, eq = outputs(p, funding(-0.0005, symbol=eth, ts=T0 + HOUR))  # shorts pay
    assert paid.funding == pytest.approx(1.0)
    assert eq.cash == pytest.approx(999.0)
    outputs(p, bar(900.0, symbol=eth, ts=T0 + 2 * HOUR))
    paid, eq = outputs(p, funding(0.001, symbol=eth, ts=T0 + 3 * HOUR))  # longs pay: short gets
    assert paid.funding == pytest.approx(1.0 - 1.8)
    assert eq.funding == pytest.approx(-0.8)
    assert eq.unrealized_pnl == pytest.approx(200.0)
    assert eq.equity == pytest.approx(1_000 + 200 + 0.8)
    assert eq.net_exposure == pytest.approx(-1_800.0)
    assert identity_gap(p, eq) == pytest.approx(0.0, abs=1e-9)


def test_funding_forecast_is_paid_once_at_its_time_on_the_position_then() -> None:
    p = Portfolio(config(base_currency="USDT"))
    outputs(p, bar(100.0, symbol=PERP))
    outputs(p, fill("buy", 10, 100.0, symbol=PERP))
    due = T0 + 8 * HOUR
    # Forecasts: the last one before the funding time counts.
    assert outputs(p, funding(0.002, ts=T0 + HOUR, next_time=due)) == []
    assert outputs(p, funding(0.001, ts=T0 + 2 * HOUR, next_time=due)) == []
    # A bar closing at the funding time is folded first (its close is the mark then).
    out = outputs(p, bar(110.0, symbol=PERP, ts=due))
    assert [type(e) for e in out] == [EquitySnapshot]
    # The first event after it pays: 10 x 110 x 0.001 = 1.1, before the fill is booked.
    out = outputs(p, fill("buy", 5, 110.0, symbol=PERP, ts=due + MINUTE))
    paid, pos, eq = out
    assert paid.funding == pytest.approx(1.1) and paid.qty == 10
    assert pos.qty == 15 and pos.funding == pytest.approx(1.1)
    assert eq.funding == pytest.approx(1.1)
    # The settlement for the same funding time arriving later is not paid again.
    assert outputs(p, funding(0.001, ts=due)) == []
    assert p.state.pending_funding == {} and p.state.next_funding == 0


def test_settlement_replaces_a_pending_forecast_for_the_same_time() -> None:
    p = Portfolio(config(base_currency="USDT"))
    outputs(p, bar(100.0, symbol=PERP))
    outputs(p, fill("buy", 1, 100.0, symbol=PERP))
    due = T0 + 8 * HOUR
    outputs(p, funding(0.003, ts=T0 + HOUR, next_time=due))
    paid, _ = outputs(p, funding(0.001, ts=due))  # the settled rate wins
    assert paid.funding == pytest.approx(0.1)
    assert outputs(p, bar(100.0, symbol=PERP, ts=due + MINUTE)) == [p.equity(due + MINUTE)]
    assert p.state.funding == {BASE: pytest.approx(0.1)}


def test_forecasts_for_two_funding_times_are_both_paid() -> None:
    p = Portfolio(config(base_currency="USDT"))
    outputs(p, bar(100.0, symbol=PERP))
    outputs(p, fill("buy", 1, 100.0, symbol=PERP))
    first, second = T0 + 8 * HOUR, T0 + 16 * HOUR
    outputs(p, funding(0.001, ts=T0 + HOUR, next_time=first))
    outputs(p, funding(0.002, ts=T0 + 2 * HOUR, next_time=second))
    paid, eq = outputs(p, bar(100.0, symbol=PERP, ts=first + MINUTE))
    assert isinstance(paid, PositionChanged) and paid.funding == pytest.approx(0.1)
    assert p.state.next_funding == second
    paid, eq = outputs(p, bar(100.0, symbol=PERP, ts=second + MINUTE))
    assert paid.funding == pytest.approx(0.3) and eq.funding == pytest.approx(0.3)
    assert p.state.pending_funding == {} and p.state.next_funding == 0


def test_funding_ignores_spot_and_flat_positions() -> None:
    p = Portfolio(config(base_currency="USDT"))
    outputs(p, fill("buy", 1, 100.0))
    assert outputs(p, funding(0.01, symbol="BTC/USDT")) == []  # spot: no funding
    assert outputs(p, funding(0.01, ts=T0 + HOUR)) == []  # no perpetual position
    eq = p.equity(T0 + HOUR)
    assert eq.funding == 0.0 and eq.net_exposure is None


# --- currencies ----------------------------------------------------------------------------------


def usdc_book() -> Portfolio:
    return Portfolio(
        config(
            starting_cash=0.0,
            base_currency="USD",
            venues={"cb": {"balances": {"USDC": 10_000.0}}},
        )
    )


def test_usdc_quoted_position_valued_through_a_usdc_usd_rate() -> None:
    p = usdc_book()
    assert p.config.initial_equity == 10_000.0
    _, eq = outputs(p, fill("buy", 1, 2_000.0, symbol="ETH/USDC", venue="cb", fee=2.0))
    # Before any USDC rate is seen, USDC counts at par.
    assert eq.equity == pytest.approx(9_998.0)
    assert p.state.fx.source["USDC"] == "par"
    eq = last_equity(outputs(p, bar(0.99, symbol="USDC/USD", venue="fx", ts=T0 + MINUTE)))
    assert p.state.fx.source["USDC"] == "direct"
    eq = last_equity(outputs(p, bar(2_100.0, symbol="ETH/USDC", venue="cb", ts=T0 + 2 * MINUTE)))
    assert eq.cash == pytest.approx(7_998 * 0.99)
    assert eq.equity == pytest.approx(7_998 * 0.99 + 2_100 * 0.99)
    assert eq.unrealized_pnl == pytest.approx(100 * 0.99)
    assert eq.fees == pytest.approx(2 * 0.99)
    assert eq.fx_pnl == pytest.approx(10_000 * (0.99 - 1.0))
    assert eq.gross_exposure == pytest.approx(2_100 * 0.99)
    assert eq.net_exposure is None and eq.net == pytest.approx(2_100 * 0.99)
    assert identity_gap(p, eq) == pytest.approx(0.0, abs=1e-9)
    # The inverse pair gives the rate too, the latest direct observation wins.
    outputs(p, bar(1 / 0.98, symbol="USD/USDC", venue="fx", ts=T0 + 3 * MINUTE))
    assert p.state.fx.rates["USDC"] == pytest.approx(0.98)


def test_cross_rate_through_a_shared_asset_and_its_precedence() -> None:
    p = Portfolio(config(base_currency="USD", venues={"k": {"balances": {"USDC": 1_000.0}}}))
    outputs(p, bar(30_300.0, symbol="BTC/USDC", venue="k", ts=T0))
    assert p.state.fx.rates["USDC"] == 1.0  # one leg only: still par
    outputs(p, bar(30_000.0, symbol="BTC/USD", venue="b", ts=T0))
    assert p.state.fx.rates["USDC"] == pytest.approx(30_000 / 30_300)
    assert p.state.fx.source["USDC"] == "cross"
    # A second asset: the median of the crosses (two: their mean).
    outputs(p, bar(2_000.0, symbol="ETH/USD", venue="b", ts=T0 + MINUTE))
    outputs(p, bar(2_000.0, symbol="ETH/USDC", venue="k", ts=T0 + MINUTE))
    assert p.state.fx.rates["USDC"] == pytest.approx((30_000 / 30_300 + 1.0) / 2)
    # Legs further apart than fx_max_skew (1m) are not used: BTC's are 3m old now.
    outputs(p, bar(1_900.0, symbol="ETH/USDC", venue="k", ts=T0 + 3 * MINUTE))
    outputs(p, bar(1_995.0, symbol="ETH/USD", venue="b", ts=T0 + 3 * MINUTE))
    assert p.state.fx.rates["USDC"] == pytest.approx(1_995 / 1_900)
    # A direct market wins over every cross.
    outputs(p, bar(0.97, symbol="USDC/USD", venue="fx", ts=T0 + 4 * MINUTE))
    outputs(p, bar(1_000.0, symbol="ETH/USD", venue="b", ts=T0 + 5 * MINUTE))
    assert p.state.fx.rates["USDC"] == 0.97
    assert p.state.fx.source["USDC"] == "direct"


def test_assumed_rate_until_one_is_observed_and_fees_in_another_currency() -> None:
    p = Portfolio(config(starting_cash=10_000.0, base_currency="USDT", rates={"BNB": 300.0}))
    _, eq = outputs(p, fill("buy", 1, 1_000.0, symbol="ETH/USDT", fee=0.01, fee_currency="BNB"))
    assert p.state.fx.source["BNB"] == "assumed"
    assert p.state.balances[""] == {BASE: 9_000.0, "BNB": -0.01}
    assert eq.fees == pytest.approx(3.0)  # 0.01 BNB at 300
    assert eq.equity == pytest.approx(10_000 - 3.0)
    eq = last_equity(outputs(p, bar(250.0, symbol="BNB/USDT", ts=T0 + MINUTE)))
    assert p.state.fx.source["BNB"] == "direct"
    assert eq.fees == pytest.approx(2.5)
    assert eq.equity == pytest.approx(10_000 - 2.5)
    assert identity_gap(p, eq) == pytest.approx(0.0, abs=1e-9)


def test_a_currency_tracked_late_uses_what_was_already_observed() -> None:
    p = Portfolio(config(base_currency="USDT"))
    outputs(p, bar(600.0, symbol="BNB/USDT"))
    outputs(p, fill("buy", 1, 100.0, symbol="SOL/USDT", fee=0.001, fee_currency="BNB"))
    assert p.state.fx.rates["BNB"] == 600.0 and p.state.fx.source["BNB"] == "direct"


def test_base_currency_defaults_to_the_first_quote_seen() -> None:
    p = Portfolio(PortfolioConfig(starting_cash=1_000.0))
    outputs(p, bar(10.0, symbol="ORCL"))  # no quote: priced in the base, whatever it is
    assert p.state.base == ""
    outputs(p, fill("buy", 1, 100.0, symbol="BTC/USD"))
    assert p.state.base == "USD"
    assert p.currency_name(BASE) == "USD"
    outputs(p, fill("buy", 2, 10.0, symbol="ORCL", ts=T0 + 1))
    assert p.state.balances == {"": {BASE: 1_000.0 - 100 - 20}}


# --- accounts ------------------------------------------------------------------------------------


def test_venues_with_their_own_accounts_and_the_shared_one() -> None:
    p = Portfolio(
        config(
            starting_cash=5_000.0,
            base_currency="USDT",
            venues={"bn": {"balances": {"USDT": 1_000.0}, "leverage": 10.0}},
        )
    )
    assert p.config.initial_equity == 6_000.0
    outputs(p, fill("buy", 1, 100.0, venue="bn"))
    outputs(p, fill("buy", 1, 100.0, venue="other"))
    assert p.state.balances == {"": {BASE: 4_900.0}, "bn": {BASE: 900.0}}
    outputs(p, bar(100.0, symbol=PERP, venue="bn"))
    pos, eq = outputs(p, fill("buy", 1, 100.0, symbol=PERP, venue="bn"))
    assert pos.margin_used == pytest.approx(10.0)
    assert p.state.positions[InstrumentId("bn", PERP)].leverage == 10.0
    assert eq.equity == pytest.approx(6_000.0)


def test_symbol_leverage_wins_and_short_spot_on_a_cash_account_is_flagged() -> None:
    p = Portfolio(
        config(
            base_currency="USDT",
            venues={
                "cash": {"balances": {"USDT": 100.0}},
                "m": {"margin": True, "leverage": 2.0, "symbol_leverage": {PERP: 4.0}},
            },
        )
    )
    outputs(p, fill("buy", 1, 100.0, symbol=PERP, venue="m"))
    assert p.state.positions[InstrumentId("m", PERP)].leverage == 4.0
    outputs(p, fill("sell", 1, 10.0, venue="cash"))  # a spot short on a cash account
    outputs(p, fill("sell", 1, 10.0, venue="m"))  # on a margin account: allowed
    outputs(p, fill("sell", 1, 10.0, venue="elsewhere"))  # the shared account is margin
    flags = {k.venue: v.short_breach for k, v in p.state.positions.items() if not v.perpetual}
    assert flags == {"cash": True, "m": False, "elsewhere": False}


def test_instrument_terms_change_only_while_flat() -> None:
    p = Portfolio(config(base_currency="USDT"))
    outputs(p, fill("buy", 2, 100.0, symbol=PERP))
    outputs(p, instrument(PERP, kind="perpetual", contract_size=0.1))
    assert p.state.positions[InstrumentId("test", PERP)].size == 1.0  # open: keeps its terms
    outputs(p, fill("sell", 2, 110.0, symbol=PERP))
    assert p.state.realized[BASE] == pytest.approx(20.0)
    outputs(p, fill("buy", 2, 110.0, symbol=PERP))  # re-opened: the new contract size
    assert p.state.positions[InstrumentId("test", PERP)].size == 0.1


def test_instruments_from_the_config_reach_the_portfolio_role(tmp_path) -> None:
    from services.config import load_config
    from services.fleet import fleet_roles

    path = tmp_path / "fleet.toml"
    path.write_text(
        '[portfolio]\nbase_currency = "USDT"\nleverage = 5.0\n\n'
        '[[instruments]]\nvenue = "test"\nsymbol = "ETH-PERP"\nbase = "ETH"\n'
        'quote = "USDT"\nkind = "perpetual"\ncontract_size = 0.1\nmax_leverage = 2.0\n'
    )
    (role,) = [r for r in fleet_roles(load_config(path)) if r.name == "portfolio"]
    assert {i.stream: i.subjects for i in role.inputs}["MARKET"] == (
        "md.bar.>",
        "md.funding.>",
        "md.instrument.>",
    )
    p = role.decider
    assert isinstance(p, Portfolio)
    pos, eq = outputs(p, fill("buy", 10, 2_000.0, symbol="ETH-PERP"))
    assert pos.margin_used == pytest.approx(10 * 0.1 * 2_000 / 2)  # capped at 2x
    assert eq.net_exposure == pytest.approx(2_000.0)


# --- attribution ---------------------------------------------------------------------------------


def test_attribution_per_strategy_and_model_tag() -> None:
    p = Portfolio(config(starting_cash=10_000.0, base_currency="USDT", attribution_every=2))
    outputs(p, fill("buy", 2, 100.0, strategy="s1", model_tag="a"))
    outputs(p, fill("sell", 1, 110.0, strategy="s2", model_tag="x", fee=1.0))
    outputs(p, fill("sell", 1, 120.0, strategy="s1", model_tag="b"))
    assert outputs(p, bar(130.0, ts=T0 + MINUTE))[1:] == []  # first bar: not yet
    out = outputs(p, bar(130.0, ts=T0 + 2 * MINUTE))
    eq, *rows = out
    # The account nets the strategies: flat, 10 + 20 realized.
    assert eq.realized_pnl == pytest.approx(30.0) and eq.unrealized_pnl == 0.0
    got = {(r.strategy, r.model_tag): r for r in rows}
    assert list(got) == [("s1", ""), ("s2", ""), ("s1", "a"), ("s2", "x"), ("s1", "b")]
    s1, s2 = got["s1", ""], got["s2", ""]
    assert (s1.realized_pnl, s1.unrealized_pnl, s1.positions) == (20.0, 30.0, 1)
    assert (s2.realized_pnl, s2.unrealized_pnl, s2.fees) == (0.0, -20.0, 1.0)
    assert s2.net_exposure == -130.0 and s2.gross_exposure == 130.0
    assert got["s1", "a"].pnl == 60.0
    assert got["s1", "b"].pnl == -10.0
    assert got["s2", "x"].pnl == -21.0
    assert s1.pnl == got["s1", "a"].pnl + got["s1", "b"].pnl
    # Total PnL adds up across books, whatever the realized/unrealized split.
    total = eq.realized_pnl + eq.unrealized_pnl - eq.fees - eq.funding
    assert s1.pnl + s2.pnl == pytest.approx(total)
    assert all(r.ts == T0 + 2 * MINUTE for r in rows)


def test_attribution_shares_funding_by_position() -> None:
    p = Portfolio(config(base_currency="USDT"))
    outputs(p, bar(100.0, symbol=PERP))
    outputs(p, fill("buy", 3, 100.0, symbol=PERP, strategy="a"))
    outputs(p, fill("sell", 1, 100.0, symbol=PERP, strategy="b"))
    outputs(p, funding(0.01, ts=T0 + HOUR))  # account: +2 pays 2.0
    rows = {r.strategy: r for r in p.attribution(T0 + HOUR) if not r.model_tag}
    assert rows["a"].funding == pytest.approx(3.0) and rows["b"].funding == pytest.approx(-1.0)
    assert p.equity(T0 + HOUR).funding == pytest.approx(2.0)


# --- one spot venue in one currency, by hand ------------------------------------------------------


def position(qty: float, avg: float, realized: float, ts: int) -> PositionChanged:
    return PositionChanged(
        ts=ts,
        venue="test",
        symbol="BTC/USDT",
        qty=qty,
        avg_price=avg,
        realized_pnl=realized,
        strategy="s1",
    )


def spot_equity(
    ts: int,
    cash: float,
    equity: float,
    realized: float,
    unrealized: float,
    fees: float,
    gross: float,
) -> EquitySnapshot:
    return EquitySnapshot(
        ts=ts,
        cash=cash,
        equity=equity,
        realized_pnl=realized,
        unrealized_pnl=unrealized,
        fees=fees,
        gross_exposure=gross,
    )


def test_a_spot_book_by_hand_buy_partial_sell_flip_and_close() -> None:
    """Every figure worked out on paper (multiples of 0.25, so exact in binary)."""
    p = Portfolio(PortfolioConfig(starting_cash=1_000.0))
    t = [T0 + i * MINUTE for i in range(6)]
    # Buy 2 at 100, fee 0.5: cash 1000 - 200 - 0.5; marked at the fill price until a bar.
    assert p.decide(fill("buy", 2, 100.0, fee=0.5, ts=t[0]), t[0]) == [
        position(2.0, 100.0, 0.0, t[0]),
        spot_equity(t[0], 799.5, 999.5, 0.0, 0.0, 0.5, 200.0),
    ]
    # A bar at 110: 2 x 10 unrealized.
    assert p.decide(bar(110.0, ts=t[1]), t[1]) == [
        spot_equity(t[1], 799.5, 1_019.5, 0.0, 20.0, 0.5, 220.0)
    ]
    # Sell 0.5 at 120, fee 0.25: realizes 0.5 x 20 = 10; 1.5 left at 100, marked at 110.
    assert p.decide(fill("sell", 0.5, 120.0, fee=0.25, ts=t[2]), t[2]) == [
        position(1.5, 100.0, 10.0, t[2]),
        spot_equity(t[2], 859.25, 1_024.25, 10.0, 15.0, 0.75, 165.0),
    ]
    # Sell 3.5 at 130, fee 1: closes 1.5 for 1.5 x 30 = 45, opens a short of 2 at 130.
    assert p.decide(fill("sell", 3.5, 130.0, fee=1.0, ts=t[3]), t[3]) == [
        position(-2.0, 130.0, 55.0, t[3]),
        spot_equity(t[3], 1_313.25, 1_093.25, 55.0, 40.0, 1.75, 220.0),
    ]
    # A bar at 125: the short is up 2 x 5.
    assert p.decide(bar(125.0, ts=t[4]), t[4]) == [
        spot_equity(t[4], 1_313.25, 1_063.25, 55.0, 10.0, 1.75, 250.0)
    ]
    # Buy 2 at 125, fee 0.5: closes the short for 2 x 5 = 10; flat, all in cash.
    out = p.decide(fill("buy", 2, 125.0, fee=0.5, ts=t[5]), t[5])
    assert out == [
        position(0.0, 0.0, 65.0, t[5]),
        spot_equity(t[5], 1_062.75, 1_062.75, 65.0, 0.0, 2.25, 0.0),
    ]
    # 1000 + 65 realized - 2.25 fees; a spot book in one currency leaves the margin,
    # funding, FX and net-exposure fields out of its events.
    for name in ("margin_used", "funding", "fx_pnl", "net_exposure"):
        assert all(f'"{name}"' not in encode(e).decode() for e in out)


# --- round trips (properties) ------------------------------------------------------------------

prices = st.floats(min_value=0.01, max_value=10_000.0, allow_nan=False, allow_infinity=False)
qtys = st.floats(min_value=1e-4, max_value=1_000.0, allow_nan=False, allow_infinity=False)
fee_rates = st.floats(min_value=0.0, max_value=0.01)


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(
    cash=st.floats(min_value=1.0, max_value=1e7),
    qty=qtys,
    entry=prices,
    exit_=prices,
    fee_rate=fee_rates,
    short=st.booleans(),
)
def test_a_round_trip_realizes_the_price_move_less_fees(
    cash: float, qty: float, entry: float, exit_: float, fee_rate: float, short: bool
) -> None:
    """Open and close one position: realized = (exit - entry) x qty (negated for a short),
    fees are both fills' fees, and equity = starting cash + realized - fees, flat."""
    p = Portfolio(PortfolioConfig(starting_cash=cash))
    fees = (qty * entry * fee_rate, qty * exit_ * fee_rate)
    opening, closing = ("sell", "buy") if short else ("buy", "sell")
    p.decide(fill(opening, qty, entry, fee=fees[0]), T0)
    p.decide(bar(exit_, ts=T0 + MINUTE), T0 + MINUTE)
    pos, eq = p.decide(fill(closing, qty, exit_, fee=fees[1], ts=T0 + 2 * MINUTE), T0)
    move = (exit_ - entry) * qty * (-1.0 if short else 1.0)
    scale = cash + qty * (entry + exit_)
    assert isinstance(pos, PositionChanged) and isinstance(eq, EquitySnapshot)
    assert (pos.qty, pos.avg_price) == (0.0, 0.0)
    assert math.isclose(pos.realized_pnl, move, rel_tol=0, abs_tol=1e-12 * scale)
    assert math.isclose(eq.realized_pnl, move, rel_tol=0, abs_tol=1e-12 * scale)
    assert math.isclose(eq.fees, sum(fees), rel_tol=1e-12, abs_tol=1e-300)
    assert (eq.unrealized_pnl, eq.gross_exposure) == (0.0, 0.0)
    assert eq.equity == eq.cash
    assert math.isclose(eq.equity, cash + move - sum(fees), rel_tol=0, abs_tol=1e-9 * scale)


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(
    cash=st.floats(min_value=1.0, max_value=1e7),
    legs=st.lists(st.tuples(qtys, fee_rates), min_size=1, max_size=8),
    price=prices,
    later=prices,
)
def test_round_trips_at_one_price_cost_exactly_their_fees(
    cash: float, legs: list[tuple[float, float]], price: float, later: float
) -> None:
    """Buying and selling the same quantities at one price changes equity by the fees only,
    and a later price moves nothing once flat."""
    p = Portfolio(PortfolioConfig(starting_cash=cash))
    fees = 0.0
    ts = T0
    for qty, fee_rate in legs:
        for side in ("buy", "sell"):
            ts += MINUTE
            fee = qty * price * fee_rate
            fees += fee
            p.decide(fill(side, qty, price, fee=fee, ts=ts), ts)
    eq = p.equity(ts)
    scale = cash + sum(qty for qty, _ in legs) * price
    assert abs(eq.realized_pnl) <= 1e-12 * scale  # the average cost is rounded
    assert math.isclose(eq.equity, cash - fees, rel_tol=0, abs_tol=1e-9 * scale)
    (after,) = p.decide(bar(later, ts=ts + MINUTE), ts + MINUTE)
    assert isinstance(after, EquitySnapshot)
    assert after.equity == eq.equity and after.gross_exposure == 0.0


# --- conservation of value (property) ------------------------------------------------------------

# Base USD. Venue "a" shares the default account (USD cash); venue "b" has its own (USDT and
# USDC). Spot in three quotes, perpetuals in two (one with 10-unit contracts), fees in the
# quote or in BNB, FX from direct pairs and from a BTC cross.
MARKETS = {
    "BTC/USDT": ("b", "USDT"),
    "ETH/USDC": ("b", "USDC"),
    "SOL/USD": ("a", "USD"),
    "BTC/USDT:USDT": ("a", "USDT"),
    "SOL/USDC:USDC": ("b", "USDC"),
}
FX_BARS = ("USDT/USD", "USD/USDC", "BNB/USDT", "BTC/USD")
PROPERTY_CONFIG = config(
    starting_cash=50_000.0,
    base_currency="USD",
    leverage=3.0,
    rates={"BNB": 500.0},
    venues={"b": {"balances": {"USDT": 20_000.0, "USDC": 5_000.0, "BNB": 1.0}, "margin": True}},
    attribution_every=5,
    snapshot_every=7,
)
INSTRUMENTS = (instrument("SOL/USDC:USDC", venue="b", kind="perpetual", contract_size=10.0),)

rates = st.floats(min_value=0.5, max_value=2.0, allow_nan=False)
market = st.sampled_from(sorted(MARKETS))
op_fill = st.tuples(
    st.just("fill"),
    market,
    st.sampled_from(["buy", "sell"]),
    st.floats(min_value=0.01, max_value=50.0),
    prices,
    st.floats(min_value=0.0, max_value=5.0),
    st.booleans(),
    st.sampled_from(["s1", "s2", "s3"]),
    st.sampled_from(["", "v1", "v2"]),
)
op_bar = st.tuples(st.just("bar"), market, prices)
op_fx = st.tuples(st.just("fx"), st.sampled_from(FX_BARS), rates)
op_funding = st.tuples(
    st.just("funding"),
    st.sampled_from(["BTC/USDT:USDT", "SOL/USDC:USDC"]),
    st.floats(min_value=-0.01, max_value=0.01),
    st.booleans(),
)
script_of = st.lists(
    st.one_of(op_fill, op_fill, op_bar, op_bar, op_fx, op_funding), min_size=1, max_size=60
)


def to_events(script: list[tuple]) -> list[tuple[Event, int]]:
    out: list[tuple[Event, int]] = []
    ts = T0
    for op in script:
        ts += MINUTE
        kind = op[0]
        if kind == "fill":
            _, symbol, side, qty, price, fee, in_bnb, strategy, tag = op
            venue = MARKETS[symbol][0]
            event: Event = fill(
                side,
                qty,
                price,
                symbol=symbol,
                venue=venue,
                fee=fee / 100 if in_bnb else fee,
                fee_currency="BNB" if in_bnb else "",
                strategy=strategy,
                model_tag=tag,
                ts=ts,
            )
        elif kind == "bar":
            event = bar(op[2], symbol=op[1], venue=MARKETS[op[1]][0], ts=ts)
        elif kind == "fx":
            symbol, rate = op[1], op[2]
            close = {"BNB/USDT": rate * 400, "BTC/USD": rate * 30_000}.get(symbol, rate)
            event = bar(close, symbol=symbol, venue="fx", ts=ts)
        else:
            _, symbol, rate, forecast = op
            event = funding(
                rate,
                symbol=symbol,
                venue=MARKETS[symbol][0],
                ts=ts,
                next_time=ts + 30 * 1_000_000_000 if forecast else 0,
            )
        out.append((event, ts))
    return out


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(script=script_of)
def test_accounting_conserves_value(script: list[tuple]) -> None:
    """cash + positions at mark = starting balances + realized + unrealized - fees - funding,
    in the base currency at the current rates, after every event; and the books of the
    strategies and of the model tags add up to the account's PnL."""
    p = Portfolio(PROPERTY_CONFIG, INSTRUMENTS)
    for event, now in to_events(script):
        p.decide(event, now)
        eq = p.equity(now)
        state, fx = p.state, p.state.fx.rates
        positions = state.positions.values()
        spot = sum(q.qty * q.mark * fx[q.currency] for q in positions if not q.perpetual)
        perp = sum(
            q.qty * q.size * (q.mark - q.avg_price) * fx[q.currency]
            for q in positions
            if q.perpetual
        )
        scale = max(
            1.0,
            p.config.initial_equity,
            *(abs(v) * 2 for acct in state.balances.values() for v in acct.values()),
            *(abs(q.qty * q.size * max(q.mark, q.avg_price)) * 2 for q in positions),
            *(abs(v) * 2 for v in state.realized.values()),
        )
        tolerance = 1e-9 * scale
        assert math.isclose(eq.equity, eq.cash + spot + perp, rel_tol=0, abs_tol=tolerance)
        assert abs(identity_gap(p, eq)) <= tolerance, (eq, identity_gap(p, eq))
        # Starting balances at current rates = initial equity + fx_pnl.
        start_now = 50_000.0 + sum(
            amount * fx[BASE if c == "USD" else c]
            for c, amount in PROPERTY_CONFIG.venues["b"].balances.items()
        )
        assert math.isclose(start_now, p.config.initial_equity + eq.fx_pnl, abs_tol=tolerance)
        assert eq.gross_exposure >= abs(eq.net) - tolerance
        total = eq.realized_pnl + eq.unrealized_pnl - eq.fees - eq.funding
        rows = p.attribution(now)
        n = len(state.strategies)
        assert all(not r.model_tag for r in rows[:n])
        by_strategy = sum(r.pnl for r in rows[:n])
        by_tag = sum(r.pnl for r in rows[n:])
        assert math.isclose(by_strategy, total, rel_tol=0, abs_tol=10 * tolerance)
        assert math.isclose(by_tag, total, rel_tol=0, abs_tol=10 * tolerance)


# --- snapshots -----------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(script=script_of, cut=st.floats(min_value=0.0, max_value=1.0))
def test_snapshot_plus_tail_equals_the_full_rebuild(script: list[tuple], cut: float) -> None:
    events = to_events(script)
    full = rebuild(PROPERTY_CONFIG, events, instruments=INSTRUMENTS)
    k = int(cut * len(events))
    head = rebuild(PROPERTY_CONFIG, events[:k], instruments=INSTRUMENTS)
    resumed = rebuild(PROPERTY_CONFIG, events, head.snapshot(), instruments=INSTRUMENTS)
    assert resumed.snapshot() == full.snapshot()
    assert resumed.state.events == len(events)
    # ...and it keeps deciding the same outputs.
    probe = bar(123.0, symbol="ETH/USDC", venue="b", ts=T0 + 10**6 * MINUTE)
    assert [encode(e) for e in resumed.decide(probe, probe.ts)] == [
        encode(e) for e in full.decide(probe, probe.ts)
    ]


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(script=script_of)
def test_the_totals_kept_between_events_equal_a_fresh_valuation(script: list[tuple]) -> None:
    """After every event, the equity of a portfolio that kept its totals and open positions
    across events equals, to the bit, that of one restored from its snapshot (nothing kept)."""
    p = Portfolio(PROPERTY_CONFIG, INSTRUMENTS)
    for event, now in to_events(script):
        p.decide(event, now)
        fresh = Portfolio(PROPERTY_CONFIG, INSTRUMENTS)
        fresh.restore(p.snapshot())
        assert encode(fresh.equity(now)) == encode(p.equity(now))


def test_snapshot_policy_every_n_events() -> None:
    events = to_events(
        [("bar", "BTC/USDT", 100.0 + i) for i in range(20)]
        + [("fill", "BTC/USDT", "buy", 1.0, 100.0, 0.1, False, "s1", "")]
    )
    p = Portfolio(PROPERTY_CONFIG, INSTRUMENTS)
    taken = list(fold(p, events))
    assert [k for k, _ in taken] == [7, 14, 21]
    for _, snap in taken:
        assert rebuild(PROPERTY_CONFIG, events, snap, INSTRUMENTS).snapshot() == p.snapshot()


def test_snapshot_round_trip_random_cuts() -> None:
    rng = random.Random(5)
    script: list[tuple] = []
    for i in range(200):
        symbol = rng.choice(sorted(MARKETS))
        if i % 3 == 0:
            side = rng.choice(["buy", "sell"])
            script.append(("fill", symbol, side, 1.0, 100.0 + i, 0.1, i % 2 == 0, "s1", "t"))
        else:
            script.append(("bar", symbol, 90.0 + rng.random() * 20))
    events = to_events(script)
    full = rebuild(PROPERTY_CONFIG, events, instruments=INSTRUMENTS).snapshot()
    for k in rng.sample(range(len(events)), 10):
        head = rebuild(PROPERTY_CONFIG, events[:k], instruments=INSTRUMENTS).snapshot()
        assert rebuild(PROPERTY_CONFIG, events, head, INSTRUMENTS).snapshot() == full


def test_a_snapshot_that_does_not_decode_is_an_error_and_changes_nothing() -> None:
    p = Portfolio(PortfolioConfig(starting_cash=1_000.0))
    p.decide(fill("buy", 1.0, 10.0), T0)
    before = p.snapshot()
    other_layout = msgspec.msgpack.encode({"cash": 990.0, "realized": 0.0, "positions": {}})
    with pytest.raises(msgspec.ValidationError):
        p.restore(other_layout)
    with pytest.raises(msgspec.DecodeError):
        p.restore(before[: len(before) // 2])
    assert p.snapshot() == before
    assert Portfolio.snapshot_version == 1


# --- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"starting_cash": 0.0}, "starting_cash must be > 0"),
        ({"starting_cash": -1.0}, "`float` >= 0.0 - at `$.starting_cash`"),
        ({"starting_cash": math.inf}, "starting_cash must be finite"),
        ({"leverage": 0.0}, "`float` > 0.0 - at `$.leverage`"),
        ({"snapshot_every": 0}, "`int` >= 1 - at `$.snapshot_every`"),
        ({"attribution_every": -1}, "`int` >= 0 - at `$.attribution_every`"),
        ({"fx_max_skew": "soon"}, "fx_max_skew ('soon') must be a duration"),
        ({"rates": {"BNB": 0.0}}, "`float` > 0.0 - at `$.rates[...]`"),
        ({"base_currency": "USD", "rates": {"": 2.0}}, "length >= 1 - at `key` in `$.rates`"),
        ({"venues": {"x": {"balances": {"USDC": 1.0}}}}, "base_currency must be set"),
        (
            {"base_currency": "USD", "venues": {"x": {"balances": {"USDC": -1.0}}}},
            "`float` >= 0.0 - at `$.venues[...].balances[...]`",
        ),
        (
            {"base_currency": "USD", "venues": {"x": {"balances": {"USDC": math.inf}}}},
            "balances must be finite",
        ),
        ({"base_currency": "USD", "rates": {"USD": 2.0}}, "rates.USD"),
        ({"venues": {"x": {"leverage": -2.0}}}, "`float` > 0.0 - at `$.venues[...].leverage`"),
        ({"venues": {"x": {"symbol_leverage": {PERP: 0.0}}}}, "symbol_leverage"),
        ({"venues": {"x": {"lever": 2.0}}}, "lever"),
    ],
)
def test_bad_config_names_the_key(raw: dict, message: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=re.escape(message)):
        msgspec.convert(raw, PortfolioConfig)


def test_starting_cash_may_be_zero_when_venues_hold_balances() -> None:
    cfg = config(starting_cash=0.0, base_currency="EUR", venues={"x": {"balances": {"EUR": 5.0}}})
    assert cfg.initial_equity == 5.0
    assert cfg.venues["x"] == VenueAccount(balances={"EUR": 5.0})
