"""The promotion gate: should a canary replace the current model? A pure function of the two
arms' per-trade returns, their paired differences, the hours live and the number of variants
tried; its answer carries every number it used and says why in one sentence.

A canary is promoted only when every condition holds, in this order: ``min_trades``,
``min_live_hours``, ``min_track_record`` (MinTRL against the deflated Sharpe threshold of the
trials), ``sequential_test`` (the mixture SPRT on paired differences, valid under continuous
monitoring) and ``max_drawdown``. docs/governance.md has the formulas and defaults.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import msgspec
import numpy as np
from msgspec import Meta

from contracts.model_events import (
    ArmStatistics,
    Decision,
    GateCondition,
    PromotionEvaluation,
    SequentialTest,
)
from services.governance.statistics import (
    expected_max_sharpe,
    max_drawdown,
    min_track_record_length,
    moments,
    msprt,
    probabilistic_sharpe_ratio,
)


class PromotionConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The gate's settings; the ranges are checked when the config is decoded."""

    confidence: Annotated[float, Meta(ge=0.5, le=0.999)] = 0.95
    min_trades: Annotated[int, Meta(ge=2, le=1_000_000)] = 30
    min_live_hours: Annotated[float, Meta(ge=0, le=8760)] = 24.0
    # canary max drawdown minus current max drawdown, in summed per-trade return units
    max_dd_worse: Annotated[float, Meta(ge=0, le=10)] = 0.05
    # k: the sequential test's prior on the standardised effect (mean / sd of differences)
    mixture_scale: Annotated[float, Meta(gt=0, le=10)] = 0.3
    auto: bool = True  # False: an evaluation that passes only recommends


