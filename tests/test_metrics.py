"""Backtest metrics: hand-computed cases for each definition, FIFO trades, and agreement with
the portfolio ledger's realized PnL."""

from __future__ import annotations

import math
from functools import partial

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.events import EquitySnapshot, ExecutionReport
from contracts.intervals import periods_per_year
from replay.metrics import (
    CURVE_DTYPE,
    EquityPoint,
    Metrics,
    Trade,
    compute_metrics,
    curve_metrics,
    curve_points,
    equity_curve,
    max_drawdown_pct,
    returns,
    sharpe,
    sortino,
    trade_stats,
    trades_from_fills,
)
from services.portfolio.accounts import Portfolio
from services.portfolio.config import PortfolioConfig
from tests import factories
from tests.factories import BTC, VENUE, equity_snapshot

ETH = "ETH/USDT"

fill = partial(factories.fill, ts=0)


def metrics(snapshots=(), fills=(), starting_cash=100.0, interval="1d", **kw) -> Metrics:
    return compute_metrics(
        snapshots=snapshots,
        fills=fills,
        starting_cash=starting_cash,
        interval=interval,
        bars=kw.pop("bars", 0),
        signals=kw.pop("signals", 0),
        orders=kw.pop("orders", 0),
        **kw,
    )


def assert_json_safe(m: Metrics) -> None:
    for field in m.__struct_fields__:
        value = getattr(m, field)
        assert value is None or math.isfinite(value), (field, value)
    assert msgspec.json.decode(msgspec.json.encode(m), type=Metrics) == m


# --- periods_per_year ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("interval", "expected"),
    [
        ("1s", 365 * 24 * 3600),  # 31_536_000
        ("30s", 365 * 24 * 3600 / 30),
        ("1m", 525_600),  # 365 * 24 * 60
        ("5m", 105_120),  # 525_600 / 5
        ("15m", 35_040),
        ("1h", 8_760),  # 365 * 24
        ("4h", 2_190),
        ("1d", 365),
        ("1w", 365 / 7),  # 52.142857...
        ("2w", 365 / 14),
    ],
)
def test_periods_per_year(interval: str, expected: float) -> None:
    assert periods_per_year(interval) == pytest.approx(expected, rel=1e-12)


def test_periods_per_year_week_value() -> None:
    assert periods_per_year("1w") == pytest.approx(52.142857142857, rel=1e-12)


@pytest.mark.parametrize(
    "bad", ["", "m", "1", "0m", "00h", "-1m", "1.5h", "1M", "1y", "1mo", " 1h", "1h ", "1 h", "h1"]
)
def test_periods_per_year_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        periods_per_year(bad)


def test_periods_per_year_rejects_non_string() -> None:
    with pytest.raises(ValueError):
        periods_per_year(60)  # type: ignore[arg-type]


# --- equity curve -------------------------------------------------------------------------------


def test_equity_curve_keeps_last_snapshot_per_ts_sorted() -> None:
    snaps = [
        equity_snapshot(101.0, ts=2),
        equity_snapshot(100.0, ts=1),  # bar of symbol A
        equity_snapshot(99.0, ts=1),  # bar of symbol B
        equity_snapshot(102.0, ts=2),
        equity_snapshot(98.0, ts=3),
        equity_snapshot(103.0, ts=2),  # after a fill at ts 2: the last one wins
    ]
    curve = equity_curve(iter(snaps))  # any iterable, here a one-shot iterator
    assert curve.dtype == CURVE_DTYPE
    assert curve["ts"].tolist() == [1, 2, 3]
    assert curve["equity"].tolist() == [99.0, 103.0, 98.0]
    assert curve_points(curve) == [
        EquityPoint(1, 99.0),
        EquityPoint(2, 103.0),
        EquityPoint(3, 98.0),
    ]
    assert msgspec.json.encode(curve_points(curve)[0]) == b"[1,99.0]"


