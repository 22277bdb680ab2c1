"""Every registered strategy, in process: the strategy alone and the full replay pipeline.

One run, the same synthetic one-minute bars of one symbol for every strategy (the
regime-switching ``SyntheticMarket``, fixed seed), read once into memory:

1. **strategy alone**: ``on_bar`` over every bar, nothing else (the ceiling the pipeline
   can approach);
2. **full pipeline**: ``ReplayEngine`` + ``RunRecorder`` over the same in-memory bars, wired
   as ``run_backtest`` wires them (strategy, risk, paper venue with next-open fills and
   10 bps fees, portfolio, hashing), the file read excluded since it is the same for all.

HMM-based strategies get a 3-state model trained on a separate seed first (``--param
model_file``). Default params elsewhere, but for momentum's move (``PARAMS``). Figures are
medians of ``--repeats`` runs. Targets: every strategy >= 100,000 bars/s in in-process
replay, the HMM-based ones >= 20,000 bars/s with 3 states. Usage::

    .venv/bin/python bench/strategy_speed.py [--bars 200000] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# ruff: noqa: E402 - bench/ comes first on sys.path when run as a script; take it off so
# the packages measured are the project's.
_HERE = str(Path(__file__).resolve().parent)
if _HERE in sys.path:
    sys.path.remove(_HERE)

from rich.console import Console
from rich.table import Table

from contracts.events import Bar
from eventstore.model_store import train_model_file
from replay.engine import ReplayEngine
from replay.recorder import RunRecorder
from services.config import KeelConfig, StrategyConfig
from services.execution.paper_venue import PaperVenueConfig
from services.fleet import fleet_roles
from services.marketdata.synthetic import SyntheticMarket
from services.strategy.compose import compose_strategy
from strategies.registry import REGISTRY

SYMBOL = "SOL/USDT"
SEED = 11
TARGET = 100_000
TARGET_HMM = 20_000
PARAMS: dict[str, dict[str, str]] = {"momentum": {"move_pct": "0.5"}}
"""Non-default params, so every strategy trades on the synthetic market (its bursts are small)."""

err = Console(stderr=True)
clock = time.perf_counter


def market(bars: int, seed: int) -> list[Bar]:
    return list(
        SyntheticMarket(
            symbols=(SYMBOL,), venue="sim", interval="1m", bars=bars, seed=seed
        ).generate()
    )


def hmm_params(work: Path) -> dict[str, str]:
    """Params of an HMM-based strategy: a 3-state model trained on another seed, as a file."""
    path = work / "regime.model"
    train_model_file(market(20_000, SEED + 1), path, states=3)
    return {"model_file": str(path)}


def is_hmm(name: str) -> bool:
    return "hmm" in name


def strategy_alone(name: str, params: dict[str, str], bars: list[Bar]) -> float:
    strategy = compose_strategy(name, params)
    on_bar = strategy.on_bar
    started = clock()
    for bar in bars:
        on_bar(bar)
    return clock() - started


def pipeline(name: str, params: dict[str, str], bars: list[Bar]) -> tuple[float, int, str]:
    config = KeelConfig(
        strategies=(StrategyConfig(name=name, params=params),),
        execution=PaperVenueConfig(fill="next_open", fee_bps=10.0),
    )
    roles = fleet_roles(config)
    recorder = RunRecorder([role.name for role in roles])
    engine = ReplayEngine(roles, recorder.record)
    feed = engine.feed
    started = clock()
    for bar in bars:
        feed(bar)
    recorder.close()
    return clock() - started, recorder.counts.signals, recorder.result_hash()


def main(args: argparse.Namespace) -> dict:
    bars = market(args.bars, SEED)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in sorted(REGISTRY):
            if name in args.skip:
                continue
            params = hmm_params(Path(tmp)) if is_hmm(name) else PARAMS.get(name, {})
            alone = [strategy_alone(name, params, bars) for _ in range(args.repeats)]
            runs = [pipeline(name, params, bars) for _ in range(args.repeats)]
            hashes = {h for _, _, h in runs}
            wall = statistics.median(w for w, _, _ in runs)
            target = TARGET_HMM if is_hmm(name) else TARGET
            row = {
                "strategy": name,
                "bars": len(bars),
                "alone_bars_per_s": len(bars) / statistics.median(alone),
                "pipeline_bars_per_s": len(bars) / wall,
                "signals": runs[0][1],
                "deterministic": len(hashes) == 1,
                "target_bars_per_s": target,
            }
            row["met"] = row["pipeline_bars_per_s"] >= target
            rows.append(row)
            err.print(
                f"{name}: alone {row['alone_bars_per_s']:,.0f}/s, pipeline "
                f"{row['pipeline_bars_per_s']:,.0f}/s, {row['signals']} signals"
            )
    return {
        "bars": len(bars),
        "repeats": args.repeats,
        "load_at_start": os.getloadavg()[0],
        "strategies": rows,
    }


def render(result: dict) -> None:
    table = Table(title=f"in-process replay, {result['bars']:,} one-minute bars, one symbol")
    for column in ("strategy", "alone bars/s", "pipeline bars/s", "signals", "target", "met"):
        table.add_column(column, justify="left" if column == "strategy" else "right")
    for row in result["strategies"]:
        table.add_row(
            row["strategy"],
            f"{row['alone_bars_per_s']:,.0f}",
            f"{row['pipeline_bars_per_s']:,.0f}",
            f"{row['signals']:,}",
            f"{row['target_bars_per_s']:,}",
            "yes" if row["met"] else "NO",
        )
    Console().print(table)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bars", type=int, default=200_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip", nargs="*", default=[], help="strategy names to leave out")
    p.add_argument("--json", action="store_true", help="one JSON object on the last line")
    args = p.parse_args(argv)
    if args.bars < 100 or args.repeats < 1:
        p.error("--bars must be >= 100 and --repeats >= 1")
    return args


if __name__ == "__main__":
    parsed = parse_args(sys.argv[1:])
    outcome = main(parsed)
    render(outcome)
    if parsed.json:
        print(json.dumps(outcome))
