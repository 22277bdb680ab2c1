"""``keel backtest`` and ``keel replay``: the user's backtesting workflow."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import msgspec
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

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
from cli.timeparse import parse_time
from eventstore.errors import KeelError
from eventstore.server import URL_ENV, EmbeddedServer, nats_url
from replay.backtest import BacktestResult, BacktestSpec, RunRecord, load_run, run_backtest
from replay.bus_replay import bus_replay
from replay.digest import HASH_FORMAT
from replay.external import EventFile
from replay.market import DataSource, SkippedRows
from services.config import KeelConfig, StrategyConfig
from services.fleet import fleet_roles
from services.runtime.telemetry import replay_progress, serve_replay_metrics
from strategies.registry import parse_params

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def pair_data_with_symbols(argv: list[str]) -> list[tuple[str, str | None]]:
    """Each ``--data`` takes the ``--symbol`` that follows it (before the next ``--data``)."""
    pairs: list[tuple[str, str | None]] = []
    tokens = iter(argv)
    for token in tokens:
        name, eq, inline = token.partition("=")
        if name not in ("--data", "--symbol"):
            continue
        value = inline if eq else next(tokens, "")
        if name == "--data":
            pairs.append((value, None))
        elif not pairs:
            raise fail("--symbol must follow the --data it names")
        elif pairs[-1][1] is not None:
            raise fail(f"--data {pairs[-1][0]} has two --symbol options")
        else:
            pairs[-1] = (pairs[-1][0], value)
    return pairs


def option_ns(text: str | None, what: str) -> int | None:
    """Exact nanoseconds (integer arithmetic: a float timestamp would round)."""
    if text is None:
        return None
    try:
        moment = parse_time(text)
    except ValueError as exc:
        raise fail(f"{what}: {exc}") from None
    return (moment - EPOCH) // timedelta(microseconds=1) * 1_000


def absolute_location(location: str) -> str:
    """Files are stored by absolute path so ``keel replay`` works from any directory."""
    path = Path(location)
    return str(path.resolve()) if path.exists() else location


def backtest_spec(
    config: KeelConfig,
    strategy: str | None,
    params: list[str],
    sources: list[DataSource],
    start: int | None,
    end: int | None,
    cash: float | None,
    fill: str | None,
    fee_bps: float | None,
    slippage_bps: float | None,
) -> BacktestSpec:
    if strategy is not None:
        parsed = parse_params(params)
        config = msgspec.structs.replace(
            config, strategies=(StrategyConfig(name=strategy, instance=strategy, params=parsed),)
        )
    elif params:
        raise fail("--param needs --strategy")
    if fill not in (None, "next_open", "close"):
        raise fail(f"--fill must be next_open or close, not {fill!r}")
    execution = {
        k: v
        for k, v in (("fill", fill), ("fee_bps", fee_bps), ("slippage_bps", slippage_bps))
        if v is not None
    }
    try:
        if execution:
            config = msgspec.structs.replace(
                config, execution=msgspec.structs.replace(config.execution, **execution)
            )
        if cash is not None:
            config = msgspec.structs.replace(
                config, portfolio=msgspec.structs.replace(config.portfolio, starting_cash=cash)
            )
    except ValueError as exc:
        raise fail(str(exc)) from None
    return BacktestSpec(config=config, data=tuple(sources), start=start, end=end)


MetricsPortOpt = Annotated[
    int | None,
    typer.Option("--metrics-port", help="Serve replay progress on this /metrics port."),
]


def backtest(
    strategy: Annotated[
        str | None, typer.Option("--strategy", help="Strategy name (else the config's strategies).")
    ] = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", help="key=value, repeatable.")
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
    out: Annotated[Path | None, typer.Option("--out", help="Run directory to write.")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object on the last line.")
    ] = False,
    events: Annotated[
        list[Path] | None,
        typer.Option("--events", help="JSONL file of external events (ext.>), repeatable."),
    ] = None,
    metrics_port: MetricsPortOpt = None,
) -> None:
    """Replay market data through the fleet's own logic, in process, and report."""
    with user_errors():
        serve_replay_metrics(metrics_port)
    if not data:
        raise fail("give at least one --data FILE|STREAM")
    pairs = pair_data_with_symbols(sys.argv[1:])
    if [d for d, _ in pairs] != data:  # not called from a command line: pair by position
        pairs = list(zip(data, [*(symbol or []), *([None] * len(data))], strict=False))
    sources = [
        DataSource(location=absolute_location(d), symbol=s, venue=venue, interval=interval)
        for d, s in pairs
    ]
    with user_errors():
        spec = backtest_spec(
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
        fleet_roles(spec.config)  # unknown strategy or bad params: say so before reading data
        spec = msgspec.structs.replace(
            spec,
            data=tuple(s.with_digest() for s in spec.data),
            events=tuple(EventFile(absolute_location(str(e))).with_digest() for e in events or ()),
        )
        skipped: SkippedRows = []
        result = _execute(spec, out, as_json, verify_data=False, skipped=skipped)  # pinned above
    show_skipped(skipped, as_json)
    _show(result, out, as_json)


SHOW_SKIPPED = 5


def show_skipped(skipped: SkippedRows, as_json: bool) -> None:
    """Each bar file's skipped rows, as ``keel ingest`` reports them: a count and the first
    few reasons (on stderr with ``--json``, whose last stdout line is the result)."""
    out = errors if as_json else console
    for location, reasons in skipped:
        if not reasons:
            continue
        name = Path(location).name
        out.print(f"[yellow]{name}: {len(reasons)} rows skipped[/]", highlight=False)
        for reason in reasons[:SHOW_SKIPPED]:
            out.print(f"[yellow]{name}: skipped {reason}[/]", highlight=False)


def _execute(
    spec: BacktestSpec,
    out: Path | None,
    quiet: bool,
    verify_data: bool = True,
    skipped: SkippedRows | None = None,
) -> BacktestResult:
    with _progress("backtest", quiet) as advance:
        if any(s.is_stream for s in spec.data):
            with nats_url() as url:
                return run_backtest(spec, out, url, advance, verify_data, skipped)
        return run_backtest(spec, out, None, advance, verify_data, skipped)


@contextlib.contextmanager
def _progress(label: str, quiet: bool) -> Iterator[Callable[[int], None]]:
    """A rich progress bar of bars replayed; yields the function that advances it."""
    with Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=quiet,
    ) as progress:
        task = progress.add_task("bars", total=None)
        yield replay_progress(label, lambda n: progress.advance(task, n))