def test_equity_curve_keeps_nanosecond_timestamps_exact() -> None:
    t = 1_700_000_000_000_000_001  # not representable as a float64
    curve = equity_curve([equity_snapshot(1.0, ts=t), equity_snapshot(2.0, ts=t + 1)])
    assert curve["ts"].tolist() == [t, t + 1]


def test_equity_curve_empty() -> None:
    curve = equity_curve([])
    assert len(curve) == 0 and curve.dtype == CURVE_DTYPE


def test_exposure_uses_the_last_snapshot_per_ts() -> None:
    # ts 1: first snapshot exposed, last flat -> flat; ts 2 exposed; ts 3 flat: 1 of 3 points.
    snaps = [
        equity_snapshot(100.0, ts=1, exposure=5.0),
        equity_snapshot(100.0, ts=1, exposure=0.0),
        equity_snapshot(100.0, ts=2, exposure=7.0),
        equity_snapshot(100.0, ts=3),
    ]
    m = metrics(snaps)
    assert m.exposure_pct == pytest.approx(100 / 3)


# --- curve metrics, by hand ---------------------------------------------------------------------


def test_hand_computed_curve_metrics() -> None:
    # starting_cash 100, curve 110, 99, 108.9 (ts 1, 2, 3), P = 4 (sqrt(P) = 2).
    # r = 110/100 - 1 = 0.1, 99/110 - 1 = -0.1, 108.9/99 - 1 = 0.1
    # mean = 0.1/3 = 1/30
    # deviations 1/15, -2/15, 1/15 -> squares 1/225 + 4/225 + 1/225 = 6/225; / (3-1) = 1/75
    # std = sqrt(1/75); sharpe = (1/30) / sqrt(1/75) * 2 = sqrt(75)/15 = 1/sqrt(3) = 0.57735
    # downside: min(r,0)^2 = 0, 0.01, 0; mean = 0.01/3; dd = sqrt(1/300)
    # sortino = (1/30) / sqrt(1/300) * 2 = sqrt(300)/15 = 2/sqrt(3) = 1.1547
    # peak 100 -> 110, 110, 110; drawdowns 0, 11/110 = 10%, 1.1/110 = 1% -> max 10%
    # return_pct = (108.9/100 - 1) * 100 = 8.9; exposure: 1 of 3 points exposed -> 33.33%
    snaps = [
        equity_snapshot(110.0, ts=1),
        equity_snapshot(99.0, ts=2, exposure=50.0),
        equity_snapshot(108.9, ts=3),
    ]
    m = metrics(snaps, starting_cash=100.0, periods_override=4.0, bars=3, signals=2, orders=1)
    assert m.sharpe == pytest.approx(1 / math.sqrt(3), rel=1e-9)
    assert m.sortino == pytest.approx(2 / math.sqrt(3), rel=1e-9)
    assert m.max_drawdown_pct == pytest.approx(10.0, rel=1e-9)
    assert m.return_pct == pytest.approx(8.9, rel=1e-9)
    assert m.final_equity == 108.9
    assert m.exposure_pct == pytest.approx(100 / 3, rel=1e-12)
    assert m.annualisation == 4.0
    assert (m.bars, m.signals, m.orders, m.fills, m.trades) == (3, 2, 1, 0, 0)
    assert (m.win_rate, m.profit_factor, m.fees) == (0.0, 0.0, 0.0)
    assert_json_safe(m)


def test_sharpe_sortino_annualise_with_interval() -> None:
    # Same curve with "1h": P = 8760, so sharpe = (1/sqrt(3)) / 2 * sqrt(8760).
    snaps = [
        equity_snapshot(110.0, ts=1),
        equity_snapshot(99.0, ts=2),
        equity_snapshot(108.9, ts=3),
    ]
    m = metrics(snaps, interval="1h")
    assert m.annualisation == 8760
    assert m.sharpe == pytest.approx(math.sqrt(8760) / (2 * math.sqrt(3)), rel=1e-9)
    assert m.sortino == pytest.approx(math.sqrt(8760) / math.sqrt(3), rel=1e-9)
    # Equities-daily override: 252.
    m = metrics(snaps, interval="1d", periods_override=252)
    assert m.annualisation == 252
    assert m.sharpe == pytest.approx(math.sqrt(252) / (2 * math.sqrt(3)), rel=1e-9)


