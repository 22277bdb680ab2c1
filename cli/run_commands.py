"""``keel run SERVICE``: one worker in the foreground, as the fleet and compose start it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import msgspec
import typer
from rich.markup import escape

from cli.console import console, fail, load_config_or_exit, run, user_errors
from cli.gateway_commands import serve_gateway
from contracts.intervals import interval_ns
from contracts.subjects import name_token
from eventstore.bus import Bus
from eventstore.server import nats_url
from services.config import KeelConfig, StrategyConfig
from services.execution.role import execution_role
from services.fleet import consumer_names, fleet_risk_role, instance_role
from services.governance.role import governance_role
from services.marketdata.feed import Feed, lockstep, pause
from services.marketdata.live.session import LiveSession
from services.marketdata.sources import read_bars
from services.marketdata.synthetic import SyntheticMarket
from services.notifier.worker import Notifier
from services.portfolio.role import portfolio_role
from services.runtime import clock as clock_module
from services.runtime.replay_worker import ReplayWorker
from services.runtime.role import Role
from services.runtime.worker import Worker, WorkerOptions
from services.strategy.calibration_worker import CalibrationWatch, serve_calibration
from services.venues.config import VenueConfig
from strategies.registry import parse_params

if TYPE_CHECKING:
    from services.marketdata.ib.session import IbSession

app = typer.Typer(
    help="Run one worker in the foreground until SIGTERM or Ctrl-C.", no_args_is_help=True
)

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="Fleet config (TOML).")]
MetricsOpt = Annotated[
    int, typer.Option("--metrics-port", help="Prometheus /metrics port (0 = pick a free one).")
]
MetricsAddrOpt = Annotated[
    str, typer.Option("--metrics-addr", help="Address the metrics endpoint binds.")
]


NamespaceOpt = Annotated[
    str,
    typer.Option(
        "--namespace", help="Run inside a bus replay's namespace (set by keel replay --bus)."
    ),
]
RebuildOpt = Annotated[
    bool,
    typer.Option(
        "--rebuild",
        help="Rebuild the worker's state from the log (what it acknowledged) instead of its "
        "snapshot, store it as the new snapshot, then go on live.",
    ),
]


def _options(metrics_port: int, metrics_addr: str, namespace: str, rebuild: bool) -> WorkerOptions:
    if namespace:
        name_token(namespace, "namespace")
        if rebuild:
            raise fail("--rebuild is for a live worker: a bus replay's worker keeps no state")
    return WorkerOptions(
        metrics_port=metrics_port, metrics_addr=metrics_addr, namespace=namespace, rebuild=rebuild
    )


def _serve(role: Role, options: WorkerOptions) -> None:
    """A live worker, or inside a bus replay's namespace the replay runtime of the same role."""
    worker = ReplayWorker(role, options.namespace) if options.namespace else Worker(role, options)
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s {worker.name} %(levelname)s %(message)s"
    )

    async def main() -> None:
        with nats_url() as url:
            bus = await Bus.connect(url, name=worker.name, namespace=options.namespace)
            try:
                await worker.run(bus)
            finally:
                await bus.close()

    run(main())


@app.command()
def risk(
    config: ConfigOpt = None,
    metrics_port: MetricsOpt = 0,
    metrics_addr: MetricsAddrOpt = "127.0.0.1",
    namespace: NamespaceOpt = "",
    rebuild: RebuildOpt = False,
) -> None:
    """Pre-trade rails, guards and sizing: signals in, orders or rejections out."""
    settings = load_config_or_exit(config)
    _serve(fleet_risk_role(settings), _options(metrics_port, metrics_addr, namespace, rebuild))


@app.command()
def governance(
    config: ConfigOpt = None,
    metrics_port: MetricsOpt = 0,
    metrics_addr: MetricsAddrOpt = "127.0.0.1",
    namespace: NamespaceOpt = "",
    rebuild: RebuildOpt = False,
) -> None:
    """Playbooks and promotions: equity, risk rejections, shadow steps and operator commands
    in; gov.playbook.*, gov.promotion.* and gov.model.* out."""
    settings = load_config_or_exit(config)
    if settings.governance is None:
        raise fail(escape("governance: the config has no [governance] section"))
    role = governance_role(settings.governance, settings.strategies)
    _serve(role, _options(metrics_port, metrics_addr, namespace, rebuild))


@app.command()
def execution(
    config: ConfigOpt = None,
    metrics_port: MetricsOpt = 0,
    metrics_addr: MetricsAddrOpt = "127.0.0.1",
    namespace: NamespaceOpt = "",
    rebuild: RebuildOpt = False,
) -> None:
    """The order manager and the paper venue: orders in, execution reports out."""
    settings = load_config_or_exit(config)
    role = execution_role(
        settings.execution, settings.orders, settings.gateways, settings.in_place_gateways
    )
    _serve(role, _options(metrics_port, metrics_addr, namespace, rebuild))