def _show(result: BacktestResult, out: Path | None, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(msgspec.json.encode(result).decode() + "\n")
        return
    console.print(summary_table(result))
    for event in result.risk_events[:10]:
        console.print(
            f"[yellow]{event.ts} {event.rule} {event.action}: {event.detail}[/]", highlight=False
        )
    if out is not None:
        console.print(f"run stored in {out}")


def summary_table(result: BacktestResult) -> Table:
    table = Table(title="Keel backtest", show_header=False)
    pf = "n/a (no losing trade)" if result.profit_factor is None else f"{result.profit_factor:.3f}"
    for label, value in (
        ("bars", f"{result.bars:,}"),
        *([("external events", f"{result.external_events:,}")] if result.external_events else []),
        *([("venue", result.venue)] if result.venue else []),
        ("signals / orders / fills", f"{result.signals:,} / {result.orders:,} / {result.fills:,}"),
        ("rejections", f"{result.rejections:,}"),
        ("trades", f"{result.trades:,}"),
        ("final equity", f"{result.final_equity:,.2f}"),
        ("return", f"{result.return_pct:+.3f}%"),
        ("sharpe / sortino", f"{result.sharpe:.3f} / {result.sortino:.3f}"),
        ("max drawdown", f"{result.max_drawdown_pct:.3f}%"),
        ("win rate", f"{result.win_rate * 100:.1f}%"),
        ("profit factor", pf),
        ("fees", f"{result.fees:,.2f}"),
        ("speed", f"{result.bars_per_s:,.0f} bars/s ({result.wall_s:.2f}s)"),
        ("result hash", result.result_hash[:16]),
    ):
        table.add_row(label, value)
    return table


def replay(
    run_dir: Annotated[
        Path, typer.Argument(help="A run directory written by keel backtest --out.")
    ],
    bus: Annotated[
        bool, typer.Option("--bus", help="Replay through the real worker processes over NATS.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    metrics_port: MetricsPortOpt = None,
) -> None:
    """Re-run a stored run and check that it reproduces the same result hash."""
    with user_errors():
        serve_replay_metrics(metrics_port)
    with user_errors():
        record = load_run(run_dir)
        if record.result.hash_format != HASH_FORMAT:
            raise KeelError(
                f"{run_dir} was recorded with result-hash format {record.result.hash_format}; "
                f"this Keel hashes with format {HASH_FORMAT}, so the two cannot be compared: "
                "record the run again with keel backtest --out"
            )
        result = _bus_replay(record, as_json) if bus else _execute(record.spec, None, as_json)
    same = result.result_hash == record.result.result_hash
    if as_json:
        sys.stdout.write(
            msgspec.json.encode(
                {
                    "mode": "bus" if bus else "in-process",
                    "bars": result.bars,
                    "wall_s": result.wall_s,
                    "bars_per_s": result.bars_per_s,
                    "result_hash": result.result_hash,
                    "recorded_hash": record.result.result_hash,
                    "identical": same,
                }
            ).decode()
            + "\n"
        )
    elif same:
        console.print(f"[green]identical[/]: {result.bars:,} bars, hash {result.result_hash[:16]}")
    else:
        console.print(
            f"[red]different[/]: recorded {record.result.result_hash[:16]}, now {result.result_hash[:16]}"
        )
    if not same:
        raise typer.Exit(1)


def _bus_replay(record: RunRecord, quiet: bool) -> BacktestResult:
    """On ``KEEL_NATS_URL`` when set (in its own namespace), else on a fresh embedded server."""
    with tempfile.TemporaryDirectory(prefix="keel-replay-") as tmp:
        work = Path(tmp)
        url = os.environ.get(URL_ENV)
        server = None if url else EmbeddedServer(work / "nats").start()
        try:
            with _progress("bus replay", quiet) as advance:
                return bus_replay(record, url or server.url, work, advance)
        finally:
            if server is not None:
                server.stop()
