"""``keel demo`` and ``keel up``: the whole fleet, each worker its own process.

``keel up`` supervises what it started: a crashed worker, feed or embedded nats-server is
restarted after a backoff (``services/supervision.py`` decides when, and when to give up),
and one fleet runs per directory (``services.fleet.fleet_lock``)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from cli.console import console, errors, fail, load_config_or_exit, run
from eventstore.bus import Bus
from eventstore.credentials import redact_url
from eventstore.errors import KeelError
from eventstore.lag import wait_drained
from eventstore.server import EmbeddedServer, ServerHandle, serve_or_attach
from eventstore.tally import Tally, count, tally
from services.config import KeelConfig
from services.fleet import (
    Fleet,
    WorkerProcess,
    consumer_names,
    fleet_lock,
    fleet_plan,
    live_workers,
    log_tail,
)
from services.supervision import (
    Finished,
    GiveUp,
    Restart,
    RestartPolicy,
    Supervision,
    describe_exit,
)

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="Fleet config (TOML).")]


def _market_args(symbols: list[str] | None, seed: int | None, extra: list[str]) -> list[str]:
    args = ["run", "marketdata", *extra]
    for s in symbols or []:
        args += ["--symbol", s]
    return args + (["--seed", str(seed)] if seed is not None else [])


def _feeds(
    config: KeelConfig, symbols: list[str] | None, args: list[str], live: bool
) -> list[WorkerProcess]:
    """The feed process, or one per shard of a live venue's symbols ([market] shards)."""
    shards = config.market.shards if live else 1
    if shards == 1:
        return [WorkerProcess("marketdata", _market_args(symbols, None, args))]
    return [
        WorkerProcess(f"marketdata-{i}", _market_args(symbols, None, [*args, "--shard", str(i)]))
        for i in range(shards)
    ]


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
        code = worker.proc.returncode if worker.proc else 1
        raise KeelError(
            f"worker {worker.name} exited ({describe_exit(code)}): {fleet.log_tail(worker)}"
        )


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
                            # each time step once the fleet caught up: replay-exact, and no
                            # signal reaches risk after a newer bar (the stale-signal rail)
                            ["--bars", str(bars), "--lockstep"]
                            + (["--config", str(config)] if config else []),
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


SERVER = "nats-server"
TICK_S = 0.1
STATUS_EVERY_S = 5.0
LIVE_WITHIN_S = 6.0
"""A fleet is live when one of its workers beat "running" this recently (3 heartbeats)."""
FINISH_S = 10.0
"""At a stop, how long the fleet may take to finish what the feed stored before it stopped:
then the log holds every bar's consequences and a replay of it gives the same outputs."""


