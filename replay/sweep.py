"""Parameter sweeps: one backtest per combination of a grid, run in parallel processes.

A sweep (``SweepSpec``) is a base ``BacktestSpec`` (one strategy), a grid of that strategy's
params and the metric that ranks the runs; ``replay.sweep_plan`` parses the grid and types its
combinations.

Every run is in memory (no run directory). Workers are spawned processes that receive the spec
as msgspec JSON bytes and return the result the same way, so a sweep gives the same result
hashes as running each spec with ``run_backtest`` one after another.

External events (``BacktestSpec.events``, ``keel sweep --events``) go to every run as they go
to a backtest: merged with the bars and cut to the run's window, so each row equals
``run_backtest`` of its spec. The files are checked in the parent before the first run: a
bad line or a file changed since it was pinned stops the sweep there, not in every worker.

Walk-forward: the data's time range (first bar open to last bar close, clipped by the base
spec's window) is cut into rolling folds, train ``[t, t+train)`` then test
``[t+train, t+train+test)``, stepping by ``test``. The whole grid runs on each train window;
the best combination (by the sort metric) then runs alone on the test window. Each window is
replayed on its own, so indicators warm up again at the start of a test window.

OUT layout: ``sweep.parquet`` (one row per run: ``p_<param>`` columns, counts, metrics, the
result hash and, for walk-forward, the fold, its windows and the phase) and ``sweep.json``
(the sweep definition, with the data and events files and their sha256 as pinned, the
skipped combinations and the fold summary).
"""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import msgspec
import polars as pl

from contracts.events import Bar
from contracts.intervals import UNIT_NS
from eventstore.errors import KeelError
from replay.backtest import BacktestResult, BacktestSpec, run_backtest
from replay.external import read_events
from replay.market import market_events
from replay.sweep_plan import Plan, Scalar, SweepSpec, plan_sweep, spec_with

TABLE_FILE = "sweep.parquet"
DEFINITION_FILE = "sweep.json"

COUNT_COLUMNS = ("bars", "external_events", "signals", "orders", "fills", "trades")
METRIC_COLUMNS = (
    "final_equity",
    "return_pct",
    "sharpe",
    "sortino",
    "max_drawdown_pct",
    "win_rate",
    "profit_factor",
    "exposure_pct",
    "fees",
    "wall_s",
)
RESULT_COLUMNS = (*COUNT_COLUMNS, *METRIC_COLUMNS, "result_hash")
WINDOW_COLUMNS = ("train_start", "train_end", "test_start", "test_end")

# --- results ------------------------------------------------------------------------------------


class Fold(msgspec.Struct, frozen=True):
    fold: int
    train_start: int
    train_end: int
    test_start: int
    test_end: int


class FoldSummary(msgspec.Struct, frozen=True):
    fold: int
    train_start: int
    train_end: int
    test_start: int
    test_end: int
    params: dict[str, Scalar]
    train_metric: float | None
    test_metric: float | None
    test_return_pct: float
    test_sharpe: float


class OutOfSample(msgspec.Struct, frozen=True):
    folds: int
    mean_return_pct: float
    mean_sharpe: float
    compounded_return_pct: float


class SweepRecord(msgspec.Struct, frozen=True):
    sweep: SweepSpec
    runs: int
    combinations: int
    skipped: list[str]
    folds: list[FoldSummary] | None = None
    out_of_sample: OutOfSample | None = None


class SweepOutcome(msgspec.Struct, frozen=True):
    table: pl.DataFrame
    specs: list[BacktestSpec]  # one per table row, in row order
    plan: Plan
    folds: list[FoldSummary] | None = None
    out_of_sample: OutOfSample | None = None


def data_range(base: BacktestSpec, url: str | None = None) -> tuple[int, int]:
    """(first bar open, last bar close) of the base spec's data, clipped to its window."""
    bars = market_events(base.data, url, base.start, base.end)
    lo, hi = 1 << 63, -1
    for bar in bars:
        if type(bar) is Bar:  # a recorded stream's other market events do not span time
            lo = min(lo, bar.open_time)
            hi = max(hi, bar.close_time)
    if base.start is not None:
        lo = max(lo, base.start)
    if base.end is not None:
        hi = min(hi, base.end)
    return lo, hi


def make_folds(lo: int, hi: int, train_ns: int, test_ns: int) -> list[Fold]:
    folds: list[Fold] = []
    t = lo
    while t + train_ns + test_ns <= hi:
        folds.append(Fold(len(folds) + 1, t, t + train_ns, t + train_ns, t + train_ns + test_ns))
        t += test_ns
    return folds


def _describe_ns(ns: int) -> str:
    for unit in ("w", "d", "h", "m", "s"):
        if ns >= UNIT_NS[unit]:
            return f"{ns / UNIT_NS[unit]:.4g}{unit}"
    return f"{ns}ns"


# --- running ------------------------------------------------------------------------------------


