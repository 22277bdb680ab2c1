"""``keel status``: one screen of the fleet's health, read from the log.

Every figure comes from the log itself, read efficiently: heartbeats (the last one per worker
subject plus every instance heard in the last minute), the latest ``SystemStatus`` per source
and the kill switch, the durable consumers' lag, the latest equity snapshot and positions
(the last message per subject), and the last dead letters and risk rejections (the tail of
their subjects, found without reading their history).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from datetime import UTC, datetime
from typing import Annotated

import msgspec
import typer
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from rich.console import Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from cli.console import console, run
from cli.timeparse import iso_ns
from contracts.events import (
    DeadLetter,
    EquitySnapshot,
    GovernanceCommand,
    Heartbeat,
    PositionChanged,
    RiskDecision,
    SystemStatus,
)
from eventstore.bus import Bus, Stored, read_message
from eventstore.lag import consumer_lags
from eventstore.server import nats_url
from services.runtime.worker import WorkerOptions

STALE_BEATS = 3
"""A worker is down when its last heartbeat is older than this many heartbeat intervals."""
RECENT_MIN_S = 60.0
"""Instances heard within max(this, 10 stale periods) are listed, beside each worker's last."""
READ_TIMEOUT_S = 10.0
PROBE_EXPIRY_S = 2.0
SEVERITY = {"UNKNOWN": -1, "RUNNING": 0, "DEGRADED": 1, "SAFE_MODE": 2, "HALTED": 3}
STATE_STYLE = {
    "UNKNOWN": "dim",
    "RUNNING": "bold green",
    "DEGRADED": "bold yellow",
    "SAFE_MODE": "bold dark_orange",
    "HALTED": "bold red",
}
KILL_SOURCE = "kill-switch"


# --- the report (also the --json shape) ----------------------------------------------------


class SourceStatus(msgspec.Struct, frozen=True):
    source: str
    status: str
    reason: str
    rule: str
    ts: str


class KillSwitch(msgspec.Struct, frozen=True):
    active: bool
    reason: str = ""
    issued_by: str = ""
    ts: str | None = None


class SystemSection(msgspec.Struct, frozen=True):
    status: str
    reason: str
    source: str
    rule: str
    since: str | None
    kill_switch: KillSwitch
    sources: list[SourceStatus]


class WorkerRow(msgspec.Struct, frozen=True):
    worker: str
    instance: str
    state: str
    alive: bool
    status: str
    age_s: float
    seq: int
    processed: int
    metrics_port: int
    last_seen: str


class LagRow(msgspec.Struct, frozen=True):
    worker: str
    stream: str
    consumer: str
    pending: int
    ack_pending: int
    redelivered: int


class EquityRow(msgspec.Struct, frozen=True):
    ts: str
    cash: float
    equity: float
    realized_pnl: float
    unrealized_pnl: float
    fees: float
    gross_exposure: float


class PositionRow(msgspec.Struct, frozen=True):
    venue: str
    symbol: str
    qty: float
    avg_price: float
    realized_pnl: float
    strategy: str
    ts: str


class DeadLetterRow(msgspec.Struct, frozen=True):
    ts: str
    worker: str
    subject: str
    reason: str
    stream: str
    stream_seq: int


class RejectionRow(msgspec.Struct, frozen=True):
    ts: str
    strategy: str
    venue: str
    symbol: str
    rule: str
    reason: str
    client_order_id: str


class StatusReport(msgspec.Struct, frozen=True):
    at: str
    empty: bool
    stale_after_s: float
    system: SystemSection
    workers: list[WorkerRow]
    lag: list[LagRow]
    equity: EquityRow | None
    positions: list[PositionRow]
    dead_letters: list[DeadLetterRow]
    rejections: list[RejectionRow]


# --- reading the log ----------------------------------------------------------------------


