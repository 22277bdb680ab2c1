"""The capital allocator (issue 17, Capital allocator): its safeguards as properties over
random rebalance sequences, and hand-computed allocations for both methods."""

from __future__ import annotations

import math
import random

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventstore.errors import KeelError
from services.governance.allocator import (
    Allocation,
    AllocatorConfig,
    ModelBudget,
    ModelKey,
    ModelStats,
    allocate,
)
from services.governance.statistics import moments

TOL = 1e-9
HOUR = 3600 * 10**9
# Every safeguard off: the weights are the raw targets.
FREE = AllocatorConfig(
    floor=0.0, cap=1.0, canary_cap=1.0, max_step=1.0, cooldown="0s", hysteresis=0.0, min_trades=0
)


def phi(x: float) -> float:
    """The standard normal CDF, closed form."""
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def key(model: str, strategy: str = "ma") -> ModelKey:
    return ModelKey(strategy, model)


def stats(
    model: str,
    std: float,
    mean: float = 0.01,
    trades: int = 100,
    skew: float = 0.0,
    kurtosis: float = 3.0,
    is_canary: bool = False,
) -> ModelStats:
    return ModelStats(key(model), trades, mean, std, skew, kurtosis, is_canary)


def weights(allocation: Allocation) -> dict[str, float]:
    return {b.key.model: b.weight for b in allocation.budgets}


def budget(allocation: Allocation, model: str) -> ModelBudget:
    return next(b for b in allocation.budgets if b.key.model == model)


# ---- hand-computed examples ----


def test_sharpe_psr_weights_are_sharpe_times_psr_normalised() -> None:
    # PSR(0) = Phi(SR sqrt(n-1) / sqrt(1 - g3 SR + (g4-1)/4 SR^2)), Bailey & Lopez de Prado
    # (2012), eq. 11; normal returns (g3 = 0, g4 = 3): the spread term is 1 + SR^2 / 2.
    a = stats("a", std=1.0, mean=0.1, trades=101)
    b = stats("b", std=1.0, mean=0.2, trades=101)
    psr_a = phi(0.1 * 10 / math.sqrt(1.005))  # Phi(0.99751) = 0.84074
    psr_b = phi(0.2 * 10 / math.sqrt(1.02))  # Phi(1.98030) = 0.97616
    score_a, score_b = 0.1 * psr_a, 0.2 * psr_b
    out = allocate(FREE, [b, a], None, 0)
    assert [x.key.model for x in out.budgets] == ["a", "b"]
    assert budget(out, "a").psr == pytest.approx(psr_a, rel=1e-12)
    assert budget(out, "a").score == pytest.approx(score_a, rel=1e-12)
    assert weights(out) == pytest.approx(
        {"a": score_a / (score_a + score_b), "b": score_b / (score_a + score_b)}, rel=1e-12
    )
    assert weights(out)["a"] == pytest.approx(0.30101, abs=1e-5)
    assert out.total == pytest.approx(1.0) and out.cash == pytest.approx(0.0, abs=1e-12)
    assert "SR 0.1000 x PSR(0) 0.8407" in budget(out, "a").reason


def test_sharpe_psr_skew_and_kurtosis_lower_the_psr() -> None:
    # SR 0.2, n 51, g3 -1, g4 6: spread 1 + 0.2 + 5/4 * 0.04 = 1.25, z = 0.2 * sqrt(50) / sqrt(1.25)
    fat = stats("fat", std=1.0, mean=0.2, trades=51, skew=-1.0, kurtosis=6.0)
    out = allocate(FREE, [fat, stats("zero", std=1.0, mean=0.0)], None, 0)
    assert budget(out, "fat").psr == pytest.approx(phi(0.2 * math.sqrt(50) / math.sqrt(1.25)))
    assert budget(out, "fat").psr == pytest.approx(0.89705, abs=1e-5)
    # a Sharpe of 0 scores 0: floor (here 0), and the other model takes everything
    assert weights(out) == {"fat": 1.0, "zero": 0.0}
    assert budget(out, "zero").bound == "floor"


def test_inverse_vol_water_fills_under_the_cap() -> None:
    # scores 1/sigma = 100, 50, 25: proportional 4/7, 2/7, 1/7; with cap 0.5 the first is
    # capped and the other two split the remaining 0.5 as 2:1.
    config = msgspec.structs.replace(FREE, method="inverse_vol", cap=0.5, canary_cap=0.5)
    models = [stats("a", 0.01), stats("b", 0.02), stats("c", 0.04)]
    assert weights(
        allocate(msgspec.structs.replace(config, cap=1.0, canary_cap=1.0), models, None, 0)
    ) == pytest.approx({"a": 4 / 7, "b": 2 / 7, "c": 1 / 7})
    out = allocate(config, models, None, 0)
    assert weights(out) == pytest.approx({"a": 0.5, "b": 1 / 3, "c": 1 / 6})
    assert [b.bound for b in out.budgets] == ["cap", "none", "none"]