def test_sortino_uses_all_returns_for_downside() -> None:
    # r = 0.02, -0.01, 0.03, -0.02 (P = 1)
    # mean = 0.02/4 = 0.005
    # downside squares: 0, 1e-4, 0, 4e-4 -> mean over ALL 4 = 1.25e-4 -> dd = 0.0111803
    # sortino = 0.005 / 0.0111803 = 0.4472136 (= 1/sqrt(5))
    r = np.array([0.02, -0.01, 0.03, -0.02])
    assert sortino(r, 1.0) == pytest.approx(1 / math.sqrt(5), rel=1e-9)
    # sharpe: deviations .015 -.015 .025 -.025 -> squares sum 2*(2.25e-4 + 6.25e-4) = 1.7e-3
    # var = 1.7e-3 / 3; sharpe = 0.005 / sqrt(1.7e-3/3) * sqrt(9) = 0.63013
    assert sharpe(r, 9.0) == pytest.approx(0.005 / math.sqrt(1.7e-3 / 3) * 3, rel=1e-9)


def test_returns_first_point_against_starting_cash() -> None:
    # 105/100 - 1 = 0.05, 84/105 - 1 = -0.2
    assert returns(np.array([105.0, 84.0]), 100.0) == pytest.approx([0.05, -0.2])
    assert returns(np.array([]), 100.0).size == 0


def test_returns_drop_undefined_after_blown_account() -> None:
    # 0/100 - 1 = -1; next return divides by 0: dropped; 5/(-10)...: previous -10 dropped;
    # 6/5 - 1 = 0.2
    r = returns(np.array([0.0, -10.0, 5.0, 6.0]), 100.0)
    assert r == pytest.approx([-1.0, 0.2])


def test_drawdown_peak_includes_starting_cash() -> None:
    # starting 100, curve 90, 95: peak stays 100 -> drawdown 10% (at 90)
    m = metrics([equity_snapshot(90.0, ts=1), equity_snapshot(95.0, ts=2)], starting_cash=100.0)
    assert m.max_drawdown_pct == pytest.approx(10.0)
    assert m.return_pct == pytest.approx(-5.0)
    # Monotone rise: no drawdown.
    assert max_drawdown_pct(np.array([101.0, 102.0, 103.0]), 100.0) == 0.0
    # 100 -> 200 -> 50 -> 150: peak 200, worst 50: (200 - 50)/200 = 75%
    assert max_drawdown_pct(np.array([200.0, 50.0, 150.0]), 100.0) == pytest.approx(75.0)
    # Below zero equity: (100 - (-20)) / 100 = 120%
    assert max_drawdown_pct(np.array([-20.0]), 100.0) == pytest.approx(120.0)


def test_no_points_means_flat_run() -> None:
    m = metrics([], starting_cash=1_000.0)
    assert m.final_equity == 1_000.0
    assert (m.return_pct, m.sharpe, m.sortino, m.max_drawdown_pct, m.exposure_pct) == (0,) * 5
    assert_json_safe(m)


def test_degenerate_sharpe_and_sortino_are_zero() -> None:
    # One return: sharpe needs 2; sortino of the single loss is -1 * sqrt(P)... (r=-0.1, dd=0.1)
    one = metrics([equity_snapshot(90.0, ts=1)], starting_cash=100.0, periods_override=4.0)
    assert one.sharpe == 0.0
    assert one.sortino == pytest.approx(-2.0)
    # Constant returns (1% each bar): std is (numerically) zero -> 0; no downside -> 0.
    equity = 100.0 * 1.01 ** np.arange(1, 50)
    r = returns(equity, 100.0)
    assert sharpe(r, 365) == 0.0
    assert sortino(r, 365) == 0.0
    # Flat curve: every return 0.
    flat = metrics([equity_snapshot(100.0, ts=t) for t in range(10)], starting_cash=100.0)
    assert (flat.sharpe, flat.sortino, flat.max_drawdown_pct, flat.return_pct) == (0, 0, 0, 0)
    assert_json_safe(flat)