@app.command()
def portfolio(
    config: ConfigOpt = None,
    metrics_port: MetricsOpt = 0,
    metrics_addr: MetricsAddrOpt = "127.0.0.1",
    namespace: NamespaceOpt = "",
    rebuild: RebuildOpt = False,
) -> None:
    """Positions, cash, PnL and equity."""
    settings = load_config_or_exit(config)
    role = portfolio_role(settings.portfolio, settings.instruments)
    _serve(role, _options(metrics_port, metrics_addr, namespace, rebuild))


@app.command()
def strategy(
    name: Annotated[
        str | None, typer.Option("--name", help="Strategy name, e.g. ma_cross.")
    ] = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", help="key=value, repeatable.")
    ] = None,
    symbol: Annotated[
        list[str] | None, typer.Option("--symbol", help="Only these symbols (repeatable).")
    ] = None,
    instance: Annotated[
        str | None, typer.Option("--instance", help="Instance name (or one from --config).")
    ] = None,
    config: ConfigOpt = None,
    metrics_port: MetricsOpt = 0,
    metrics_addr: MetricsAddrOpt = "127.0.0.1",
    namespace: NamespaceOpt = "",
    rebuild: RebuildOpt = False,
) -> None:
    """A strategy from strategies/ by name, or an instance declared in --config."""
    loaded = load_config_or_exit(config)
    chosen = _strategy_config(loaded, name, param or [], symbol or [], instance)
    with user_errors():
        name_token(chosen.instance_name, "instance")
        role = instance_role(loaded, chosen)
    _serve(role, _options(metrics_port, metrics_addr, namespace, rebuild))


def _strategy_config(
    config: KeelConfig,
    name: str | None,
    params: list[str],
    symbols: list[str],
    instance: str | None,
) -> StrategyConfig:
    if name is None:
        declared = {s.instance_name: s for s in config.strategies}
        if instance not in declared:
            known = ", ".join(declared) or "none"
            raise fail(f"give --name, or an --instance declared in the config (declared: {known})")
        return declared[instance]
    try:
        parsed = parse_params(params)
    except ValueError as exc:
        raise fail(str(exc)) from None
    return StrategyConfig(
        name=name, instance=instance or name, symbols=tuple(symbols), params=parsed
    )


@app.command()
def marketdata(
    file: Annotated[
        Path | None,
        typer.Option("--file", help="Replay a bar file instead of the synthetic market."),
    ] = None,
    symbol: Annotated[
        list[str] | None, typer.Option("--symbol", help="Symbols (synthetic) or the file's symbol.")
    ] = None,
    venue: Annotated[str | None, typer.Option("--venue")] = None,
    interval: Annotated[str | None, typer.Option("--interval")] = None,
    bars: Annotated[int, typer.Option("--bars", min=1, help="Synthetic bars per symbol.")] = 500,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    pace_ms: Annotated[
        float,
        typer.Option("--pace-ms", min=0, help="Wait between time steps (0 = as fast as possible)."),
    ] = 0.0,
    live: Annotated[
        bool, typer.Option("--live", help="Stamp synthetic bars from the wall clock now on.")
    ] = False,
    lockstep_feed: Annotated[
        bool,
        typer.Option(
            "--lockstep", help="Send each time step only after the config's workers caught up."
        ),
    ] = False,
    backfill_bars: Annotated[
        int | None,
        typer.Option(
            "--backfill-bars",
            min=0,
            help="Live venue: on a first run, fetch this many closed bars per symbol by REST "
            "(default: [market] backfill_bars).",
        ),
    ] = None,
    shard: Annotated[
        int,
        typer.Option(
            "--shard", min=0, help="Live venue: which of [market] shards this process streams."
        ),
    ] = 0,
    config: ConfigOpt = None,
) -> None:
    """Publish bars: the seeded synthetic market (default), a file, or a live venue (when
    the venue names a [[venues]] entry of the config: docs/venues.md)."""
    fleet_config = load_config_or_exit(config)
    market = fleet_config.market
    symbols = tuple(symbol or ()) or market.symbols
    the_venue = venue or market.venue
    live_venue = fleet_config.venue(the_venue) if file is None else None
    if live_venue is not None:
        _serve_live(
            fleet_config,
            live_venue,
            tuple(symbol or ()),
            interval,
            backfill_bars,
            lockstep_feed,
            shard,
        )
        return
    if file is not None:
        with user_errors():
            bar_source = read_bars(
                file, venue=the_venue, symbol=symbols[0] if symbol else file.stem, interval=interval
            ).bars
    else:
        with user_errors():
            step = interval_ns(interval or market.interval)
        start = (time.time_ns() // step) * step if live else None
        params = {"start_ns": start} if start is not None else {}
        try:
            synthetic = SyntheticMarket(
                symbols=symbols,
                venue=the_venue,
                interval=interval or market.interval,
                bars=bars,
                seed=market.seed if seed is None else seed,
                **params,
            )
        except ValueError as exc:
            raise fail(f"synthetic market: {exc}") from None
        bar_source = synthetic.generate()

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s marketdata %(levelname)s %(message)s"
    )

    async def main() -> None:
        feed = Feed("marketdata")
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, feed.stop)
        with nats_url() as url:
            bus = await Bus.connect(url, name="marketdata")
            try:
                step = (
                    lockstep(bus, consumer_names(fleet_config))
                    if lockstep_feed
                    else pause(pace_ms / 1000, feed.stopping)
                    if pace_ms
                    else None
                )
                result = await feed.run(bus, bar_source, between_steps=step)
            finally:
                if feed.stopping.is_set():
                    # The server may be down: closing must not outlast the stop.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.3):
                            await bus.close()
                else:
                    await bus.close()
        stopped = " (stopped by a signal)" if feed.stopping.is_set() else ""
        console.print(
            f"marketdata: stored {result.stored}, already present "
            f"{result.stale + result.duplicates}{stopped}"
        )

    run(main())