def test_inverse_vol_floor_lifts_the_smallest_share() -> None:
    # floor 0.2: c's share 25 * lam falls under it, so 100 lam + 50 lam = 1 - 0.2, lam = 0.8/150
    config = msgspec.structs.replace(FREE, method="inverse_vol", floor=0.2)
    out = allocate(config, [stats("a", 0.01), stats("b", 0.02), stats("c", 0.04)], None, 0)
    assert weights(out) == pytest.approx({"a": 0.8 * 100 / 150, "b": 0.8 * 50 / 150, "c": 0.2})
    assert budget(out, "c").bound == "floor"


def test_all_capped_leaves_cash() -> None:
    config = msgspec.structs.replace(FREE, method="inverse_vol", cap=0.3, canary_cap=0.1)
    out = allocate(config, [stats("a", 0.01), stats("b", 0.02, is_canary=True)], None, 0)
    assert weights(out) == pytest.approx({"a": 0.3, "b": 0.1})
    assert budget(out, "b").bound == "canary_cap"
    assert out.total == pytest.approx(0.4) and out.cash == pytest.approx(0.6)
    assert "0.6000 cash" in out.reason


def test_canary_capped_even_with_the_best_record() -> None:
    config = msgspec.structs.replace(FREE, canary_cap=0.1, floor=0.02)
    best = stats("canary", std=0.01, mean=0.01, is_canary=True)
    out = allocate(config, [best, stats("current", std=0.02, mean=0.002)], None, 0)
    assert weights(out) == pytest.approx({"canary": 0.1, "current": 0.9})
    assert "canary_cap 0.1" in budget(out, "canary").reason


def test_short_track_record_keeps_the_floor_and_others_share_the_rest() -> None:
    config = msgspec.structs.replace(FREE, floor=0.05, min_trades=30)
    out = allocate(
        config, [stats("new", 0.001, trades=29), stats("a", 0.02), stats("b", 0.02)], None, 0
    )
    assert weights(out) == pytest.approx({"new": 0.05, "a": 0.475, "b": 0.475})
    assert budget(out, "new").bound == "track_record"
    assert "29 trades < min_trades 30" in budget(out, "new").reason


def test_steps_cooldown_and_hysteresis_over_rebalances() -> None:
    config = msgspec.structs.replace(
        FREE, method="inverse_vol", floor=0.01, max_step=0.1, cooldown="1h", hysteresis=0.02
    )
    models = [stats("a", 0.01), stats("b", 0.03)]  # targets 0.75, 0.25
    first = allocate(config, models, None, 0)
    assert weights(first) == pytest.approx({"a": 0.11, "b": 0.11})
    assert {b.bound for b in first.budgets} == {"max_step"}
    assert all(b.changed_at == 0 for b in first.budgets)
    held = allocate(config, models, first, HOUR - 1)
    assert weights(held) == weights(first)
    assert {b.bound for b in held.budgets} == {"cooldown"}
    assert "cooldown, 0s left" in held.budgets[0].reason
    second = allocate(config, models, held, HOUR)
    assert weights(second) == pytest.approx({"a": 0.21, "b": 0.21})
    third = allocate(config, models, second, 2 * HOUR)
    assert weights(third) == pytest.approx({"a": 0.31, "b": 0.25})
    assert budget(third, "b").bound == "none" and budget(third, "b").changed_at == 2 * HOUR
    # b's target moves by 0.0125: within the band, held, and its change time stays
    nudged = [stats("a", 0.01), stats("b", 0.7375 / (0.2625 * 100))]
    fourth = allocate(config, nudged, third, 3 * HOUR)
    assert budget(fourth, "b").target == pytest.approx(0.2625, abs=1e-3)
    assert budget(fourth, "b").weight == budget(third, "b").weight
    assert budget(fourth, "b").bound == "hysteresis"
    assert budget(fourth, "b").changed_at == 2 * HOUR


