"""Guards: the stablecoin depeg guard (halt entries / flatten, resume after the band held)
and the perpetual funding guard (block / trim), with hand-computed rates."""

from __future__ import annotations

from contracts.events import Instrument, OrderCommand
from services.risk.engine import RiskEngine
from services.risk.limits import DepegGuard, FundingGuard, GuardsConfig, RiskLimits
from tests.factories import MINUTE, report
from tests.risk_helpers import (
    HOUR,
    T0,
    alerts,
    bar,
    funding,
    instrument,
    of,
    order_of,
    rejection,
    sig,
    statuses,
)

USDC = "BTC/USDC"
USD = "BTC/USD"
PERP = "BTC/USDT:USDT"


def depeg_engine(action: str = "halt_entries") -> RiskEngine:
    guard = DepegGuard(
        asset="USDC", reference="USD", threshold_pct=1.0, resume_after="6h", action=action
    )  # type: ignore[arg-type]
    return RiskEngine(RiskLimits(), guards=GuardsConfig(depeg=guard))


def prices(e: RiskEngine, usdc: float, usd: float, ts: int) -> list:
    return e.decide(bar(usdc, symbol=USDC, ts=ts), ts) + e.decide(bar(usd, symbol=USD, ts=ts), ts)


def test_depeg_halts_usdc_entries_and_resumes_after_six_hours_inside_the_band() -> None:
    e = depeg_engine()
    assert prices(e, 20_000.0, 20_000.0, T0) == []
    held = order_of(e.decide(sig(1.0, symbol=USDC), T0))
    e.decide(report(held, "filled", 1.0, 20_000.0), T0 + 1)
    # 1 USDC = 20000 / 20250 = 0.98765 USD: -1.23%, beyond 1%
    out = prices(e, 20_250.0, 20_000.0, T0 + MINUTE)
    [status] = statuses(out)
    assert (status.status, status.rule) == ("SAFE_MODE", "depeg_guard")
    [alert] = alerts(out)
    assert (alert.rule, alert.action) == ("depeg_guard", "halt_entries")
    assert alert.detail == ("USDC depeg: 1 USDC = 0.9877 USD (-1.23%, beyond +/-1%): halt_entries")
    now = T0 + 2 * MINUTE
    decision = rejection(e.decide(sig(2.0, symbol=USDC, ts=now), now), "depeg_guard")
    assert decision.reason.startswith("entries quoted in USDC halted: USDC depeg: 1 USDC")
    assert order_of(e.decide(sig(0.0, symbol=USDC, ts=now), now)).side == "sell"  # exit ok
    order_of(e.decide(sig(1.0, symbol=USD, ts=now), now))  # other quotes trade
    # back inside at +3h, out again at +4h (the clock restarts), inside from +5h
    assert prices(e, 20_100.0, 20_000.0, T0 + 3 * HOUR) == []  # 0.995: inside
    assert prices(e, 20_300.0, 20_000.0, T0 + 4 * HOUR) == []  # outside again
    assert prices(e, 20_000.0, 20_000.0, T0 + 5 * HOUR) == []
    assert prices(e, 20_000.0, 20_000.0, T0 + 11 * HOUR - 1) == []  # 6 h minus 1 ns
    out = prices(e, 20_000.0, 20_000.0, T0 + 11 * HOUR)
    assert [s.status for s in statuses(out)] == ["RUNNING"]
    assert [a.action for a in alerts(out)] == ["resume"]
    order_of(e.decide(sig(1.0, symbol=USDC, ts=T0 + 11 * HOUR), T0 + 11 * HOUR))


def test_depeg_flatten_closes_every_position_quoted_in_the_asset() -> None:
    e = depeg_engine("flatten")
    prices(e, 20_000.0, 20_000.0, T0)
    e.decide(bar(1_500.0, symbol="ETH/USDC"), T0)
    a = order_of(e.decide(sig(1.0, symbol=USDC, strategy="a"), T0))
    e.decide(report(a, "filled", 1.0, 20_000.0), T0 + 1)
    b = order_of(e.decide(sig(-3.0, symbol="ETH/USDC", strategy="b"), T0))
    e.decide(report(b, "partially_filled", 2.0, 1_500.0), T0 + 1)  # 1 still working
    c = order_of(e.decide(sig(1.0, symbol=USD, strategy="c"), T0))
    e.decide(report(c, "filled", 1.0, 20_000.0), T0 + 1)
    out = prices(e, 17_600.0, 20_000.0, T0 + MINUTE)  # 1 USDC = 1.136 USD: +13.6%
    [alert] = alerts(out)
    assert alert.action == "flatten"
    orders = of(out, OrderCommand)
    assert [(o.action, o.client_order_id) for o in orders if o.action == "cancel"] == [
        ("cancel", b.client_order_id)
    ]
    assert sorted((o.strategy, o.symbol, o.side, o.qty) for o in orders if o.action == "new") == [
        ("a", USDC, "sell", 1.0),
        ("b", "ETH/USDC", "buy", 2.0),
    ]


