"""The fleet's health as ``keel status`` shows it, folded from the log (also the ``--json`` shape).

Every figure comes from the log itself, read efficiently (``eventstore.log_reader``):
heartbeats (the last one per worker subject plus every instance heard in the last minute), the
latest ``SystemStatus`` per source and the kill switch, the durable consumers' lag, the latest
equity snapshot and positions (the last message per subject), the last dead letters and
risk rejections (the tail of their subjects, found without reading their history), and per
live venue the last ``FeedStatus`` and the last bar of every symbol (the last per subject).
"""

from __future__ import annotations

import asyncio
import time

import msgspec

from contracts.events import Bar, EquitySnapshot, FeedStatus, PositionChanged, RiskDecision
from contracts.system_events import DeadLetter, GovernanceCommand, Heartbeat, SystemStatus
from contracts.timestamps import iso_ns
from contracts.venue_events import VenueStatus
from eventstore.bus import Bus, Stored
from eventstore.lag import consumer_lags
from eventstore.log_reader import last_or_none, last_per_subject, since, tail

STALE_BEATS = 3
"""A worker is down when its last heartbeat is older than this many heartbeat intervals."""
RECENT_MIN_S = 60.0
"""Instances heard within max(this, 10 stale periods) are listed, beside each worker's last."""
SEVERITY = {"UNKNOWN": -1, "RUNNING": 0, "DEGRADED": 1, "SAFE_MODE": 2, "HALTED": 3}
KILL_SOURCE = "kill-switch"
FEED_STATES = ("stale", "backfilling", "polling", "streaming", "closed", "delisted")
"""Worst first: the order of a venue's state counts and of the symbols it shows. A market
``closed`` by its trading calendar is a normal quiet (its bars are complete to the close),
so it ranks after the streaming ones, not among the outages."""
WORST_SHOWN = 5
"""A venue's screen shows its worst symbols, not hundreds of rows."""
PAPER = "paper"
"""The mode of a venue no gateway reports on: its orders go to the paper venue."""


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


class FeedRow(msgspec.Struct, frozen=True):
    symbol: str
    state: str
    reason: str
    last_close: str | None
    lag_s: float | None


class VenueFeed(msgspec.Struct, frozen=True):
    """One live venue: its symbols' data states counted, the newest closed bar and its lag
    behind now, the mode, and the worst few symbols (state first, then the oldest bar)."""

    venue: str
    mode: str
    symbols: int
    states: dict[str, int]
    last_close: str | None
    lag_s: float | None
    oldest_close: str | None
    worst: list[FeedRow]
    gateway: str = ""  # the gateway's state (running, degraded, halted); "" = no gateway
    gateway_reason: str = ""
    discrepancies: int = 0


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
    venues: list[VenueFeed] = msgspec.field(default_factory=list)


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


def _lag(now_ns: int, close_ns: int) -> float | None:
    return round(max(0.0, (now_ns - close_ns) / 1e9), 3) if close_ns else None


def _venue_feeds(
    statuses: list[Stored], bars: list[Stored], gateways: list[Stored], now_ns: int
) -> list[VenueFeed]:
    """Fold the last FeedStatus and the last bar of each (venue, symbol) into a section per
    venue that publishes feed statuses (the live ones; a synthetic market or file has none)
    or has a gateway (its last ``VenueStatus``: the mode, and a halt with its reason)."""
    gateway: dict[str, VenueStatus] = {}
    for item in gateways:
        event = item.event
        if isinstance(event, VenueStatus):
            known = gateway.get(event.venue)
            if known is None or known.ts <= event.ts:
                gateway[event.venue] = event
    state: dict[tuple[str, str], FeedStatus] = {}
    for item in statuses:
        event = item.event
        if isinstance(event, FeedStatus):
            key = (event.venue, event.symbol)
            if key not in state or state[key].ts <= event.ts:
                state[key] = event
    closes: dict[tuple[str, str], int] = {}
    for item in bars:
        bar = item.event
        if isinstance(bar, Bar):
            key = (bar.venue, bar.symbol)
            closes[key] = max(closes.get(key, 0), bar.close_time)
    by_venue: dict[str, list[tuple[FeedStatus, int]]] = {name: [] for name in gateway}
    for key, status in state.items():
        last = max(closes.get(key, 0), status.last_close)
        by_venue.setdefault(key[0], []).append((status, last))
    rank = {name: i for i, name in enumerate(FEED_STATES)}
    feeds = []
    for venue, rows in sorted(by_venue.items()):
        counts = {name: 0 for name in FEED_STATES}
        for status, _ in rows:
            counts[status.state] = counts.get(status.state, 0) + 1
        rows.sort(key=lambda r: (rank.get(r[0].state, -1), r[1], r[0].symbol))
        known = [last for _, last in rows if last]
        newest = max(known, default=0)
        oldest = min(known, default=0)
        gw = gateway.get(venue)
        feeds.append(
            VenueFeed(
                venue=venue,
                mode=gw.mode if gw is not None else PAPER,
                gateway=gw.state if gw is not None else "",
                gateway_reason=gw.reason if gw is not None else "",
                discrepancies=gw.discrepancies if gw is not None else 0,
                symbols=len(rows),
                states={name: n for name, n in counts.items() if n},
                last_close=iso_ns(newest) if newest else None,
                lag_s=_lag(now_ns, newest),
                oldest_close=iso_ns(oldest) if oldest else None,
                worst=[
                    FeedRow(
                        s.symbol,
                        s.state,
                        s.reason,
                        iso_ns(last) if last else None,
                        _lag(now_ns, last),
                    )
                    for s, last in rows[:WORST_SHOWN]
                ],
            )
        )
    return feeds


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
        feed_statuses,
        last_bars,
        gateway_statuses,
    ) = await asyncio.gather(
        last_per_subject(bus, "SYSTEM", "sys.heartbeat.>"),
        since(bus, "SYSTEM", "sys.heartbeat.>", recent_from),
        last_per_subject(bus, "SYSTEM", "sys.status.>"),
        last_or_none(bus, "GOVERNANCE", "gov.cmd.kill"),
        last_or_none(bus, "GOVERNANCE", "gov.cmd.resume"),
        consumer_lags(bus),
        last_per_subject(bus, "PORTFOLIO", "pf.>"),
        tail(bus, "SYSTEM", "sys.dlq.>", errors),
        tail(bus, "ORDERS", "ord.risk.>", errors),
        last_per_subject(bus, "MARKET", "md.status.>"),
        last_per_subject(bus, "MARKET", "md.bar.>"),
        last_per_subject(bus, "VENUE", "venue.status.>"),
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
    venues = _venue_feeds(feed_statuses, last_bars, gateway_statuses, now_ns)
    empty = not (
        venues
        or workers
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
        venues=venues,
    )