class Supervisor:
    """``keel up``'s loop over what it started: each exit is put to the policy, a crash is
    restarted when its backoff is over, a give-up ends the loop with its one line."""

    def __init__(self, fleet: Fleet, server: ServerHandle, supervision: Supervision) -> None:
        self.fleet = fleet
        self.server = server
        self.supervision = supervision
        self.due: dict[str, float] = {}

    def start(self, worker: WorkerProcess) -> WorkerProcess:
        self.supervision.started(worker.name, time.monotonic())
        return self.fleet.start(worker)

    async def run(self, stop: asyncio.Event) -> str | None:
        """Until ``stop``; returns the give-up line, if it came to that."""
        if self.server.embedded is not None:
            self.supervision.started(SERVER, time.monotonic())
        while not stop.is_set():
            gave_up = self._check_server() or self._check_workers() or await self._restart_due()
            if gave_up:
                return gave_up
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TICK_S):
                    await stop.wait()
        return None

    def _check_server(self) -> str | None:
        embedded = self.server.embedded
        if embedded is None or SERVER in self.due or embedded.returncode is None:
            return None
        return self._exited(SERVER, embedded.returncode)

    def _check_workers(self) -> str | None:
        for worker, code in self.fleet.reap():
            gave_up = self._exited(worker.name, code)
            if gave_up:
                return gave_up
        return None

    def _exited(self, name: str, code: int) -> str | None:
        decision = self.supervision.exited(name, code, time.monotonic())
        what = SERVER if name == SERVER else f"worker {name}"
        if isinstance(decision, Finished) and name == SERVER:
            return f"{SERVER} stopped ({describe_exit(code)}) under the fleet: stopping the fleet"
        if isinstance(decision, Finished):
            _say(f"{what} finished ({describe_exit(code)}): not restarted")
        elif isinstance(decision, Restart):
            policy = self.supervision.policy
            _say(
                f"{what} crashed ({describe_exit(code)}): restarting in {decision.delay_s:.1f}s "
                f"(crash {decision.crashes} of {policy.max_crashes} within {policy.window_s:g}s)"
            )
            self.due[name] = time.monotonic() + decision.delay_s
        elif isinstance(decision, GiveUp):
            return self._give_up_line(name, code, decision)
        return None

    def _give_up_line(self, name: str, code: int, decision: GiveUp) -> str:
        if name == SERVER:
            log = self.server.data_dir / "nats-server.log"
            what = f"{SERVER} (embedded, port {self.server.url.rsplit(':', 1)[-1]})"
        else:
            log = self.fleet.log_path(name)
            what = f"worker {name}"
        tail = log_tail(log) or "(empty)"
        return (
            f"{what} gave up after {decision.crashes} crashes within {decision.window_s:g}s, "
            f"last {describe_exit(code)}; last lines of {_shown(log)}: {tail}"
        )

    async def _restart_due(self) -> str | None:
        """Start what is due; a server that does not come back is one more crash of it."""
        now = time.monotonic()
        for name in [n for n, at in self.due.items() if at <= now]:
            del self.due[name]
            self.supervision.started(name, time.monotonic())
            if name != SERVER:
                self.fleet.restart(next(w for w in self.fleet.workers if w.name == name))
                continue
            try:
                await asyncio.to_thread(self.server.restart)
            except KeelError as exc:
                _say(f"{SERVER} did not come back: {exc}")
                embedded = self.server.embedded
                gave_up = self._exited(SERVER, (embedded and embedded.returncode) or 1)
                if gave_up:
                    return gave_up
            else:
                _say(f"{SERVER} restarted on {redact_url(self.server.url)} (same store)")
        return None


def _shown(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(Path.cwd()))
    return str(path)


def _say(line: str) -> None:
    console.print(escape(line), highlight=False, soft_wrap=True)


async def report_status(bus: Bus, stop: asyncio.Event) -> None:
    """The status line every few seconds; a log that cannot be read (the server down or
    restarting) is one line, and supervision carries on."""
    while not stop.is_set():
        try:
            async with asyncio.timeout(STATUS_EVERY_S * 2):
                now = await tally(bus)
        except Exception as exc:  # any failure to read is reported, never a traceback
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            _say(f"log unreadable ({reason[:120]}): server down or restarting; still supervising")
        else:
            equity = f"{now.equity.equity:,.2f}" if now.equity else "-"
            _say(
                f"bars {now.bars:,}  signals {now.signals:,}  orders {now.orders:,}  "
                f"fills {now.fills:,}  rejections {now.rejections:,}  equity {equity}"
            )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STATUS_EVERY_S):
                await stop.wait()


async def refuse_if_live(bus: Bus, names: set[str], url: str) -> None:
    """A server this command did not start may already carry a fleet with these workers:
    a second one on the same durable consumers would split their messages (defect 7)."""
    try:
        live = await live_workers(bus, names, time.time_ns(), LIVE_WITHIN_S)
    except Exception as exc:  # unread heartbeats are no proof that none beat: refuse
        raise KeelError(
            f"cannot tell whether a fleet already consumes on {redact_url(url)}: "
            f"{str(exc).strip() or type(exc).__name__}"
        ) from None
    if live:
        beat, age = min(live, key=lambda pair: pair[1])
        raise KeelError(
            f"a fleet already consumes on {redact_url(url)}: worker {beat.worker} "
            f"(instance {beat.instance}) beat {age:.1f}s ago; stop it first, or use another server"
        )