def _run_encoded(spec: bytes, url: str | None = None) -> bytes:
    """The worker: a spec as msgspec JSON in, its result as msgspec JSON out (spawn-safe)."""
    # the parent pinned the data and checked the events moments ago: no digest per run
    result = run_backtest(
        msgspec.json.decode(spec, type=BacktestSpec), None, url, verify_data=False
    )
    return msgspec.json.encode(result)


class _Runner:
    """Runs batches of specs in one process pool (created on first use, at most ``workers``)."""

    def __init__(self, workers: int, url: str | None, tick: Callable[[], None] | None) -> None:
        self.workers = workers
        self.url = url
        self.tick = tick or (lambda: None)
        self.pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> _Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def run(self, specs: Sequence[BacktestSpec]) -> list[BacktestResult]:
        payloads = [msgspec.json.encode(s) for s in specs]
        decode = msgspec.json.Decoder(BacktestResult).decode
        if self.workers <= 1:
            out = []
            for payload in payloads:
                out.append(decode(_run_encoded(payload, self.url)))
                self.tick()
            return out
        if self.pool is None:
            self.pool = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=multiprocessing.get_context("spawn")
            )
        results: list[BacktestResult | None] = [None] * len(payloads)
        index: dict[Future[bytes], int] = {
            self.pool.submit(_run_encoded, p, self.url): i for i, p in enumerate(payloads)
        }
        pending = set(index)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    results[index[future]] = decode(future.result())
                    self.tick()
        except BaseException:
            for future in pending:
                future.cancel()
            raise
        return [r for r in results if r is not None]


def sweep_size(sweep: SweepSpec, plan: Plan, folds: Sequence[Fold] | None) -> int:
    """How many backtests the sweep runs."""
    if folds is None:
        return len(plan.params)
    return len(folds) * (len(plan.params) + 1)


def run_sweep(
    sweep: SweepSpec,
    workers: int = 1,
    url: str | None = None,
    tick: Callable[[], None] | None = None,
    plan: Plan | None = None,
    folds: Sequence[Fold] | None = None,
) -> SweepOutcome:
    """Run the grid (or the walk-forward folds) and collect the results table.

    ``folds`` defaults to the folds of the data's range for a walk-forward sweep; pass them
    when already computed (the CLI does, to size its progress bar).
    """
    plan = plan or plan_sweep(sweep)
    check_events(sweep.base)
    if sweep.walk_forward is not None and folds is None:
        folds = walk_forward_folds(sweep, url)
    size = sweep_size(sweep, plan, folds)
    with _Runner(min(workers, size), url, tick) as runner:
        if sweep.walk_forward is None or folds is None:
            specs = [spec_with(sweep.base, p) for p in plan.params]
            results = runner.run(specs)
            rows = [
                _row(i, p, r) for i, (p, r) in enumerate(zip(plan.params, results, strict=True))
            ]
            return SweepOutcome(_table(rows), specs, plan)
        return _walk_forward(sweep, plan, folds, runner)


def check_events(base: BacktestSpec) -> None:
    """Read every events file once (each line, the order, the pinned sha256): a bad file is
    one error before the first run instead of one per worker."""
    for source in base.events:
        read_events(source)


def walk_forward_folds(sweep: SweepSpec, url: str | None = None) -> list[Fold]:
    walk = sweep.walk_forward
    if walk is None:
        raise KeelError("not a walk-forward sweep")
    lo, hi = data_range(sweep.base, url)
    folds = make_folds(lo, hi, walk.train_ns, walk.test_ns)
    if not folds:
        raise KeelError(
            f"--train {walk.train} + --test {walk.test} is longer than the data "
            f"({_describe_ns(hi - lo)}): no full fold"
        )
    return folds


def _walk_forward(
    sweep: SweepSpec, plan: Plan, folds: Sequence[Fold], runner: _Runner
) -> SweepOutcome:
    train_specs = [
        spec_with(sweep.base, p, (f.train_start, f.train_end)) for f in folds for p in plan.params
    ]
    train_results = runner.run(train_specs)
    n = len(plan.params)
    winners: list[int] = []
    for k in range(len(folds)):
        chunk = train_results[k * n : (k + 1) * n]
        winners.append(best_index([_metric(r, sweep.sort) for r in chunk], sweep.sort))
    test_specs = [
        spec_with(sweep.base, plan.params[w], (f.test_start, f.test_end))
        for f, w in zip(folds, winners, strict=True)
    ]
    test_results = runner.run(test_specs)

    rows: list[dict[str, Any]] = []
    specs: list[BacktestSpec] = []
    summaries: list[FoldSummary] = []
    for k, fold in enumerate(folds):
        windows = {c: getattr(fold, c) for c in WINDOW_COLUMNS}
        for j, params in enumerate(plan.params):
            result = train_results[k * n + j]
            rows.append(_row(len(rows), params, result, fold=fold.fold, phase="train", **windows))
            specs.append(train_specs[k * n + j])
        winner, test = plan.params[winners[k]], test_results[k]
        rows.append(_row(len(rows), winner, test, fold=fold.fold, phase="test", **windows))
        specs.append(test_specs[k])
        summaries.append(
            FoldSummary(
                fold=fold.fold,
                **windows,
                params=winner,
                train_metric=_metric(train_results[k * n + winners[k]], sweep.sort),
                test_metric=_metric(test, sweep.sort),
                test_return_pct=test.return_pct,
                test_sharpe=test.sharpe,
            )
        )
    returns = [s.test_return_pct for s in summaries]
    compounded = math.prod(1 + r / 100 for r in returns) - 1
    oos = OutOfSample(
        folds=len(summaries),
        mean_return_pct=math.fsum(returns) / len(returns),
        mean_sharpe=math.fsum(s.test_sharpe for s in summaries) / len(summaries),
        compounded_return_pct=compounded * 100,
    )
    return SweepOutcome(_table(rows), specs, plan, summaries, oos)


