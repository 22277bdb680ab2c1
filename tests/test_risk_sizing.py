"""Sizing: the unit of each mode with hand-computed numbers, pyramiding and scaling of
targets, capping by the rails, rounding to lot and tick, and the rejections."""

from __future__ import annotations

import math

import pytest

from contracts.intervals import periods_per_year
from contracts.keys import InstrumentId
from services.risk.engine import RiskEngine
from services.risk.limits import RiskLimits, SizingConfig, SizingRule
from services.risk.sizing import round_price, round_qty, split_symbol, unit_qty
from tests.factories import MINUTE, report
from tests.risk_helpers import BTC, ETH, T0, bar, equity, instrument, order_of, rejection, sig


def test_unit_of_each_mode() -> None:
    def unit(rule: SizingRule, **kw: object) -> tuple[float, str]:
        args = {"price": 50.0, "equity": 10_000.0, "atr": 2.5, "returns": None, "interval": "1d"}
        args.update(kw)
        return unit_qty(rule, **args)  # type: ignore[arg-type]

    assert unit(SizingRule()) == (1.0, "")
    assert unit(SizingRule(mode="fixed_qty", qty=0.25)) == (0.25, "")
    assert unit(SizingRule(mode="fixed_notional", notional=1_000.0)) == (20.0, "")  # 1000 / 50
    assert unit(SizingRule(mode="pct_equity", pct=5.0)) == (10.0, "")  # 10000 * 5% / 50
    # Turtle: 10000 * 1% / (2.5 * 2) = 20 units, whatever the price
    assert unit(SizingRule(mode="turtle", risk_pct=1.0, atr_multiple=2.0)) == (20.0, "")
    assert unit(SizingRule(mode="turtle"), price=None) == (20.0, "")
    # Volatility target: returns +1%, -1% alternating, 20 of them, daily bars:
    # sd = sqrt(20 * 0.0001 / 19) = 0.0102598; annual = sd * sqrt(365) = 0.196013
    # unit = 10000 * 20% / (0.196013 * 50) = 204.068
    returns = [0.01, -0.01] * 10
    qty, why = unit(SizingRule(mode="vol_target", target_vol_pct=20.0), returns=returns)
    assert why == ""
    assert qty == pytest.approx(10_000 * 0.20 / (math.sqrt(0.002 / 19) * math.sqrt(365) * 50))
    assert qty == pytest.approx(204.068, abs=1e-3)


@pytest.mark.parametrize(
    ("rule", "kw", "why"),
    [
        (
            SizingRule(mode="turtle"),
            {"atr": None},
            "the signal carries no ATR (atr) for N-unit sizing",
        ),
        (SizingRule(mode="pct_equity", pct=1.0), {"equity": None}, "no equity snapshot yet"),
        (SizingRule(mode="pct_equity", pct=1.0), {"equity": -5.0}, "equity -5.00 <= 0"),
        (SizingRule(mode="fixed_notional", notional=1.0), {"price": None}, "no price seen yet"),
        (
            SizingRule(mode="vol_target", target_vol_pct=10.0, vol_window=5),
            {"returns": [0.01] * 3},
            "3 returns seen, vol_window needs 5",
        ),
        (
            SizingRule(mode="vol_target", target_vol_pct=10.0, vol_window=3),
            {"returns": [0.01] * 3},
            "volatility is 0",
        ),
    ],
)
def test_unit_that_cannot_be_sized_says_why(rule: SizingRule, kw: dict, why: str) -> None:
    args = {"price": 50.0, "equity": 10_000.0, "atr": 2.5, "returns": None, "interval": "1m"}
    args.update(kw)
    assert unit_qty(rule, **args) == (0.0, why)  # type: ignore[arg-type]


def test_rounding_to_lot_and_tick() -> None:
    assert round_qty(1.23456, 0.001) == 1.234
    assert round_qty(0.3, 0.1) == 0.3  # not 0.30000000000000004, not 0.2
    assert round_qty(0.0009, 0.001) == 0.0
    assert round_qty(7.0, 0.0) == 7.0
    assert round_qty(2.9999999999, 1.0) == 3.0  # binary noise is not a lot short
    assert round_price(100.07, 0.05, up=True) == 100.1
    assert round_price(100.07, 0.05, up=False) == 100.05
    assert round_price(100.05, 0.05, up=True) == 100.05
    assert round_price(1.2345, 0.0, up=False) == 1.2345