async def fleet_ready(bus: Bus, names: set[str], timeout: float) -> bool:
    """Whether the workers' consumers exist and caught up within ``timeout``; a server
    restarting under the start is asked again, not a traceback."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return await wait_drained(bus, names, timeout=max(0.1, deadline - time.monotonic()))
        except Exception:  # the server went away under the start: the supervisor brings it back
            await asyncio.sleep(0.5)
    return False


async def _first(*aws: asyncio.Task[object]) -> None:
    await asyncio.wait(aws, return_when=asyncio.FIRST_COMPLETED)


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
    max_crashes: Annotated[
        int,
        typer.Option(
            "--max-crashes", min=1, help="Give up after this many crashes of one process..."
        ),
    ] = 5,
    crash_window: Annotated[
        float, typer.Option("--crash-window", min=0.1, help="...within this many seconds.")
    ] = 300.0,
    backoff: Annotated[
        float,
        typer.Option("--backoff", min=0, help="First restart delay in seconds (then doubling)."),
    ] = 0.5,
    backoff_max: Annotated[
        float, typer.Option("--backoff-max", min=0, help="Longest restart delay in seconds.")
    ] = 30.0,
    live: Annotated[
        bool,
        typer.Option(
            "--live", help='Allow real-money trading on venues with mode = "live" (both needed).'
        ),
    ] = False,
) -> None:
    """Run the fleet in the foreground until Ctrl-C: a live paper session, supervised."""
    fleet_config = load_config_or_exit(config)
    real_money = sorted(v.name for v in fleet_config.venues if v.mode == "live")
    if real_money and not live:
        raise fail(
            f'{", ".join(real_money)}: mode = "live" trades real money; '
            "start with keel up --live to allow it"
        )
    if live and not real_money:
        raise fail('--live: no [[venues]] entry has mode = "live"')
    try:
        policy = RestartPolicy(
            max_crashes=max_crashes,
            window_s=crash_window,
            backoff_s=backoff,
            backoff_max_s=max(backoff, backoff_max),
        )
    except ValueError as exc:
        raise fail(str(exc)) from None
    live_venue = fleet_config.venue(fleet_config.market.venue)
    if live_venue is not None:
        if data is not None:
            raise fail(
                f"--data feeds a file, but [market].venue = {live_venue.name!r} is a live venue "
                "([[venues]]): drop one"
            )
        # The live feed: everything comes from the config; a backfill waits for the fleet.
        feed_args = ["--config", str(config), "--lockstep"]
    else:
        feed_args = ["--lockstep"] if lockstep else ["--pace-ms", str(pace_ms)]
        feed_args += ["--config", str(config)] if config else []
        if data is not None:
            feed_args += ["--file", str(data)]
        else:
            feed_args += ["--live", "--bars", str(bars), "--interval", interval]
    plan = fleet_plan(fleet_config, config, live)
    names = {w.name for w in plan} | {"marketdata"}

    async def main() -> str | None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, stop.set)
        data_dir = Path(".keel")
        with fleet_lock(data_dir), serve_or_attach(data_dir) as server:
            bus = await Bus.connect(server.url, name="up")
            fleet = Fleet(server.url, data_dir / "logs")
            supervisor = Supervisor(fleet, server, Supervision(policy, random.Random()))
            tasks: list[asyncio.Task[object]] = []
            try:
                if server.embedded is None:
                    await refuse_if_live(bus, names, server.url)
                for worker in plan:
                    supervisor.start(worker)
                supervising = asyncio.create_task(supervisor.run(stop))
                stopping = asyncio.create_task(stop.wait())
                ready = asyncio.create_task(
                    fleet_ready(bus, consumer_names(fleet_config), timeout=60)
                )
                tasks += [supervising, stopping, ready]
                with console.status("starting workers"):
                    await _first(supervising, stopping, ready)
                if ready.done() and not ready.result():
                    raise KeelError("workers did not come up within 60s (see .keel/logs)")
                if ready.done():
                    for feed in _feeds(fleet_config, symbol, feed_args, live_venue is not None):
                        supervisor.start(feed)
                    console.print(
                        f"fleet up on {redact_url(server.url)}; logs in .keel/logs; Ctrl-C to stop"
                    )
                    console.print("watch it: keel tap 'exec.>'   keel tap 'sig.>'   keel streams")
                    tasks.append(asyncio.create_task(report_status(bus, stop)))
                    await _first(supervising, stopping)
                gave_up = await supervising if supervising.done() else None
                if gave_up:
                    errors.print(
                        f"[bold red]error:[/] {escape(gave_up)}", highlight=False, soft_wrap=True
                    )
                return gave_up
            finally:
                stop.set()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                feeds = {w.name for w in fleet.workers if w.name.startswith("marketdata")}
                if feeds:
                    with console.status("stopping the feed; the fleet finishes what is stored"):
                        fleet.stop(names=feeds)
                        with contextlib.suppress(Exception):  # the server may be gone
                            await wait_drained(bus, consumer_names(fleet_config), FINISH_S)
                with console.status("stopping workers"):
                    fleet.stop()
                with contextlib.suppress(Exception):  # the server may be gone by now
                    async with asyncio.timeout(2.0):
                        await bus.close()

    if run(main()):
        raise typer.Exit(1)
