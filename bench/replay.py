"""Replay throughput: Keel's in-process backtest next to backtrader, bus replay, and peak RSS.

One run, everything on the same synthetic one-minute bars of one symbol (``SyntheticMarket``,
fixed seeds) written to Parquet in a temp dir (``open_time`` in ms, OHLCV):

1. Keel in process, ``run_backtest`` of ``ma_cross`` (EMA 10/30, long_short, qty 1), market
   orders filled at the next bar's open, 10 bps fees, no run directory:
   (a) end to end, reading the file included; (b) engine only: ``read_bars`` timed on its
   own, then ``ReplayEngine`` + ``RunRecorder`` over the loaded bars, wired as
   ``run_backtest`` wires them (the result hash must equal (a)'s);
2. backtrader (the ``bench`` extra) on the same bars and strategy: ``EMA(10)``/``EMA(30)``
   (seeded with their SMA, like Keel's), ``CrossOver``, ``order_target_size`` +1 / -1 on
   crossings, market orders (filled at the next bar's open), commission 0.001, cash
   100,000, a ``PandasData`` feed read from the same Parquet file, ``cerebro.run()`` with
   its defaults (runonce, preload, the standard observers). A run that would take more than
   ~60 s is measured on a 200,000-bar prefix instead, and Keel is run on that prefix too so
   fills, trades and final value can be compared;
3. bus replay: ``bus_replay`` of a prefix (``--bus-bars``) through the real worker
   processes on an embedded nats-server (framed events following the replay plan, see
   docs/replay.md); its result hash must equal the in-process hash of the same prefix;
4. peak RSS of an in-process backtest of ``--rss-bars`` bars (default 10 million), run in a
   child process whose own ``ru_maxrss`` is read from ``os.wait4`` when it exits.

Timings are medians of ``--repeats`` runs (backtrader: at most 3). Usage::

    .venv/bin/python bench/replay.py [--bars 1000000] [--bus-bars 100000 | --skip-bus] \\
        [--rss-bars 10000000] [--repeats 3] [--json]
    .venv/bin/python bench/replay.py --profile 200000   # cProfile of the in-process path
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

# ruff: noqa: E402 - run as a script, bench/ comes first on sys.path and this file,
# replay.py, would shadow the ``replay`` package it measures: take bench/ off first.
_HERE = str(Path(__file__).resolve().parent)
if _HERE in sys.path:
    sys.path.remove(_HERE)

import msgspec
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from eventstore.server import EmbeddedServer
from replay.backtest import BacktestResult, BacktestSpec, RunRecord, run_backtest, summarise
from replay.bus_replay import bus_replay
from replay.engine import ReplayEngine
from replay.market import DataSource
from replay.recorder import RunRecorder
from services.config import KeelConfig, StrategyConfig
from services.execution.paper_venue import PaperVenueConfig
from services.fleet import fleet_roles
from services.marketdata.sources import read_bars
from services.marketdata.synthetic import SyntheticMarket

SYMBOL = "SOL/USDT"  # starts at 50: one unit never strains backtrader's 100,000 cash
VENUE = "sim"
INTERVAL = "1m"
SEED = 7
START_NS = 1_700_000_000_000_000_000
MINUTE_NS = 60_000_000_000
CHUNK = 1_000_000  # bars per SyntheticMarket segment; segment k has seed SEED + k
CASH = 100_000.0
FEE_BPS = 10.0
FAST, SLOW = 10, 30

BT_PREFIX = 200_000  # backtrader runs on this prefix when the full file would take > 60 s
BT_MAX_RUN_S = 60.0
BT_MAX_REPEATS = 3
RSS_MAX_S = 300.0  # the RSS step falls back to RSS_FALLBACK bars beyond this estimate
RSS_FALLBACK = 3_000_000
RSS_TIMEOUT_S = 1800.0

TARGET_INPROC = 200_000.0  # bars/s, end to end
TARGET_BUS = 20_000.0  # bars/s
TARGET_RSS_MB = 500.0

SCHEMA = pa.schema(
    [
        ("open_time", pa.int64()),
        ("open", pa.float64()),
        ("high", pa.float64()),
        ("low", pa.float64()),
        ("close", pa.float64()),
        ("volume", pa.float64()),
    ]
)

err = Console(stderr=True)
clock = time.perf_counter


# -- data ---------------------------------------------------------------------------------


def write_bars(path: Path, bars: int) -> float:
    """Synthetic bars in CHUNK-bar segments (consecutive times, seeds SEED, SEED+1, ...),
    streamed into one Parquet file so the bench itself never holds more than a segment.
    Returns the seconds it took."""
    started = clock()
    with pq.ParquetWriter(path, SCHEMA) as writer:
        for k, first in enumerate(range(0, bars, CHUNK)):
            market = SyntheticMarket(
                symbols=(SYMBOL,),
                venue=VENUE,
                interval=INTERVAL,
                bars=min(CHUNK, bars - first),
                seed=SEED + k,
                start_ns=START_NS + first * MINUTE_NS,
            )
            cols: dict[str, list] = {name: [] for name in SCHEMA.names}
            for bar in market.generate():
                cols["open_time"].append(bar.open_time // 1_000_000)
                cols["open"].append(bar.open)
                cols["high"].append(bar.high)
                cols["low"].append(bar.low)
                cols["close"].append(bar.close)
                cols["volume"].append(bar.volume)
            writer.write_table(pa.table(cols, schema=SCHEMA))
    return clock() - started


def write_prefix(source: Path, path: Path, bars: int) -> Path:
    pq.write_table(pq.read_table(source).slice(0, bars), path)
    return path


# -- Keel ---------------------------------------------------------------------------------


def keel_spec(path: Path) -> BacktestSpec:
    config = KeelConfig(
        strategies=(
            StrategyConfig(
                name="ma_cross",
                params={"kind": "ema", "fast": FAST, "slow": SLOW, "mode": "long_short", "qty": 1},
            ),
        ),
        execution=PaperVenueConfig(fill="next_open", fee_bps=FEE_BPS),
    )
    return BacktestSpec(
        config=config, data=(DataSource(location=str(path), symbol=SYMBOL, venue=VENUE),)
    )


def keel_end_to_end(path: Path) -> tuple[float, BacktestResult]:
    spec = keel_spec(path)
    started = clock()
    result = run_backtest(spec)
    return clock() - started, result


def keel_engine_only(path: Path) -> tuple[float, float, BacktestResult]:
    """(read seconds, engine seconds, result): ``run_backtest``'s wiring, read timed apart."""
    spec = keel_spec(path)
    started = clock()
    bars = read_bars(path, venue=VENUE, symbol=SYMBOL).bars
    read_s = clock() - started
    roles = fleet_roles(spec.config)
    recorder = RunRecorder([role.name for role in roles])
    engine = ReplayEngine(roles, recorder.record)
    started = clock()
    feed = engine.feed
    for bar in bars:
        feed(bar)
    recorder.close()
    engine_s = clock() - started
    result = summarise(spec, recorder, len(bars), bars[0].interval, engine_s)
    return read_s, engine_s, result


