"""The promotion gate under repeated looks: does it find a better canary, and does it leave
noise alone?

For each of ``--seeds`` seeds, paired per-trade returns of a current model and a canary are
simulated on the same opportunities (shadow evaluation): a common market part shared by both
(sd ``--common-sd``) plus each variant's own part (sd ``--noise-sd``, normal or Student t with
3 degrees of freedom scaled to that sd, ``--tails``). Two scenarios:

- **better**: the canary's mean per trade is ``--canary-mean``, the current's
  ``--current-mean`` (the effect is stated as per-trade Sharpe of each arm and as the
  standardised mean of the paired differences);
- **equal**: both means are ``--canary-mean``, so both arms look good on their own and only
  the paired comparison can tell them apart (it should not).

The trades are fed to ``services.governance.promotion.evaluate`` one at a time and the gate
is evaluated after every trade (``--trades-per-hour`` sets the hours live), up to ``--trades``
trades. Reported per scenario: the share of seeds promoted (targets: better >= 80%, equal
<= 5%), the median trades to promotion, and the same with the gate's sequential test swapped
for a naive fixed-sample one-sided paired t-test at the same confidence checked at every look,
the design it replaces. The sequential tests alone (looking from the second trade, no other
condition) are reported too. Usage::

    .venv/bin/python bench/governance_promotion.py [--seeds 500] [--trades 500]
        [--tails normal|t3] [--mixture-scale 0.3] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import msgspec

# ruff: noqa: E402 - bench/ comes first on sys.path when run as a script; take it off so
# the packages measured are the project's.
_HERE = str(Path(__file__).resolve().parent)
if _HERE in sys.path:
    sys.path.remove(_HERE)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from scipy.stats import t as student_t

from services.governance.promotion import Arm, PromotionConfig, evaluate
from services.governance.statistics import msprt_log_ratio

BETTER_TARGET = 0.80
EQUAL_TARGET = 0.05


class Scenario(msgspec.Struct, frozen=True):
    name: str
    current_mean: float
    canary_mean: float


class Outcome(msgspec.Struct, frozen=True):
    """When, if ever, each rule promoted one seed (the trade count, 0 = never)."""

    gate: int
    naive_gate: int
    msprt_alone: int
    t_alone: int


def _own_noise(rng: np.random.Generator, size: int, sd: float, tails: str) -> np.ndarray:
    if tails == "t3":
        return rng.standard_t(3, size) * sd / math.sqrt(3.0)  # t3 has variance 3
    return rng.standard_normal(size) * sd


def simulate(
    seed: int, scenario: Scenario, args: argparse.Namespace
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, 17])
    common = rng.standard_normal(args.trades) * args.common_sd
    current = (
        scenario.current_mean + common + _own_noise(rng, args.trades, args.noise_sd, args.tails)
    )
    canary = scenario.canary_mean + common + _own_noise(rng, args.trades, args.noise_sd, args.tails)
    return current, canary


def _t_passes(diffs: np.ndarray, n: int, confidence: float) -> bool:
    """The naive look: a one-sided paired t-test on the first n differences."""
    if n < 2:
        return False
    sample = diffs[:n]
    sd = float(sample.std(ddof=1))
    if sd <= 0.0:
        return False
    stat = float(sample.mean()) / (sd / math.sqrt(n))
    return float(student_t.sf(stat, n - 1)) < 1.0 - confidence


def run_seed(
    seed: int, scenario: Scenario, config: PromotionConfig, args: argparse.Namespace
) -> Outcome:
    current, canary = simulate(seed, scenario, args)
    diffs = canary - current
    gate = naive = 0
    for n in range(1, args.trades + 1):
        result = evaluate(
            config,
            Arm(model="current", returns=tuple(current[:n].tolist())),
            Arm(model="canary", returns=tuple(canary[:n].tolist())),
            diffs[:n],
            hours_live=n / args.trades_per_hour,
            trials=1,
        )
        if not gate and result.decision == "promote":
            gate = n
        others = all(c.passed for c in result.conditions if c.name != "sequential_test")
        if not naive and others and _t_passes(diffs, n, config.confidence):
            naive = n
        if gate and naive:
            break
    return Outcome(
        gate=gate,
        naive_gate=naive,
        msprt_alone=_first_msprt_crossing(diffs, config),
        t_alone=next(
            (n for n in range(2, args.trades + 1) if _t_passes(diffs, n, config.confidence)), 0
        ),
    )


def _first_msprt_crossing(diffs: np.ndarray, config: PromotionConfig) -> int:
    threshold = -math.log(1.0 - config.confidence)
    sums = np.cumsum(diffs)
    squares = np.cumsum(diffs * diffs)
    for n in range(1, diffs.size + 1):
        mean = float(sums[n - 1]) / n
        log_ratio = msprt_log_ratio(n, mean, float(squares[n - 1]) / n, config.mixture_scale)
        if mean > 0.0 and log_ratio >= threshold:
            return n
    return 0


def summarise(outcomes: list[Outcome]) -> dict[str, dict[str, float | None]]:
    summary: dict[str, dict[str, float | None]] = {}
    for rule in ("gate", "naive_gate", "msprt_alone", "t_alone"):
        hits = [getattr(o, rule) for o in outcomes if getattr(o, rule)]
        summary[rule] = {
            "promoted_share": len(hits) / len(outcomes),
            "median_trades": float(statistics.median(hits)) if hits else None,
            "p90_trades": float(np.percentile(hits, 90)) if hits else None,
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=500)
    parser.add_argument("--trades", type=int, default=500, help="horizon per seed")
    parser.add_argument("--trades-per-hour", type=float, default=2.0)
    parser.add_argument("--common-sd", type=float, default=0.01)
    parser.add_argument("--noise-sd", type=float, default=0.005)
    parser.add_argument("--current-mean", type=float, default=0.0005)
    parser.add_argument("--canary-mean", type=float, default=0.0025)
    parser.add_argument("--tails", choices=("normal", "t3"), default="normal")
    parser.add_argument("--mixture-scale", type=float, default=PromotionConfig().mixture_scale)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    config = PromotionConfig(mixture_scale=args.mixture_scale)
    arm_sd = math.hypot(args.common_sd, args.noise_sd)
    diff_sd = math.sqrt(2.0) * args.noise_sd
    scenarios = (
        Scenario("better", args.current_mean, args.canary_mean),
        Scenario("equal", args.canary_mean, args.canary_mean),
    )
    started = time.perf_counter()
    results = {}
    for scenario in scenarios:
        outcomes = [run_seed(seed, scenario, config, args) for seed in range(args.seeds)]
        results[scenario.name] = summarise(outcomes)
    elapsed = time.perf_counter() - started
    report = {
        "seeds": args.seeds,
        "trades": args.trades,
        "trades_per_hour": args.trades_per_hour,
        "tails": args.tails,
        "config": msgspec.to_builtins(config),
        "current_sharpe_per_trade": args.current_mean / arm_sd,
        "canary_sharpe_per_trade": args.canary_mean / arm_sd,
        "paired_effect_sd": (args.canary_mean - args.current_mean) / diff_sd,
        "results": results,
        "targets": {"better_promoted": BETTER_TARGET, "equal_promoted": EQUAL_TARGET},
        "met": {
            "better": results["better"]["gate"]["promoted_share"] >= BETTER_TARGET,
            "equal": results["equal"]["gate"]["promoted_share"] <= EQUAL_TARGET,
        },
        "seconds": elapsed,
        "python": platform.python_version(),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"{args.seeds} seeds, up to {args.trades} trades, {args.trades_per_hour:g} trades/h, "
        f"{args.tails} tails; per-trade Sharpe current {report['current_sharpe_per_trade']:.3f}"
        f", canary {report['canary_sharpe_per_trade']:.3f}; paired effect "
        f"{report['paired_effect_sd']:.3f} sd ({elapsed:.0f} s)"
    )
    for name, rules in results.items():
        for rule, figures in rules.items():
            median = figures["median_trades"]
            shown = "-" if median is None else f"{median:.0f}"
            print(
                f"  {name:6} {rule:12} promoted {figures['promoted_share']:6.1%}  "
                f"median trades {shown}"
            )
    print(f"  targets met: {report['met']}")


if __name__ == "__main__":
    main()
