"""``keel demo`` and ``keel up``: the whole fleet, each worker its own process."""

from __future__ import annotations

import asyncio
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from cli.console import console, load_config_or_exit, run
from eventstore.bus import Bus
from eventstore.credentials import redact_url
from eventstore.errors import KeelError
from eventstore.lag import wait_drained
from eventstore.server import EmbeddedServer, nats_url
from eventstore.tally import Tally, count, tally
from services.config import KeelConfig
from services.fleet import Fleet, WorkerProcess, consumer_names, fleet_plan

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="Fleet config (TOML).")]


def _market_args(symbols: list[str] | None, seed: int | None, extra: list[str]) -> list[str]:
    args = ["run", "marketdata", *extra]
    for s in symbols or []:
        args += ["--symbol", s]
    return args + (["--seed", str(seed)] if seed is not None else [])


async def _start_consumers(
    fleet: Fleet, bus: Bus, config: KeelConfig, config_path: Path | None
) -> None:
    for worker in fleet_plan(config, config_path):
        fleet.start(worker)
    if not await wait_drained(bus, consumer_names(config), timeout=60):
        _raise_if_failed(fleet)
        raise KeelError("workers did not come up within 60s (see their logs)")


def _raise_if_failed(fleet: Fleet) -> None:
    for worker in fleet.failed():
        raise KeelError(f"worker {worker.name} exited: {fleet.log_tail(worker)}")


def summary_table(result: Tally, starting_cash: float, wall_s: float) -> Table:
    table = Table(title="Keel demo", show_header=False)
    equity = result.equity.equity if result.equity else starting_cash
    for label, value in (
        ("bars", f"{result.bars:,}"),
        ("signals", f"{result.signals:,}"),
        ("orders", f"{result.orders:,}"),
        ("fills", f"{result.fills:,}"),
        ("rejections", f"{result.rejections:,}"),
        ("dead letters", f"{result.dead_letters:,}"),
        ("final equity", f"{equity:,.2f}"),
        ("return", f"{(equity / starting_cash - 1) * 100:+.3f}%"),
        ("fees", f"{result.equity.fees if result.equity else 0.0:,.2f}"),
        ("wall time", f"{wall_s:.1f}s"),
    ):
        table.add_row(label, value)
    return table


def demo(
    bars: Annotated[int, typer.Option("--bars", min=1, help="Synthetic bars per symbol.")] = 400,
    symbol: Annotated[
        list[str] | None, typer.Option("--symbol", help="Symbols (repeatable).")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    config: ConfigOpt = None,
    keep: Annotated[
        Path | None, typer.Option("--keep", help="Keep the demo's store in this directory.")
    ] = None,
) -> None:
    """Start a fresh embedded NATS and the five workers, trade a synthetic market, summarise."""
    fleet_config = load_config_or_exit(config)
    store = keep or Path(tempfile.mkdtemp(prefix="keel-demo-"))
    started = time.monotonic()

    async def main() -> tuple[Tally, float]:
        server = EmbeddedServer(store).start()
        fleet = Fleet(server.url, store / "logs")
        try:
            bus = await Bus.connect(server.url, name="demo")
            try:
                with console.status("starting workers"):
                    await _start_consumers(fleet, bus, fleet_config, config)
                feed = fleet.start(
                    WorkerProcess(
                        "marketdata",
                        _market_args(
                            symbol,
                            seed,
                            ["--bars", str(bars)] + (["--config", str(config)] if config else []),
                        ),
                    )
                )
                n_symbols = len(symbol or fleet_config.market.symbols)
                await _follow_feed(bus, fleet, feed, bars * n_symbols)
                with console.status("draining the pipeline"):
                    if not await wait_drained(bus, consumer_names(fleet_config), timeout=120):
                        _raise_if_failed(fleet)
                        raise KeelError("pipeline did not drain within 120s")
                return await tally(bus), time.monotonic() - started
            finally:
                await bus.close()
        finally:
            fleet.stop()
            server.stop()

    try:
        result, wall = run(main())
    finally:
        if keep is None:
            shutil.rmtree(store, ignore_errors=True)
    console.print(summary_table(result, fleet_config.portfolio.initial_equity, wall))
    if keep is not None:
        console.print(f"store kept in {keep} (logs in {keep / 'logs'})")


async def _follow_feed(bus: Bus, fleet: Fleet, feed: WorkerProcess, total: int) -> None:
    with Progress(
        TextColumn("[bold]market data"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("bars", total=total)
        while feed.proc is not None and feed.proc.poll() is None:
            progress.update(task, completed=await count(bus, "MARKET", "md.bar.>"))
            _raise_if_failed(fleet)
            await asyncio.sleep(0.1)
        _raise_if_failed(fleet)


def up(
    config: ConfigOpt = None,
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Feed this bar file instead of the live synthetic market."),
    ] = None,
    symbol: Annotated[
        list[str] | None,
        typer.Option("--symbol", help="Synthetic symbols, or the --data file's symbol."),
    ] = None,
    pace_ms: Annotated[
        float, typer.Option("--pace-ms", min=0, help="Wait between time steps.")
    ] = 1000.0,
    interval: Annotated[str, typer.Option("--interval", help="Synthetic bar interval.")] = "1s",
    bars: Annotated[
        int,
        typer.Option(
            "--bars", min=1, help="Synthetic bars per symbol (86,400 = a day of 1s bars)."
        ),
    ] = 86_400,
    lockstep: Annotated[
        bool,
        typer.Option(
            "--lockstep", help="Feed each time step once the fleet caught up (replay-exact)."
        ),
    ] = False,
) -> None:
    """Run the fleet in the foreground until Ctrl-C: a live paper session."""
    fleet_config = load_config_or_exit(config)
    feed_args = ["--lockstep"] if lockstep else ["--pace-ms", str(pace_ms)]
    feed_args += ["--config", str(config)] if config else []
    if data is not None:
        feed_args += ["--file", str(data)]
    else:
        feed_args += ["--live", "--bars", str(bars), "--interval", interval]

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        with nats_url() as url:
            fleet = Fleet(url, Path(".keel") / "logs")
            bus = await Bus.connect(url, name="up")
            try:
                with console.status("starting workers"):
                    await _start_consumers(fleet, bus, fleet_config, config)
                fleet.start(WorkerProcess("marketdata", _market_args(symbol, None, feed_args)))
                console.print(f"fleet up on {redact_url(url)}; logs in .keel/logs; Ctrl-C to stop")
                console.print("watch it: keel tap 'exec.>'   keel tap 'sig.>'   keel streams")
                while not stop.is_set():
                    _raise_if_failed(fleet)
                    now = await tally(bus)
                    equity = f"{now.equity.equity:,.2f}" if now.equity else "-"
                    console.print(
                        f"bars {now.bars:,}  signals {now.signals:,}  orders {now.orders:,}  "
                        f"fills {now.fills:,}  rejections {now.rejections:,}  equity {equity}",
                        highlight=False,
                    )
                    try:
                        await asyncio.wait_for(stop.wait(), 5.0)
                    except TimeoutError:
                        continue
            finally:
                with console.status("stopping workers"):
                    fleet.stop()
                await bus.close()

    run(main())