# -- backtrader -----------------------------------------------------------------------------


def backtrader_run(path: Path) -> dict:
    """The same strategy in backtrader; wall time includes reading the Parquet file."""
    import backtrader as bt
    import pandas as pd

    class MaCross(bt.Strategy):
        def __init__(self) -> None:
            fast = bt.indicators.EMA(self.data.close, period=FAST)
            slow = bt.indicators.EMA(self.data.close, period=SLOW)
            self.cross = bt.indicators.CrossOver(fast, slow)
            self.fills = 0
            self.trades = 0
            self.fees = 0.0

        def next(self) -> None:
            if self.cross[0] > 0:
                self.order_target_size(target=1)
            elif self.cross[0] < 0:
                self.order_target_size(target=-1)

        def notify_order(self, order: bt.Order) -> None:
            if order.status == order.Completed:
                self.fills += 1
                self.fees += order.executed.comm

        def notify_trade(self, trade: bt.Trade) -> None:
            if trade.isclosed:
                self.trades += 1

    started = clock()
    frame = pq.read_table(path).to_pandas()
    frame.index = pd.to_datetime(frame.pop("open_time"), unit="ms")
    cerebro = bt.Cerebro()
    cerebro.adddata(bt.feeds.PandasData(dataname=frame, openinterest=None))
    cerebro.addstrategy(MaCross)
    cerebro.broker.setcash(CASH)
    cerebro.broker.setcommission(commission=FEE_BPS / 10_000)
    loaded = clock()
    strategy = cerebro.run()[0]
    done = clock()
    return {
        "wall_s": done - started,
        "run_s": done - loaded,
        "bars": len(frame),
        "fills": strategy.fills,
        "trades": strategy.trades,
        "fees": strategy.fees,
        "final_value": cerebro.broker.getvalue(),
    }


