"""The risk engine's rails, one scenario each with hand-computed numbers; statuses; soft and
hard breaches; flattening; snapshots. (The breaker, sizing and guards have their own files.)"""

from __future__ import annotations

import msgspec
import pytest
from msgspec import UNSET

from contracts.events import OrderCommand, RiskAlert
from contracts.system_events import GovernanceCommand, SystemStatus
from services.risk.engine import RiskEngine
from services.risk.limits import CorrelationConfig, InstrumentSpec, RiskLimits
from tests.factories import MINUTE, report
from tests.risk_helpers import (
    BTC,
    DAY,
    ETH,
    T0,
    VENUE,
    alerts,
    bar,
    equity,
    kill,
    of,
    order_of,
    rejection,
    resume,
    sig,
    statuses,
)

SOL = "SOL/USDT"


def engine(**limits: object) -> RiskEngine:
    return RiskEngine(RiskLimits(**limits))  # type: ignore[arg-type]


def filled(e: RiskEngine, out: list, price: float) -> OrderCommand:
    order = order_of(out)
    e.decide(report(order, "filled", order.qty, price), order.ts + 1)
    return order


# --- the rails in order -----------------------------------------------------------------------


def test_rails_are_an_ordered_tuple_of_the_configured_checks() -> None:
    assert engine().rules == ("kill", "halt", "stale_data", "stale_signal")
    everything = engine(
        denied_symbols=("X/Y",),
        allowed_symbols=(BTC,),
        min_order_notional=1,
        max_order_notional=10,
        max_position=1,
        max_symbol_exposure=1,
        max_total_exposure=1,
        max_open_positions=1,
        max_orders_per_minute=1,
        max_venue_orders_per_minute=1,
        max_drawdown_pct=10,
        correlation=CorrelationConfig(),
    )
    assert everything.rules == (
        "kill",
        "halt",
        "denylist",
        "allowlist",
        "stale_data",
        "stale_signal",
        "soft",
        "strategy_rate",
        "venue_rate",
        "min_notional",
        "max_notional",
        "max_position",
        "symbol_exposure",
        "gross_exposure",
        "open_positions",
        "correlation",
    )


def test_trading_disabled_in_the_config_rejects_everything() -> None:
    e = engine(trading_enabled=False)
    decision = rejection(e.decide(sig(1.0), T0), "kill_switch")
    assert "trading_enabled = false" in decision.reason


def test_denylist_rejects_the_symbol_and_nothing_else() -> None:
    e = engine(denied_symbols=(BTC,))
    assert BTC in rejection(e.decide(sig(1.0), T0), "symbol_denylist").reason
    order_of(e.decide(sig(1.0, symbol=ETH), T0))


def test_min_order_notional_blocks_small_entries_but_not_exits() -> None:
    e = engine(min_order_notional=50.0)
    e.decide(bar(20.0), T0)
    decision = rejection(e.decide(sig(2.0), T0), "min_order_notional")
    assert decision.reason == "notional 40.00 < minimum 50.00"
    filled(e, e.decide(sig(3.0, ts=T0 + 1), T0 + 1), 20.0)  # 60 >= 50
    exit_ = order_of(e.decide(sig(2.0, ts=T0 + 2), T0 + 2))  # sells 1 (20 < 50): an exit
    assert (exit_.side, exit_.qty) == ("sell", 1.0)


def test_symbol_exposure_cap_counts_positions_and_working_across_strategies() -> None:
    e = engine(max_symbol_exposure=1_000.0)
    e.decide(bar(100.0), T0)
    filled(e, e.decide(sig(4.0, strategy="a"), T0), 100.0)  # 400
    order_of(e.decide(sig(5.0, strategy="b"), T0))  # 900 with b's working 5
    decision = rejection(e.decide(sig(2.0, strategy="c"), T0), "symbol_exposure")
    assert decision.reason == "BTC/USDT exposure 1100.00 would exceed 1000.00"
    order_of(e.decide(sig(1.0, strategy="c"), T0))  # exactly 1000
    # the price rises: 10 held at 150 = 1500; a reduction still goes through
    e.decide(bar(150.0, ts=T0 + MINUTE), T0 + MINUTE)
    order_of(e.decide(sig(3.0, strategy="a", ts=T0 + MINUTE), T0 + MINUTE))
    assert (
        "exposure"
        in rejection(e.decide(sig(side="buy", size=0.5, ts=T0 + MINUTE), T0 + MINUTE)).rule
    )