def test_curve_metrics_validates() -> None:
    with pytest.raises(ValueError):
        curve_metrics(np.array([1.0]), np.array([0.0]), 0.0, 365)
    with pytest.raises(ValueError):
        curve_metrics(np.array([1.0]), np.array([0.0, 1.0]), 100.0, 365)
    with pytest.raises(ValueError):
        metrics([], periods_override=0.0)
    with pytest.raises(ValueError):
        metrics([], periods_override=math.inf)
    with pytest.raises(ValueError):
        metrics([], interval="1y")


def test_extreme_values_stay_finite() -> None:
    # Overflowing ratios are reported as 0.0 rather than inf.
    snaps = [
        equity_snapshot(1e300, ts=1),
        equity_snapshot(1e-300, ts=2),
        equity_snapshot(1e300, ts=3),
        equity_snapshot(-1e300, ts=4),
    ]
    m = metrics(snaps, starting_cash=1e-300)
    assert_json_safe(m)


def test_metrics_refuses_non_finite() -> None:
    good = metrics([])
    with pytest.raises(ValueError):
        msgspec.structs.replace(good, sharpe=math.nan)
    with pytest.raises(ValueError):
        msgspec.structs.replace(good, profit_factor=math.inf)


def test_million_point_curve_metrics_stay_finite() -> None:
    rng = np.random.default_rng(7)
    n = 1_000_000
    equity = 100_000.0 * np.cumprod(1 + rng.normal(0.0, 1e-3, n))
    exposure = np.where(rng.random(n) < 0.4, 1_000.0, 0.0)
    out = curve_metrics(equity, exposure, 100_000.0, 525_600)
    assert all(math.isfinite(v) for v in out.values())
    assert out["exposure_pct"] == pytest.approx(40.0, abs=0.5)


def test_last_per_ts_keeps_the_last_of_each_run() -> None:
    from replay.metrics import _last_per_ts

    ts = np.repeat(np.arange(500_000, dtype=np.int64), 2)
    index = _last_per_ts(ts)
    assert index.tolist()[:3] == [1, 3, 5] and len(index) == 500_000


# --- trades -------------------------------------------------------------------------------------


def test_simple_long_round_trip() -> None:
    # buy 2 @ 100 fee 0.2, sell 2 @ 110 fee 0.22: pnl = 2 * 10 - 0.42 = 19.58
    trades = trades_from_fills([fill("buy", 2, 100, 0.2, ts=1), fill("sell", 2, 110, 0.22, ts=2)])
    assert trades == [
        Trade(
            strategy="s1",
            venue=VENUE,
            symbol=BTC,
            side="long",
            qty=2,
            entry_ts=1,
            exit_ts=2,
            entry_price=100,
            exit_price=110,
            pnl=pytest.approx(19.58),  # type: ignore[arg-type]
            fees=pytest.approx(0.42),  # type: ignore[arg-type]
        )
    ]


def test_short_round_trip() -> None:
    # sell 3 @ 50, buy 3 @ 40 fee 0.3: pnl = -1 * 3 * (40 - 50) - 0.3 = 29.7
    (t,) = trades_from_fills([fill("sell", 3, 50, ts=1), fill("buy", 3, 40, 0.3, ts=5)])
    assert (t.side, t.qty, t.entry_price, t.exit_price, t.entry_ts, t.exit_ts) == (
        "short",
        3,
        50,
        40,
        1,
        5,
    )
    assert t.pnl == pytest.approx(29.7)
    assert t.fees == pytest.approx(0.3)


