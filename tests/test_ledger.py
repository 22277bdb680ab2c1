"""The portfolio ledger: average cost, flips, cash and equity, and its accounting invariant."""

from __future__ import annotations

import math
import re

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.events import Bar, EquitySnapshot, ExecutionReport, PositionChanged
from contracts.keys import InstrumentId
from services.portfolio.accounts import Portfolio
from services.portfolio.config import PortfolioConfig
from services.portfolio.positions import Position
from tests.factories import BTC, MINUTE, T0, VENUE, bar, fill


def position_event(ledger: Portfolio, event: ExecutionReport) -> PositionChanged:
    """A fill gives the position it leaves, then the equity after it."""
    out = ledger.decide(event, T0)
    assert len(out) == 2, out
    position, equity = out
    assert isinstance(position, PositionChanged) and isinstance(equity, EquitySnapshot)
    assert equity == ledger.equity(T0)
    return position


def equity_event(ledger: Portfolio, event: Bar, now: int = T0 + MINUTE) -> EquitySnapshot:
    out = ledger.decide(event, now)
    assert len(out) == 1 and isinstance(out[0], EquitySnapshot), out
    return out[0]


def test_hand_computation() -> None:
    ledger = Portfolio(PortfolioConfig(starting_cash=1000.0))
    short = position_event(ledger, fill("sell", 1.0, 10.0, fee=0.01))
    assert (short.qty, short.avg_price, short.realized_pnl) == (-1.0, 10.0, 0.0)
    assert ledger.equity(T0).cash == pytest.approx(1009.99, rel=1e-12)

    # Buy 2 @ 12: closes the short for (10 - 12) * 1 = -2, then opens +1 at 12.
    flipped = position_event(ledger, fill("buy", 2.0, 12.0, fee=0.024))
    assert flipped.qty == pytest.approx(1.0, rel=1e-9)
    assert flipped.avg_price == pytest.approx(12.0, rel=1e-9)
    assert flipped.realized_pnl == pytest.approx(-2.0, rel=1e-9)
    assert (flipped.venue, flipped.symbol, flipped.strategy, flipped.ts) == (
        VENUE,
        BTC,
        "s1",
        T0,
    )

    eq = equity_event(ledger, bar(12.0))
    assert eq.cash == pytest.approx(985.966, rel=1e-9)
    assert eq.equity == pytest.approx(997.966, rel=1e-9)
    assert eq.realized_pnl == pytest.approx(-2.0, rel=1e-9)
    assert eq.unrealized_pnl == pytest.approx(0.0, abs=1e-9)
    assert eq.fees == pytest.approx(0.034, rel=1e-9)
    assert eq.gross_exposure == pytest.approx(12.0, rel=1e-9)
    assert eq.ts == T0 + MINUTE
    # 1000 + (-2) + 0 - 0.034 == 997.966
    assert eq.equity == pytest.approx(1000 + eq.realized_pnl + eq.unrealized_pnl - eq.fees)


def test_add_to_position_averages_cost() -> None:
    ledger = Portfolio(PortfolioConfig(starting_cash=10_000.0))
    position_event(ledger, fill("buy", 1.0, 100.0))
    pos = position_event(ledger, fill("buy", 3.0, 120.0))
    assert pos.qty == 4.0
    assert pos.avg_price == pytest.approx((100.0 + 360.0) / 4, rel=1e-12)  # 115
    assert pos.realized_pnl == 0.0
    eq = equity_event(ledger, bar(130.0))
    assert eq.unrealized_pnl == pytest.approx(4 * (130 - 115), rel=1e-12)
    assert eq.equity == pytest.approx(10_000 - 460 + 4 * 130, rel=1e-12)


def test_add_to_short_averages_cost() -> None:
    ledger = Portfolio(PortfolioConfig(starting_cash=1_000.0))
    position_event(ledger, fill("sell", 2.0, 50.0))
    pos = position_event(ledger, fill("sell", 2.0, 40.0))
    assert (pos.qty, pos.avg_price) == (-4.0, pytest.approx(45.0))
    eq = equity_event(ledger, bar(30.0))
    assert eq.unrealized_pnl == pytest.approx(-4 * (30 - 45))  # +60 for the short
    assert eq.equity == pytest.approx(1_000 + 60)


