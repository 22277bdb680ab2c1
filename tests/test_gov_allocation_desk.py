"""The allocation desk: per-trade returns from the log (live round trips, shadow trades),
rebalancing on its cadence in event time, one AllocationDecided per strategy, idempotence
under redelivery, snapshots, its config's errors, and risk capping by its decisions. Pure."""

from __future__ import annotations

import msgspec
import pytest

from contracts.codec import encode
from contracts.events import Event, ExecutionReport
from contracts.model_events import (
    AllocationDecided,
    ModelKey,
    ModelRoster,
    ModelVariant,
    ShadowResult,
    ShadowStep,
)
from eventstore.errors import KeelError
from services.governance.allocation_desk import AllocationDesk, AllocationDeskConfig
from services.risk.engine import RiskEngine
from services.risk.limits import RiskLimits
from tests.factories import bar, equity_snapshot, signal
from tests.factories import fill as factory_fill
from tests.risk_helpers import order_of

HOUR = 3_600 * 10**9
T0 = 1_700_002_800 * 10**9  # 2023-11-14 23:00:00 UTC, on the hour
VARIANTS = (ModelVariant("v3", 0.9), ModelVariant("v4", 0.1, canary=True))
CONFIG = AllocationDeskConfig(min_trades=3, every="1h", cooldown="0s", hysteresis=0.0)


def fill(
    side: str, qty: float, price: float, ts: int, fee: float = 0.0, strategy: str = "plain"
) -> ExecutionReport:
    return factory_fill(
        side,
        qty,
        price,
        fee,
        ts=ts,
        client_order_id=f"{strategy}-{ts}",
        strategy=strategy,
        symbol="BTC/USDT",
        venue="sim",
        fee_currency="USDT",
    )


def step(ts: int, v3: float | None, v4: float | None, strategy: str = "ma_hmm") -> ShadowStep:
    return ShadowStep(
        ts=ts,
        strategy=strategy,
        venue="sim",
        symbol="BTC/USDT",
        cause_id=f"bar:{ts}",
        routed="v3",
        u=0.5,
        results=(
            ShadowResult("v3", 0.0, 0.0, v3),
            ShadowResult("v4", 0.0, 0.0, v4),
        ),
    )


def desk(config: AllocationDeskConfig = CONFIG) -> AllocationDesk:
    return AllocationDesk(config, {"ma_hmm": VARIANTS, "plain": ()})


def feed(d: AllocationDesk, events: list[Event]) -> list[AllocationDecided]:
    out: list[AllocationDecided] = []
    for event in events:
        for e in d.decide(event, event.ts):
            assert isinstance(e, AllocationDecided)
            out.append(e)
    return out


def returns(d: AllocationDesk, strategy: str, model: str) -> list[float]:
    return d.state.returns.get(ModelKey(strategy, model), [])


def test_a_round_trip_is_its_net_pnl_over_the_notional_it_opened_with() -> None:
    d = desk()
    feed(
        d,
        [
            fill("buy", 1.0, 100.0, T0, fee=0.1),
            fill("buy", 1.0, 120.0, T0 + 1, fee=0.12),  # avg 110, 220 committed
            fill("sell", 0.5, 130.0, T0 + 2, fee=0.065),  # +10 realised
            fill("sell", 2.5, 90.0, T0 + 3, fee=0.225),  # closes 1.5 (-30), flips short 1
        ],
    )
    fees = 0.1 + 0.12 + 0.065 + 0.225 * 1.5 / 2.5
    assert returns(d, "plain", "") == [pytest.approx((10.0 - 30.0 - fees) / 220.0)]
    feed(d, [fill("buy", 1.0, 80.0, T0 + 4)])  # the short: +10 on 90, its fee share 0.09
    assert returns(d, "plain", "")[1] == pytest.approx((10.0 - 0.09) / 90.0)
    assert d.state.trips == {}


def test_shadow_trades_are_a_variant_strategys_record_and_its_fills_are_not() -> None:
    d = desk()
    feed(
        d,
        [
            step(T0, 0.01, None),
            step(T0 + 1, None, 0.02),
            fill("buy", 1.0, 100.0, T0 + 2, strategy="ma_hmm"),
            fill("sell", 1.0, 110.0, T0 + 3, strategy="ma_hmm"),
            step(T0 + 4, 0.5, None, strategy="unknown"),  # no roster: which is current?
        ],
    )
    assert returns(d, "ma_hmm", "v3") == [0.01]
    assert returns(d, "ma_hmm", "v4") == [0.02]
    assert returns(d, "ma_hmm", "") == []
    assert set(d.state.returns) == {ModelKey("ma_hmm", "v3"), ModelKey("ma_hmm", "v4")}


def test_it_rebalances_once_per_period_of_event_time_one_decision_per_strategy() -> None:
    d = desk()
    first_hour = [
        step(T0 + i * 60 * 10**9, 0.01 + 0.001 * i, 0.02 + 0.002 * (i % 2)) for i in range(5)
    ]
    assert feed(d, first_hour) == []  # no rebalance within the first period
    tick = equity_snapshot(10_000.0, ts=T0 + HOUR)  # the next hour: equity moves the clock
    out = feed(d, [tick])
    assert [e.strategy for e in out] == ["ma_hmm", "plain"]
    assert all(e.ts == T0 + HOUR for e in out)
    hmm, plain = out
    weights = {b.key.model: (b.weight, b.bound) for b in hmm.budgets}
    assert weights["v4"] == (0.1, "canary_cap")  # from the floor 0.01: a step within 0.1
    assert weights["v3"] == (pytest.approx(0.11), "max_step")  # toward its cap 0.5
    assert hmm.total == pytest.approx(0.21)
    assert hmm.reason.startswith("ma_hmm: 0.2100 of equity over 2 models; sharpe_psr: 3 models")
    (whole,) = plain.budgets
    assert (whole.key, whole.weight, whole.bound, whole.trades) == (
        ModelKey("plain", ""),
        0.01,
        "track_record",
        0,
    )
    assert feed(d, [equity_snapshot(10_000.0, ts=T0 + HOUR + 1)]) == []  # same period
    later = feed(d, [step(T0 + 3 * HOUR, 0.01, 0.02)])  # two periods on: one rebalance
    assert [e.strategy for e in later] == ["ma_hmm", "plain"]
    canary = next(b for b in later[0].budgets if b.key.model == "v4")
    assert (canary.weight, canary.bound) == (0.1, "canary_cap")


