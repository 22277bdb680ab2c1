"""The chaos harness: a lockstep session of real bars under faults, compared with an
uninterrupted run of the same bars and config.

Each scenario and seed runs the fleet (``keel run`` per role, the lockstep feed of a bar file)
on its own fresh store, with the harness as supervisor restarting whatever exits, and strikes
the seed's faults (``bench/chaos_faults.py``): ``kill -9`` of random workers, ``kill -9`` of
nats-server with a restart on the same store and port, SIGSTOP of a worker for longer than
``ack_wait``, and on a 3-node cluster with R3 streams the loss of a node, then of a stream's
leader. Then every stored bar, signal, order, execution report and position change is matched
by its id against the uninterrupted run (``bench/chaos_compare.py``). Usage::

    .venv/bin/python bench/chaos.py --scenario all --seeds 5 --bars 30240 \\
        --data ../shared/data/binanceus-1m-2023-03/BTCUSDT.csv

Exit 1 when any run lost, duplicated, changed or added an event, or hung.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
from rich.console import Console
from rich.table import Table

from bench.chaos_compare import Counts, Log, compare, read_log, summary
from bench.chaos_faults import CONTROL, SCENARIOS, ClusterBackend, injector, plan
from bench.chaos_session import Backend, Exit, Outcome, SessionSpec, SingleServer, run_session
from eventstore.server import free_port
from eventstore.streams import REPLICAS_ENV
from services.config import load_config
from services.fleet import fleet_plan
from services.marketdata.sources import read_bars
from services.marketdata.synthetic import SyntheticMarket

ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = ROOT.parent / "shared" / "data" / "binanceus-1m-2023-03" / "BTCUSDT.csv"
SYMBOL = "BTC/USDT"
VENUE = "binanceus"

CONFIG = """
[market]
venue = "binanceus"
symbols = ["BTC/USDT"]
interval = "1m"

[[strategies]]
name = "ma_cross"
params = { kind = "ema", fast = 8, slow = 21, mode = "long_short", qty = 1 }

[portfolio]
starting_cash = 100000
"""
"""The default fleet (ma_cross, risk, execution, portfolio), long/short so that every cross
is an order and a fill. One strategy: two strategies' signals on the same bar reach risk in
arrival order, a race of its own that the paper venue's order numbering shows."""


class Row(msgspec.Struct):
    """One scenario and seed."""

    scenario: str
    seed: int
    faults: int
    counts: Counts
    wall_s: float
    crashes: int
    """Exits the harness did not cause (a worker or the feed dying of a fault)."""
    hung: str = ""
    struck: list[str] = []
    exits: list[Exit] = []
    notes: list[str] = []

    @property
    def clean(self) -> bool:
        return self.counts.clean and not self.hung


class Chaos(msgspec.Struct, frozen=True):
    """What to run."""

    scenarios: tuple[str, ...]
    seeds: tuple[int, ...]
    data: Path
    bars: int
    workdir: Path
    config_text: str = CONFIG
    faults: int | None = None
    """Faults per run (pairs of node and leader kills on a cluster); None: each scenario's own."""
    keep: bool = False
    baseline: Path | None = None
    """Where the uninterrupted run's log is kept and reused from."""
    parallel: int = 1
    """Runs at once (each on its own store and port)."""
    deadline_s: float | None = None
    """A run whose feed is still going after this long counts as hung."""


def slice_bars(source: Path, bars: int, out: Path) -> Path:
    """The header and the first ``bars`` rows of a CSV bar file."""
    with source.open() as src, out.open("w") as dst:
        dst.write(src.readline())
        for n, line in enumerate(src):
            if n >= bars:
                break
            dst.write(line)
    return out


def generate_bars(bars: int, out: Path, seed: int = 7) -> Path:
    """A seeded synthetic market written as a bar file, for a clone without ``shared/data``."""
    market = SyntheticMarket(symbols=(SYMBOL,), venue=VENUE, bars=bars, seed=seed)
    lines = ["open_time,open,high,low,close,volume"]
    lines += [
        f"{b.open_time // 1_000_000},{b.open!r},{b.high!r},{b.low!r},{b.close!r},{b.volume!r}"
        for b in market.generate()
    ]
    out.write_text("\n".join(lines) + "\n")
    return out