def test_rises_are_trimmed_when_a_held_weight_keeps_the_total_full() -> None:
    # a 0.6, b 0.4, c 0 (no record); then targets a 0.5, b 0.2, c 0.3. a's move (-0.1) is
    # within the band 0.15 and held, b falls to 0.2, c's rise to 0.3 would make 1.1: c is
    # trimmed by 0.1 to 0.2.
    config = msgspec.structs.replace(FREE, method="inverse_vol", hysteresis=0.15)
    first = allocate(
        config, [stats("a", 1 / 6), stats("b", 1 / 4), stats("c", 0.1, trades=0)], None, 0
    )
    assert weights(first) == pytest.approx({"a": 0.6, "b": 0.4, "c": 0.0})
    second = allocate(
        config, [stats("a", 1 / 5), stats("b", 1 / 2), stats("c", 1 / 3)], first, HOUR
    )
    assert [b.target for b in second.budgets] == pytest.approx([0.5, 0.2, 0.3])
    assert weights(second) == pytest.approx({"a": 0.6, "b": 0.2, "c": 0.2})
    assert [b.bound for b in second.budgets] == ["hysteresis", "none", "total"]
    assert "trimmed to 0.2000 to keep the total" in budget(second, "c").reason
    assert second.total == pytest.approx(1.0)


def test_hard_bounds_override_cooldown() -> None:
    # a and b (0.6, 0.4) changed at 0 and are in a day's cooldown at t=1.
    config = msgspec.structs.replace(FREE, method="inverse_vol", cooldown="1d", max_step=0.05)
    pair = [stats("a", 1 / 6), stats("b", 1 / 4)]
    first = allocate(msgspec.structs.replace(config, max_step=1.0), pair, None, 0)
    assert weights(first) == pytest.approx({"a": 0.6, "b": 0.4})
    # a cap lowered to 0.5: a is forced down to it, b stays in its cooldown
    lowered = msgspec.structs.replace(config, cap=0.5, canary_cap=0.5)
    out = allocate(lowered, pair, first, 1)
    assert weights(out) == pytest.approx({"a": 0.5, "b": 0.4})
    assert budget(out, "a").bound == "cap" and "forced within cap" in budget(out, "a").reason
    assert budget(out, "b").bound == "cooldown"
    # a new model with floor 0.1 and no room: what stands above the floor (0.5 and 0.3)
    # gives up the 0.1 in proportion, 1/8 of it each
    floored = msgspec.structs.replace(config, floor=0.1)
    out = allocate(floored, [*pair, stats("c", 1.0)], first, 1)
    assert weights(out) == pytest.approx({"a": 0.1 + 0.5 * 0.875, "b": 0.1 + 0.3 * 0.875, "c": 0.1})
    assert [b.bound for b in out.budgets] == ["total", "total", "floor"]
    assert out.total == pytest.approx(1.0)


def test_impossible_config_and_snapshot_give_one_clear_error() -> None:
    config = AllocatorConfig(floor=0.3, cap=0.5, canary_cap=0.3)
    four = [stats(m, 0.01) for m in "abcd"]
    with pytest.raises(KeelError, match=r"floor 0.3 x 4 models = 1.2 exceeds max_total 1.0"):
        allocate(config, four, None, 0)
    with pytest.raises(KeelError, match="appears twice"):
        allocate(config, [stats("a", 0.01), stats("a", 0.02)], None, 0)
    for raw, message in [
        ({"floor": 0.6, "cap": 0.5}, "floor"),
        ({"canary_cap": 0.6, "cap": 0.5}, "canary_cap"),
        ({"max_step": 0.0}, r"max_step"),
        ({"cap": 1.5}, r"cap"),
        ({"cooldown": "soon"}, "cooldown"),
        ({"method": "kelly"}, "method"),
    ]:
        with pytest.raises(msgspec.ValidationError, match=message):
            msgspec.convert(raw, AllocatorConfig)


def test_stats_from_returns_and_the_allocation_round_trip() -> None:
    returns = [0.01, -0.02, 0.03, 0.005, -0.001, 0.02]
    m = moments(returns)
    s = ModelStats.from_returns(key("a"), returns, is_canary=True)
    assert (s.trades, s.mean, s.std, s.skew, s.kurtosis, s.is_canary) == (
        6,
        m.mean,
        m.std,
        m.skew,
        m.kurtosis,
        True,
    )
    out = allocate(AllocatorConfig(min_trades=5), [s, stats("b", 0.02)], None, 7)
    assert msgspec.json.decode(msgspec.json.encode(out), type=Allocation) == out
    with pytest.raises(ValueError, match="std must be >= 0"):
        ModelStats(key("a"), 3, 0.0, -1.0)


# ---- properties over random rebalance sequences ----

