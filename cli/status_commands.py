"""``keel status``: one screen of the fleet's health, read from the log (services/fleet_status.py)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from typing import Annotated

import msgspec
import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from cli.console import SERVER_ERRORS, console, run
from cli.console import errors as error_console
from eventstore.bus import Bus
from eventstore.errors import KeelError
from eventstore.retry import describe
from eventstore.server import nats_url
from services.fleet_status import LagRow, StatusReport, SystemSection, VenueFeed, collect
from services.runtime.worker import WorkerOptions

STATE_STYLE = {
    "UNKNOWN": "dim",
    "RUNNING": "bold green",
    "DEGRADED": "bold yellow",
    "SAFE_MODE": "bold dark_orange",
    "HALTED": "bold red",
}
FEED_STYLE = {
    "streaming": "green",
    "polling": "yellow",
    "backfilling": "cyan",
    "stale": "bold red",
    "closed": "blue",
    "delisted": "dim",
}


# --- the screen ----------------------------------------------------------------------------


def _age(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _nothing(text: str) -> Text:
    return Text(text, style="dim italic")


def _state(status: str) -> Text:
    return Text(status, style=STATE_STYLE.get(status, "bold"))


def _system_panel(system: SystemSection) -> Panel:
    head = Text.assemble("system ", _state(system.status))
    if system.source:
        head.append(f"  {system.reason}", style="bold")
        head.append(f"  (source {system.source}" + (f", rule {system.rule}" if system.rule else ""))
        head.append(f", since {system.since})")
    else:
        head.append(f"  {system.reason}", style="dim")
    switch = system.kill_switch
    kill = Text("kill switch ")
    if switch.active:
        kill.append("ON", style="bold red")
        kill.append(f"  since {switch.ts}: {switch.reason} (by {switch.issued_by or '?'})")
    elif switch.ts:
        kill.append("off", style="green")
        kill.append(f"  resumed {switch.ts}: {switch.reason}", style="dim")
    else:
        kill.append("off", style="green")
        kill.append("  (never used)", style="dim")
    parts: list[RenderableType] = [head, kill]
    if system.sources:
        table = Table("source", "status", "rule", "reason", "since", box=None, pad_edge=False)
        for row in system.sources:
            table.add_row(row.source, _state(row.status), row.rule, row.reason, row.ts)
        parts.append(table)
    return Panel(Group(*parts), title="System status", title_align="left")


def _workers_panel(report: StatusReport) -> Panel:
    rows = report.workers
    if not rows:
        body: RenderableType = _nothing("no heartbeats yet: no worker has run against this log")
        title = "Workers"
    else:
        alive = sum(r.alive for r in rows)
        title = f"Workers: {alive} alive of {len(rows)}"
        body = Table("worker", "instance", "state", "age", "processed", "metrics", "last seen")
        for r in rows:
            style = "green" if r.alive else ("red" if r.state == "down" else "dim")
            body.add_row(
                r.worker,
                r.instance,
                Text(r.state, style=style),
                _age(r.age_s),
                f"{r.processed:,}",
                str(r.metrics_port) if r.metrics_port else "-",
                r.last_seen,
            )
    subtitle = f"down = no heartbeat for {report.stale_after_s:g}s"
    return Panel(body, title=title, title_align="left", subtitle=subtitle, subtitle_align="right")


def _lag_panel(rows: list[LagRow]) -> Panel:
    if not rows:
        body: RenderableType = _nothing("no durable consumers yet")
    else:
        body = Table("worker", "stream", "consumer", "pending", "ack pending", "redelivered")
        for r in rows:
            busy = "yellow" if r.pending or r.ack_pending else ""
            body.add_row(
                r.worker,
                r.stream,
                r.consumer,
                Text(f"{r.pending:,}", style=busy),
                Text(f"{r.ack_pending:,}", style=busy),
                f"{r.redelivered:,}",
            )
    return Panel(body, title="Consumer lag", title_align="left")


def _lag_text(lag_s: float | None) -> str:
    return "-" if lag_s is None else _age(lag_s)


MODE_STYLE = {"live": "bold white on red", "sandbox": "bold yellow", "demo": "bold yellow"}
"""Real money must stand out on the screen; a testnet must not pass for paper."""
GATEWAY_STYLE = {"running": "bold green", "degraded": "bold yellow", "halted": "bold red"}


def _venue_panel(feed: VenueFeed) -> Panel:
    states = Text()
    for i, (state, n) in enumerate(feed.states.items()):
        states.append(", " if i else "")
        states.append(f"{n} {state}", style=FEED_STYLE.get(state, "bold"))
    head = Text.assemble(
        ("mode ", ""),
        (feed.mode.upper(), MODE_STYLE.get(feed.mode, "bold")),
        f"  {_count(feed.symbols, 'symbol')}: ",
        states,
    )
    if feed.gateway:
        head.append("  gateway ")
        head.append(feed.gateway, style=GATEWAY_STYLE.get(feed.gateway, "bold"))
        if feed.gateway_reason:
            head.append(f" ({feed.gateway_reason})")  # the gateway's words: never markup
    last = Text("last bar ")
    if feed.last_close is None:
        last.append("none yet", style="dim")
    else:
        last.append(f"{feed.last_close} (lag {_lag_text(feed.lag_s)})")
        if feed.oldest_close and feed.oldest_close != feed.last_close:
            last.append(f"  oldest {feed.oldest_close}", style="dim")
    table = Table("symbol", "state", "last bar", "lag", "reason", box=None, pad_edge=False)
    for row in feed.worst:
        table.add_row(
            row.symbol,
            Text(row.state, style=FEED_STYLE.get(row.state, "bold")),
            row.last_close or "-",
            _lag_text(row.lag_s),
            Text(row.reason),  # the venue's words: never markup
        )
    shown = len(feed.worst)
    subtitle = f"worst {shown} of {feed.symbols}" if shown < feed.symbols else None
    return Panel(
        Group(head, last, table),
        title=f"Venue {feed.venue}",
        title_align="left",
        subtitle=subtitle,
        subtitle_align="right",
    )


def _portfolio_panel(report: StatusReport) -> Panel:
    parts: list[RenderableType] = []
    eq = report.equity
    if eq is None:
        parts.append(_nothing("no equity snapshot yet"))
    else:
        grid = Table.grid(padding=(0, 2))
        grid.add_row(
            Text.assemble("equity ", (f"{eq.equity:,.2f}", "bold")),
            f"cash {eq.cash:,.2f}",
            f"realized {eq.realized_pnl:+,.2f}",
            f"unrealized {eq.unrealized_pnl:+,.2f}",
            f"fees {eq.fees:,.2f}",
            f"gross exposure {eq.gross_exposure:,.2f}",
            Text(f"at {eq.ts}", style="dim"),
        )
        parts.append(grid)
    if report.positions:
        table = Table("venue", "symbol", "qty", "avg price", "realized", "strategy", "since")
        for p in report.positions:
            table.add_row(
                p.venue,
                p.symbol,
                f"{p.qty:g}",
                f"{p.avg_price:,.6g}",
                f"{p.realized_pnl:+,.2f}",
                p.strategy,
                p.ts,
            )
        parts.append(table)
    else:
        parts.append(_nothing("no open positions"))
    title = f"Portfolio: {_count(len(report.positions), 'open position')}"
    return Panel(Group(*parts), title=title, title_align="left")


def _errors_panel(report: StatusReport) -> Panel:
    rows: list[tuple[str, Text, str, str, str]] = []
    for d in report.dead_letters:
        rows.append((d.ts, Text("dead letter", style="red"), d.worker, d.subject, d.reason))
    for r in report.rejections:
        detail = f"{r.rule}: {r.reason}" if r.rule else r.reason
        rows.append((r.ts, Text("rejected", style="yellow"), r.strategy, r.symbol, detail))
    rows.sort(key=lambda row: row[0], reverse=True)
    title = (
        f"Latest errors: {_count(len(report.dead_letters), 'dead letter')}, "
        f"{_count(len(report.rejections), 'risk rejection')}"
    )
    if not rows:
        body: RenderableType = _nothing("no dead letters or risk rejections")
    else:
        body = Table("time", "kind", "worker / strategy", "subject / symbol", "reason")
        for row in rows:
            body.add_row(*row)
    return Panel(body, title=title, title_align="left")


def render(report: StatusReport) -> RenderableType:
    header = Text.assemble(("Keel status", "bold"), f"  {report.at}")
    parts: list[RenderableType] = [header]
    if report.empty:
        parts.append(
            Text(
                "nothing yet: the log holds no heartbeats, consumers, statuses, positions or "
                "errors (start the fleet with `keel up`, or try `keel demo`)",
                style="yellow",
            )
        )
    parts += [
        _system_panel(report.system),
        _workers_panel(report),
        *(_venue_panel(feed) for feed in report.venues),
        _lag_panel(report.lag),
        _portfolio_panel(report),
        _errors_panel(report),
    ]
    return Group(*parts)


# --- the command ---------------------------------------------------------------------------


def _print_json(report: StatusReport) -> None:
    sys.stdout.write(msgspec.json.encode(report).decode() + "\n")
    sys.stdout.flush()


def status(
    watch: Annotated[
        float | None,
        typer.Option("--watch", min=0.1, help="Refresh every SECONDS until Ctrl-C."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object on the last line (a line per refresh).")
    ] = False,
    errors: Annotated[
        int, typer.Option("--errors", min=1, help="Dead letters and risk rejections shown.")
    ] = 10,
    heartbeat_interval: Annotated[
        float,
        typer.Option(
            "--heartbeat-interval",
            min=0.1,
            help="The workers' heartbeat interval; down after 3 missed.",
        ),
    ] = WorkerOptions().heartbeat_s,
) -> None:
    """One screen: workers alive, live venues' data, consumer lag, system status, equity and
    positions, errors."""

    async def main() -> None:
        with nats_url(start_server="store") as url:
            bus = await Bus.connect(url, name="status")
            try:
                report = await collect(bus, heartbeat_s=heartbeat_interval, errors=errors)
                if watch is None:
                    if as_json:
                        _print_json(report)
                    else:
                        console.print(render(report))
                    return
                await _watch(bus, report, watch, as_json, heartbeat_interval, errors)
            finally:
                await bus.close()

    run(main())


async def _watch(
    bus: Bus, report: StatusReport, every: float, as_json: bool, heartbeat_s: float, errors: int
) -> None:
    """Refresh until Ctrl-C, which ends the command normally (exit 0). A refresh the server
    cannot answer (down or restarting) keeps the last screen and says so in one line, once
    per outage."""
    stop = asyncio.Event()
    with contextlib.suppress(NotImplementedError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)

    async def pause() -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(every):
                await stop.wait()
        return not stop.is_set()

    unreadable = False

    async def fresh() -> StatusReport | None:
        nonlocal unreadable
        try:
            current = await collect(bus, heartbeat_s=heartbeat_s, errors=errors)
        except (KeelError, *SERVER_ERRORS) as exc:
            if not unreadable:
                reason = describe(exc) if not isinstance(exc, KeelError) else str(exc)
                error_console.print(
                    f"log unreadable ({reason}): server down or restarting; retrying",
                    highlight=False,
                    soft_wrap=True,
                )
            unreadable = True
            return None
        unreadable = False
        return current

    if as_json or not console.is_terminal:
        # JSON, or a pipe: every refresh in turn (a live display needs a terminal).
        def show(current: StatusReport) -> None:
            if as_json:
                _print_json(current)
            else:
                console.print(render(current))

        show(report)
        while await pause():
            current = await fresh()
            if current is not None:
                show(current)
        return
    with Live(render(report), console=console, auto_refresh=False) as live:
        while await pause():
            current = await fresh()
            if current is not None:
                live.update(render(current), refresh=True)
