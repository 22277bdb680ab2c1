"""The capital allocator: per-(strategy, model) performance in, budgets (weights of capital) out.

Pure: a snapshot of each model's per-trade statistics, the previous allocation and ``now``
(ns) give the next ``Allocation``, whose every weight carries its raw target, the safeguard
that bound it and a reason sentence (issue 17: a decision nobody can audit is a black box).

The target is a capped proportional split: ``w_i = clip(lam * s_i, floor, cap_i)`` with
``lam`` solved exactly so the weights fill ``max_total`` (water-filling), where the score
``s_i`` is ``max(0, SR) * PSR(0)`` (``sharpe_psr``) or ``1 / sigma`` (``inverse_vol``).
The safeguards then move each weight from its previous value toward that target. Floor,
caps and ``sum <= max_total`` are hard bounds; cooldown, hysteresis and ``max_step`` give
way only when a hard bound forces it (a new model with no room, a config that changed).
docs/governance.md, The allocator, has the formulas.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from contracts.intervals import duration_ns
from contracts.model_events import Bound, ModelBudget, ModelKey
from eventstore.errors import KeelError
from services.governance.statistics import moments, probabilistic_sharpe_ratio

Method = Literal["sharpe_psr", "inverse_vol"]
Fraction = Annotated[float, Meta(ge=0, le=1)]
Duration = Annotated[
    str,
    Meta(
        pattern=r"^[0-9]+(\.[0-9]+)?(ms|s|m|h|d|w)$",
        description="a duration: 250ms, 90s, 5m, 6h, 1d or 2w",
    ),
]
# Rounding in a sum of weights: an excess this small is not trimmed (nor called a bound).
_SLACK = 1e-12
# A score this far below the best is no score: it would push ``lam`` past float range.
_NEGLIGIBLE = 1e-9


class AllocatorConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``[governance.allocator]``: ranges are msgspec constraints (checked on decode); the
    relations between keys are checked in ``__post_init__`` with a message naming them."""

    method: Method = "sharpe_psr"
    floor: Fraction = 0.01
    """Every model's minimum weight, whatever its record."""
    cap: Fraction = 0.5
    canary_cap: Fraction = 0.1
    max_total: Annotated[float, Meta(gt=0, le=1)] = 1.0
    """The most that is allocated; the rest stays cash."""
    max_step: Annotated[float, Meta(gt=0, le=1)] = 0.1
    """The most one weight moves in one rebalance."""
    cooldown: Duration = "1h"
    """No change to a weight within this long of its last change."""
    hysteresis: Annotated[float, Meta(ge=0, lt=1)] = 0.02
    """Moves toward the target smaller than this are ignored."""
    min_trades: Annotated[int, Meta(ge=0, le=1_000_000)] = 30
    """The track record (trades) a model needs before it gets more than its floor."""

    def __post_init__(self) -> None:
        if self.floor > self.cap:
            raise ValueError(f"floor ({self.floor}) must be <= cap ({self.cap})")
        if not self.floor <= self.canary_cap <= self.cap:
            raise ValueError(
                f"canary_cap ({self.canary_cap}) must be within [floor, cap] "
                f"([{self.floor}, {self.cap}])"
            )
        if self.floor > self.max_total:
            raise ValueError(f"floor ({self.floor}) must be <= max_total ({self.max_total})")
        duration_ns(self.cooldown, "cooldown")

    @property
    def cooldown_ns(self) -> int:
        return duration_ns(self.cooldown, "cooldown")

    def cap_for(self, is_canary: bool) -> float:
        return self.canary_cap if is_canary else self.cap


class ModelStats(msgspec.Struct, frozen=True):
    """A model's per-trade record: mean and standard deviation (ddof=1) of its per-trade
    returns, their skewness and non-excess kurtosis (3 for a normal)."""

    key: ModelKey
    trades: int
    mean: float = 0.0
    std: float = 0.0
    skew: float = 0.0
    kurtosis: float = 3.0
    is_canary: bool = False

    def __post_init__(self) -> None:
        if self.trades < 0:
            raise ValueError(f"{self.key}: trades must be >= 0 (got {self.trades})")
        if not all(math.isfinite(v) for v in (self.mean, self.std, self.skew, self.kurtosis)):
            raise ValueError(f"{self.key}: mean, std, skew and kurtosis must be finite")
        if self.std < 0:
            raise ValueError(f"{self.key}: std must be >= 0 (got {self.std})")

    @classmethod
    def from_returns(
        cls, key: ModelKey, returns: Sequence[float], is_canary: bool = False
    ) -> ModelStats:
        """The record of per-trade returns, with the conventions of ``statistics.moments``."""
        m = moments(returns)
        return cls(key, m.n, m.mean, m.std, m.skew, m.kurtosis, is_canary)


class Allocation(msgspec.Struct, frozen=True):
    """A rebalance: the budgets sorted by key, their total, the cash left and a summary."""

    at: int
    method: Method
    budgets: tuple[ModelBudget, ...]
    total: float
    target_total: float
    cash: float
    reason: str

    def weights(self) -> dict[ModelKey, float]:
        return {b.key: b.weight for b in self.budgets}


