"""The promotion gate: each condition can stop a promotion and is named when it does, the
record carries its numbers, and the same input gives the same bytes."""

from __future__ import annotations

import math

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.governance.promotion import Arm, PromotionConfig, PromotionEvaluation, evaluate
from services.governance.statistics import (
    expected_max_sharpe,
    max_drawdown,
    min_track_record_length,
    moments,
)

CONFIG = PromotionConfig()


def _arms(current: np.ndarray, canary: np.ndarray) -> tuple[Arm, Arm, np.ndarray]:
    return (
        Arm(model="v3", returns=tuple(current.tolist())),
        Arm(model="v4", returns=tuple(canary.tolist())),
        canary - current,
    )


def _winner(n: int = 200) -> tuple[Arm, Arm, np.ndarray]:
    """A canary that clearly beats a decent current model on the same opportunities."""
    rng = np.random.default_rng(5)
    common = 0.002 + 0.01 * rng.standard_normal(n)
    current = common + 0.002 * rng.standard_normal(n)
    canary = common + 0.004 + 0.002 * rng.standard_normal(n)
    return _arms(current, canary)


def _alternating(n: int, size: float) -> np.ndarray:
    return size * np.where(np.arange(n) % 2 == 0, 1.0, -1.0)


def _failing(result: PromotionEvaluation) -> list[str]:
    return [c.name for c in result.conditions if not c.passed]


def test_defaults_and_constraints() -> None:
    assert (CONFIG.confidence, CONFIG.min_trades, CONFIG.min_live_hours) == (0.95, 30, 24.0)
    assert (CONFIG.max_dd_worse, CONFIG.mixture_scale, CONFIG.auto) == (0.05, 0.3, True)
    for bad in (
        {"confidence": 1.5},
        {"confidence": 0.2},
        {"min_trades": 1},
        {"min_live_hours": -1.0},
        {"max_dd_worse": -0.1},
        {"mixture_scale": 0.0},
        {"confidnce": 0.9},
    ):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert(bad, PromotionConfig)
    assert msgspec.convert({"confidence": 0.99, "auto": False}, PromotionConfig).confidence == 0.99


def test_a_clear_winner_is_promoted_with_its_numbers() -> None:
    current, canary, diffs = _winner()
    result = evaluate(CONFIG, current, canary, diffs, hours_live=100.0, trials=1)
    assert result.decision == "promote"
    assert _failing(result) == []
    assert [c.name for c in result.conditions] == [
        "min_trades",
        "min_live_hours",
        "min_track_record",
        "sequential_test",
        "max_drawdown",
    ]
    assert result.reason.startswith("promote: every condition holds: canary trades 200 >= ")
    m = moments(canary.returns)
    assert (result.canary.n, result.current.n, result.n_pairs) == (200, 200, 200)
    assert (result.canary.sharpe, result.canary.skew, result.canary.kurtosis) == (
        m.sharpe,
        m.skew,
        m.kurtosis,
    )
    assert result.canary.model == "v4" and result.current.model == "v3"
    track = result.conditions[2]
    assert track.threshold == pytest.approx(
        min_track_record_length(m.sharpe, m.skew, m.kurtosis, 0.0, 0.95)
    )
    test = result.conditions[3]
    assert test.threshold == pytest.approx(math.log(20))
    assert test.value == result.sequential.log_ratio >= test.threshold
    assert result.conditions[4].value == pytest.approx(
        max_drawdown(canary.returns) - max_drawdown(current.returns)
    )


def test_with_auto_off_the_gate_only_recommends() -> None:
    current, canary, diffs = _winner()
    config = PromotionConfig(auto=False)
    result = evaluate(config, current, canary, diffs, hours_live=100.0, trials=1)
    assert result.decision == "recommend"
    assert result.reason.startswith("recommend: every condition holds")
    assert result.reason.endswith("(auto-promotion off: recommendation only)")


def test_too_few_trades_holds_and_names_every_failing_condition() -> None:
    current, canary, diffs = _winner(10)
    result = evaluate(CONFIG, current, canary, diffs, hours_live=2.0, trials=1)
    assert result.decision == "hold"
    assert _failing(result)[:2] == ["min_trades", "min_live_hours"]
    assert result.reason.startswith("hold: canary trades 10 < min_trades 30 (also failing: ")
    assert "min_live_hours" in result.reason


def test_too_few_hours_holds() -> None:
    current, canary, diffs = _winner()
    result = evaluate(CONFIG, current, canary, diffs, hours_live=23.5, trials=1)
    assert result.decision == "hold"
    assert _failing(result) == ["min_live_hours"]
    assert result.reason == "hold: hours live 23.5 < min_live_hours 24"