async def _read(
    bus: Bus, stream: str, filter_subject: str, policy: DeliverPolicy, **options: object
) -> list[Stored]:
    """What an ordered consumer delivers until it has caught up with the stream (a message
    with nothing pending after it). The consumer's info tells an empty result apart without
    waiting on a timeout. Ordered consumers are unnamed creates, which the read-only users of
    ``nats.conf`` may make; they vanish when unsubscribed."""
    inbox: asyncio.Queue[Msg] = asyncio.Queue()
    sub = await bus.js.subscribe(
        filter_subject,
        stream=stream,
        ordered_consumer=True,
        deliver_policy=policy,
        config=ConsumerConfig(**options),
        cb=inbox.put,
    )
    out: list[Stored] = []
    try:
        info = await sub.consumer_info()
        delivered = info.delivered.consumer_seq if info.delivered else 0
        if not info.num_pending and not delivered:
            return out
        deadline = time.monotonic() + READ_TIMEOUT_S
        while True:
            try:
                msg = await asyncio.wait_for(inbox.get(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                return out  # a flood that never lets it catch up: what was read so far
            item = read_message(msg, stream)
            if isinstance(item, Stored):
                out.append(item)
            if not msg.metadata.num_pending:
                return out
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def last_per_subject(bus: Bus, stream: str, filter_subject: str) -> list[Stored]:
    return await _read(bus, stream, filter_subject, DeliverPolicy.LAST_PER_SUBJECT)


async def since(bus: Bus, stream: str, filter_subject: str, start_ns: int) -> list[Stored]:
    start = datetime.fromtimestamp(start_ns / 1e9, UTC).isoformat()
    return await _read(
        bus, stream, filter_subject, DeliverPolicy.BY_START_TIME, opt_start_time=start
    )


async def _pending_from(bus: Bus, stream: str, filter_subject: str, seq: int) -> int:
    """How many messages match from ``seq`` on, counted by the server when it creates an
    unnamed pull consumer that is never pulled; it expires by itself (a read-only user may
    not delete consumers)."""
    config = ConsumerConfig(
        filter_subject=filter_subject,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=seq,
        ack_policy=AckPolicy.NONE,
        inactive_threshold=PROBE_EXPIRY_S,
        mem_storage=True,
    )
    return (await bus.js.add_consumer(stream, config)).num_pending or 0


async def tail(bus: Bus, stream: str, filter_subject: str, n: int) -> list[Stored]:
    """The last ``n`` messages matching a filter, oldest first. When more than ``n`` match,
    a binary search over the start sequence (one consumer probe per step, the server
    counting the matches) finds where the last ``n`` begin, so a long history is not read."""
    state = (await bus.js.stream_info(stream)).state
    if not state.messages or n <= 0:
        return []
    first, last = state.first_seq, state.last_seq
    matching = await _pending_from(bus, stream, filter_subject, first)
    if not matching:
        return []
    if matching > n:
        lo, hi = first, last + 1  # pending(lo) > n ... pending(hi) == 0
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if await _pending_from(bus, stream, filter_subject, mid) >= n:
                lo = mid
            else:
                hi = mid
        first = lo
    items = await _read(
        bus, stream, filter_subject, DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=first
    )
    return items[-n:]


async def _last(bus: Bus, stream: str, subject: str) -> Stored | None:
    try:
        return await bus.last_event(stream, subject)
    except (NotFoundError, ValueError, msgspec.DecodeError):
        return None


# --- folding it into a report --------------------------------------------------------------


def _worker_of(consumer: str, stream: str) -> str:
    suffix = f"-{stream.lower()}"
    return consumer[: -len(suffix)] if consumer.endswith(suffix) else consumer


def _workers(beats: list[Stored], now_ns: int, stale_after_s: float) -> list[WorkerRow]:
    latest: dict[tuple[str, str], Stored] = {}
    for item in beats:
        beat = item.event
        if not isinstance(beat, Heartbeat):
            continue
        key = (beat.worker, beat.instance)
        if key not in latest or latest[key].seq < item.seq:
            latest[key] = item
    rows = []
    for item in latest.values():
        beat = item.event
        assert isinstance(beat, Heartbeat)
        age = max(0.0, (now_ns - beat.ts) / 1e9)
        if beat.status == "stopped":
            state = "stopped"
        elif age > stale_after_s:
            state = "down"
        else:
            state = beat.status
        rows.append(
            WorkerRow(
                worker=beat.worker,
                instance=beat.instance,
                state=state,
                alive=state not in ("stopped", "down"),
                status=beat.status,
                age_s=round(age, 3),
                seq=beat.seq,
                processed=beat.processed,
                metrics_port=beat.metrics_port,
                last_seen=iso_ns(beat.ts),
            )
        )
    rows.sort(key=lambda r: (r.worker, r.age_s))
    return rows


def _system(statuses: list[Stored], kill: Stored | None, resume: Stored | None) -> SystemSection:
    sources: dict[str, SystemStatus] = {}
    for item in statuses:
        event = item.event
        if isinstance(event, SystemStatus):
            current = sources.get(event.source)
            if current is None or current.ts <= event.ts:
                sources[event.source] = event
    killed = kill is not None and (resume is None or resume.seq < kill.seq)
    switch = KillSwitch(active=False)
    last_gov = max((g for g in (kill, resume) if g is not None), key=lambda g: g.seq, default=None)
    if last_gov is not None and isinstance(last_gov.event, GovernanceCommand):
        cmd = last_gov.event
        switch = KillSwitch(killed, cmd.reason, cmd.issued_by, iso_ns(cmd.ts))
    rows = [
        SourceStatus(s.source, s.status, s.reason, s.rule, iso_ns(s.ts))
        for s in sorted(sources.values(), key=lambda s: s.source)
    ]
    if killed:
        assert last_gov is not None
        kill_ts = last_gov.event.ts
        # A kill with no later SystemStatus: risk rejects every order, so the system is
        # halted whatever an older status said.
        if not any(s.ts >= kill_ts for s in sources.values()):
            rows.append(
                SourceStatus(
                    KILL_SOURCE, "HALTED", switch.reason or "kill switch", "kill_switch", switch.ts
                )
            )
    if not rows:
        return SystemSection("UNKNOWN", "no SystemStatus published", "", "", None, switch, [])
    worst = max(rows, key=lambda r: (SEVERITY.get(r.status, 0), r.ts))
    return SystemSection(
        worst.status, worst.reason, worst.source, worst.rule, worst.ts, switch, rows
    )


async def collect(
    bus: Bus, now_ns: int | None = None, heartbeat_s: float = 2.0, errors: int = 10
) -> StatusReport:
    """Read everything the screen shows; ``now_ns`` (default: the wall clock) ages the
    heartbeats."""
    now_ns = now_ns or time.time_ns()
    stale_after = STALE_BEATS * heartbeat_s
    recent_from = now_ns - int(max(RECENT_MIN_S, 10 * stale_after) * 1e9)
    (
        last_beats,
        recent_beats,
        statuses,
        kill,
        resume,
        lags,
        portfolio,
        dead,
        rejected,
    ) = await asyncio.gather(
        last_per_subject(bus, "SYSTEM", "sys.heartbeat.>"),
        since(bus, "SYSTEM", "sys.heartbeat.>", recent_from),
        last_per_subject(bus, "SYSTEM", "sys.status.>"),
        _last(bus, "GOVERNANCE", "gov.cmd.kill"),
        _last(bus, "GOVERNANCE", "gov.cmd.resume"),
        consumer_lags(bus),
        last_per_subject(bus, "PORTFOLIO", "pf.>"),
        tail(bus, "SYSTEM", "sys.dlq.>", errors),
        tail(bus, "ORDERS", "ord.risk.>", errors),
    )
    equity = None
    positions = []
    for item in portfolio:
        event = item.event
        if isinstance(event, EquitySnapshot):
            equity = EquityRow(
                iso_ns(event.ts),
                event.cash,
                event.equity,
                event.realized_pnl,
                event.unrealized_pnl,
                event.fees,
                event.gross_exposure,
            )
        elif isinstance(event, PositionChanged) and event.qty != 0:
            positions.append(
                PositionRow(
                    event.venue,
                    event.symbol,
                    event.qty,
                    event.avg_price,
                    event.realized_pnl,
                    event.strategy,
                    iso_ns(event.ts),
                )
            )
    positions.sort(key=lambda p: (p.venue, p.symbol))
    dead_letters = [
        DeadLetterRow(iso_ns(e.ts), e.worker, e.subject, e.reason, e.stream, e.stream_seq)
        for e in (item.event for item in reversed(dead))
        if isinstance(e, DeadLetter)
    ]
    rejections = [
        RejectionRow(
            iso_ns(e.ts), e.strategy, e.venue, e.symbol, e.rule, e.reason, e.client_order_id
        )
        for e in (item.event for item in reversed(rejected))
        if isinstance(e, RiskDecision) and not e.approved
    ]
    # The start-time read selects by store time; the heartbeat's own time decides.
    recent_beats = [b for b in recent_beats if b.event.ts >= recent_from]
    workers = _workers(last_beats + recent_beats, now_ns, stale_after)
    lag = sorted(
        (
            LagRow(
                _worker_of(c.consumer, c.stream),
                c.stream,
                c.consumer,
                c.pending,
                c.ack_pending,
                c.redelivered,
            )
            for c in lags
        ),
        key=lambda r: (r.worker, r.stream),
    )
    system = _system(statuses, kill, resume)
    empty = not (
        workers
        or lag
        or equity
        or positions
        or dead_letters
        or rejections
        or system.sources
        or kill
        or resume
    )
    return StatusReport(
        at=iso_ns(now_ns),
        empty=empty,
        stale_after_s=stale_after,
        system=system,
        workers=workers,
        lag=lag,
        equity=equity,
        positions=positions,
        dead_letters=dead_letters,
        rejections=rejections,
    )


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
    """One screen: workers alive, consumer lag, system status, equity and positions, errors."""

    async def main() -> None:
        with nats_url() as url:
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
    """Refresh until Ctrl-C, which ends the command normally (exit 0)."""
    stop = asyncio.Event()
    with contextlib.suppress(NotImplementedError):
        asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)

    async def pause() -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
        return not stop.is_set()

    async def fresh() -> StatusReport:
        return await collect(bus, heartbeat_s=heartbeat_s, errors=errors)

    if as_json or not console.is_terminal:
        # JSON, or a pipe: every refresh in turn (a live display needs a terminal).
        def show(current: StatusReport) -> None:
            if as_json:
                _print_json(current)
            else:
                console.print(render(current))

        show(report)
        while await pause():
            show(await fresh())
        return
    with Live(render(report), console=console, auto_refresh=False) as live:
        while await pause():
            live.update(render(await fresh()), refresh=True)