def test_venue_and_total_exposure_caps() -> None:
    e = engine(max_venue_exposure=1_000.0, max_total_exposure=1_500.0)
    e.decide(bar(100.0), T0)
    e.decide(bar(10.0, symbol=ETH), T0)
    e.decide(bar(50.0, symbol=SOL, venue="other"), T0)
    filled(e, e.decide(sig(6.0), T0), 100.0)  # test: 600
    filled(e, e.decide(sig(30.0, symbol=ETH), T0), 10.0)  # test: 900
    decision = rejection(e.decide(sig(50.0, symbol=ETH, ts=T0 + 1), T0 + 1), "venue_exposure")
    assert decision.reason == "test gross exposure 1100.00 would exceed 1000.00"
    filled(e, e.decide(sig(10.0, symbol=SOL, venue="other"), T0), 50.0)  # total 1400
    decision = rejection(e.decide(sig(13.0, symbol=SOL, venue="other", ts=T0 + 2), T0 + 2))
    assert decision.rule == "total_exposure"
    assert decision.reason == "total gross exposure 1550.00 would exceed 1500.00"
    # A short in ETH that nets the symbol down is a reduction, whatever the caps say.
    order_of(e.decide(sig(-25.0, symbol=ETH, strategy="hedge"), T0 + 3))


def test_max_open_positions_counts_symbols_with_positions_or_working_orders() -> None:
    e = engine(max_open_positions=2)
    filled(e, e.decide(sig(1.0), T0), 1.0)
    order_of(e.decide(sig(1.0, symbol=ETH), T0))  # working counts as open
    decision = rejection(e.decide(sig(1.0, symbol=SOL), T0), "max_open_positions")
    assert decision.reason == "2 positions open, opening SOL/USDT would exceed 2"
    order_of(e.decide(sig(2.0, ts=T0 + 1), T0 + 1))  # adding to an open one is fine
    filled(e, e.decide(sig(0.0, ts=T0 + 2), T0 + 2), 1.0)  # BTC flat again
    e2 = e.decide(sig(0.0, ts=T0 + 3), T0 + 3)
    assert e2 == []
    order_of(e.decide(sig(1.0, symbol=SOL, ts=T0 + 4), T0 + 4))


def test_order_rate_limits_per_strategy_and_per_venue_by_event_time() -> None:
    e = engine(max_orders_per_minute=2, max_venue_orders_per_minute=3)
    for i in range(2):
        order_of(e.decide(sig(side="buy", size=1.0, ts=T0 + i), T0 + i))
    decision = rejection(e.decide(sig(side="buy", size=1.0, ts=T0 + 2), T0 + 2), "strategy_rate")
    assert decision.reason == "s1 sent 2 orders in the last minute (max 2)"
    order_of(e.decide(sig(side="buy", size=1.0, strategy="s2", ts=T0 + 3), T0 + 3))
    decision = rejection(e.decide(sig(side="buy", size=1.0, strategy="s3"), T0 + 4), "venue_rate")
    assert decision.reason == "3 orders to test in the last minute (max 3)"
    # rejections do not count; one minute after the first order, one slot is free again
    order_of(e.decide(sig(side="sell", size=1.0, strategy="s3"), T0 + MINUTE))
    assert rejection(e.decide(sig(side="buy", size=1.0), T0 + MINUTE)).rule == "venue_rate"


def correlated_history(e: RiskEngine, n: int = 30) -> None:
    """BTC and ETH move together (+1 / -1 alternating, ETH twice as much), SOL the other
    way round: corr(BTC, ETH) = 1, corr(BTC, SOL) = -1."""
    prices = {BTC: 100.0, ETH: 10.0, SOL: 50.0}
    for i in range(n):
        up = 1 if i % 2 == 0 else -1
        prices[BTC] *= 1 + 0.01 * up
        prices[ETH] *= 1 + 0.02 * up
        prices[SOL] *= 1 - 0.01 * up
        for symbol, price in prices.items():
            e.decide(bar(price, symbol=symbol, ts=T0 + i * MINUTE), T0 + i * MINUTE)