# -- bus replay -----------------------------------------------------------------------------


def bus_run(path: Path, work: Path) -> dict:
    """``bus_replay`` of a prefix file, and the in-process hash of the same prefix."""
    spec = keel_spec(path)
    local = run_backtest(spec)
    server = EmbeddedServer(work / "nats").start()
    stamps: list[tuple[float, int]] = []
    try:
        replay_dir = work / "bus"
        replay_dir.mkdir()
        started = clock()
        result = bus_replay(
            RunRecord(spec, local),
            server.url,
            replay_dir,
            progress=lambda n: stamps.append((clock(), n)),
        )
        wall = clock() - started
    finally:
        server.stop()
    # Steady state: from the first frame whose outputs were all in to the last (fleet
    # start-up and the workers' exit excluded); the bars of every frame after the first.
    span = stamps[-1][0] - stamps[0][0] if len(stamps) > 1 else math.nan
    steady_bars = sum(n for _, n in stamps[1:])
    return {
        "bars": result.bars,
        "wall_s": wall,
        "bars_per_s": result.bars / wall,
        "steady_bars": steady_bars,
        "steady_s": span,
        "steady_bars_per_s": steady_bars / span if span > 0 else math.nan,
        "fleet_up_and_first_bar_s": stamps[0][0] - started if stamps else math.nan,
        "hash": result.result_hash,
        "in_process_hash": local.result_hash,
        "hash_equal": result.result_hash == local.result_hash,
        "fills": result.fills,
        "in_process_fills": local.fills,
    }


# -- peak RSS -----------------------------------------------------------------------------


RSS_CHILD = """
import json, resource, sys, time
import msgspec
from replay.backtest import BacktestSpec, run_backtest
spec = msgspec.json.decode(sys.argv[1], type=BacktestSpec)
started = time.perf_counter()
result = run_backtest(spec)
wall = time.perf_counter() - started
print(json.dumps({"bars": result.bars, "wall_s": wall, "fills": result.fills,
                  "hash": result.result_hash,
                  "self_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""
"""The RSS child: only what ``run_backtest`` imports, so the figure is the backtest's."""


RSS_LAUNCHER = """
import json, resource, subprocess, sys
out = subprocess.run([sys.executable, "-c", sys.argv[1], sys.argv[2]], capture_output=True,
                     text=True, check=True).stdout
child = json.loads(out.strip().splitlines()[-1])
child["peak_rss_kb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps(child))
"""
"""Linux charges a process with the memory of the one it was forked from, so a child forked
from this (large) bench would report the bench's peak; a small launcher forks the backtest
and reports ``RUSAGE_CHILDREN``, which then holds the backtest's own peak."""


def rss_run(path: Path) -> dict:
    """Peak RSS (KB on Linux) of a backtest forked from a small launcher process."""
    spec = msgspec.json.encode(keel_spec(path)).decode()
    started = clock()
    done = subprocess.run(
        [sys.executable, "-c", RSS_LAUNCHER, RSS_CHILD, spec],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    elapsed = clock() - started
    if done.returncode != 0:
        raise RuntimeError(f"RSS launcher exited with {done.returncode}: {done.stderr[-500:]}")
    child = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        **child,
        "process_s": elapsed,
        "peak_rss_mb": child["peak_rss_kb"] / 1024,
        "bars_per_s": child["bars"] / child["wall_s"],
    }


# -- profile --------------------------------------------------------------------------------