async def run_chaos(chaos: Chaos, report: Callable[[str], None] = print) -> tuple[Log, list[Row]]:
    """The baseline once, then each scenario and seed against it."""
    config = chaos.workdir / "chaos.toml"
    config.write_text(chaos.config_text)
    workers = [w.name for w in fleet_plan(load_config(config), config)]

    def spec(name: str, env: dict[str, str]) -> SessionSpec:
        return SessionSpec(config, chaos.data, SYMBOL, VENUE, chaos.bars, chaos.workdir / name, env)

    baseline = await _baseline(chaos, spec("baseline", {REPLICAS_ENV: "1"}), report)
    gate = asyncio.Semaphore(chaos.parallel)

    async def one(scenario: str, seed: int) -> Row:
        async with gate:
            return await _run_one(chaos, scenario, seed, baseline, spec, workers, report)

    rows = await asyncio.gather(*(one(s, seed) for s in chaos.scenarios for seed in chaos.seeds))
    return baseline, list(rows)


async def _run_one(
    chaos: Chaos,
    scenario: str,
    seed: int,
    baseline: Log,
    spec: Callable[[str, dict[str, str]], SessionSpec],
    workers: list[str],
    report: Callable[[str], None],
) -> Row:
    name = f"{scenario}-{seed}"
    faults = plan(scenario, seed, chaos.bars, workers)
    if chaos.faults is not None:
        faults = faults[: chaos.faults * (2 if scenario == "cluster-node" else 1)]
    report(f"{name}: " + "; ".join(f.describe() for f in faults))

    def say(text: str) -> None:
        report(f"{name}: {text.strip()}")

    cluster = scenario == "cluster-node"
    store = chaos.workdir / name / "nats"
    backend: Backend = ClusterBackend(store) if cluster else SingleServer(store, free_port())
    struck: list[str] = []
    try:
        outcome, injected, log = await run_session(
            spec(name, {REPLICAS_ENV: "3" if cluster else "1"}),
            backend,
            injector(faults, struck, say),
            read_log,
            say,
            deadline_s=chaos.deadline_s,
        )
    except Exception as exc:  # one broken run is reported; the others go on
        outcome = Outcome(0.0, f"the run failed: {type(exc).__name__}: {exc}")
        injected, log = len(struck), Log({}, 0)
    assert isinstance(log, Log)
    counts = compare(baseline, log)
    crashes = sum(1 for e in outcome.exits if not e.injected and not _finished(e, chaos))
    row = Row(
        scenario,
        seed,
        injected,
        counts,
        outcome.wall_s,
        crashes,
        outcome.hung,
        struck,
        outcome.exits,
        outcome.notes,
    )
    report(_line(row))
    if row.clean:
        _discard(chaos, name)
    return row


class Baseline(msgspec.Struct, frozen=True):
    """An uninterrupted run's log with what it ran, so another invocation can reuse it."""

    config_text: str
    data_sha256: str
    log: Log


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def _baseline(chaos: Chaos, spec: SessionSpec, report: Callable[[str], None]) -> Log:
    """The uninterrupted run, or the one stored in ``chaos.baseline`` for the same config
    and bars; a fresh one is stored there."""
    path = chaos.baseline
    digest = _sha256(chaos.data)
    if path is not None and path.is_file():
        stored = msgspec.msgpack.decode(path.read_bytes(), type=Baseline)
        if stored.config_text == chaos.config_text and stored.data_sha256 == digest:
            report(f"baseline: {summary(stored.log)} (stored in {path})")
            return stored.log
        report(f"baseline {path} is for other bars or another config: running it again")
    report(f"baseline: {chaos.bars} bars, uninterrupted")
    outcome, _, log = await run_session(
        spec, SingleServer(spec.workdir / "nats", free_port()), None, read_log, report
    )
    assert isinstance(log, Log)
    if outcome.hung:
        raise RuntimeError(f"the uninterrupted baseline did not finish: {outcome.hung}")
    report(f"baseline: {summary(log)} in {outcome.wall_s:.0f} s")
    if path is not None:
        path.write_bytes(msgspec.msgpack.encode(Baseline(chaos.config_text, digest, log)))
    _discard(chaos, "baseline")
    return log


def _finished(exit_: Exit, chaos: Chaos) -> bool:
    """The feed's own exit 0 after the last bar."""
    return exit_.name == "marketdata" and exit_.code == 0 and exit_.at_bar >= chaos.bars


def _discard(chaos: Chaos, name: str) -> None:
    if not chaos.keep:
        shutil.rmtree(chaos.workdir / name / "nats", ignore_errors=True)