def test_depeg_rate_from_a_direct_market_and_the_median_of_bases() -> None:
    guard = DepegGuard(asset="USDT", reference="USD", threshold_pct=0.6, resume_after="0s")
    e = RiskEngine(RiskLimits(), guards=GuardsConfig(depeg=[guard]))
    e.decide(bar(0.999, symbol="USDT/USD"), T0)
    assert e.state.depeg["USDT"].rate == 0.999
    e.decide(bar(100.0, symbol="ETH/USD"), T0)
    assert e.decide(bar(101.0, symbol="ETH/USDT"), T0) == []  # median(0.999, 0.990) = 0.9945
    e.decide(bar(10.0, symbol="SOL/USD"), T0)
    out = e.decide(bar(10.2, symbol="SOL/USDT"), T0)  # 0.980: median(0.999, 0.990, 0.980)
    assert e.state.depeg["USDT"].rate == 100.0 / 101.0
    assert [a.action for a in alerts(out)] == ["halt_entries"]


def test_instruments_say_what_a_symbol_is_quoted_in() -> None:
    guard = DepegGuard(asset="USDC", threshold_pct=1.0, resume_after="1h")
    e = RiskEngine(RiskLimits(), guards=GuardsConfig(depeg=guard))
    e.decide(Instrument(ts=T0, venue="test", symbol="XBTUSDC", base="BTC", quote="USDC"), T0)
    e.decide(bar(20_000.0, symbol=USD), T0)
    out = e.decide(bar(21_000.0, symbol="XBTUSDC"), T0)
    assert [a.action for a in alerts(out)] == ["halt_entries"]
    assert rejection(e.decide(sig(1.0, symbol="XBTUSDC"), T0)).rule == "depeg_guard"


def funding_engine(action: str = "block") -> RiskEngine:
    guard = FundingGuard(threshold_pct=0.1, action=action, trim_pct=50.0)  # type: ignore[arg-type]
    return RiskEngine(RiskLimits(), guards=GuardsConfig(funding=guard))


def test_funding_guard_blocks_entries_on_the_paying_side_then_clears() -> None:
    e = funding_engine()
    e.decide(instrument(PERP, kind="perpetual"), T0)
    assert e.decide(funding(0.0009), T0) == []  # 0.09% per 8h: inside
    out = e.decide(funding(0.0015, ts=T0 + HOUR), T0 + HOUR)  # longs pay 0.15%
    [status] = statuses(out)
    assert (status.status, status.rule) == ("DEGRADED", "funding_guard")
    [alert] = alerts(out)
    assert (alert.action, alert.symbol) == ("block", PERP)
    assert alert.detail == "BTC/USDT:USDT funding +0.1500% per 8h beyond +/-0.1%: longs pay"
    decision = rejection(e.decide(sig(1.0, symbol=PERP), T0 + HOUR), "funding_guard")
    assert decision.reason == "long entries in BTC/USDT:USDT blocked: funding +0.1500% beyond 0.1%"
    order_of(e.decide(sig(-1.0, symbol=PERP, strategy="s2"), T0 + HOUR))  # shorts get paid
    out = e.decide(funding(-0.0002, ts=T0 + 9 * HOUR), T0 + 9 * HOUR)
    assert [a.action for a in alerts(out)] == ["clear"]
    assert statuses(out)[0].status == "RUNNING"
    order_of(e.decide(sig(1.0, symbol=PERP, ts=T0 + 9 * HOUR), T0 + 9 * HOUR))


def test_funding_guard_trims_positions_on_the_paying_side() -> None:
    e = funding_engine("trim")
    e.decide(instrument(PERP, kind="perpetual", lot=0.001), T0)
    short = order_of(e.decide(sig(-3.0, symbol=PERP, strategy="a"), T0))
    e.decide(report(short, "filled", 3.0, 100.0), T0 + 1)
    long_ = order_of(e.decide(sig(1.0, symbol=PERP, strategy="b"), T0))
    e.decide(report(long_, "filled", 1.0, 100.0), T0 + 1)
    out = e.decide(funding(-0.0025, ts=T0 + HOUR), T0 + HOUR)  # shorts pay 0.25%
    assert [a.action for a in alerts(out)] == ["block", "trim"]
    [trim] = of(out, OrderCommand)
    assert (trim.strategy, trim.side, trim.qty) == ("a", "buy", 1.5)