def profile(bars: int, top: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="keel-bench-replay-"))
    try:
        path = work / "bars.parquet"
        write_bars(path, bars)
        spec = keel_spec(path)
        profiler = cProfile.Profile()
        profiler.enable()
        result = run_backtest(spec)
        profiler.disable()
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats("tottime").print_stats(top)
        print(out.getvalue())
        print(f"{result.bars:,} bars, {result.fills:,} fills, hash {result.result_hash[:16]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- the run --------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values)


def timed_repeats(repeats: int, step: Callable[[], dict], label: str) -> list[dict]:
    runs = []
    for r in range(repeats):
        run = step()
        runs.append(run)
        err.log(f"{label} {r + 1}/{repeats}: " + ", ".join(f"{k} {v}" for k, v in run.items()))
    return runs


def keel_repeats(path: Path, repeats: int, label: str) -> dict:
    """End to end and engine only, interleaved, and the hashes checked against each other."""
    hashes: set[str] = set()
    results: list[BacktestResult] = []

    def step() -> dict:
        wall, result = keel_end_to_end(path)
        read_s, engine_s, engine_result = keel_engine_only(path)
        hashes.update((result.result_hash, engine_result.result_hash))
        results.append(result)
        return {
            "wall_s": round(wall, 3),
            "read_s": round(read_s, 3),
            "engine_s": round(engine_s, 3),
        }

    runs = timed_repeats(repeats, step, label)
    if len(hashes) != 1:
        raise RuntimeError(f"{label}: result hashes differ between runs: {sorted(hashes)}")
    result = results[0]
    bars = result.bars
    wall = median([r["wall_s"] for r in runs])
    engine = median([r["engine_s"] for r in runs])
    return {
        "bars": bars,
        "wall_s": wall,
        "bars_per_s": bars / wall,
        "read_s": median([r["read_s"] for r in runs]),
        "engine_s": engine,
        "engine_bars_per_s": bars / engine,
        "runs": runs,
        "hash": result.result_hash,
        "signals": result.signals,
        "orders": result.orders,
        "fills": result.fills,
        "trades": result.trades,
        "fees": result.fees,
        "final_equity": result.final_equity,
    }


def backtrader_repeats(path: Path, prefix_path: Path, bars: int, repeats: int) -> dict:
    """Time one prefix run; if the full file would take > BT_MAX_RUN_S, stay on the prefix."""
    repeats = min(repeats, BT_MAX_REPEATS)
    first = backtrader_run(prefix_path)
    err.log(f"backtrader probe on {first['bars']:,} bars: {first['wall_s']:.1f} s")
    estimate = first["wall_s"] * bars / first["bars"]
    if bars <= first["bars"] or estimate > BT_MAX_RUN_S:
        target, runs = prefix_path, [first]
    else:
        target, runs = path, []
    runs += timed_repeats(repeats - len(runs), lambda: backtrader_run(target), "backtrader")
    wall = median([r["wall_s"] for r in runs])
    n = runs[0]["bars"]
    return {
        **{k: runs[0][k] for k in ("fills", "trades", "fees", "final_value")},
        "bars": n,
        "wall_s": wall,
        "bars_per_s": n / wall,
        "run_s": median([r["run_s"] for r in runs]),
        "prefix": n < bars,
        "full_estimate_s": estimate,
        "runs": [{k: round(r[k], 3) for k in ("wall_s", "run_s")} for r in runs],
    }


def machine() -> dict:
    def ver(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "-"

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        # which CPython build: the same version runs ~8 % faster built with PGO and LTO
        # (docs/performance.md "Interpreter")
        "interpreter": os.path.realpath(sys.executable),
        "platform": platform.platform(),
        **{name: ver(name) for name in ("backtrader", "pandas", "polars", "msgspec", "nats-py")},
    }


def main(args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="keel-bench-replay-"))
    load = os.getloadavg()[0]
    started = time.monotonic()
    try:
        full = work / "bars.parquet"
        gen_s = write_bars(full, args.bars)
        err.log(f"{args.bars:,} bars written in {gen_s:.1f} s to {full}")
        bt_bars = min(BT_PREFIX, args.bars)
        bt_prefix = write_prefix(full, work / "bt_prefix.parquet", bt_bars)

        keel = keel_repeats(full, args.repeats, "keel in-process")
        bt = backtrader_repeats(full, bt_prefix, args.bars, args.repeats)
        keel_prefix = keel if not bt["prefix"] else keel_repeats(bt_prefix, 1, "keel on bt prefix")
        bus = None
        if not args.skip_bus:
            bus_bars = min(args.bus_bars, args.bars)
            bus = bus_run(write_prefix(full, work / "bus_prefix.parquet", bus_bars), work)
            err.log(
                f"bus replay: {bus['bars']} bars, {bus['bars_per_s']:,.0f} bars/s overall, "
                f"{bus['steady_bars_per_s']:,.0f} steady, hash equal {bus['hash_equal']}"
            )

        # The RSS step: ~ generation + backtest time, scaled from the runs above.
        rss_bars = args.rss_bars
        per_bar = gen_s / args.bars + keel["wall_s"] / keel["bars"]
        rss_estimate = per_bar * rss_bars
        rss_note = ""
        if rss_estimate > RSS_MAX_S and rss_bars > RSS_FALLBACK:
            rss_note = (
                f"estimated {rss_estimate:.0f} s for {rss_bars:,} bars (> {RSS_MAX_S:.0f} s): "
                f"measured at {RSS_FALLBACK:,} bars, not extrapolated"
            )
            err.log(rss_note)
            rss_bars = RSS_FALLBACK
        rss_path = full if rss_bars == args.bars else work / "rss.parquet"
        rss_gen_s = 0.0 if rss_path == full else write_bars(rss_path, rss_bars)
        err.log(f"RSS file: {rss_bars:,} bars ({rss_gen_s:.1f} s to write)")
        rss = rss_run(rss_path)
        rss.update(generate_s=rss_gen_s, estimate_s=rss_estimate, note=rss_note)
        err.log(f"peak RSS {rss['peak_rss_mb']:,.0f} MB for {rss['bars']:,} bars")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    return {
        "bars": args.bars,
        "repeats": args.repeats,
        "generate_s": round(gen_s, 2),
        "keel": keel,
        "keel_on_bt_bars": keel_prefix,
        "backtrader": bt,
        "ratios": {
            "keel_e2e_vs_backtrader": keel["bars_per_s"] / bt["bars_per_s"],
            "keel_engine_vs_backtrader": keel["engine_bars_per_s"] / bt["bars_per_s"],
            "keel_same_bars_vs_backtrader": keel_prefix["bars_per_s"] / bt["bars_per_s"],
        },
        "bus": bus,
        "rss": rss,
        "targets": {
            "in_process_bars_per_s": TARGET_INPROC,
            "in_process_met": keel["bars_per_s"] >= TARGET_INPROC,
            "bus_bars_per_s": TARGET_BUS,
            "bus_met": None
            if bus is None
            else bus["steady_bars_per_s"] >= TARGET_BUS and bus["hash_equal"],
            "rss_mb": TARGET_RSS_MB,
            "rss_bars": rss["bars"],
            "rss_met": rss["peak_rss_mb"] < TARGET_RSS_MB and rss["bars"] >= 10_000_000,
        },
        "machine": {
            **machine(),
            "loadavg_start": round(load, 2),
            "loadavg_end": round(os.getloadavg()[0], 2),
        },
        "wall_s": round(time.monotonic() - started, 1),
    }