def test_many_trials_raise_the_sharpe_bar_past_the_canary() -> None:
    current, canary, diffs = _winner()
    n = len(canary.returns)
    one = evaluate(CONFIG, current, canary, diffs, hours_live=100.0, trials=1)
    many = evaluate(CONFIG, current, canary, diffs, 100.0, trials=50, trial_sharpe_variance=0.25)
    assert one.sharpe_threshold == 0.0
    assert many.sharpe_threshold == pytest.approx(expected_max_sharpe(50, 0.25))
    assert many.sharpe_threshold > many.canary.sharpe
    assert many.decision == "hold" and _failing(many) == ["min_track_record"]
    assert many.conditions[2].threshold is None
    assert "does not measurably exceed the deflated threshold" in many.reason
    # without a known variance: 1/(n-1), a zero-Sharpe estimate's variance over n trades
    default = evaluate(CONFIG, current, canary, diffs, hours_live=100.0, trials=5)
    assert default.sharpe_threshold == pytest.approx(expected_max_sharpe(5, 1 / (n - 1)))
    assert default.canary.psr < one.canary.psr


def test_no_evidence_of_a_difference_holds_on_the_sequential_test() -> None:
    n = 200
    current = 0.003 + _alternating(n, 0.01)
    canary = current + np.roll(_alternating(n, 0.001), n // 4)
    result = evaluate(CONFIG, *_arms(current, canary), hours_live=100.0, trials=1)
    assert result.decision == "hold"
    assert _failing(result) == ["sequential_test"]
    assert "has not yet shown it beats current" in result.reason
    assert result.sequential.log_ratio < result.sequential.log_threshold


def test_a_significantly_worse_canary_is_rejected() -> None:
    n = 120
    current = 0.004 + _alternating(n, 0.01)
    canary = current - 0.002 + np.roll(_alternating(n, 0.001), 1)
    result = evaluate(CONFIG, *_arms(current, canary), hours_live=100.0, trials=1)
    assert result.decision == "reject"
    assert result.sequential.crossed and result.sequential.mean < 0
    assert result.reason.startswith("reject: mixture SPRT over 120 paired differences")
    assert "is worse than current" in result.reason


def test_a_deeper_drawdown_holds() -> None:
    n = 200
    rng = np.random.default_rng(11)
    current = 0.001 + _alternating(n, 0.0001)  # never falls
    canary = 0.01 + 0.02 * rng.standard_normal(n)
    config = PromotionConfig(max_dd_worse=0.01)
    result = evaluate(config, *_arms(current, canary), hours_live=100.0, trials=1)
    assert result.current.max_drawdown == 0.0
    assert result.canary.max_drawdown > 0.01
    assert result.decision == "hold" and _failing(result) == ["max_drawdown"]
    assert result.reason.startswith(
        f"hold: canary max drawdown {result.canary.max_drawdown:.4f} vs current's 0.0000: "
    )
    assert result.reason.endswith("beyond max_dd_worse 0.01")


def test_same_input_same_bytes_and_the_record_round_trips() -> None:
    current, canary, diffs = _winner()
    first = msgspec.json.encode(evaluate(CONFIG, current, canary, diffs, 100.0, 3))
    again = msgspec.json.encode(evaluate(CONFIG, current, canary, list(diffs), 100.0, 3))
    assert first == again
    decoded = msgspec.json.decode(first, type=PromotionEvaluation)
    assert decoded == evaluate(CONFIG, current, canary, diffs, 100.0, 3)


small_returns = st.lists(
    st.floats(min_value=-0.1, max_value=0.1, allow_nan=False, allow_infinity=False),
    min_size=0,
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(
    small_returns,
    st.lists(st.floats(min_value=-0.05, max_value=0.05), min_size=0, max_size=80),
    st.floats(min_value=0.0, max_value=200.0),
    st.integers(min_value=1, max_value=1000),
    st.integers(min_value=2, max_value=60),
    st.booleans(),
)
def test_the_decision_follows_the_conditions(
    current_returns: list[float],
    shifts: list[float],
    hours: float,
    trials: int,
    min_trades: int,
    auto: bool,
) -> None:
    n = min(len(current_returns), len(shifts))
    current = np.array(current_returns[:n], dtype=float)
    canary = current + np.array(shifts[:n], dtype=float)
    config = PromotionConfig(min_trades=min_trades, min_live_hours=12.0, auto=auto)
    result = evaluate(config, *_arms(current, canary), hours_live=hours, trials=trials)
    failing = [c for c in result.conditions if not c.passed]
    test = result.sequential
    if test.crossed and test.mean < 0:
        assert result.decision == "reject"
    elif failing:
        assert result.decision == "hold"
        assert result.reason.startswith(f"hold: {failing[0].reason}")
        for other in failing[1:]:
            assert other.name in result.reason
    else:
        assert result.decision == ("promote" if auto else "recommend")
    assert result.reason.startswith(f"{result.decision}: ")
    encoded = msgspec.json.encode(result)  # every number finite: null would not decode
    assert msgspec.json.decode(encoded, type=PromotionEvaluation) == result
