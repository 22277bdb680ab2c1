"""Commands over the log itself: ingest, streams, tap, kill and resume."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import msgspec
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from cli.console import console, fail, run, user_errors
from cli.tap import tap
from cli.timeparse import parse_time
from contracts.envelope import Envelope, content_id
from contracts.system_events import GovernanceAction, GovernanceCommand
from contracts.timestamps import iso_ns
from contracts.venue_events import KillSwitch
from eventstore.bus import Bus
from eventstore.log_reader import event_time_at
from eventstore.server import nats_url
from eventstore.streams import STREAMS
from services.marketdata.feed import publish_bars
from services.marketdata.sources import read_bars


def ingest(
    files: Annotated[
        list[Path], typer.Argument(help="Bar files: Binance kline CSV, OHLCV CSV, Parquet.")
    ],
    venue: Annotated[str, typer.Option("--venue", help="Venue name for the subjects.")] = "local",
    symbol: Annotated[
        str | None, typer.Option("--symbol", help="Symbol (default: the file name stem).")
    ] = None,
    interval: Annotated[
        str | None, typer.Option("--interval", help="Bar interval (default: inferred).")
    ] = None,
) -> None:
    """Store bar files in the MARKET stream; bars already stored are skipped."""
    with user_errors():
        loaded = [
            (f, read_bars(f, venue=venue, symbol=symbol or f.stem, interval=interval))
            for f in files
        ]

    async def main() -> None:
        table = Table(
            "file", "symbol", "interval", "bars", "stored", "already stored", "rows skipped"
        )
        with nats_url() as url:
            bus = await Bus.connect(url, name="ingest")
            try:
                with Progress(
                    TextColumn("[bold]{task.description}"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeRemainingColumn(),
                    console=console,
                    transient=True,
                ) as progress:
                    for path, bar_file in loaded:
                        task = progress.add_task(path.name, total=len(bar_file.bars))
                        result = await publish_bars(
                            bus, bar_file.bars, progress=lambda n, t=task: progress.advance(t, n)
                        )
                        table.add_row(
                            path.name,
                            symbol or path.stem,
                            bar_file.interval,
                            str(len(bar_file.bars)),
                            str(result.stored),
                            str(result.stale + result.duplicates),
                            str(len(bar_file.skipped)),
                        )
            finally:
                await bus.close()
        console.print(table)
        for path, bar_file in loaded:
            for reason in bar_file.skipped[:5]:
                console.print(f"[yellow]{path.name}: skipped {reason}[/]", highlight=False)

    run(main())


def streams() -> None:
    """What the log holds: messages, bytes and time span per stream."""

    async def main() -> None:
        table = Table("stream", "subjects", "messages", "bytes", "first", "last", "consumers")
        with nats_url() as url:
            bus = await Bus.connect(url, name="streams")
            try:
                for spec in STREAMS:
                    state = (await bus.js.stream_info(spec.name)).state
                    first = (
                        await _stored_time(bus, spec.name, state.first_seq)
                        if state.messages
                        else ""
                    )
                    last = (
                        await _stored_time(bus, spec.name, state.last_seq) if state.messages else ""
                    )
                    table.add_row(
                        spec.name,
                        " ".join(spec.subjects),
                        f"{state.messages:,}",
                        f"{state.bytes:,}",
                        first,
                        last,
                        str(state.consumer_count),
                    )
            finally:
                await bus.close()
        console.print(table)

    run(main())


async def _stored_time(bus: Bus, stream: str, seq: int) -> str:
    event_time = await event_time_at(bus, stream, seq)
    return "?" if event_time is None else iso_ns(event_time)


def tap_command(
    pattern: Annotated[
        str, typer.Argument(help="Subject pattern, e.g. 'exec.>' or 'md.bar.*.BTC-USDT.*'.")
    ],
    last: Annotated[
        int | None, typer.Option("--last", min=1, help="Show the last N stored first.")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="Show stored events since (ISO time or age like 15m)."),
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow/--no-follow", help="Keep printing new events.")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    trace: Annotated[
        str | None, typer.Option("--trace", help="Only one correlation (or trace) id.")
    ] = None,
) -> None:
    """Print decoded events from the log: history (--last/--since), then live."""
    try:
        since_at = parse_time(since) if since else None
    except ValueError as exc:
        raise fail(str(exc)) from None

    async def main() -> None:
        with nats_url(start_server=False) as url:
            bus = await Bus.connect(url, name="tap")
            try:
                await tap(
                    bus,
                    pattern,
                    last=last,
                    since=since_at,
                    follow=follow,
                    as_json=as_json,
                    trace=trace,
                )
            finally:
                await bus.close()

    run(main())


def _governance(action: GovernanceAction, reason: str, switch: KillSwitch | None = None) -> None:
    async def main() -> None:
        now = time.time_ns()
        command = GovernanceCommand(ts=now, action=action, reason=reason, issued_by="cli")
        with nats_url(start_server=False) as url:
            bus = await Bus.connect(url, name="governance-cli")
            try:
                await bus.publish(command, Envelope.root(content_id("gov", action, now), now))
                if switch is not None:
                    event = msgspec.structs.replace(switch, ts=now)
                    envelope = Envelope.root(content_id("kill", now, event.flatten), now)
                    await bus.publish(event, envelope)
            finally:
                await bus.close()
        done = action if switch is None else f"{action} and {_switch_text(switch)}"
        console.print(f"{done} published at {iso_ns(now)}" + (f": {reason}" if reason else ""))

    run(main())


def _switch_text(switch: KillSwitch) -> str:
    return "cancel of open entries" + (" and flattening" if switch.flatten else "")


def kill(
    reason: Annotated[str, typer.Option("--reason")] = "operator kill switch",
    cancel_open: Annotated[
        bool,
        typer.Option(
            "--cancel-open", help="Also cancel open entry orders on every venue (stops stay)."
        ),
    ] = False,
    flatten: Annotated[
        bool,
        typer.Option("--flatten", help="Also close every position (implies --cancel-open)."),
    ] = False,
) -> None:
    """Halt new orders: risk rejects every signal until resume. With --cancel-open the order
    manager cancels working entries; with --flatten it also closes every position."""
    switch = None
    if cancel_open or flatten:
        switch = KillSwitch(ts=0, reason=reason, flatten=flatten, issued_by="cli")
    _governance("kill", reason, switch)


def resume(reason: Annotated[str, typer.Option("--reason")] = "operator resume") -> None:
    """Lift the kill switch."""
    _governance("resume", reason)