# -- report ---------------------------------------------------------------------------------


def yes(met: bool) -> str:
    return "[green]yes[/]" if met else "[red]NO[/]"


def render(r: dict) -> None:
    out = Console()
    if not out.is_terminal:  # piped: rich would wrap the table at 80 columns
        out = Console(width=132)
    keel, bt, kp, bus, rss, tg = (
        r["keel"],
        r["backtrader"],
        r["keel_on_bt_bars"],
        r["bus"],
        r["rss"],
        r["targets"],
    )
    table = Table(
        title=f"Replay of ma_cross EMA {FAST}/{SLOW} long_short: median of {r['repeats']}"
    )
    for col in ("engine", "bars", "wall s", "bars/s", "x backtrader", "target", "met?"):
        table.add_column(col, justify="left" if col in ("engine", "target") else "right")
    bt_rate = bt["bars_per_s"]

    def row(label: str, bars: int, wall: float, rate: float, target: str = "", met: str = ""):
        x = rate / bt_rate
        ratio = f"{x:.1f}" if x >= 1 else f"{x:.3f}"
        table.add_row(label, f"{bars:,}", f"{wall:.2f}", f"{rate:,.0f}", ratio, target, met)

    row(
        "Keel in-process, end to end",
        keel["bars"],
        keel["wall_s"],
        keel["bars_per_s"],
        f">= {TARGET_INPROC:,.0f}/s",
        yes(tg["in_process_met"]),
    )
    row(
        f"  read_bars ({keel['read_s']:.2f} s) + engine",
        keel["bars"],
        keel["engine_s"],
        keel["engine_bars_per_s"],
    )
    if bt["prefix"]:
        row("Keel in-process, end to end", kp["bars"], kp["wall_s"], kp["bars_per_s"])
    row("backtrader", bt["bars"], bt["wall_s"], bt_rate)
    if bus is not None:
        row(
            "Keel bus replay, steady",
            bus["steady_bars"],
            bus["steady_s"],
            bus["steady_bars_per_s"],
            f">= {TARGET_BUS:,.0f}/s",
            yes(tg["bus_met"]),
        )
        row("  incl. fleet start, read-back", bus["bars"], bus["wall_s"], bus["bars_per_s"])
    row(
        f"Keel in-process, peak RSS {rss['peak_rss_mb']:,.0f} MB",
        rss["bars"],
        rss["wall_s"],
        rss["bars_per_s"],
        f"< {TARGET_RSS_MB:,.0f} MB at 10M",
        yes(tg["rss_met"]),
    )
    out.print(table)
    note = " (backtrader on a prefix: full file estimated at " if bt["prefix"] else ""
    if note:
        note += f"{bt['full_estimate_s']:.0f} s per run)"
    out.print(
        f"same {kp['bars']:,} bars{note}: Keel fills {kp['fills']:,}, trades {kp['trades']:,}, "
        f"fees {kp['fees']:,.2f}, final equity {kp['final_equity']:,.2f} | backtrader fills "
        f"{bt['fills']:,}, closed trades {bt['trades']:,}, fees {bt['fees']:,.2f}, "
        f"final value {bt['final_value']:,.2f}"
    )
    if bus is not None:
        out.print(
            f"bus replay hash {'equals' if bus['hash_equal'] else 'DIFFERS FROM'} the "
            f"in-process hash of the same {bus['bars']:,} bars; fleet start + first frame "
            f"{bus['fleet_up_and_first_bar_s']:.1f} s"
        )
    if rss["note"]:
        out.print(f"RSS: {rss['note']}")
    m = r["machine"]
    out.print(
        f"{m['cpus']} CPUs, load {m['loadavg_start']} at start, {m['loadavg_end']} at end; "
        f"wall {r['wall_s']:.0f} s; Python {m['python']} ({m['interpreter']})"
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--bars", type=int, default=1_000_000, help="bars for the in-process runs")
    p.add_argument("--bus-bars", type=int, default=100_000, help="bars for the bus replay")
    p.add_argument("--skip-bus", action="store_true", help="leave the bus replay out")
    p.add_argument("--rss-bars", type=int, default=10_000_000, help="bars for the RSS run")
    p.add_argument("--repeats", type=int, default=3, help="runs per timing (backtrader: <= 3)")
    p.add_argument("--profile", type=int, metavar="BARS", help="only cProfile an in-process run")
    p.add_argument("--top", type=int, default=25, help="functions shown by --profile")
    p.add_argument("--json", action="store_true", help="one JSON object on the last line")
    args = p.parse_args(argv)
    if min(args.bars, args.repeats, args.rss_bars) < 1 or args.bus_bars < 2:
        p.error("--bars, --repeats, --rss-bars must be >= 1 and --bus-bars >= 2")
    if args.bars < SLOW + 2:
        p.error(f"--bars must be at least {SLOW + 2}")
    return args


if __name__ == "__main__":
    arguments = parse_args(sys.argv[1:])
    if arguments.profile:
        profile(arguments.profile, arguments.top)
        sys.exit(0)
    report = main(arguments)
    render(report)
    if arguments.json:
        print(json.dumps(report))