def test_a_redelivered_input_changes_nothing() -> None:
    d = desk()
    events: list[Event] = [
        fill("buy", 1.0, 100.0, T0),
        fill("sell", 1.0, 110.0, T0 + 1),
        step(T0 + 2, 0.01, 0.02),
    ]
    feed(d, events)
    before = d.snapshot()
    assert feed(d, events) == []
    assert d.snapshot() == before
    assert returns(d, "plain", "") == [pytest.approx(0.1)]
    decided = feed(d, [step(T0 + HOUR, 0.01, 0.01)])
    assert decided
    assert feed(d, [step(T0 + HOUR, 0.01, 0.01)]) == []  # the rebalancing input again


def test_a_restored_desk_continues_identically() -> None:
    events: list[Event] = []
    for i in range(40):
        ts = T0 + i * 20 * 60 * 10**9
        events.append(step(ts, 0.002 * (i % 5) - 0.003, 0.003 * (i % 3) - 0.001))
        side = "buy" if i % 2 == 0 else "sell"
        events.append(fill(side, 1.0, 100.0 + (i % 7), ts + 1, fee=0.05))
    a, b = desk(), desk()
    feed(a, events[:30])
    b.restore(a.snapshot())
    assert b.snapshot() == a.snapshot()
    rest_a, rest_b = feed(a, events[30:]), feed(b, events[30:])
    assert rest_a and [encode(e) for e in rest_a] == [encode(e) for e in rest_b]
    assert feed(b, events[:30]) == []  # what it had seen stays seen after a restore
    c = desk()
    assert [encode(e) for e in feed(c, events)] == [encode(e) for e in feed(desk(), events)]


def test_a_roster_names_the_canary_and_drops_a_retired_tag() -> None:
    d = desk()
    feed(d, [step(T0, 0.01, 0.02)])
    promoted = ModelRoster(
        ts=T0 + 1,
        strategy="ma_hmm",
        variants=(ModelVariant("v4", 0.9), ModelVariant("v5", 0.1, canary=True)),
        cause_id="promotion",
        reason="v4 promoted",
    )
    feed(d, [promoted])
    assert returns(d, "ma_hmm", "v3") == []
    assert returns(d, "ma_hmm", "v4") == [0.02]
    (hmm, _) = feed(d, [equity_snapshot(1.0, ts=T0 + HOUR)])
    assert [(b.key.model, b.is_canary) for b in hmm.budgets] == [("v4", False), ("v5", True)]


def test_the_config_and_the_floor_room_fail_in_one_line() -> None:
    def load(text: str) -> AllocationDeskConfig:
        return msgspec.toml.decode(text, type=AllocationDeskConfig)

    assert load('every = "15m"\nwindow = 100').every_ns == 15 * 60 * 10**9
    with pytest.raises(msgspec.ValidationError, match=r"window \(10\) must be >= min_trades"):
        load("window = 10")
    with pytest.raises(msgspec.ValidationError, match=r"every \('0s'\) must be > 0"):
        load('every = "0s"')
    with pytest.raises(msgspec.ValidationError, match="unknown field `bogus`"):
        load("bogus = 1")
    crowded = {f"s{i}": () for i in range(3)}
    with pytest.raises(KeelError, match=r"floor 0.4 x 3 models = 1.2 exceeds max_total 1.0"):
        AllocationDesk(AllocationDeskConfig(floor=0.4, canary_cap=0.4), crowded)


def test_the_desks_decisions_cap_the_strategy_in_risk() -> None:
    """The desk's output is risk's input: the plain strategy at its floor may hold 1% of
    equity, the variant strategy its models' sum."""
    d = desk(AllocationDeskConfig(min_trades=3, every="1h", floor=0.01))
    events: list[Event] = [step(T0 + i, 0.01 + 0.001 * i, 0.02 + 0.002 * (i % 2)) for i in range(5)]
    decided = feed(d, [*events, equity_snapshot(10_000.0, ts=T0 + HOUR)])
    risk = RiskEngine(RiskLimits())
    risk.decide(bar(100.0, ts=T0 + HOUR), T0 + HOUR)
    risk.decide(equity_snapshot(10_000.0, ts=T0 + HOUR), T0 + HOUR)
    for decision in decided:
        risk.decide(decision, decision.ts)
    later = T0 + HOUR + 1
    plain = order_of(risk.decide(signal(5.0, strategy="plain", ts=later), later))
    assert plain.qty == pytest.approx(1.0)  # 0.01 x 10,000 / 100
    hmm = order_of(risk.decide(signal(50.0, strategy="ma_hmm", ts=later), later))
    assert hmm.qty == pytest.approx(21.0)  # (0.11 + 0.1) x 10,000 / 100