def test_losing_short() -> None:
    # sell 1 @ 10, buy 1 @ 12: pnl = -(12 - 10) = -2
    (t,) = trades_from_fills([fill("sell", 1, 10), fill("buy", 1, 12)])
    assert t.pnl == pytest.approx(-2.0)


def test_partial_close_splits_the_lot() -> None:
    # buy 4 @ 10 (fee 0.4 -> 0.1 per unit); sell 1.5 @ 14 (fee 0.3); sell 2.5 @ 8 (fee 0.5)
    # trade 1: qty 1.5, fees 0.15 + 0.3 = 0.45, pnl = 1.5 * 4 - 0.45 = 5.55
    # trade 2: qty 2.5, fees 0.25 + 0.5 = 0.75, pnl = 2.5 * -2 - 0.75 = -5.75
    fills = [
        fill("buy", 4, 10, 0.4, ts=1),
        fill("sell", 1.5, 14, 0.3, ts=2),
        fill("sell", 2.5, 8, 0.5, ts=3),
    ]
    t1, t2 = trades_from_fills(fills)
    assert (t1.qty, t1.entry_ts, t1.exit_ts, t1.exit_price) == (1.5, 1, 2, 14)
    assert t1.fees == pytest.approx(0.45) and t1.pnl == pytest.approx(5.55)
    assert (t2.qty, t2.entry_ts, t2.exit_ts, t2.exit_price) == (2.5, 1, 3, 8)
    assert t2.fees == pytest.approx(0.75) and t2.pnl == pytest.approx(-5.75)


def test_close_spanning_two_lots_is_fifo() -> None:
    # buy 1 @ 10 (t1), buy 1 @ 20 (t2), sell 1.5 @ 30 (fee 0.3 -> 0.2 per unit)
    # trade 1: lot @10 qty 1, exit fee 0.2, pnl = 20 - 0.2 = 19.8
    # trade 2: lot @20 qty 0.5, exit fee 0.1, pnl = 0.5 * 10 - 0.1 = 4.9; 0.5 @ 20 stays open
    fills = [fill("buy", 1, 10, ts=1), fill("buy", 1, 20, ts=2), fill("sell", 1.5, 30, 0.3, ts=3)]
    t1, t2 = trades_from_fills(fills)
    assert (t1.entry_price, t1.qty, t1.entry_ts) == (10, 1, 1)
    assert t1.pnl == pytest.approx(19.8)
    assert (t2.entry_price, t2.qty, t2.entry_ts) == (20, 0.5, 2)
    assert t2.pnl == pytest.approx(4.9)
    # The remaining 0.5 closes later against the same lot.
    (t3,) = trades_from_fills([*fills, fill("sell", 0.5, 25, ts=4)])[2:]
    assert (t3.entry_price, t3.qty, t3.entry_ts, t3.exit_ts) == (20, 0.5, 2, 4)
    assert t3.pnl == pytest.approx(2.5)


def test_flip_in_one_fill() -> None:
    # buy 2 @ 10 (fee 0.2); sell 5 @ 8 (fee 0.5): closes 2 (exit fee 0.5 * 2/5 = 0.2) and
    # opens short 3 @ 8 carrying fee 0.3; buy 3 @ 6 (fee 0.6) closes it.
    # trade 1: long 2, pnl = 2 * (8 - 10) - 0.2 - 0.2 = -4.4
    # trade 2: short 3, pnl = 3 * (8 - 6) - 0.3 - 0.6 = 5.1
    fills = [
        fill("buy", 2, 10, 0.2, ts=1),
        fill("sell", 5, 8, 0.5, ts=2),
        fill("buy", 3, 6, 0.6, ts=3),
    ]
    t1, t2 = trades_from_fills(fills)
    assert (t1.side, t1.qty, t1.entry_ts, t1.exit_ts) == ("long", 2, 1, 2)
    assert t1.fees == pytest.approx(0.4) and t1.pnl == pytest.approx(-4.4)
    assert (t2.side, t2.qty, t2.entry_ts, t2.exit_ts, t2.entry_price) == ("short", 3, 2, 3, 8)
    assert t2.fees == pytest.approx(0.9) and t2.pnl == pytest.approx(5.1)