def test_correlation_cap_rejects_a_correlated_entry_on_the_same_side() -> None:
    e = engine(correlation=CorrelationConfig(max=0.8, window=20, min_periods=10))
    correlated_history(e)
    now = T0 + 30 * MINUTE
    filled(e, e.decide(sig(1.0, ts=now), now), 100.0)  # long BTC
    decision = rejection(e.decide(sig(1.0, symbol=ETH, ts=now), now), "correlation")
    assert decision.reason == (
        "ETH/USDT returns correlate +1.000 with BTC/USDT (held long): +1.000 > max 0.8"
    )
    order_of(e.decide(sig(1.0, symbol=SOL, ts=now), now))  # anti-correlated: a hedge
    # short ETH would hedge BTC, but it is the same bet as the SOL long
    decision = rejection(e.decide(sig(-1.0, symbol=ETH, ts=now), now), "correlation")
    assert decision.reason == (
        "ETH/USDT returns correlate -1.000 with SOL/USDT (held long): +1.000 > max 0.8"
    )


def test_correlation_needs_min_periods_of_common_bars() -> None:
    e = engine(correlation=CorrelationConfig(max=0.5, window=20, min_periods=10))
    correlated_history(e, n=10)  # 9 returns each
    now = T0 + 9 * MINUTE  # the last bar's
    filled(e, e.decide(sig(1.0, ts=now), now), 100.0)
    order_of(e.decide(sig(1.0, symbol=ETH, ts=now), now))


# --- kill switch and statuses -----------------------------------------------------------------


def test_kill_publishes_nothing_but_a_later_status_includes_it() -> None:
    e = engine(max_drawdown_pct=10.0, soft_drawdown_pct=5.0)
    assert e.decide(kill("ops"), T0) == []
    assert e.status().status == "HALTED"
    e.decide(equity(1000.0), T0)
    out = e.decide(equity(940.0, ts=T0 + 1), T0 + 1)  # soft breach while killed
    [status] = statuses(out)
    assert (status.status, status.rule, status.source) == ("HALTED", "kill_switch", "risk")
    assert "soft_drawdown (SAFE_MODE)" in status.reason
    [back] = statuses(e.decide(resume(ts=T0 + 2), T0 + 2))
    assert back.status == "RUNNING"  # the resume re-armed the drawdown at 940


def test_model_and_enable_commands_leave_the_kill_switch_alone() -> None:
    e = engine()
    e.decide(kill("ops"), T0)
    for action, model in (("promote", "v4"), ("rollback", UNSET), ("enable", UNSET)):
        command = GovernanceCommand(ts=T0 + 1, action=action, strategy="s1", model=model)
        assert e.decide(command, T0 + 1) == []
        assert e.status().status == "HALTED", action


def test_hard_drawdown_halts_cancels_entries_and_resume_rearms() -> None:
    e = engine(max_drawdown_pct=10.0)
    e.decide(bar(100.0), T0)
    e.decide(equity(1000.0), T0)
    e.decide(equity(1200.0, ts=T0 + MINUTE), T0 + MINUTE)  # the peak
    working = order_of(e.decide(sig(1.0, ts=T0 + MINUTE), T0 + MINUTE))
    out = e.decide(equity(1070.0, ts=T0 + 2 * MINUTE), T0 + 2 * MINUTE)  # 10.83% down
    status, alert, cancel = out
    assert isinstance(status, SystemStatus) and status.status == "HALTED"
    assert status.rule == "max_drawdown"
    assert status.reason == "drawdown 10.83% from peak 1200.00 > max 10%"
    assert isinstance(alert, RiskAlert) and (alert.rule, alert.action) == ("max_drawdown", "halt")
    assert isinstance(cancel, OrderCommand) and cancel.action == "cancel"
    assert (cancel.client_order_id, cancel.qty) == (working.client_order_id, 1.0)
    decision = rejection(e.decide(sig(0.0, ts=T0 + 3 * MINUTE), T0 + 3 * MINUTE), "max_drawdown")
    assert decision.reason == "trading halted: drawdown 10.83% from peak 1200.00 > max 10%"
    # still down, still halted; resume re-arms at 1070
    assert e.decide(equity(1060.0, ts=T0 + 4 * MINUTE), T0 + 4 * MINUTE) == []
    [running] = statuses(e.decide(resume(ts=T0 + 5 * MINUTE), T0 + 5 * MINUTE))
    assert running.status == "RUNNING" and "max_drawdown" in running.reason
    e.decide(report(working, "canceled", ts=T0 + 5 * MINUTE), T0 + 5 * MINUTE)
    assert order_of(e.decide(sig(1.0, ts=T0 + 6 * MINUTE), T0 + 6 * MINUTE)).qty == 1.0