def test_symbols_and_periods() -> None:
    assert split_symbol("BTC/USDT") == ("BTC", "USDT", False)
    assert split_symbol("BTC/USDT:USDT") == ("BTC", "USDT", True)
    assert split_symbol("ES") == ("ES", "", False)
    assert periods_per_year("1m") == 525_600
    assert periods_per_year("1h") == 8_760
    assert periods_per_year("1d") == 365


def test_a_bar_interval_that_does_not_parse_cannot_be_sized() -> None:
    rule = SizingRule(mode="vol_target", target_vol_pct=10.0, vol_window=3)
    args = {"price": 50.0, "equity": 10_000.0, "atr": None, "returns": [0.01, -0.01, 0.02]}
    qty, why = unit_qty(rule, interval="1M", **args)  # type: ignore[arg-type]
    assert qty == 0.0
    assert why.startswith("bar interval '1M': expected a whole number > 0 and a unit")
    assert why.endswith("; set [sizing] periods_per_year")
    given = SizingRule(mode="vol_target", target_vol_pct=10.0, vol_window=3, periods_per_year=12)
    assert unit_qty(given, interval="1M", **args)[0] > 0  # type: ignore[arg-type]


def turtle_engine(**limits: object) -> RiskEngine:
    sizing = SizingConfig(mode="turtle", risk_pct=1.0, atr_multiple=2.0)
    e = RiskEngine(RiskLimits(**limits), sizing=sizing)  # type: ignore[arg-type]
    e.decide(bar(100.0), T0)
    e.decide(equity(10_000.0), T0)
    return e


def test_turtle_units_pyramid_scale_down_and_close() -> None:
    e = turtle_engine()
    # 10000 * 1% / (2.5 * 2) = 20 per unit
    first = order_of(e.decide(sig(1.0, atr=2.5), T0))
    assert (first.side, first.qty) == ("buy", 20.0)
    e.decide(report(first, "filled", 20.0, 100.0), T0 + 1)
    assert e.decide(sig(1.0, atr=4.0, ts=T0 + 1), T0 + 1) == []  # same units: same quantity
    e.decide(equity(12_000.0, ts=T0 + 2), T0 + 2)
    # a second unit at today's N: 12000 * 1% / (4 * 2) = 15
    add = order_of(e.decide(sig(2.0, atr=4.0, ts=T0 + 3), T0 + 3))
    assert (add.side, add.qty) == ("buy", 15.0)
    e.decide(report(add, "filled", 15.0, 100.0), T0 + 4)
    half = order_of(e.decide(sig(1.0, atr=4.0, ts=T0 + 5), T0 + 5))  # 35 * 1/2
    assert (half.side, half.qty) == ("sell", 17.5)
    close = order_of(e.decide(sig(0.0, ts=T0 + 6), T0 + 6))  # 17.5 still working
    assert (close.side, close.qty) == ("sell", 17.5)


def test_side_and_size_signals_are_units_too() -> None:
    e = RiskEngine(RiskLimits(), sizing=SizingConfig(mode="fixed_notional", notional=250.0))
    e.decide(bar(100.0), T0)
    assert order_of(e.decide(sig(side="sell", size=2.0), T0)).qty == 5.0  # 2 * 250 / 100


def test_per_strategy_sizing_overrides_the_default() -> None:
    sizing = SizingConfig(
        mode="fixed_qty", qty=3.0, strategies={"b": SizingRule(mode="fixed_qty", qty=0.5)}
    )
    e = RiskEngine(RiskLimits(), sizing=sizing)
    assert order_of(e.decide(sig(1.0, strategy="a"), T0)).qty == 3.0
    assert order_of(e.decide(sig(1.0, strategy="b"), T0)).qty == 0.5


def test_turtle_without_atr_is_rejected_with_the_reason() -> None:
    e = turtle_engine()
    decision = rejection(e.decide(sig(1.0), T0), "sizing")
    assert decision.reason == "cannot size: the signal carries no ATR (atr) for N-unit sizing"


def test_a_sized_order_is_capped_by_the_rails_then_rounded_to_the_lot() -> None:
    e = turtle_engine(max_order_notional=1_234.0, max_position=50.0)
    e.decide(instrument(lot=0.01), T0)
    # 20 units wanted; 1234 / 100 = 12.34 allowed by the notional cap
    order = order_of(e.decide(sig(1.0, atr=2.5), T0))
    assert order.qty == 12.34
    e.decide(report(order, "filled", order.qty, 100.0), T0 + 1)
    # the capped quantity is remembered: the same target asks for nothing more
    assert e.decide(sig(1.0, atr=2.5, ts=T0 + 2), T0 + 2) == []


