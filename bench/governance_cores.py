"""The governance cores' own figures: the router's shares and speed, the playbooks' speed
and the allocator's cost and a walk-through of its safeguards (docs/governance.md).

- **Router**: ``--ids`` synthetic cause ids routed over weights 0.8 / 0.15 / 0.05 with
  ``max_canary`` 0.1 (expected shares 0.9 / 0.075 / 0.025), and the hash alone.
- **Playbooks**: 20,000 inputs (equity, risk rejections, daily PnL in turn) through ``step``
  with one rule of each kind.
- **Allocator**: the median of 200 ``allocate`` calls for 3, 10 and 100 models, and eight
  hourly rebalances of four models with the default config (10 seeded trades each per hour).
  Usage::

    .venv/bin/python bench/governance_cores.py [--ids 100000] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

# The project root must be importable when this runs as a script.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.governance import playbooks as pb
from services.governance.allocator import AllocatorConfig, ModelKey, ModelStats, allocate
from services.governance.router import RouterConfig, Variant, VariantSet, route, unit_hash

HOUR = 3600 * 10**9
T0 = 1_796_000_000 * 10**9


def router_figures(n: int) -> dict:
    config = RouterConfig(
        max_canary=0.1,
        instances={
            "ma_hmm": VariantSet(
                (Variant("v3", 0.8), Variant("v4", 0.15, True), Variant("v5", 0.05, True))
            )
        },
    )
    ids = [f"md.bar.BTCUSDT.1m:{i:08d}" for i in range(n)]
    started = time.perf_counter()
    shares = Counter(route(config, "ma_hmm", i).tag for i in ids)
    routed = time.perf_counter() - started
    started = time.perf_counter()
    for i in ids:
        unit_hash("ma_hmm", i)
    hashed = time.perf_counter() - started
    return {
        "shares": {tag: count / n for tag, count in sorted(shares.items())},
        "route_per_s": n / routed,
        "hash_per_s": n / hashed,
    }


def playbook_figures() -> dict:
    config = pb.PlaybookConfig(
        drawdown=(pb.DrawdownRule(),),
        rejections=(pb.RejectionRule(),),
        daily_loss=(pb.DailyLossRule(max_loss=500),),
    )
    inputs: list[pb.EquityUpdate | pb.RiskRejection | pb.DailyPnl] = []
    for i in range(20_000):
        at = T0 + i * 10**9
        if i % 3 == 0:
            inputs.append(pb.EquityUpdate(id=f"e{i}", equity=1000 - (i % 200), peak=1000, at=at))
        elif i % 3 == 1:
            inputs.append(pb.RiskRejection(id=f"e{i}", strategy=f"s{i % 7}", reason="limit", at=at))
        else:
            inputs.append(pb.DailyPnl(id=f"e{i}", pnl=-(i % 700), at=at))
    state, actions = pb.PlaybookState(), 0
    started = time.perf_counter()
    for item in inputs:
        state, made = pb.step(config, state, item, item.at)
        actions += len(made)
    elapsed = time.perf_counter() - started
    return {"inputs_per_s": len(inputs) / elapsed, "actions": actions}


def allocator_figures(rng: random.Random) -> dict:
    def returns(mean: float, sd: float, n: int) -> list[float]:
        return [rng.gauss(mean, sd) for _ in range(n)]

    cost: dict[str, float] = {}
    for n in (3, 10, 100):
        models = [
            ModelStats.from_returns(
                ModelKey("s", f"m{i:03d}"),
                returns(0.001 * (i % 5), 0.01, 200),
                is_canary=i % 4 == 0,
            )
            for i in range(n)
        ]
        config = AllocatorConfig(floor=min(0.01, 1 / n))
        previous = allocate(config, models, None, 0)
        times = []
        for k in range(200):
            started = time.perf_counter()
            allocate(config, models, previous, HOUR * (k + 1))
            times.append(time.perf_counter() - started)
        cost[str(n)] = statistics.median(times) * 1e6
    plan = {
        ("ma_hmm", "v3"): (0.002, False),
        ("ma_hmm", "v4"): (0.004, True),
        ("trend", "p1"): (0.001, False),
        ("trend", "p2"): (-0.001, False),
    }
    history: dict[tuple[str, str], list[float]] = {key: [] for key in plan}
    walk = []
    allocation = None
    for hour in range(8):
        for key, (mean, _) in plan.items():
            history[key] += returns(mean, 0.01, 10)
        models = [
            ModelStats.from_returns(ModelKey(*key), history[key], is_canary=canary)
            for key, (_, canary) in plan.items()
        ]
        allocation = allocate(AllocatorConfig(), models, allocation, hour * HOUR)
        walk.append(
            {
                "hour": hour,
                "weights": {
                    f"{b.key.strategy}/{b.key.model}": [round(b.weight, 3), b.bound]
                    for b in allocation.budgets
                },
                "cash": round(allocation.cash, 3),
            }
        )
    return {"median_us_by_models": cost, "walk": walk}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=100_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = {
        "router": router_figures(args.ids),
        "playbooks": playbook_figures(),
        "allocator": allocator_figures(random.Random(7)),
    }
    if args.json:
        print(json.dumps(figures))
        return
    r, p, a = figures["router"], figures["playbooks"], figures["allocator"]
    print("router shares:", ", ".join(f"{t} {s:.5f}" for t, s in r["shares"].items()))
    print(f"route {r['route_per_s']:,.0f}/s, hash alone {r['hash_per_s']:,.0f}/s")
    print(f"playbooks step {p['inputs_per_s']:,.0f} inputs/s ({p['actions']} actions)")
    costs = ", ".join(f"{n} models {us:.0f} us" for n, us in a["median_us_by_models"].items())
    print("allocate median:", costs)
    for row in a["walk"]:
        cells = "  ".join(f"{k} {w:.3f} ({b})" for k, (w, b) in row["weights"].items())
        print(f"{row['hour']}h  {cells}  cash {row['cash']:.3f}")


if __name__ == "__main__":
    main()