def test_partial_close_realizes_pro_rata_and_keeps_average() -> None:
    ledger = Portfolio(PortfolioConfig(starting_cash=1_000.0))
    position_event(ledger, fill("buy", 4.0, 10.0))
    pos = position_event(ledger, fill("sell", 1.5, 14.0, fee=0.5))
    assert pos.qty == pytest.approx(2.5)
    assert pos.avg_price == 10.0
    assert pos.realized_pnl == pytest.approx(1.5 * 4.0)
    eq = equity_event(ledger, bar(12.0))
    assert eq.realized_pnl == pytest.approx(6.0)
    assert eq.unrealized_pnl == pytest.approx(2.5 * 2.0)
    assert eq.fees == 0.5
    assert eq.cash == pytest.approx(1_000 - 40 + 21 - 0.5)
    assert eq.equity == pytest.approx(1_000 + 6 + 5 - 0.5)


def test_full_close_resets_position() -> None:
    ledger = Portfolio(PortfolioConfig(starting_cash=1_000.0))
    position_event(ledger, fill("sell", 3.0, 20.0))
    pos = position_event(ledger, fill("buy", 3.0, 15.0))
    assert (pos.qty, pos.avg_price) == (0.0, 0.0)
    assert pos.realized_pnl == pytest.approx(15.0)
    eq = equity_event(ledger, bar(99.0))
    assert eq.unrealized_pnl == 0.0
    assert eq.gross_exposure == 0.0
    assert eq.equity == pytest.approx(1_015.0)
    # Re-opening after flat starts a fresh average.
    again = position_event(ledger, fill("buy", 1.0, 7.0))
    assert (again.qty, again.avg_price) == (1.0, 7.0)


def test_flip_long_to_short() -> None:
    ledger = Portfolio(PortfolioConfig(starting_cash=1_000.0))
    position_event(ledger, fill("buy", 2.0, 10.0))
    pos = position_event(ledger, fill("sell", 5.0, 8.0))
    assert pos.qty == pytest.approx(-3.0)
    assert pos.avg_price == 8.0
    assert pos.realized_pnl == pytest.approx(2 * (8 - 10))
    eq = equity_event(ledger, bar(9.0))
    assert eq.unrealized_pnl == pytest.approx(-3 * (9 - 8))
    assert eq.equity == pytest.approx(1_000 - 4 - 3)


def test_symbols_are_separate_and_bars_mark_only_their_symbol() -> None:
    ledger = Portfolio(PortfolioConfig(starting_cash=1_000.0))
    position_event(ledger, fill("buy", 1.0, 100.0, symbol="BTC/USDT"))
    position_event(ledger, fill("sell", 2.0, 10.0, symbol="ETH/USDT"))
    eq = equity_event(ledger, bar(110.0, symbol="BTC/USDT"))
    # BTC marked at 110, ETH still at its fill price 10.
    assert eq.unrealized_pnl == pytest.approx(10.0)
    assert eq.gross_exposure == pytest.approx(110 + 20)
    eq = equity_event(ledger, bar(12.0, symbol="ETH/USDT"))
    assert eq.unrealized_pnl == pytest.approx(10.0 - 4.0)
    # A bar for a symbol never traded still reports equity and adds no position.
    eq = equity_event(ledger, bar(1.0, symbol="DOGE/USDT"))
    assert eq.equity == pytest.approx(1_000 + 6)
    assert set(ledger.state.positions) == {
        InstrumentId(VENUE, "BTC/USDT"),
        InstrumentId(VENUE, "ETH/USDT"),
    }


def test_reports_without_a_fill_are_ignored() -> None:
    ledger = Portfolio(PortfolioConfig(starting_cash=1_000.0))
    for status in ("accepted", "canceled", "rejected"):
        report = fill("buy", 1.0, 10.0, status=status)
        empty = ExecutionReport(
            ts=report.ts,
            status=report.status,
            client_order_id="o",
            strategy="s1",
            venue=VENUE,
            symbol=BTC,
            side="buy",
            order_qty=1.0,
        )
        assert ledger.decide(empty, T0) == []
    assert ledger.state.positions == {}
    assert ledger.equity(T0).cash == 1_000.0


def test_partially_filled_report_counts() -> None:
    ledger = Portfolio(PortfolioConfig(starting_cash=1_000.0))
    pos = position_event(ledger, fill("buy", 0.5, 10.0, status="partially_filled"))
    assert pos.qty == 0.5