# --- ranking and the table ----------------------------------------------------------------------


def _metric(result: BacktestResult, metric: str) -> float | None:
    return getattr(result, metric)


def _sort_key(value: float | None, metric: str) -> float:
    """Smaller is better. ``profit_factor`` None means no losing trade: the best there is."""
    if value is None:
        return -math.inf
    return value if metric == "max_drawdown_pct" else -value


def best_index(values: Sequence[float | None], metric: str) -> int:
    """The best value's position; ties go to the earliest (grid order)."""
    return min(range(len(values)), key=lambda i: (_sort_key(values[i], metric), i))


def ranked(table: pl.DataFrame, metric: str) -> pl.DataFrame:
    """The table best first by ``metric`` (descending; ascending for max_drawdown_pct)."""
    ascending = metric == "max_drawdown_pct"
    return table.sort(
        metric, descending=not ascending, nulls_last=metric != "profit_factor", maintain_order=True
    )


def order_clause(metric: str) -> str:
    """The SQL ``order by`` that :func:`ranked` applies."""
    if metric == "max_drawdown_pct":
        return "order by max_drawdown_pct asc"
    if metric == "profit_factor":
        return "order by profit_factor desc nulls first"
    return f"order by {metric} desc"


def _row(
    run: int, params: Mapping[str, Scalar], result: BacktestResult, **walk: Any
) -> dict[str, Any]:
    row: dict[str, Any] = {"run": run}
    if walk:
        row["fold"] = walk.pop("fold")
        row["phase"] = walk.pop("phase")
        row.update(walk)
    row.update({f"p_{k}": v for k, v in params.items()})
    row.update({c: getattr(result, c) for c in RESULT_COLUMNS})
    return row


_SCHEMA = {
    "run": pl.Int64,
    "fold": pl.Int64,
    "phase": pl.String,
    **{c: pl.Int64 for c in WINDOW_COLUMNS},
    **{c: pl.Int64 for c in COUNT_COLUMNS},
    **{c: pl.Float64 for c in METRIC_COLUMNS},
    "result_hash": pl.String,
}


def _table(rows: list[dict[str, Any]]) -> pl.DataFrame:
    columns = list(rows[0])
    overrides = {c: t for c, t in _SCHEMA.items() if c in columns}
    table = pl.DataFrame(rows, schema_overrides=overrides, infer_schema_length=None)
    windows = [c for c in WINDOW_COLUMNS if c in columns]
    if windows:
        table = table.with_columns(
            pl.from_epoch(pl.col(c), time_unit="ns").dt.replace_time_zone("UTC") for c in windows
        )
    return table


def write_sweep(out: Path, sweep: SweepSpec, outcome: SweepOutcome) -> Path:
    """Write ``sweep.parquet`` and ``sweep.json`` into ``out``; returns the Parquet path."""
    path = out / TABLE_FILE
    try:
        out.mkdir(parents=True, exist_ok=True)
        outcome.table.write_parquet(path)
    except OSError as exc:
        raise KeelError(f"cannot write {path}: {exc.strerror or exc}") from exc
    record = SweepRecord(
        sweep=sweep,
        runs=outcome.table.height,
        combinations=len(outcome.plan.params) + len(outcome.plan.skipped),
        skipped=outcome.plan.skipped,
        folds=outcome.folds,
        out_of_sample=outcome.out_of_sample,
    )
    (out / DEFINITION_FILE).write_bytes(msgspec.json.format(msgspec.json.encode(record)))
    return path


def query_hint(parquet: Path | str, metric: str, limit: int, walk_forward: bool = False) -> str:
    """A DuckDB query over the table: the best runs (out-of-sample ones for walk-forward)."""
    where = " where phase = 'test'" if walk_forward else ""
    quoted = str(parquet).replace("'", "''")
    return f"select * from '{quoted}'{where} {order_clause(metric)} limit {limit}"