def _serve_live(
    config: KeelConfig,
    venue: VenueConfig,
    symbols: tuple[str, ...],
    interval: str | None,
    backfill_bars: int | None,
    lockstep: bool,
    shard: int,
) -> None:
    """Stream ``venue`` until SIGTERM or Ctrl-C; with ``lockstep`` (``keel up``, and
    ``[market].lockstep`` on) a backfill waits for the config's workers between steps."""
    market = msgspec.structs.replace(
        config.market,
        venue=venue.name,
        symbols=symbols or config.market.symbols,
        interval=interval or config.market.interval,
    )
    if market.universe and symbols:
        raise fail("--symbol and [market].universe both choose the symbols: give one")
    if shard >= market.shards:
        raise fail(f"--shard {shard}: [market] shards = {market.shards} (0 to {market.shards - 1})")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s marketdata %(levelname)s %(message)s"
    )

    async def main() -> None:
        with nats_url() as url:
            bus = await Bus.connect(url, name="marketdata")
            make: type[LiveSession] | type[IbSession] = LiveSession
            if venue.kind == "ib":
                make = _ib_session()
            session = make(
                bus,
                venue,
                market,
                clock_module.system_clock(),
                consumers=consumer_names(config) if lockstep and market.lockstep else None,
                backfill_bars=market.backfill_bars if backfill_bars is None else backfill_bars,
                shard=shard,
            )
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError):
                    loop.add_signal_handler(sig, session.stop)
            try:
                result = await session.run()
            finally:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(2.0):
                        await bus.close()
        stopped = " (stopped by a signal)" if session.stopping.is_set() else ""
        console.print(
            f"marketdata: {venue.name} ({venue.exchange}): stored {result.bars} bars, "
            f"{result.instruments} instrument changes, {result.dead_letters} dead letters, "
            f"{result.reconnects} reconnects{stopped}"
        )

    run(main())


def _ib_session() -> type[IbSession]:
    """Imported only for an ib venue: ib_async stays out of every other command's start."""
    from services.marketdata.ib.session import IbSession

    return IbSession


@app.command()
def gateway(
    venue: Annotated[
        str, typer.Option("--venue", help=r"The venue's name (its \[\[venues]] entry).")
    ],
    live: Annotated[
        bool, typer.Option("--live", help="Allow a venue in mode live (real money).")
    ] = False,
    config: ConfigOpt = None,
    metrics_port: MetricsOpt = 0,
    metrics_addr: MetricsAddrOpt = "127.0.0.1",
) -> None:
    """A venue's gateway: the one process that sends its orders to the exchange and stores
    every answer (docs/venues.md)."""
    serve_gateway(config, venue, live, metrics_port, metrics_addr)


@app.command()
def calibration(
    strategy: Annotated[
        str, typer.Option("--strategy", help="The strategy instance the file calibrates.")
    ],
    file: Annotated[Path, typer.Option("--file", help="Calibration file (TOML or JSON).")],
    every_s: Annotated[
        float, typer.Option("--every-s", min=0.05, help="How often the file is checked.")
    ] = 5.0,
) -> None:
    """Publish a calibration file's changes as ParamsTuned events (docs/strategies/ma_hmm.md)."""
    with user_errors():
        name_token(strategy, "strategy")
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s calibration-{strategy} %(levelname)s %(message)s"
    )

    async def main() -> None:
        with nats_url() as url:
            await serve_calibration(url, CalibrationWatch(strategy, file), every_s)

    run(main())


@app.command()
def notifier(
    config: ConfigOpt = None,
    metrics_port: MetricsOpt = 0,
    metrics_addr: MetricsAddrOpt = "127.0.0.1",
) -> None:
    """Alerts to people: statuses, risk alerts, stale feeds, reconciliation, dead letters,
    governance decisions and silent workers in; Apprise destinations out, every outcome on
    sys.notify.* (docs/alerts.md). Off unless the config configures the notifier."""
    settings = load_config_or_exit(config)
    if settings.notifier is None:
        raise fail(escape("notifier: the config has no [notifier] section (the notifier is off)"))
    with user_errors():
        service = Notifier(settings.notifier, metrics_port=metrics_port, metrics_addr=metrics_addr)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s notifier %(levelname)s %(message)s")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, service.stop)
        with nats_url() as url:
            bus = await Bus.connect(url, name="notifier")
            try:
                await service.run(bus)
            finally:
                await bus.close()

    run(main())
