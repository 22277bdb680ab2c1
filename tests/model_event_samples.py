"""One valid event of each governance model kind (``contracts/model_events.py``) and of the
notifier's ``Notification``, shared by the contract, subject and malformed-input tests."""

from __future__ import annotations

from contracts.model_events import (
    AllocationDecided,
    ArmStatistics,
    GateCondition,
    ModelBudget,
    ModelKey,
    ModelRoster,
    ModelVariant,
    PromotionDecided,
    PromotionEvaluation,
    SequentialTest,
    ShadowResult,
    ShadowStep,
)
from contracts.notify_events import Notification

T = 1_700_000_000_000_000_000


def evaluation(decision: str = "hold") -> PromotionEvaluation:
    arm = ArmStatistics(
        model="v3", n=40, sharpe=0.1, skew=0.0, kurtosis=3.0, psr=0.7, max_drawdown=0.05
    )
    return PromotionEvaluation(
        current=arm,
        canary=ArmStatistics(
            model="v4", n=40, sharpe=0.3, skew=0.1, kurtosis=3.2, psr=0.96, max_drawdown=0.04
        ),
        n_pairs=40,
        hours_live=30.0,
        trials=2,
        sharpe_threshold=0.12,
        sequential=SequentialTest(
            n=40,
            mean=0.002,
            second_moment=0.0001,
            mixture_scale=0.3,
            log_ratio=1.2,
            log_threshold=2.995732,
            crossed=False,
        ),
        conditions=(
            GateCondition(
                name="sequential_test",
                value=1.2,
                threshold=2.995732,
                passed=False,
                reason="log ratio 1.2 below log(1/alpha) 2.996",
            ),
        ),
        decision=decision,  # type: ignore[arg-type]
        reason="the sequential test has not crossed",
    )


SHADOW = ShadowStep(
    ts=T,
    strategy="ma_hmm",
    venue="sim",
    symbol="BTC/USDT",
    cause_id="bar:sim:BTC/USDT:1m:1700000000000000000",
    routed="v3",
    u=0.42,
    results=(
        ShadowResult(tag="v3", position=1.0, step_return=0.001),
        ShadowResult(tag="v4", position=0.0, step_return=0.0, trade_return=0.012),
    ),
)
ROSTER = ModelRoster(
    ts=T,
    strategy="ma_hmm",
    variants=(ModelVariant("v3", 0.9), ModelVariant("v4", 0.1, canary=True)),
    cause_id="config",
    reason="the configured variants",
)
PROMOTION = PromotionDecided(
    ts=T, strategy="ma_hmm", current="v3", canary="v4", auto=True, evaluation=evaluation()
)
ALLOCATION = AllocationDecided(
    ts=T,
    strategy="ma_hmm",
    method="sharpe_psr",
    budgets=(
        ModelBudget(
            key=ModelKey("ma_hmm", "v3"),
            weight=0.4,
            target=0.45,
            previous=0.35,
            score=0.2,
            sharpe=0.2,
            psr=0.9,
            trades=50,
            is_canary=False,
            bound="max_step",
            changed_at=T,
            reason="moved 0.05 toward 0.45 (max_step)",
        ),
    ),
    total=0.4,
    reason="rebalance",
)

NOTIFICATION = Notification(
    ts=T,
    key="status:risk",
    priority="CRITICAL",
    outcome="sent",
    destination="ops_chat",
    title="risk HALTED",
    body="drawdown 10.83% from peak 1200.00 > max 10%",
    count=3,
    attempts=1,
    cause_ids=("e1", "e2", "e3"),
)

SAMPLES = (SHADOW, ROSTER, PROMOTION, ALLOCATION, NOTIFICATION)
SUBJECTS = (
    "gov.shadow.ma_hmm.sim.BTC-USDT",
    "gov.model.ma_hmm",
    "gov.promotion.ma_hmm",
    "gov.alloc.ma_hmm",
    "sys.notify.sent",
)