def test_open_position_at_end_is_not_a_trade() -> None:
    assert trades_from_fills([fill("buy", 1, 10)]) == []
    # Flip leaves a short open: only the closed long is a trade.
    assert len(trades_from_fills([fill("buy", 1, 10), fill("sell", 2, 11)])) == 1


def test_two_strategies_on_one_symbol_are_separate() -> None:
    # A buys 1 @ 10; B sells 1 @ 10 (its own short, NOT a close of A); A sells 1 @ 12 (+2);
    # B buys 1 @ 9 (+1).
    fills = [
        fill("buy", 1, 10, strategy="A", ts=1),
        fill("sell", 1, 10, strategy="B", ts=2),
        fill("sell", 1, 12, strategy="A", ts=3),
        fill("buy", 1, 9, strategy="B", ts=4),
    ]
    a, b = trades_from_fills(fills)
    assert (a.strategy, a.side, a.entry_ts, a.exit_ts) == ("A", "long", 1, 3)
    assert a.pnl == pytest.approx(2.0)
    assert (b.strategy, b.side, b.entry_ts, b.exit_ts) == ("B", "short", 2, 4)
    assert b.pnl == pytest.approx(1.0)


def test_symbols_and_venues_are_separate() -> None:
    fills = [fill("buy", 1, 10, symbol=BTC), fill("sell", 1, 20, symbol=ETH)]
    assert trades_from_fills(fills) == []


def test_fee_allocation_is_proportional_and_conserved() -> None:
    # buy 1 @ 100 fee 1 (t1); buy 3 @ 100 fee 1.5 (t2); sell 2 @ 100 fee 4 (t3); sell 2 @ 100
    # fee 2 (t4). Price flat, so pnl = -fees.
    # sell#1 (2): lot1 all (entry 1, exit 4 * 1/2 = 2); lot2 1 of 3 (entry 0.5, exit 2)
    # sell#2 (2): lot2 the rest 2 (entry 1.0, exit 2)
    fills = [
        fill("buy", 1, 100, 1.0, ts=1),
        fill("buy", 3, 100, 1.5, ts=2),
        fill("sell", 2, 100, 4.0, ts=3),
        fill("sell", 2, 100, 2.0, ts=4),
    ]
    trades = trades_from_fills(fills)
    assert [t.qty for t in trades] == [1, 1, 2]
    assert [t.fees for t in trades] == pytest.approx([3.0, 2.5, 3.0])
    assert [t.pnl for t in trades] == pytest.approx([-3.0, -2.5, -3.0])
    assert sum(t.fees for t in trades) == pytest.approx(1 + 1.5 + 4 + 2)


def test_non_fills_are_ignored() -> None:
    fills = [
        fill("buy", 1, 10, status="accepted"),
        fill("buy", 1, 10, status="partially_filled", ts=1),
        fill("buy", 1, 10, status="canceled"),
        fill("sell", 1, 11, fee=0.1, status="filled", ts=2),
        fill("sell", 1, 11, fee=0.1, status="rejected"),
    ]
    zero = msgspec.structs.replace(fill("buy", 1, 10), fill_qty=0.0)
    (t,) = trades_from_fills([*fills, zero])
    assert t.pnl == pytest.approx(0.9)
    m = metrics(fills=[*fills, zero])
    assert (m.fills, m.trades, m.fees) == (2, 1, pytest.approx(0.1))