@pytest.mark.parametrize(
    ("bad", "message"),
    [(0.0, "starting_cash must be > 0"), (-1.0, "`float` >= 0.0 - at `$.starting_cash`")],
)
def test_config_validation(bad: float, message: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=re.escape(message)):
        msgspec.convert({"starting_cash": bad}, PortfolioConfig)


def test_snapshot_restore_round_trip() -> None:
    ledger = Portfolio(PortfolioConfig(starting_cash=1_000.0))
    position_event(ledger, fill("sell", 1.0, 10.0, fee=0.01))
    position_event(ledger, fill("buy", 0.25, 11.0, fee=0.01, symbol="ETH/USDT"))
    equity_event(ledger, bar(9.0))

    restored = Portfolio(PortfolioConfig(starting_cash=1_000.0))
    restored.restore(ledger.snapshot())
    assert restored.state == ledger.state
    assert restored.snapshot() == ledger.snapshot()

    later = [fill("buy", 2.0, 12.0, fee=0.024), bar(12.5), bar(10.0, symbol="ETH/USDT")]
    assert [restored.decide(e, T0 + 9) for e in later] == [ledger.decide(e, T0 + 9) for e in later]
    assert restored.equity(T0) == ledger.equity(T0)


def test_position_apply_fill_returns_realized() -> None:
    p = Position()
    assert p.apply_fill(2.0, 10.0) == 0.0
    assert p.apply_fill(-3.0, 13.0) == pytest.approx(6.0)
    assert (p.qty, p.avg_price, p.realized) == (pytest.approx(-1.0), 13.0, pytest.approx(6.0))


# --- property -----------------------------------------------------------------------------------

SYMBOLS = ("BTC/USDT", "ETH/USDT")
prices = st.floats(min_value=0.01, max_value=10_000.0, allow_nan=False, allow_infinity=False)
qtys = st.floats(min_value=1e-4, max_value=1_000.0, allow_nan=False, allow_infinity=False)
fill_op = st.tuples(
    st.just("fill"),
    st.sampled_from(SYMBOLS),
    st.sampled_from(["buy", "sell"]),
    qtys,
    prices,
    st.floats(min_value=0.0, max_value=50.0),
)
bar_op = st.tuples(st.just("bar"), st.sampled_from(SYMBOLS), prices)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(
    starting_cash=st.floats(min_value=1.0, max_value=1e7),
    script=st.lists(st.one_of(fill_op, fill_op, bar_op), min_size=1, max_size=40),
)
def test_equity_invariants(starting_cash: float, script: list[tuple]) -> None:
    ledger = Portfolio(PortfolioConfig(starting_cash=starting_cash))
    fees = 0.0
    cash = starting_cash
    ts = T0
    for op in script:
        ts += MINUTE
        if op[0] == "fill":
            _, symbol, side, qty, price, fee_bps = op
            fee = price * qty * fee_bps / 1e4
            fees += fee
            cash -= (qty if side == "buy" else -qty) * price + fee
            ledger.decide(fill(side, qty, price, fee=fee, symbol=symbol), ts)
        else:
            _, symbol, price = op
            ledger.decide(bar(price, symbol=symbol, ts=ts), ts)

        eq = ledger.equity(ts)
        positions = ledger.state.positions.values()
        marked = sum(p.qty * p.mark for p in positions)
        # Scale for the relative tolerance: the largest magnitude that went into the sums.
        scale = max(
            1.0,
            abs(starting_cash),
            abs(cash),
            fees,
            abs(eq.realized_pnl),
            sum(abs(p.qty * p.mark) + abs(p.qty * p.avg_price) for p in positions),
        )
        assert math.isclose(eq.equity, eq.cash + marked, rel_tol=0, abs_tol=1e-9 * scale)
        expected = starting_cash + eq.realized_pnl + eq.unrealized_pnl - eq.fees
        assert math.isclose(eq.equity, expected, rel_tol=0, abs_tol=1e-6 * scale), (
            eq,
            expected,
        )
        # The ledger's cash and fees agree with an independent running total.
        assert math.isclose(eq.cash, cash, rel_tol=0, abs_tol=1e-9 * scale)
        assert math.isclose(eq.fees, fees, rel_tol=1e-12, abs_tol=1e-12)
        assert eq.gross_exposure >= 0
        assert eq.realized_pnl == pytest.approx(
            sum(p.realized for p in positions), abs=1e-9 * scale
        )
