"""Governance's model decisions as events (docs/governance.md, "Events").

- ``ShadowStep`` (``gov.shadow.<strategy>.<venue>.<symbol>``): one trading opportunity of a
  strategy instance with variants: which variant the router chose, and what every variant's
  shadow book (filled by the paper venue's rules) made of it. The promotion gate compares the
  variants on these paired samples.
- ``ModelRoster`` (``gov.model.<strategy>``): the variants of a strategy instance and their
  routing weights, from now on; the strategy host routes by the latest one.
- ``PromotionDecided`` (``gov.promotion.<strategy>``): one evaluation of a canary against
  the current model, with every number the gate used and its decision.
- ``AllocationDecided`` (``gov.alloc.<strategy>``): one strategy's model budgets after a
  rebalance; risk caps the strategy's exposure by them.

The numbers' structs live here, with the events, so that contracts import nothing from the
services, and the log holds exactly what the pure cores decided.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from contracts.event_base import Event, is_token, require

__all__ = [
    "AllocationDecided",
    "ArmStatistics",
    "Bound",
    "Decision",
    "GateCondition",
    "ModelBudget",
    "ModelKey",
    "ModelRoster",
    "ModelVariant",
    "PromotionDecided",
    "PromotionEvaluation",
    "SequentialTest",
    "ShadowResult",
    "ShadowStep",
]

Decision = Literal["promote", "recommend", "hold", "reject"]

Bound = Literal[
    "none",
    "floor",
    "cap",
    "canary_cap",
    "max_step",
    "cooldown",
    "hysteresis",
    "track_record",
    "total",
]


class SequentialTest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The mixture SPRT on paired differences after ``n`` of them."""

    n: int
    mean: float  # mean difference (canary - current)
    second_moment: float  # sigma0^2 = sum(d^2) / n, the variance under "no difference"
    mixture_scale: float  # k: the prior on the standardised effect is N(0, k^2)
    log_ratio: float  # log of the mixture likelihood ratio Lambda_n
    log_threshold: float  # log(1 / alpha)
    crossed: bool  # Lambda_n >= 1 / alpha


class ArmStatistics(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    model: str
    n: int
    sharpe: float  # per trade, ddof=1, not annualised
    skew: float
    kurtosis: float  # non-excess
    psr: float  # PSR against the deflated threshold
    max_drawdown: float


class GateCondition(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    value: float
    threshold: float | None  # None: no value can pass (MinTRL when Sharpe <= threshold)
    passed: bool
    reason: str


class PromotionEvaluation(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    current: ArmStatistics
    canary: ArmStatistics
    n_pairs: int
    hours_live: float
    trials: int
    sharpe_threshold: float  # SR0: expected max Sharpe per trade of the trials (0 for one)
    sequential: SequentialTest
    conditions: tuple[GateCondition, ...]
    decision: Decision
    reason: str


class ModelKey(msgspec.Struct, frozen=True, cache_hash=True, array_like=True, gc=False, order=True):
    """One model (variant) of one strategy: what a budget belongs to."""

    strategy: str
    model: str

    def __str__(self) -> str:
        return f"{self.strategy}|{self.model}"


class ModelBudget(msgspec.Struct, frozen=True):
    """One model's weight and how it came about. ``changed_at`` (ns) is when the weight last
    changed (None: never, since it entered at its floor); the cooldown counts from it."""

    key: ModelKey
    weight: float
    target: float
    previous: float
    score: float
    sharpe: float
    psr: float
    trades: int
    is_canary: bool
    bound: Bound
    changed_at: int | None
    reason: str


class ShadowResult(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One variant's shadow book over one opportunity: its position after it (signed units
    of the strategy's size), the return it earned over the step (net of the paper venue's
    costs) and, when a shadow trade closed on this step, that trade's return."""

    tag: str
    position: float
    step_return: float
    trade_return: float | None = None


class ShadowStep(Event, frozen=True):
    """One opportunity (``cause_id``: the event that caused it) of a strategy instance with
    variants: the routed variant (the only one whose signal reached risk) and every
    variant's shadow result, in the roster's order."""

    strategy: str
    venue: str
    symbol: str
    cause_id: str
    routed: str
    u: float
    results: tuple[ShadowResult, ...]

    def __post_init__(self) -> None:
        super().__post_init__()
        require(is_token(self.strategy), "strategy must match [A-Za-z0-9_-]+")
        require(bool(self.cause_id), "cause_id must not be empty")
        require(0.0 <= self.u < 1.0, "u must be within [0, 1)")
        tags = [r.tag for r in self.results]
        require(self.routed in tags, "routed must name one of the results")
        require(len(set(tags)) == len(tags), "result tags must be unique")


class ModelVariant(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    tag: str
    weight: float
    canary: bool = False


class ModelRoster(Event, frozen=True):
    """A strategy instance's variants from now on: exactly one current model (``canary``
    false) and any canaries, with relative routing weights. ``cause_id`` names the decision
    or command that set it."""

    strategy: str
    variants: tuple[ModelVariant, ...]
    cause_id: str
    reason: str

    def __post_init__(self) -> None:
        super().__post_init__()
        require(is_token(self.strategy), "strategy must match [A-Za-z0-9_-]+")
        current = [v for v in self.variants if not v.canary]
        require(len(current) == 1, "a roster has exactly one current model")
        tags = [v.tag for v in self.variants]
        require(len(set(tags)) == len(tags), "variant tags must be unique")
        require(all(v.weight >= 0 for v in self.variants), "weights must be >= 0")


class PromotionDecided(Event, frozen=True):
    """One evaluation of ``canary`` against ``current`` for ``strategy``; ``auto`` says
    whether a passing gate promotes (else it only recommends)."""

    strategy: str
    current: str
    canary: str
    auto: bool
    evaluation: PromotionEvaluation

    def __post_init__(self) -> None:
        super().__post_init__()
        require(is_token(self.strategy), "strategy must match [A-Za-z0-9_-]+")
        require(self.current != self.canary, "current and canary must differ")


class AllocationDecided(Event, frozen=True):
    """One strategy's budgets after a rebalance (fractions of equity), the rebalance's
    total and its reason."""

    strategy: str
    method: str
    budgets: tuple[ModelBudget, ...]
    total: float
    reason: str

    def __post_init__(self) -> None:
        super().__post_init__()
        require(is_token(self.strategy), "strategy must match [A-Za-z0-9_-]+")
        require(
            all(b.key.strategy == self.strategy for b in self.budgets),
            "every budget belongs to the event's strategy",
        )
        require(all(0.0 <= b.weight <= 1.0 for b in self.budgets), "weights within [0, 1]")
