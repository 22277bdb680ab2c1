"""Pre-trade risk rails: target deltas, working orders, every rule, and a limits property."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.events import Event, OrderCommand, RiskDecision
from contracts.system_events import GovernanceCommand
from services.risk.engine import RiskEngine
from services.risk.limits import RiskLimits
from tests.factories import MINUTE, report
from tests.risk_helpers import BTC, T0, VENUE, bar, book, kill, order_of, rejection, resume, sig

NOW = T0 + 5


# --- target positions and working orders ------------------------------------------------


def test_target_signal_becomes_buy_order() -> None:
    engine = RiskEngine(RiskLimits(max_order_notional=1_000.0))
    assert engine.decide(bar(100.0), NOW) == []
    s = sig(1.0, ts=T0 + 42)
    order = order_of(engine.decide(s, NOW))
    assert order.action == "new"
    assert order.side == "buy"
    assert order.qty == 1.0
    assert order.order_type == "market"
    assert order.client_order_id == f"s1-BTC-USDT-{s.ts}-1"
    assert order.ts == NOW
    assert (order.strategy, order.venue, order.symbol, order.model_tag) == ("s1", VENUE, BTC, "mt")


def test_repeated_signal_while_working_sends_nothing_then_fill_then_flat() -> None:
    engine = RiskEngine(RiskLimits())
    first = order_of(engine.decide(sig(1.0, ts=T0), NOW))
    # Same target again while the first order is working: nothing more to do.
    assert engine.decide(sig(1.0, ts=T0 + MINUTE), NOW) == []
    assert engine.decide(report(first, "accepted"), NOW) == []
    assert engine.decide(sig(1.0, ts=T0 + 2 * MINUTE), NOW) == []
    assert engine.decide(report(first, "filled", 1.0, 100.0), NOW) == []
    assert engine.state.positions == {book("s1"): 1.0}
    assert engine.state.working == {}
    # Still at target after the fill.
    assert engine.decide(sig(1.0, ts=T0 + 3 * MINUTE), NOW) == []
    # Back to flat: sell the one held.
    flat = order_of(engine.decide(sig(0.0, ts=T0 + 4 * MINUTE), NOW))
    assert (flat.side, flat.qty) == ("sell", 1.0)
    assert flat.client_order_id == f"s1-BTC-USDT-{T0 + 4 * MINUTE}-2"


def test_target_change_while_working_orders_only_the_difference() -> None:
    engine = RiskEngine(RiskLimits())
    order_of(engine.decide(sig(1.0, ts=T0), NOW))
    more = order_of(engine.decide(sig(3.0, ts=T0 + 1), NOW))
    assert (more.side, more.qty) == ("buy", 2.0)
    reverse = order_of(engine.decide(sig(-1.0, ts=T0 + 2), NOW))
    assert (reverse.side, reverse.qty) == ("sell", 4.0)


def test_partial_fill_keeps_the_rest_working() -> None:
    engine = RiskEngine(RiskLimits())
    order = order_of(engine.decide(sig(2.0), NOW))
    engine.decide(report(order, "partially_filled", 0.5, 10.0), NOW)
    assert engine.state.positions[book("s1")] == 0.5
    assert engine.state.working[order.client_order_id].remaining == pytest.approx(1.5)
    assert engine.decide(sig(2.0, ts=T0 + 1), NOW) == []  # 0.5 held + 1.5 working


def test_same_signal_ts_gets_a_unique_client_order_id() -> None:
    engine = RiskEngine(RiskLimits())
    a = order_of(engine.decide(sig(1.0, ts=T0), NOW))
    b = order_of(engine.decide(sig(2.0, ts=T0), NOW))
    assert a.client_order_id != b.client_order_id


def test_strategies_have_their_own_targets() -> None:
    engine = RiskEngine(RiskLimits())
    order_of(engine.decide(sig(1.0, strategy="a"), NOW))
    other = order_of(engine.decide(sig(1.0, strategy="b"), NOW))
    assert (other.strategy, other.side, other.qty) == ("b", "buy", 1.0)
    assert other.client_order_id == f"b-BTC-USDT-{T0}-1"  # counted per strategy and symbol


@pytest.mark.parametrize(("side", "size"), [("buy", 0.5), ("sell", 2.0)])
def test_side_and_size_signal(side: str, size: float) -> None:
    engine = RiskEngine(RiskLimits())
    order = order_of(engine.decide(sig(side=side, size=size), NOW))
    assert (order.side, order.qty) == (side, size)
    # Side/size is an increment, not a target: a second one orders again.
    again = order_of(engine.decide(sig(side=side, size=size, ts=T0 + 1), NOW))
    assert (again.side, again.qty) == (side, size)


def test_other_events_produce_nothing() -> None:
    engine = RiskEngine(RiskLimits())
    assert engine.decide(bar(5.0), NOW) == []
    assert engine.decide(kill(), NOW) == []
    assert engine.decide(resume(), NOW) == []


# --- rules ------------------------------------------------------------------------------


def test_kill_switch_rejects_then_resume_approves() -> None:
    engine = RiskEngine(RiskLimits())
    engine.decide(kill("fat finger"), NOW)
    decision = rejection(engine.decide(sig(1.0), NOW))
    assert decision.rule == "kill_switch"
    assert "fat finger" in decision.reason
    assert (decision.strategy, decision.venue, decision.symbol) == ("s1", VENUE, BTC)
    assert decision.ts == NOW
    assert engine.state.working == {}  # a rejection reserves nothing
    engine.decide(resume(), NOW)
    order = order_of(engine.decide(sig(1.0, ts=T0 + 1), NOW))
    assert (order.side, order.qty) == ("buy", 1.0)


def test_kill_switch_blocks_side_size_and_reducing_orders() -> None:
    engine = RiskEngine(RiskLimits())
    order = order_of(engine.decide(sig(1.0), NOW))
    engine.decide(report(order, "filled", 1.0, 10.0), NOW)
    engine.decide(kill(), NOW)
    assert rejection(engine.decide(sig(0.0, ts=T0 + 1), NOW)).rule == "kill_switch"
    assert rejection(engine.decide(sig(side="sell", size=1.0), NOW)).rule == "kill_switch"


def test_kill_switch_is_checked_first() -> None:
    engine = RiskEngine(
        RiskLimits(allowed_symbols=("ETH/USDT",), max_order_notional=1.0, max_position=0.1)
    )
    engine.decide(kill(), NOW)
    assert rejection(engine.decide(sig(5.0), NOW)).rule == "kill_switch"


def test_allowlist_rejection_names_the_symbol() -> None:
    engine = RiskEngine(RiskLimits(allowed_symbols=("ETH/USDT",)))
    decision = rejection(engine.decide(sig(1.0), NOW))
    assert decision.rule == "symbol_allowlist"
    assert BTC in decision.reason
    order_of(engine.decide(sig(1.0, symbol="ETH/USDT"), NOW))


def test_max_order_notional_without_a_price_rejects() -> None:
    engine = RiskEngine(RiskLimits(max_order_notional=1_000.0))
    decision = rejection(engine.decide(sig(1.0), NOW))
    assert decision.rule == "max_order_notional"
    assert "no price" in decision.reason
    # A price for another symbol does not help.
    engine.decide(bar(10.0, symbol="ETH/USDT"), NOW)
    assert "no price" in rejection(engine.decide(sig(1.0, ts=T0 + 1), NOW)).reason


def test_max_order_notional_above_limit_names_both_numbers() -> None:
    engine = RiskEngine(RiskLimits(max_order_notional=1_000.0))
    engine.decide(bar(300.0), NOW)
    decision = rejection(engine.decide(sig(4.0), NOW))
    assert decision.rule == "max_order_notional"
    assert "1200" in decision.reason and "1000" in decision.reason
    # Exactly at the limit is allowed, and the latest bar's close is the price used.
    order = order_of(engine.decide(sig(3.0, ts=T0 + 1), NOW))
    assert order.qty == 3.0
    engine.decide(bar(600.0, ts=T0 + MINUTE), NOW)
    assert rejection(engine.decide(sig(5.0, ts=T0 + MINUTE), NOW)).rule == "max_order_notional"


def test_max_position_counts_all_strategies_and_working_orders() -> None:
    engine = RiskEngine(RiskLimits(max_position=2.0))
    a = order_of(engine.decide(sig(1.0, strategy="a"), NOW))
    engine.decide(report(a, "filled", 1.0, 10.0), NOW)  # a holds 1
    order_of(engine.decide(sig(1.0, strategy="b"), NOW))  # b has 1 working
    decision = rejection(engine.decide(sig(1.0, strategy="c"), NOW))
    assert decision.rule == "max_position"
    assert "3" in decision.reason and "2" in decision.reason
    # A short by c nets the symbol down, so it is within limits.
    assert order_of(engine.decide(sig(-1.0, strategy="c"), NOW)).side == "sell"


def test_max_position_applies_to_shorts_and_per_symbol() -> None:
    engine = RiskEngine(RiskLimits(max_position=1.0))
    assert rejection(engine.decide(sig(-1.5), NOW)).rule == "max_position"
    order_of(engine.decide(sig(-1.0), NOW))
    order_of(engine.decide(sig(1.0, symbol="ETH/USDT"), NOW))


@pytest.mark.parametrize("status", ["canceled", "rejected"])
def test_canceled_or_rejected_report_releases_working_qty(status: str) -> None:
    engine = RiskEngine(RiskLimits(max_position=1.0))
    order = order_of(engine.decide(sig(1.0, strategy="a"), NOW))
    assert rejection(engine.decide(sig(1.0, strategy="b"), NOW)).rule == "max_position"
    engine.decide(report(order, status), NOW)
    assert engine.state.working == {}
    assert order_of(engine.decide(sig(1.0, strategy="b", ts=T0 + 1), NOW)).qty == 1.0
    # Now b's working order is what counts against "a".
    assert rejection(engine.decide(sig(1.0, strategy="a", ts=T0 + 2), NOW)).rule == "max_position"


def test_cancel_after_partial_fill_keeps_the_filled_part() -> None:
    engine = RiskEngine(RiskLimits())
    order = order_of(engine.decide(sig(2.0), NOW))
    engine.decide(report(order, "partially_filled", 0.5, 10.0), NOW)
    engine.decide(report(order, "canceled"), NOW)
    rest = order_of(engine.decide(sig(2.0, ts=T0 + 1), NOW))
    assert (rest.side, rest.qty) == ("buy", 1.5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_order_notional": 0.0},
        {"max_position": -1.0},
        {"max_position": 0.0},
        {"max_position": math.nan},
        {"max_position": math.inf},
    ],
)
def test_limits_validation(kwargs: dict[str, float]) -> None:
    [name] = kwargs
    with pytest.raises(msgspec.ValidationError, match=name):
        msgspec.convert(kwargs, RiskLimits)


# --- snapshot -----------------------------------------------------------------------------


def test_snapshot_restore_round_trip() -> None:
    limits = RiskLimits(max_position=5.0, max_order_notional=10_000.0)
    engine = RiskEngine(limits)
    engine.decide(bar(100.0), NOW)
    a = order_of(engine.decide(sig(2.0, strategy="a"), NOW))
    engine.decide(report(a, "partially_filled", 1.0, 100.0), NOW)
    order_of(engine.decide(sig(-1.0, strategy="b", ts=T0 + 1), NOW))
    engine.decide(kill("pause"), NOW)

    restored = RiskEngine(limits)
    restored.restore(engine.snapshot())
    assert restored.state == engine.state
    assert restored.snapshot() == engine.snapshot()

    follow_up: list[Event] = [
        sig(3.0, strategy="a", ts=T0 + 2),
        resume(),
        sig(3.0, strategy="a", ts=T0 + 3),
        report(a, "filled", 1.0, 100.0),
        bar(101.0, ts=T0 + MINUTE),
        sig(0.0, strategy="b", ts=T0 + 4),
        sig(9.0, strategy="c", ts=T0 + 5),
    ]
    assert [restored.decide(e, NOW) for e in follow_up] == [
        engine.decide(e, NOW) for e in follow_up
    ]


# --- property: no approved order breaks a configured limit --------------------------------

SYMBOLS = ("BTC/USDT", "ETH/USDT", "DOGE/USDT")
STRATEGIES = ("a", "b")
TOL = 1e-9


@dataclass
class Model:
    """An independent account of what the engine should know."""

    killed: bool = False
    prices: dict[str, float] = field(default_factory=dict)
    positions: dict[tuple[str, str], float] = field(default_factory=dict)  # (strategy, symbol)
    working: dict[str, tuple[str, str, float, OrderCommand]] = field(default_factory=dict)

    def exposure(self, symbol: str) -> float:
        held = sum(q for (_, sym), q in self.positions.items() if sym == symbol)
        return held + sum(w[2] for w in self.working.values() if w[1] == symbol)

    def held(self, strategy: str, symbol: str) -> float:
        working = sum(w[2] for w in self.working.values() if w[:2] == (strategy, symbol))
        return self.positions.get((strategy, symbol), 0.0) + working


op_signal = st.tuples(
    st.just("signal"),
    st.sampled_from(STRATEGIES),
    st.sampled_from(SYMBOLS),
    st.one_of(
        st.tuples(st.just("target"), st.sampled_from([-3.0, -1.5, -1.0, 0.0, 0.5, 1.0, 2.0, 3.5])),
        st.tuples(st.sampled_from(["buy", "sell"]), st.sampled_from([0.25, 0.5, 1.0, 2.0])),
    ),
)
op_bar = st.tuples(
    st.just("bar"), st.sampled_from(SYMBOLS), st.floats(min_value=0.5, max_value=2_000.0)
)
op_report = st.tuples(
    st.just("report"),
    st.integers(min_value=0, max_value=50),
    st.sampled_from(["filled", "partial", "canceled", "rejected", "accepted"]),
)
op_gov = st.tuples(st.just("gov"), st.sampled_from(["kill", "resume"]))
ops = st.lists(st.one_of(op_signal, op_signal, op_bar, op_report, op_report, op_gov), max_size=60)
limits_st = st.builds(
    RiskLimits,
    allowed_symbols=st.sampled_from([(), ("BTC/USDT", "ETH/USDT"), ("ETH/USDT",)]),
    max_order_notional=st.one_of(st.none(), st.sampled_from([50.0, 500.0, 5_000.0])),
    max_position=st.one_of(st.none(), st.sampled_from([0.5, 1.0, 2.5, 4.0])),
)


@settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(limits=limits_st, script=ops)
def test_no_approved_order_violates_a_limit(limits: RiskLimits, script: list[tuple]) -> None:
    engine = RiskEngine(limits)
    model = Model()
    ts = T0
    for op in script:
        ts += 1
        kind = op[0]
        if kind == "signal":
            _, strategy, symbol, (how, amount) = op
            if how == "target":
                event = sig(amount, ts=ts, strategy=strategy, symbol=symbol)
                delta = amount - model.held(strategy, symbol)
            else:
                event = sig(side=how, size=amount, ts=ts, strategy=strategy, symbol=symbol)
                delta = amount if how == "buy" else -amount
            out = engine.decide(event, ts)
            if abs(delta) <= 1e-12:
                assert out == []
                continue
            assert len(out) == 1, out
            [result] = out
            price = model.prices.get(symbol)
            after = model.exposure(symbol) + delta
            if isinstance(result, OrderCommand):
                signed = result.qty if result.side == "buy" else -result.qty
                assert signed == pytest.approx(delta, abs=TOL)
                assert not model.killed
                assert not limits.allowed_symbols or symbol in limits.allowed_symbols
                if limits.max_order_notional is not None:
                    assert price is not None
                    assert result.qty * price <= limits.max_order_notional * (1 + TOL)
                if limits.max_position is not None:
                    assert abs(after) <= limits.max_position + TOL
                assert result.client_order_id not in model.working
                model.working[result.client_order_id] = (strategy, symbol, signed, result)
            else:
                # A rejection must name a rule that really is breached.
                assert isinstance(result, RiskDecision) and not result.approved
                breached = {
                    "kill_switch": model.killed,
                    "symbol_allowlist": bool(limits.allowed_symbols)
                    and symbol not in limits.allowed_symbols,
                    "max_order_notional": limits.max_order_notional is not None
                    and (price is None or abs(delta) * price > limits.max_order_notional),
                    "max_position": limits.max_position is not None
                    and abs(after) > limits.max_position,
                }
                assert breached[result.rule], (result, model)
        elif kind == "bar":
            _, symbol, price = op
            assert engine.decide(bar(price, symbol=symbol, ts=ts), ts) == []
            model.prices[symbol] = price
        elif kind == "report":
            _, index, status = op
            if not model.working:
                continue
            order_id = sorted(model.working)[index % len(model.working)]
            strategy, symbol, remaining, order = model.working[order_id]
            if status == "filled":
                fill = abs(remaining)
            elif status == "partial":
                fill, status = abs(remaining) / 2, "partially_filled"
            else:
                fill = 0.0
            assert engine.decide(report(order, status, fill, 10.0), ts) == []
            signed = fill if order.side == "buy" else -fill
            key = (strategy, symbol)
            model.positions[key] = model.positions.get(key, 0.0) + signed
            if status in ("filled", "canceled", "rejected"):
                del model.working[order_id]
            else:
                model.working[order_id] = (strategy, symbol, remaining - signed, order)
        else:
            _, action = op
            engine.decide(GovernanceCommand(ts=ts, action=action), ts)
            model.killed = action == "kill"
    # The engine's books agree with the model's at the end.
    assert set(engine.state.working) == set(model.working)
    for (strategy, symbol), qty in model.positions.items():
        held = engine.state.positions.get(book(strategy, symbol), 0.0)
        assert held == pytest.approx(qty)


def test_max_position_never_blocks_a_reduction() -> None:
    engine = RiskEngine(RiskLimits(max_position=3))
    engine.decide(bar(100.0), NOW)
    big = order_of(engine.decide(sig(3.0), NOW))
    engine.decide(report(big, "filled", 3.0, 100.0), NOW)
    engine.limits = RiskLimits(max_position=1)  # the cap was lowered while holding 3
    reduce = order_of(engine.decide(sig(2.0, ts=T0 + MINUTE), NOW))
    assert (reduce.side, reduce.qty) == ("sell", 1.0)


def test_client_order_ids_stay_unique_for_signals_at_the_same_time() -> None:
    engine = RiskEngine(RiskLimits())
    first = order_of(engine.decide(sig(1.0), NOW))
    engine.decide(report(first, "filled", 1.0, 100.0), NOW)
    second = order_of(engine.decide(sig(0.0), NOW))  # same strategy, symbol and ts
    assert first.client_order_id != second.client_order_id