class Arm(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One variant's per-trade returns, oldest first."""

    model: str
    returns: tuple[float, ...]


def _arm_statistics(arm: Arm, sharpe_threshold: float) -> ArmStatistics:
    m = moments(arm.returns)
    return ArmStatistics(
        model=arm.model,
        n=m.n,
        sharpe=m.sharpe,
        skew=m.skew,
        kurtosis=m.kurtosis,
        psr=probabilistic_sharpe_ratio(m.sharpe, m.n, m.skew, m.kurtosis, sharpe_threshold),
        max_drawdown=max_drawdown(arm.returns),
    )


def _track_record(
    config: PromotionConfig, canary: ArmStatistics, sharpe_threshold: float
) -> GateCondition:
    needed = min_track_record_length(
        canary.sharpe, canary.skew, canary.kurtosis, sharpe_threshold, config.confidence
    )
    if needed is None:
        return GateCondition(
            name="min_track_record",
            value=float(canary.n),
            threshold=None,
            passed=False,
            reason=(
                f"canary Sharpe per trade {canary.sharpe:.4f} does not measurably exceed "
                f"the deflated threshold {sharpe_threshold:.4f}, so no track record is long "
                "enough"
            ),
        )
    passed = canary.n >= needed
    return GateCondition(
        name="min_track_record",
        value=float(canary.n),
        threshold=needed,
        passed=passed,
        reason=(
            f"canary track record {canary.n} trades "
            f"{'>=' if passed else '<'} MinTRL {needed:.1f} "
            f"(Sharpe {canary.sharpe:.4f} vs threshold {sharpe_threshold:.4f} "
            f"at {config.confidence:.0%})"
        ),
    )


def _sequential(config: PromotionConfig, test: SequentialTest) -> GateCondition:
    passed = test.crossed and test.mean > 0.0
    if passed:
        verdict = "beats current"
    elif test.crossed:
        verdict = "is worse than current"
    else:
        verdict = "has not yet shown it beats current"
    return GateCondition(
        name="sequential_test",
        value=test.log_ratio,
        threshold=test.log_threshold,
        passed=passed,
        reason=(
            f"mixture SPRT over {test.n} paired differences (mean {test.mean:.6f}): "
            f"log LR {test.log_ratio:.3f} vs log(1/alpha) {test.log_threshold:.3f}, "
            f"canary {verdict} at {config.confidence:.0%}"
        ),
    )


def _count(name: str, what: str, value: float, threshold: float) -> GateCondition:
    passed = value >= threshold
    return GateCondition(
        name=name,
        value=value,
        threshold=threshold,
        passed=passed,
        reason=f"{what} {value:g} {'>=' if passed else '<'} {name} {threshold:g}",
    )


def evaluate(
    config: PromotionConfig,
    current_arm: Arm,
    canary_arm: Arm,
    paired_differences: Sequence[float] | np.ndarray,
    hours_live: float,
    trials: int,
    trial_sharpe_variance: float | None = None,
) -> PromotionEvaluation:
    """Evaluate the canary against the current model.

    ``paired_differences`` are canary minus current on the same opportunities (shadow).
    ``trials`` is how many variants were tried for this slot; with more than one, the canary's
    Sharpe must clear SR0, the expected maximum of that many lucky trials. Their Sharpe
    variance is ``trial_sharpe_variance`` when known, else 1/(n-1), the variance of a Sharpe
    estimate over the canary's n trades when the true Sharpe is 0.
    """
    n_canary = len(canary_arm.returns)
    variance = (
        trial_sharpe_variance if trial_sharpe_variance is not None else 1.0 / max(n_canary - 1, 1)
    )
    sharpe_threshold = expected_max_sharpe(trials, variance)
    current = _arm_statistics(current_arm, sharpe_threshold)
    canary = _arm_statistics(canary_arm, sharpe_threshold)
    test = msprt(paired_differences, config.mixture_scale, config.confidence)
    dd_excess = canary.max_drawdown - current.max_drawdown
    dd_passed = dd_excess <= config.max_dd_worse
    conditions = (
        _count("min_trades", "canary trades", float(canary.n), float(config.min_trades)),
        _count("min_live_hours", "hours live", float(hours_live), config.min_live_hours),
        _track_record(config, canary, sharpe_threshold),
        _sequential(config, test),
        GateCondition(
            name="max_drawdown",
            value=dd_excess,
            threshold=config.max_dd_worse,
            passed=dd_passed,
            reason=(
                f"canary max drawdown {canary.max_drawdown:.4f} vs current's "
                f"{current.max_drawdown:.4f}: excess {dd_excess:.4f} "
                f"{'within' if dd_passed else 'beyond'} max_dd_worse {config.max_dd_worse:g}"
            ),
        ),
    )
    decision, reason = _decide(config, conditions, test)
    return PromotionEvaluation(
        current=current,
        canary=canary,
        n_pairs=test.n,
        hours_live=float(hours_live),
        trials=trials,
        sharpe_threshold=sharpe_threshold,
        sequential=test,
        conditions=conditions,
        decision=decision,
        reason=reason,
    )


def _decide(
    config: PromotionConfig, conditions: tuple[GateCondition, ...], test: SequentialTest
) -> tuple[Decision, str]:
    """Significantly worse rejects (the test is always valid, so this is safe to act on);
    any other failure holds, naming the first failing condition and listing the rest."""
    failing = [c for c in conditions if not c.passed]
    if test.crossed and test.mean < 0.0:
        return "reject", f"reject: {_by_name(conditions, 'sequential_test').reason}"
    if failing:
        others = ", ".join(c.name for c in failing[1:])
        tail = f" (also failing: {others})" if others else ""
        return "hold", f"hold: {failing[0].reason}{tail}"
    decision: Decision = "promote" if config.auto else "recommend"
    summary = "; ".join(c.reason for c in conditions)
    suffix = "" if config.auto else " (auto-promotion off: recommendation only)"
    return decision, f"{decision}: every condition holds: {summary}{suffix}"


def _by_name(conditions: tuple[GateCondition, ...], name: str) -> GateCondition:
    return next(c for c in conditions if c.name == name)