def test_dust_residuals_do_not_open_positions() -> None:
    # 0.1 + 0.2 closed by 0.3: float residue ~3e-17 must not leave a lot or a tiny flip.
    fills = [fill("buy", 0.1, 10), fill("buy", 0.2, 10), fill("sell", 0.3, 11)]
    trades = trades_from_fills([*fills, fill("buy", 1, 10), fill("sell", 1, 12)])
    assert [t.side for t in trades] == ["long", "long", "long"]
    assert sum(t.qty for t in trades[:2]) == pytest.approx(0.3)
    assert trades[2].pnl == pytest.approx(2.0)


# --- trade metrics ------------------------------------------------------------------------------


def test_win_rate_and_profit_factor() -> None:
    # Trades: +10 (buy 1 @ 100, sell @ 110), -4 (buy 1 @ 100, sell @ 96), +2 (@ 102).
    # win_rate = 2/3; profit_factor = (10 + 2) / 4 = 3; fees 0.
    fills = [
        fill("buy", 1, 100),
        fill("sell", 1, 110),
        fill("buy", 1, 100),
        fill("sell", 1, 96),
        fill("buy", 1, 100),
        fill("sell", 1, 102),
    ]
    m = metrics(fills=fills)
    assert (m.trades, m.fills) == (3, 6)
    assert m.win_rate == pytest.approx(2 / 3)
    assert m.profit_factor == pytest.approx(3.0)
    assert_json_safe(m)


def test_profit_factor_edge_cases() -> None:
    win = [fill("buy", 1, 100), fill("sell", 1, 110)]
    loss = [fill("buy", 1, 100), fill("sell", 1, 90)]
    flat = [fill("buy", 1, 100), fill("sell", 1, 100)]
    only_wins = metrics(fills=win)
    assert (only_wins.win_rate, only_wins.profit_factor) == (1.0, None)
    assert_json_safe(only_wins)
    assert b'"profit_factor":null' in msgspec.json.encode(only_wins)
    only_losses = metrics(fills=loss)
    assert (only_losses.win_rate, only_losses.profit_factor) == (0.0, 0.0)
    none = metrics(fills=[])
    assert (none.win_rate, none.profit_factor, none.trades) == (0.0, 0.0, 0)
    # A zero-pnl trade is neither a win nor a loss.
    scratch = metrics(fills=flat)
    assert (scratch.win_rate, scratch.profit_factor, scratch.trades) == (0.0, 0.0, 1)
    # win 10, scratch 0, loss -10 -> win_rate 1/3, profit_factor 1
    mixed = metrics(fills=[*win, *flat, *loss])
    assert mixed.win_rate == pytest.approx(1 / 3)
    assert mixed.profit_factor == pytest.approx(1.0)
    # The same numbers straight from the trades.
    assert trade_stats(trades_from_fills([*win, *flat, *loss])) == (
        pytest.approx(1 / 3),
        pytest.approx(1.0),
    )
    assert trade_stats([]) == (0.0, 0.0)


def test_fees_sum_every_fill_including_open_ones() -> None:
    # 0.1 + 0.2 + 0.05 (the open lot's fee counts too) = 0.35
    fills = [fill("buy", 1, 10, 0.1), fill("sell", 1, 11, 0.2), fill("buy", 1, 10, 0.05)]
    m = metrics(fills=fills)
    assert m.fees == pytest.approx(0.35)
    assert (m.fills, m.trades) == (3, 1)


# --- agreement with the ledger ------------------------------------------------------------------