def test_capping_to_the_position_limit_and_no_room_left() -> None:
    e = turtle_engine(max_position=30.0)
    first = order_of(e.decide(sig(1.0, atr=2.5), T0))  # 20
    e.decide(report(first, "filled", 20.0, 100.0), T0 + 1)
    more = order_of(e.decide(sig(3.0, atr=2.5, ts=T0 + 2), T0 + 2))  # wants +40, room 10
    assert more.qty == pytest.approx(10.0)
    e.decide(report(more, "filled", more.qty, 100.0), T0 + 3)
    decision = rejection(e.decide(sig(side="buy", size=1.0, atr=2.5, ts=T0 + 4), T0 + 4))
    assert decision.rule == "max_position"


def test_below_one_lot_and_below_min_notional_are_rejected_with_the_numbers() -> None:
    e = RiskEngine(RiskLimits(), sizing=SizingConfig(mode="fixed_notional", notional=4.0))
    e.decide(bar(100.0), T0)
    e.decide(instrument(lot=0.1, min_notional=5.0), T0)
    decision = rejection(e.decide(sig(1.0), T0), "lot_size")  # 0.04 < 0.1
    assert decision.reason == "target 0.04 is below one lot (0.1)"
    decision = rejection(e.decide(sig(side="buy", size=2.0), T0), "lot_size")
    assert decision.reason == "size 0.08 is below one lot (0.1)"
    assert order_of(e.decide(sig(side="buy", size=3.0), T0)).qty == 0.1  # 0.12 -> one lot
    e2 = RiskEngine(RiskLimits(), sizing=SizingConfig(mode="fixed_notional", notional=12.0))
    e2.decide(bar(100.0), T0)
    e2.decide(instrument(lot=0.1, min_notional=15.0), T0)
    decision = rejection(e2.decide(sig(1.0), T0), "min_notional")  # 0.1 * 100 = 10 < 15
    assert decision.reason == "order notional 10.00 is below the instrument's min notional 15"


def test_signal_mode_rounds_to_the_lot_and_ignores_dust() -> None:
    e = RiskEngine(RiskLimits())
    e.decide(instrument(ETH, lot=0.001), T0)
    order = order_of(e.decide(sig(1.23456, symbol=ETH), T0))
    assert order.qty == 1.234
    e.decide(report(order, "filled", 1.234, 10.0), T0 + 1)
    assert e.decide(sig(1.2349, symbol=ETH, ts=T0 + 2), T0 + 2) == []  # same lot
    close = order_of(e.decide(sig(0.0, symbol=ETH, ts=T0 + 3), T0 + 3))
    assert close.qty == 1.234


def test_vol_target_sizes_from_the_bar_returns() -> None:
    sizing = SizingConfig(mode="vol_target", target_vol_pct=20.0, vol_window=20)
    e = RiskEngine(RiskLimits(), sizing=sizing)
    price = 100.0
    for i in range(21):
        price = 100.0 if i % 2 == 0 else 101.0
        e.decide(bar(price, ts=T0 + i * MINUTE, interval="1d"), T0 + i * MINUTE)
    e.decide(equity(10_000.0, ts=T0 + 21 * MINUTE), T0 + 21 * MINUTE)
    returns = e.state.returns[InstrumentId("test", BTC)].rets
    assert len(returns) == 20
    sd = math.sqrt(math.fsum((r - sum(returns) / 20) ** 2 for r in returns) / 19)
    expected = 10_000 * 0.20 / (sd * math.sqrt(365) * price)
    order = order_of(e.decide(sig(1.0, ts=T0 + 21 * MINUTE), T0 + 21 * MINUTE))
    assert order.qty == pytest.approx(expected)


def test_vol_target_rejects_a_signal_on_bars_whose_interval_does_not_parse() -> None:
    sizing = SizingConfig(mode="vol_target", target_vol_pct=20.0, vol_window=3)
    e = RiskEngine(RiskLimits(), sizing=sizing)
    for i in range(4):
        e.decide(bar(100.0 + i, ts=T0 + i * MINUTE, interval="1M"), T0 + i * MINUTE)
    e.decide(equity(10_000.0, ts=T0 + 4 * MINUTE), T0 + 4 * MINUTE)
    decision = rejection(e.decide(sig(1.0, ts=T0 + 4 * MINUTE), T0 + 4 * MINUTE), "sizing")
    assert decision.reason.startswith("cannot size: bar interval '1M': expected a whole number")