def test_equity_floor_halts_and_flattens_every_position_when_configured() -> None:
    e = engine(equity_floor=900.0, flatten_on_halt=True)
    e.decide(bar(100.0), T0)
    e.decide(bar(10.0, symbol=ETH), T0)
    filled(e, e.decide(sig(2.0, strategy="a"), T0), 100.0)
    filled(e, e.decide(sig(-5.0, strategy="b", symbol=ETH), T0), 10.0)
    exit_working = order_of(e.decide(sig(1.0, strategy="a", ts=T0 + 1), T0 + 1))  # sell 1
    out = e.decide(equity(899.5, ts=T0 + MINUTE), T0 + MINUTE)
    [status] = statuses(out)
    assert (status.status, status.rule) == ("HALTED", "equity_floor")
    assert status.reason == "equity 899.50 < floor 900.00"
    [alert] = alerts(out)
    assert alert.action == "flatten"
    cancels = [o for o in of(out, OrderCommand) if o.action == "cancel"]
    closes = [o for o in of(out, OrderCommand) if o.action == "new"]
    assert [c.client_order_id for c in cancels] == [exit_working.client_order_id]
    assert sorted((o.strategy, o.symbol, o.side, o.qty) for o in closes) == [
        ("a", BTC, "sell", 2.0),
        ("b", ETH, "buy", 5.0),
    ]
    # every signal is refused while halted, exits included
    assert rejection(e.decide(sig(0.0, strategy="a", ts=T0 + 2), T0 + 2)).rule == "equity_floor"


def test_daily_loss_halts_for_the_rest_of_the_utc_day_then_resets() -> None:
    e = engine(max_daily_loss_pct=3.0)
    e.decide(equity(1000.0, ts=T0 + hours(1)), T0 + hours(1))
    e.decide(equity(1100.0, ts=T0 + hours(5)), T0 + hours(5))  # up on the day
    assert e.decide(equity(971.0, ts=T0 + hours(6)), T0 + hours(6)) == []  # -2.9%
    out = e.decide(equity(969.0, ts=T0 + hours(7)), T0 + hours(7))  # -3.1% from the open
    [status] = statuses(out)
    assert (status.status, status.rule) == ("HALTED", "max_daily_loss")
    assert status.reason == "daily loss 3.10% from 1000.00 > max 3%"
    assert rejection(e.decide(sig(1.0, ts=T0 + hours(8)), T0 + hours(8))).rule == "max_daily_loss"
    # next UTC day: the day opens at the last equity (969) and the halt is lifted
    [running] = statuses(e.decide(equity(960.0, ts=T0 + DAY), T0 + DAY))
    assert running.status == "RUNNING"
    order_of(e.decide(sig(1.0, ts=T0 + DAY), T0 + DAY))
    out = e.decide(equity(939.0, ts=T0 + DAY + 1), T0 + DAY + 1)  # 3.10% below 969
    assert statuses(out)[0].rule == "max_daily_loss"


def hours(n: int) -> int:
    return n * 60 * MINUTE


def test_soft_breach_cancels_entries_asks_to_tighten_stops_and_blocks_entries() -> None:
    e = engine(soft_drawdown_pct=5.0, max_drawdown_pct=20.0)
    e.decide(bar(100.0), T0)
    e.decide(equity(1000.0), T0)
    held = filled(e, e.decide(sig(3.0), T0), 100.0)
    entry = order_of(e.decide(sig(4.0, ts=T0 + 1), T0 + 1))  # buy 1 more: an entry
    out = e.decide(equity(940.0, ts=T0 + MINUTE), T0 + MINUTE)
    [status] = statuses(out)
    assert (status.status, status.rule) == ("SAFE_MODE", "soft_drawdown")
    assert status.reason == "drawdown 6.00% beyond soft limit 5%"
    assert [(a.rule, a.action) for a in alerts(out)] == [
        ("soft_drawdown", "cancel_entries"),
        ("soft_drawdown", "tighten_stops"),
    ]
    [cancel] = [o for o in of(out, OrderCommand)]
    assert (cancel.action, cancel.client_order_id) == ("cancel", entry.client_order_id)
    e.decide(report(entry, "canceled"), T0 + MINUTE)
    now = T0 + 2 * MINUTE
    assert rejection(e.decide(sig(5.0, ts=now), now), "soft_drawdown").reason == (
        "safe mode, entries blocked: drawdown 6.00% beyond soft limit 5%"
    )
    assert order_of(e.decide(sig(1.0, ts=now), now)).side == "sell"  # exits are fine
    # back inside the soft band: running again, entries allowed
    [running] = statuses(e.decide(equity(960.0, ts=now + 1), now + 1))
    assert running.status == "RUNNING"
    assert held.qty == 3.0


