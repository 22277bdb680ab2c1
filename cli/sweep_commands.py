"""``keel sweep``: a grid of strategy params backtested in parallel, optionally walk-forward."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, cast

import msgspec
import polars as pl
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from cli.backtest_commands import (
    absolute_location,
    backtest_spec,
    option_ns,
    pair_data_with_symbols,
)
from cli.console import console, errors, fail, load_config_or_exit, user_errors
from cli.run_options import (
    CashOpt,
    ConfigOpt,
    DataOpt,
    EndOpt,
    FeeOpt,
    FillOpt,
    IntervalOpt,
    SlippageOpt,
    StartOpt,
    SymbolOpt,
    VenueOpt,
)
from contracts.timestamps import iso_ns
from eventstore.server import nats_url
from replay.external import EventFile
from replay.market import DataSource
from replay.sweep import (
    TABLE_FILE,
    Fold,
    SweepOutcome,
    check_events,
    query_hint,
    ranked,
    run_sweep,
    sweep_size,
    walk_forward_folds,
    write_sweep,
)
from replay.sweep_plan import (
    METRICS,
    Metric,
    Plan,
    SweepSpec,
    WalkForward,
    parse_grid,
    plan_sweep,
    skipped_summary,
    spec_with,
)
from services.fleet import fleet_roles
from strategies.registry import parse_params

SHOWN_METRICS = (
    ("return_pct", "return %", "{:+.3f}"),
    ("sharpe", "sharpe", "{:.3f}"),
    ("sortino", "sortino", "{:.3f}"),
    ("max_drawdown_pct", "max dd %", "{:.3f}"),
    ("win_rate", "win %", "{:.1%}"),
    ("profit_factor", "pf", "{:.3f}"),
    ("trades", "trades", "{:,}"),
)


def sweep(
    strategy: Annotated[
        str | None,
        typer.Option("--strategy", help="Strategy name (else the config's only strategy)."),
    ] = None,
    grid: Annotated[
        list[str] | None,
        typer.Option(
            "--grid", help="key=v1,v2,... or key=start:stop:step (stop excluded); repeatable."
        ),
    ] = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", help="Fixed key=value, repeatable.")
    ] = None,
    data: DataOpt = None,
    symbol: SymbolOpt = None,
    venue: VenueOpt = "local",
    interval: IntervalOpt = None,
    start: StartOpt = None,
    end: EndOpt = None,
    cash: CashOpt = None,
    fill: FillOpt = None,
    fee_bps: FeeOpt = None,
    slippage_bps: SlippageOpt = None,
    config: ConfigOpt = None,
    events: Annotated[
        list[Path] | None,
        typer.Option(
            "--events", help="JSONL file of external events (ext.>) for every run, repeatable."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Directory for sweep.parquet (default: sweeps/<UTC time>)."),
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", help="Processes (default: CPU count).")
    ] = None,
    sort: Annotated[
        str,
        typer.Option(
            "--sort", help=f"Rank by {', '.join(METRICS)} (max_drawdown_pct: lowest first)."
        ),
    ] = "sharpe",
    top: Annotated[int, typer.Option("--top", help="Rows of the best-runs table.")] = 10,
    train: Annotated[
        str | None, typer.Option("--train", help="Walk-forward train window, e.g. 7d.")
    ] = None,
    test: Annotated[
        str | None, typer.Option("--test", help="Walk-forward test window (and step), e.g. 1d.")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object on the last line.")
    ] = False,
) -> None:
    """Backtest every combination of a param grid in parallel; rank, store, walk forward."""
    if not data:
        raise fail("give at least one --data FILE|STREAM")
    if (train is None) != (test is None):
        raise fail("--train and --test go together: give both (e.g. --train 7d --test 1d)")
    if fill is not None and fill not in ("next_open", "close"):
        raise fail(f"--fill {fill!r}: use next_open or close")
    if sort not in METRICS:
        raise fail(f"--sort {sort!r}: use one of {', '.join(METRICS)}")
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise fail("--workers must be >= 1")
    if top < 1:
        raise fail("--top must be >= 1")
    pairs = pair_data_with_symbols(sys.argv[1:])
    if [d for d, _ in pairs] != data:  # not called from a command line: pair by position
        pairs = list(zip(data, [*(symbol or []), *([None] * len(data))], strict=False))
    sources = [
        DataSource(location=absolute_location(d), symbol=s, venue=venue, interval=interval)
        for d, s in pairs
    ]
    with user_errors():
        raw_grid = parse_grid(grid or [])
        fixed = parse_params(param or [])
        both = [k for k in raw_grid if k in fixed]
        if both:
            raise fail(f"{', '.join(both)}: given both as --param and as --grid")
        base = backtest_spec(
            load_config_or_exit(config),
            strategy,
            param or [],
            sources,
            option_ns(start, "--start"),
            option_ns(end, "--end"),
            cash,
            fill,
            fee_bps,
            slippage_bps,
        )
        walk = WalkForward.parse(train, test) if train is not None and test is not None else None
        definition = SweepSpec(base=base, grid=raw_grid, sort=cast(Metric, sort), walk_forward=walk)
        plan = plan_sweep(definition)  # unknown strategy, key or value: before reading data
        fleet_roles(spec_with(base, plan.params[0]).config)
        base = msgspec.structs.replace(
            base,
            data=tuple(s.with_digest() for s in base.data),
            events=tuple(EventFile(absolute_location(str(e))).with_digest() for e in events or ()),
        )
        check_events(base)  # run_sweep checks too; here before any bar is parsed or progress shown
        definition = msgspec.structs.replace(definition, base=base)
        if plan.skipped:
            errors.print(
                f"[yellow]skipped {len(plan.skipped)} invalid combination"
                f"{'s' if len(plan.skipped) != 1 else ''}:[/] {skipped_summary(plan.skipped)}",
                highlight=False,
                soft_wrap=True,
            )
        try:
            if any(s.is_stream for s in base.data):
                with nats_url() as url:
                    outcome = _execute(definition, plan, workers, url, as_json)
            else:
                outcome = _execute(definition, plan, workers, None, as_json)
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        target = out if out is not None else _default_out()
        parquet = write_sweep(target, definition, outcome)
    _show(definition, outcome, target, parquet, top, as_json)


def _default_out() -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    base = Path("sweeps") / stamp
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{stamp}-{n}")
    return candidate


def _execute(
    definition: SweepSpec, plan: Plan, workers: int, url: str | None, quiet: bool
) -> SweepOutcome:
    folds: list[Fold] | None = None
    if definition.walk_forward is not None:
        folds = walk_forward_folds(definition, url)
    total = sweep_size(definition, plan, folds)
    with Progress(
        TextColumn("[bold]sweep"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=quiet,
    ) as progress:
        task = progress.add_task("runs", total=total)

        def tick() -> None:
            progress.advance(task, 1)

        return run_sweep(definition, workers, url, tick, plan, folds)


# --- output -------------------------------------------------------------------------------------


def _params_text(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())


def _cell(value: Any, template: str) -> str:
    return "n/a" if value is None else template.format(value)


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return value


def _show(
    definition: SweepSpec,
    outcome: SweepOutcome,
    out: Path,
    parquet: Path,
    top: int,
    as_json: bool,
) -> None:
    walk = outcome.folds is not None
    table = outcome.table
    best_pool = table.filter(pl.col("phase") == "test") if walk else table
    best = ranked(best_pool, definition.sort).head(top)
    if as_json:
        folds = None
        if outcome.folds is not None:
            folds = [
                {
                    **msgspec.structs.asdict(f),
                    **{c: iso_ns(getattr(f, c)) for c in _WINDOWS},
                    "metric": definition.sort,
                }
                for f in outcome.folds
            ]
        document = {
            "runs": table.height,
            "skipped": len(outcome.plan.skipped),
            "out": str(out.resolve()),
            "best": {k: _plain(v) for k, v in best.row(0, named=True).items()},
            "folds": folds,
            "out_of_sample": outcome.out_of_sample,
        }
        sys.stdout.write(msgspec.json.encode(document).decode() + "\n")
        return
    if outcome.folds is not None and outcome.out_of_sample is not None:
        console.print(_fold_table(definition, outcome))
        oos = outcome.out_of_sample
        console.print(
            f"out-of-sample over {oos.folds} fold{'s' if oos.folds != 1 else ''}: "
            f"mean return {oos.mean_return_pct:+.3f}%, mean sharpe {oos.mean_sharpe:.3f}, "
            f"compounded return {oos.compounded_return_pct:+.3f}%",
            highlight=False,
            soft_wrap=True,
        )
    console.print(_best_table(definition, best, walk))
    console.print(f"{table.height} runs stored in {parquet}", highlight=False, soft_wrap=True)
    query = query_hint(out / TABLE_FILE, definition.sort, top, walk)
    console.print(f'duckdb -c "{query}"', highlight=False, markup=False, soft_wrap=True)


_WINDOWS = ("train_start", "train_end", "test_start", "test_end")


def _fold_table(definition: SweepSpec, outcome: SweepOutcome) -> Table:
    metric = definition.sort
    table = Table(title=f"Keel walk-forward: best {metric} on train, then test")
    for header in ("fold", "train", "test", "best params", f"train {metric}", f"test {metric}"):
        table.add_column(
            header, justify="right" if "fold" in header or metric in header else "left"
        )
    table.add_column("test return %", justify="right")
    for f in outcome.folds or []:
        table.add_row(
            str(f.fold),
            f"{iso_ns(f.train_start)} .. {iso_ns(f.train_end)}",
            f"{iso_ns(f.test_start)} .. {iso_ns(f.test_end)}",
            _params_text(f.params),
            _cell(f.train_metric, "{:.3f}"),
            _cell(f.test_metric, "{:.3f}"),
            f"{f.test_return_pct:+.3f}",
        )
    return table


def _best_table(definition: SweepSpec, best: pl.DataFrame, walk: bool) -> Table:
    order = "lowest" if definition.sort == "max_drawdown_pct" else "highest"
    what = "test runs" if walk else "runs"
    table = Table(
        title=f"Keel sweep: top {best.height} {what} by {definition.sort} ({order} first)"
    )
    table.add_column("#", justify="right")
    if walk:
        table.add_column("fold", justify="right")
    # the fixed params are in the Parquet file; events: those within each run's window
    shown = [(f"p_{k}", k) for k in definition.grid]
    if definition.base.events:
        shown.append(("external_events", "events"))
    for _, header in shown:
        table.add_column(header, justify="right")
    for _, header, _ in SHOWN_METRICS:
        table.add_column(header, justify="right")
    for rank, row in enumerate(best.iter_rows(named=True), start=1):
        cells = [str(rank)]
        if walk:
            cells.append(str(row["fold"]))
        cells += [str(row[c]) for c, _ in shown]
        cells += [_cell(row[c], template) for c, _, template in SHOWN_METRICS]
        table.add_row(*cells)
    return table