STRATEGIES = ("A", "B")
SYMBOLS = (BTC, ETH)
step = st.tuples(
    st.sampled_from(STRATEGIES),
    st.sampled_from(SYMBOLS),
    st.integers(min_value=-400, max_value=400).filter(bool),  # signed qty in hundredths
    st.integers(min_value=1, max_value=1_000_000),  # price in cents
    st.integers(min_value=0, max_value=30),  # fee in bps of notional
)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(script=st.lists(step, min_size=1, max_size=40))
def test_trade_pnl_matches_ledger_realized_when_flat(script: list[tuple]) -> None:
    fills: list[ExecutionReport] = []
    net: dict[tuple[str, str], int] = {}
    last_price: dict[str, float] = {}

    def add(strategy: str, symbol: str, signed_hundredths: int, price: float, bps: int) -> None:
        qty = abs(signed_hundredths) / 100
        side = "buy" if signed_hundredths > 0 else "sell"
        fee = qty * price * bps / 1e4
        fills.append(fill(side, qty, price, fee, ts=len(fills), strategy=strategy, symbol=symbol))
        net[strategy, symbol] = net.get((strategy, symbol), 0) + signed_hundredths

    for strategy, symbol, signed, cents, bps in script:
        last_price[symbol] = cents / 100
        add(strategy, symbol, signed, cents / 100, bps)
    # Close every (strategy, symbol) so the run ends flat.
    for (strategy, symbol), position in sorted(net.items()):
        if position:
            add(strategy, symbol, -position, last_price[symbol] * 1.01, 5)

    ledger = Portfolio(PortfolioConfig(starting_cash=1_000_000.0))
    for f in fills:
        ledger.decide(f, f.ts)
    assert all(abs(p.qty) < 1e-9 for p in ledger.state.positions.values())
    books = ledger.equity(0)  # the ledger's realized PnL and fees

    trades = trades_from_fills(fills)
    total_pnl = math.fsum(t.pnl for t in trades)
    total_fees = math.fsum(t.fees for t in trades)
    expected = books.realized_pnl - books.fees
    notional = math.fsum(f.fill_qty * f.fill_price for f in fills)
    # 1e-6 relative; the absolute floor (relative to traded notional) covers totals near 0.
    assert math.isclose(total_pnl, expected, rel_tol=1e-6, abs_tol=1e-9 * notional), (
        total_pnl,
        expected,
    )
    assert math.isclose(total_fees, books.fees, rel_tol=1e-9, abs_tol=1e-9)
    # Every trade's pnl is its gross minus its fees.
    for t in trades:
        direction = 1 if t.side == "long" else -1
        gross = direction * t.qty * (t.exit_price - t.entry_price)
        assert t.pnl == pytest.approx(gross - t.fees, rel=1e-9, abs=1e-9)
        assert t.qty > 0 and t.entry_ts <= t.exit_ts

    m = metrics(fills=fills, starting_cash=1_000_000.0)
    assert m.fills == len(fills) and m.trades == len(trades)
    assert m.fees == pytest.approx(books.fees, rel=1e-9, abs=1e-12)
    assert_json_safe(m)


def test_metrics_from_a_ledger_run() -> None:
    """End to end on ledger output: fills' equity snapshots feed the curve."""
    ledger = Portfolio(PortfolioConfig(starting_cash=1_000.0))
    snaps: list[EquitySnapshot] = []
    fills = [fill("buy", 1, 100, 0.1, ts=1), fill("sell", 1, 120, 0.12, ts=3)]
    for f in fills:
        snaps += [e for e in ledger.decide(f, f.ts) if isinstance(e, EquitySnapshot)]
    snaps.insert(1, msgspec.structs.replace(ledger.equity(2), equity=1_005.0, gross_exposure=105))
    m = metrics(snaps, fills, starting_cash=1_000.0, interval="1m", bars=3, signals=2, orders=2)
    # curve: ts1 999.9 (fee), ts2 1005.0, ts3 1000 + 20 - 0.22 = 1019.78
    assert m.final_equity == pytest.approx(1_019.78)
    assert m.return_pct == pytest.approx(1.978)
    assert m.max_drawdown_pct == pytest.approx(0.01)  # (1000 - 999.9) / 1000 * 100
    assert m.exposure_pct == pytest.approx(200 / 3)  # ts1 (just bought) and ts2 exposed
    assert (m.trades, m.win_rate, m.profit_factor) == (1, 1.0, None)
    assert m.fees == pytest.approx(0.22)
    assert m.annualisation == 525_600
    assert_json_safe(m)