def test_soft_breach_in_degrade_mode_only_warns() -> None:
    e = engine(soft_equity_floor=950.0, soft_action="degrade")
    e.decide(equity(1000.0), T0)
    out = e.decide(equity(949.0, ts=T0 + 1), T0 + 1)
    assert statuses(out)[0].status == "DEGRADED"
    assert [a.action for a in alerts(out)] == ["tighten_stops"]
    order_of(e.decide(sig(1.0, ts=T0 + 2), T0 + 2))


def test_status_names_the_worst_condition_and_lists_the_others() -> None:
    e = engine(soft_drawdown_pct=5.0, max_daily_loss_pct=8.0)
    e.decide(equity(1000.0), T0)
    e.decide(equity(940.0, ts=T0 + 1), T0 + 1)
    [status] = statuses(e.decide(equity(910.0, ts=T0 + 2), T0 + 2))
    assert (status.status, status.rule) == ("HALTED", "max_daily_loss")
    assert status.reason.endswith("also soft_drawdown (SAFE_MODE)")


# --- instruments and snapshot -----------------------------------------------------------------


def test_config_instruments_seed_lot_and_min_notional() -> None:
    spec = InstrumentSpec(venue=VENUE, symbol=BTC, lot_size=0.5, min_notional=60.0)
    e = RiskEngine(RiskLimits(), instruments=(spec,))
    e.decide(bar(100.0), T0)
    assert order_of(e.decide(sig(1.7), T0)).qty == 1.5
    decision = rejection(e.decide(sig(side="buy", size=0.5), T0), "min_notional")
    assert decision.reason == "order notional 50.00 is below the instrument's min notional 60"


def test_snapshot_restore_carries_every_rail_state() -> None:
    limits = RiskLimits(
        max_orders_per_minute=5,
        max_drawdown_pct=10.0,
        soft_drawdown_pct=5.0,
        max_symbol_exposure=10_000.0,
        correlation=CorrelationConfig(window=10, min_periods=5),
    )
    e = RiskEngine(limits)
    correlated_history(e, n=12)
    e.decide(equity(1000.0), T0 + 12 * MINUTE)
    filled(e, e.decide(sig(2.0, ts=T0 + 12 * MINUTE), T0 + 12 * MINUTE), 100.0)
    e.decide(equity(940.0, ts=T0 + 13 * MINUTE), T0 + 13 * MINUTE)
    e.decide(kill("pause"), T0 + 13 * MINUTE)
    restored = RiskEngine(limits)
    restored.restore(e.snapshot())
    assert restored.snapshot() == e.snapshot()
    now = T0 + 14 * MINUTE
    follow = [
        sig(3.0, ts=now),
        resume(ts=now),
        sig(3.0, ts=now),
        sig(1.0, symbol=ETH, ts=now),
        equity(800.0, ts=now + 1),
        sig(0.0, ts=now + 2),
    ]
    assert [restored.decide(x, now) for x in follow] == [e.decide(x, now) for x in follow]


def test_a_snapshot_of_another_layout_does_not_restore() -> None:
    """Risk keeps no reader for other layouts: a snapshot keyed by strings, one with a
    field this version does not know, or garbage raises instead of restoring half of it."""

    class StringKeyed(msgspec.Struct):
        killed: bool = False
        positions: dict[str, float] = {}

    class Unknown(msgspec.Struct):
        killed: bool = False
        ledger: dict[str, float] = {}

    e = RiskEngine(RiskLimits(max_position=3.5))
    filled(e, e.decide(sig(1.0), T0), 10.0)
    before = e.snapshot()
    for data in (
        msgspec.msgpack.encode(StringKeyed(killed=True, positions={f"s1#{VENUE}|{BTC}": 2.0})),
        msgspec.msgpack.encode(Unknown(ledger={"x": 1.0})),
        b"\xc1 not msgpack",
    ):
        with pytest.raises(msgspec.DecodeError):
            e.restore(data)
        assert e.snapshot() == before
    assert RiskEngine.snapshot_version == 5