def _line(row: Row) -> str:
    c = row.counts
    text = (
        f"{row.scenario} seed {row.seed}: {row.faults} faults, {c.compared} events compared, "
        f"lost {c.lost}, duplicated {c.duplicated}, differing {c.differing}, extra {c.extra}, "
        f"dead letters {c.dead_letters}, unplanned exits {row.crashes}, {row.wall_s:.0f} s"
    )
    if row.hung:
        text += f"\n  HUNG: {row.hung}"
    for example in c.examples:
        text += f"\n  {example}"
    return text


def table(rows: list[Row]) -> Table:
    out = Table(title="chaos: each run against the uninterrupted baseline")
    for column in (
        "scenario",
        "seed",
        "faults",
        "events compared",
        "lost",
        "duplicated",
        "differing",
        "extra",
        "dead letters",
        "unplanned exits",
        "wall s",
    ):
        out.add_column(column, justify="left" if column == "scenario" else "right")
    for row in rows:
        c = row.counts
        out.add_row(
            row.scenario + (" (HUNG)" if row.hung else ""),
            str(row.seed),
            str(row.faults),
            f"{c.compared:,}",
            str(c.lost),
            str(c.duplicated),
            str(c.differing),
            str(c.extra),
            str(c.dead_letters),
            str(row.crashes),
            f"{row.wall_s:.0f}",
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scenario",
        choices=[*SCENARIOS, CONTROL, "all"],
        action="append",
        help=f"repeatable; all = {', '.join(SCENARIOS)} (default); {CONTROL} = no fault",
    )
    parser.add_argument("--seeds", type=int, default=5, help="seeds 1..N per scenario")
    parser.add_argument("--seed", type=int, action="append", help="only these seeds (repeatable)")
    parser.add_argument("--bars", type=int, default=30240)
    parser.add_argument(
        "--data", type=Path, help=f"a CSV bar file (default {REAL_DATA}, else generated bars)"
    )
    parser.add_argument(
        "--synthetic", action="store_true", help="generated bars instead of a file (seed 7)"
    )
    parser.add_argument("--config", type=Path, help="another fleet config (TOML) than CONFIG")
    parser.add_argument("--faults", type=int, help="faults per run (default: the scenario's)")
    parser.add_argument("--workdir", type=Path, help="keep stores and logs here")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="reuse the uninterrupted run stored in this file if it ran the same bars and "
        "config, else run it and store it there (default: WORKDIR/baseline.msgpack)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep every store, not only failed ones"
    )
    parser.add_argument("--parallel", type=int, default=1, help="runs at once (default 1)")
    parser.add_argument(
        "--deadline", type=float, help="seconds after which a run still feeding counts as hung"
    )
    parser.add_argument("--json", action="store_true", help="the last line is one JSON object")
    args = parser.parse_args(argv)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="keel-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    source = None if args.synthetic else args.data or (REAL_DATA if REAL_DATA.is_file() else None)
    if source is not None and not source.is_file():
        parser.error(f"--data {source}: no such file")
    if args.config is not None and not args.config.is_file():
        parser.error(f"--config {args.config}: no such file")
    if source is None:
        data = generate_bars(args.bars, workdir / "bars.csv")
    else:
        data = slice_bars(source, args.bars, workdir / "bars.csv")
    bars = len(read_bars(data, venue=VENUE, symbol=SYMBOL).bars)
    chaos = Chaos(
        scenarios=tuple(
            dict.fromkeys(
                s
                for name in args.scenario or ["all"]
                for s in (SCENARIOS if name == "all" else [name])
            )
        ),
        seeds=tuple(args.seed or range(1, args.seeds + 1)),
        data=data,
        bars=bars,
        workdir=workdir,
        faults=args.faults,
        config_text=args.config.read_text() if args.config else CONFIG,
        keep=args.keep,
        baseline=args.baseline or workdir / "baseline.msgpack",
        parallel=max(1, args.parallel),
        deadline_s=args.deadline,
    )
    console = Console(stderr=True)
    started = time.monotonic()
    baseline, rows = asyncio.run(run_chaos(chaos, lambda text: console.print(text, markup=False)))
    Console(width=200).print(table(rows))
    print(f"baseline: {summary(baseline)}; data {source or 'generated'}; workdir {workdir}")
    print(f"total {time.monotonic() - started:.0f} s")
    if args.json:
        print(
            json.dumps(
                {
                    "bars": bars,
                    "baseline": summary(baseline),
                    "rows": [msgspec.to_builtins(r) for r in rows],
                }
            )
        )
    return 0 if all(r.clean for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