class _Target(msgspec.Struct, frozen=True):
    weight: float
    score: float
    sharpe: float
    psr: float
    bound: Bound
    why: str


def _score(config: AllocatorConfig, stats: ModelStats) -> tuple[float, float, float, str]:
    """(score, Sharpe per trade, PSR(0), the sentence that explains the score)."""
    if stats.trades < 2 or stats.std <= 0.0:
        return 0.0, 0.0, 0.0, f"{stats.trades} trades, no variance: score 0"
    sharpe = stats.mean / stats.std
    psr = probabilistic_sharpe_ratio(sharpe, stats.trades, stats.skew, stats.kurtosis)
    if config.method == "inverse_vol":
        score = 1.0 / stats.std
        return score, sharpe, psr, f"sigma {stats.std:.6g}: score 1/sigma = {score:.6g}"
    score = max(0.0, sharpe) * psr
    why = f"SR {sharpe:.4f} x PSR(0) {psr:.4f} = score {score:.6g}"
    return score, sharpe, psr, why + (" (SR <= 0)" if sharpe <= 0.0 else "")


def _fill(scores: Sequence[float], floor: float, caps: Sequence[float], room: float) -> float:
    """The ``lam`` with ``sum(clip(lam * s_i, floor, cap_i)) == room``, exactly, or ``inf``
    when every model at its cap still leaves room (the rest stays cash).

    The sum is piecewise linear and non-decreasing in ``lam`` with breakpoints ``floor/s_i``
    and ``cap_i/s_i``; between two breakpoints the set of models strictly inside their
    bounds is fixed, so ``lam`` solves one linear equation there."""
    if math.fsum(caps) <= room:
        return math.inf
    pairs = list(zip(scores, caps, strict=True))
    points = sorted({p for s, c in pairs for p in (floor / s, c / s)})
    high = next(p for p in points if math.fsum(min(max(p * s, floor), c) for s, c in pairs) >= room)
    low = max((p for p in points if p < high), default=0.0)
    mid = (low + high) / 2.0
    fixed = 0.0
    free = 0.0
    for s, c in pairs:
        if mid * s <= floor:
            fixed += floor
        elif mid * s >= c:
            fixed += c
        else:
            free += s
    return (room - fixed) / free if free > 0.0 else high


def _targets(config: AllocatorConfig, models: Sequence[ModelStats]) -> dict[ModelKey, _Target]:
    """Each model's raw target: its floor without a track record or a score worth the name,
    else its share of what is left once those floors are set aside, within [floor, cap].
    Scores are taken relative to the best, so ``lam`` stays finite."""
    scored = {m.key: _score(config, m) for m in models}
    best = max((scored[m.key][0] for m in models if m.trades >= config.min_trades), default=0.0)
    relative = {k: v[0] / best if best > 0.0 else 0.0 for k, v in scored.items()}
    out: dict[ModelKey, _Target] = {}
    eligible: list[ModelStats] = []
    for m in models:
        score, sharpe, psr, why = scored[m.key]
        if m.trades < config.min_trades:
            why += f"; {m.trades} trades < min_trades {config.min_trades}: floor"
            out[m.key] = _Target(config.floor, score, sharpe, psr, "track_record", why)
        elif score <= 0.0:
            out[m.key] = _Target(config.floor, score, sharpe, psr, "floor", why + ": floor")
        elif relative[m.key] < _NEGLIGIBLE:
            why += f"; under {_NEGLIGIBLE:g} of the best score: floor"
            out[m.key] = _Target(config.floor, score, sharpe, psr, "floor", why)
        else:
            eligible.append(m)
    room = config.max_total - config.floor * (len(models) - len(eligible))
    caps = [config.cap_for(m.is_canary) for m in eligible]
    lam = _fill([relative[m.key] for m in eligible], config.floor, caps, room)
    for m, cap in zip(eligible, caps, strict=True):
        score, sharpe, psr, why = scored[m.key]
        share = lam * relative[m.key]
        if share >= cap:
            bound: Bound = "canary_cap" if m.is_canary else "cap"
            weight, why = cap, why + f"; share {_fmt(share)} > {bound} {cap}"
        elif share <= config.floor:
            weight, bound, why = config.floor, "floor", why + f"; share {_fmt(share)} < floor"
        else:
            weight, bound, why = share, "none", why + f"; share {share:.4f}"
        out[m.key] = _Target(weight, score, sharpe, psr, bound, why)
    return out


def _fmt(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.4f}"