Scenario = tuple[AllocatorConfig, list[tuple[int, list[ModelStats]]]]
KEYS = [ModelKey(s, m) for s in ("ma", "trend") for m in ("v1", "v2", "v3")]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    keys = draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=6, unique=True))
    max_total = draw(st.sampled_from([1.0, 0.8]))
    cap = draw(st.floats(0.05, 1.0))
    floor = draw(st.floats(0.0, min(cap, max_total / len(keys))))
    config = AllocatorConfig(
        method=draw(st.sampled_from(["sharpe_psr", "inverse_vol"])),
        floor=floor,
        cap=cap,
        canary_cap=draw(st.floats(floor, cap)),
        max_total=max_total,
        max_step=draw(st.floats(0.01, 1.0)),
        cooldown=f"{draw(st.integers(0, 5))}h",
        hysteresis=draw(st.floats(0.0, 0.1)),
        min_trades=draw(st.integers(0, 60)),
    )
    canary = {k: draw(st.booleans()) for k in keys}
    trades = dict.fromkeys(keys, 0)
    steps = []
    now = 0
    for _ in range(draw(st.integers(1, 6))):
        now += draw(st.integers(0, 3 * HOUR))
        snapshot = []
        for k in keys:
            trades[k] += draw(st.integers(0, 40))  # a track record only grows
            skew = draw(st.floats(-2.0, 2.0))
            snapshot.append(
                ModelStats(
                    k,
                    trades[k],
                    draw(st.floats(-0.05, 0.05)),
                    draw(st.sampled_from([0.0, 0.001, 0.01, 0.03, 0.1])),
                    skew,
                    skew * skew + 1.0 + draw(st.floats(0.0, 10.0)),
                    canary[k],
                )
            )
        steps.append((now, draw(st.permutations(snapshot))))
    return config, steps


def run(config: AllocatorConfig, steps: list[tuple[int, list[ModelStats]]]) -> list[Allocation]:
    out: list[Allocation] = []
    previous = None
    for now, snapshot in steps:
        previous = allocate(config, snapshot, previous, now)
        out.append(previous)
    return out


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_safeguards_hold_over_every_rebalance(scenario: Scenario) -> None:
    config, steps = scenario
    previous: Allocation | None = None
    short: dict[ModelKey, bool] = {}
    for (now, snapshot), allocation in zip(steps, run(config, steps), strict=True):
        assert [b.key for b in allocation.budgets] == sorted(m.key for m in snapshot)
        assert allocation.total <= config.max_total + TOL <= 1.0 + TOL
        assert allocation.total == pytest.approx(math.fsum(b.weight for b in allocation.budgets))
        before = {b.key: b for b in previous.budgets} if previous else {}
        for m, b in zip(sorted(snapshot, key=lambda m: m.key), allocation.budgets, strict=True):
            cap = config.canary_cap if m.is_canary else config.cap
            assert config.floor - TOL <= b.weight <= cap + TOL
            assert config.floor - TOL <= b.target <= cap + TOL
            start = before[m.key].weight if m.key in before else config.floor
            assert b.previous == start
            assert abs(b.weight - start) <= config.max_step + TOL
            last = before[m.key].changed_at if m.key in before else None
            if last is not None and now - last < config.cooldown_ns:
                assert b.weight == start and b.bound == "cooldown"
            if abs(b.target - start) < config.hysteresis:
                assert b.weight == start
            assert b.changed_at == (now if b.weight != start else last)
            short[m.key] = short.get(m.key, True) and m.trades < config.min_trades
            if short[m.key]:
                assert b.weight == config.floor
            assert b.reason
        previous = allocation


@settings(max_examples=50, deadline=None)
@given(scenarios(), st.randoms(use_true_random=False))
def test_same_input_same_allocation(scenario: Scenario, rng: random.Random) -> None:
    config, steps = scenario
    shuffled = [(now, rng.sample(snapshot, len(snapshot))) for now, snapshot in steps]
    first = [msgspec.json.encode(a) for a in run(config, steps)]
    assert first == [msgspec.json.encode(a) for a in run(config, steps)]
    assert first == [msgspec.json.encode(a) for a in run(config, shuffled)]


@settings(max_examples=100, deadline=None)
@given(scenarios())
def test_without_safeguards_the_targets_fill_the_room(scenario: Scenario) -> None:
    # With no step, band or cooldown the weights are the targets, which fill max_total
    # unless every model with a record sits at its cap.
    config, steps = scenario
    config = msgspec.structs.replace(config, max_step=1.0, hysteresis=0.0, cooldown="0s")
    now, snapshot = steps[-1]
    out = allocate(config, snapshot, None, now)
    assert [b.weight for b in out.budgets] == [b.target for b in out.budgets]
    free = [b for b in out.budgets if b.bound in ("none", "floor")]
    if any(b.bound == "none" for b in free):
        assert out.total == pytest.approx(config.max_total, abs=1e-9)