def _step(
    config: AllocatorConfig, target: _Target, previous: float, changed_at: int | None, now: int
) -> tuple[float, Bound, str]:
    """Move one weight from ``previous`` toward its target under the safeguards."""
    move = target.weight - previous
    if changed_at is not None and now - changed_at < config.cooldown_ns:
        left = (config.cooldown_ns - (now - changed_at)) / 1e9
        return previous, "cooldown", f"held at {previous:.4f}: cooldown, {left:.0f}s left"
    if move != 0.0 and abs(move) < config.hysteresis:
        return (
            previous,
            "hysteresis",
            f"held at {previous:.4f}: move {move:+.4f} within hysteresis {config.hysteresis}",
        )
    if abs(move) > config.max_step:
        weight = previous + math.copysign(config.max_step, move)
        return weight, "max_step", f"{previous:.4f} -> {weight:.4f}: step {config.max_step}"
    if move == 0.0:
        return previous, target.bound, f"at target {previous:.4f}"
    return target.weight, target.bound, f"{previous:.4f} -> {target.weight:.4f}"


def _fit(
    weights: dict[ModelKey, float], starts: dict[ModelKey, float], floor: float, limit: float
) -> set[ModelKey]:
    """Bring the sum within ``limit``: first trim the rises (back toward where they started,
    in proportion), then, if the starts alone exceed it, what stands above the floor.
    Returns the keys it moved."""
    excess = math.fsum(weights.values()) - limit
    if excess <= _SLACK:
        return set()
    rises = {k: w - starts[k] for k, w in weights.items() if w > starts[k]}
    rise = math.fsum(rises.values())
    cut = min(1.0, excess / rise) if rise > 0.0 else 0.0
    for k, r in rises.items():
        weights[k] = starts[k] + r * (1.0 - cut)
    moved = set(rises)
    excess = math.fsum(weights.values()) - limit
    if excess > _SLACK:
        above = {k: w - floor for k, w in weights.items() if w > floor}
        share = min(1.0, excess / math.fsum(above.values()))
        for k, a in above.items():
            weights[k] = floor + a * (1.0 - share)
        moved |= set(above)
    return moved


def allocate(
    config: AllocatorConfig,
    models: Iterable[ModelStats],
    previous: Allocation | None,
    now: int,
) -> Allocation:
    """The next allocation. A model new to the allocation starts from its floor; one absent
    from ``models`` is dropped (retiring it is the lifecycle's decision)."""
    ordered = sorted(models, key=lambda m: m.key)
    for a, b in itertools.pairwise(ordered):
        if a.key == b.key:
            raise KeelError(f"allocator: model {a.key} appears twice in the snapshot")
    if config.floor * len(ordered) > config.max_total:
        raise KeelError(
            f"allocator: floor {config.floor} x {len(ordered)} models = "
            f"{config.floor * len(ordered):.4g} exceeds max_total {config.max_total}; "
            "lower the floor or retire a model"
        )
    before = {b.key: b for b in previous.budgets} if previous is not None else {}
    goals = _targets(config, ordered)
    weights: dict[ModelKey, float] = {}
    starts: dict[ModelKey, float] = {}
    notes: dict[ModelKey, tuple[Bound, str]] = {}
    for m in ordered:
        old = before.get(m.key)
        start = old.weight if old is not None else config.floor
        clipped = min(max(start, config.floor), config.cap_for(m.is_canary))
        goal = goals[m.key]
        if clipped != start:  # the config changed under it: bounds first
            bound: Bound = "floor" if clipped == config.floor else _cap_name(m.is_canary)
            weight, note = clipped, f"{start:.4f} -> {clipped:.4f}: forced within {bound}"
        else:
            changed = old.changed_at if old is not None else None
            weight, bound, note = _step(config, goal, start, changed, now)
        starts[m.key] = start if weight >= start else weight
        weights[m.key] = weight
        notes[m.key] = (bound, note)
    for key in _fit(weights, starts, config.floor, config.max_total):
        note = notes[key][1] + f"; trimmed to {weights[key]:.4f} to keep the total"
        notes[key] = ("total", note)
    budgets = tuple(
        _budget(m, goals[m.key], before.get(m.key), config, weights[m.key], notes[m.key], now)
        for m in ordered
    )
    total = math.fsum(b.weight for b in budgets)
    target_total = math.fsum(g.weight for g in goals.values())
    reason = (
        f"{config.method}: {len(budgets)} models, {total:.4f} allocated "
        f"(target {target_total:.4f}, max_total {config.max_total}), {1.0 - total:.4f} cash"
    )
    return Allocation(now, config.method, budgets, total, target_total, 1.0 - total, reason)


def _cap_name(is_canary: bool) -> Bound:
    return "canary_cap" if is_canary else "cap"


def _budget(
    stats: ModelStats,
    goal: _Target,
    old: ModelBudget | None,
    config: AllocatorConfig,
    weight: float,
    note: tuple[Bound, str],
    now: int,
) -> ModelBudget:
    start = old.weight if old is not None else config.floor
    changed_at = old.changed_at if old is not None else None
    if weight != start:
        changed_at = now
    bound, step = note
    reason = f"{goal.why} -> target {goal.weight:.4f}; {step}"
    return ModelBudget(
        key=stats.key,
        weight=weight,
        target=goal.weight,
        previous=start,
        score=goal.score,
        sharpe=goal.sharpe,
        psr=goal.psr,
        trades=stats.trades,
        is_canary=stats.is_canary,
        bound=bound,
        changed_at=changed_at,
        reason=reason,
    )
