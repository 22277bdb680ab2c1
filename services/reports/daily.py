"""The day's figures, folded from the log's events (docs/alerts.md, "Daily report").

A day is a calendar day of an IANA time zone: from one local midnight to the next (23 or
25 hours across a daylight-saving change). Cumulative figures (realized PnL, fees, funding,
per-strategy attribution) are the change between the last value before the day and the
last one in it; unrealized PnL and open positions are as at the day's end; trades are the
round trips that closed in the day, folded by the leaderboard's ``Standings`` (positions
opened earlier are measured from their first fill).

Pure: events in, a frozen ``DailyReport`` out; no clock, I/O or environment.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from contracts.events import (
    EquitySnapshot,
    Event,
    ExecutionReport,
    Instrument,
    PositionChanged,
    RiskAlert,
    StrategyPnL,
)
from contracts.governance_events import PlaybookAction
from contracts.system_events import DeadLetter, GovernanceCommand, SystemStatus
from contracts.venue_events import Discrepancy, VenueStatus
from eventstore.errors import KeelError
from services.governance.leaderboard import Figures, Standings

__all__ = [
    "BookDay",
    "DailyFold",
    "DailyReport",
    "DayAlert",
    "DayWindow",
    "OpenPosition",
    "VenueDay",
    "day_window",
    "parse_day",
    "previous_day",
]

NS = 1_000_000_000


class DayWindow(msgspec.Struct, frozen=True):
    """``[start, end)`` in ns (UTC) of local calendar day ``day`` in ``timezone``."""

    day: str
    timezone: str
    start: int
    end: int


def _zone(timezone: str) -> ZoneInfo:
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise KeelError(f"time zone {timezone!r} is not an IANA time zone") from None


def parse_day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise KeelError(f"date {text!r} is not a date like 2026-12-06") from None


def day_window(day: date, timezone: str) -> DayWindow:
    zone = _zone(timezone)
    start = datetime.combine(day, time(0), tzinfo=zone)
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=zone)
    return DayWindow(
        day=day.isoformat(),
        timezone=timezone,
        start=int(start.timestamp()) * NS,
        end=int(end.timestamp()) * NS,
    )


def previous_day(now: int, timezone: str) -> date:
    """The local day before the one ``now`` (ns) falls in: the last complete day."""
    return datetime.fromtimestamp(now // NS, _zone(timezone)).date() - timedelta(days=1)


class BookDay(msgspec.Struct, frozen=True):
    """A strategy (``model`` empty) or one of its model tags over the day, in the base
    currency: ``pnl`` = realized + unrealized change - fees - funding (the day's change of
    its ``pf.pnl`` attribution); ``trades`` and ``win_rate`` its round trips closed in the
    day (``win_rate`` None without one)."""

    strategy: str
    model: str
    pnl: float
    realized: float
    unrealized: float
    fees: float
    funding: float
    trades: int
    win_rate: float | None


class VenueDay(msgspec.Struct, frozen=True):
    """A venue's round trips closed in the day (``pnl`` net of their fees) and the fees of
    its fills in the day, both in the instruments' quote (fee) currency."""

    venue: str
    fills: int
    trades: int
    win_rate: float | None
    pnl: float
    fees: float


class OpenPosition(msgspec.Struct, frozen=True):
    """A position still open at the day's end (its last ``pf.position`` before then)."""

    venue: str
    symbol: str
    qty: float
    avg_price: float
    strategy: str
    at: int


class DayAlert(msgspec.Struct, frozen=True):
    """Something the operator was told about (or should have been) during the day."""

    ts: int
    kind: str
    source: str
    text: str


class DailyReport(msgspec.Struct, frozen=True):
    """The day's figures. Equity figures come from ``pf.equity`` (base currency):
    ``pnl`` = realized + unrealized change - fees - funding + FX change; ``opening_equity``
    is the last snapshot before the day, or (the book started during it) the closing
    equity less the day's PnL. ``max_drawdown`` is the deepest fall below the running peak
    of the day's equity curve (opening equity included), also in percent (<= 0)."""

    day: str
    timezone: str
    start: int
    end: int
    has_data: bool
    opening_equity: float
    closing_equity: float
    pnl: float
    realized: float
    unrealized: float
    unrealized_change: float
    fees: float
    funding: float
    max_drawdown: float
    max_drawdown_pct: float
    fills: int
    trades: int
    win_rate: float | None
    strategies: tuple[BookDay, ...]
    models: tuple[BookDay, ...]
    venues: tuple[VenueDay, ...]
    positions: tuple[OpenPosition, ...]
    alerts: tuple[DayAlert, ...]
    curve_ts: tuple[int, ...]
    curve_equity: tuple[float, ...]


_ZERO = EquitySnapshot(
    ts=0, cash=0.0, equity=0.0, realized_pnl=0.0, unrealized_pnl=0.0, fees=0.0, gross_exposure=0.0
)


def _book_pnl(e: EquitySnapshot) -> float:
    return e.realized_pnl + e.unrealized_pnl - e.fees - e.funding + e.fx_pnl


def _alert(event: Event, status: dict[str, str]) -> DayAlert | None:
    """The alert an event stands for; statuses only when they change (``status`` keeps the
    last one per source)."""
    match event:
        case RiskAlert():
            where = " ".join(x for x in (event.venue, event.symbol) if x)
            text = " ".join(x for x in (event.action, event.detail, where) if x)
            return DayAlert(event.ts, "risk", event.rule, text)
        case SystemStatus():
            key = f"sys:{event.source}"
            if status.get(key) == event.status:
                return None
            status[key] = event.status
            return DayAlert(event.ts, "status", event.source, f"{event.status}: {event.reason}")
        case VenueStatus():
            key = f"venue:{event.venue}"
            if status.get(key) == event.state:
                return None
            status[key] = event.state
            return DayAlert(event.ts, "venue", event.venue, f"{event.state}: {event.reason}")
        case PlaybookAction():
            return DayAlert(event.ts, "playbook", event.rule, event.action.reason)
        case Discrepancy():
            what = event.symbol or event.asset
            text = " ".join(x for x in (event.kind, what, event.action, event.detail) if x)
            return DayAlert(event.ts, "discrepancy", event.venue, text)
        case DeadLetter():
            return DayAlert(
                event.ts, "dead letter", event.worker, f"{event.subject}: {event.reason}"
            )
        case GovernanceCommand():
            who = event.issued_by or "operator"
            return DayAlert(event.ts, "command", who, f"{event.action} {event.reason}".strip())
    return None


class _VenueFills:
    __slots__ = ("fees", "fills")

    def __init__(self) -> None:
        self.fills = 0
        self.fees = 0.0


class DailyFold:
    """Folds any events, in the order each stream stored them, into one day's report.
    Events at or after the day's end are ignored, so a later read changes nothing."""

    def __init__(self, window: DayWindow) -> None:
        self.window = window
        self._standings = Standings(since=window.start)
        self._opening: EquitySnapshot | None = None
        self._curve: list[EquitySnapshot] = []
        self._books_open: dict[tuple[str, str], StrategyPnL] = {}
        self._books_close: dict[tuple[str, str], StrategyPnL] = {}
        self._positions: dict[tuple[str, str], PositionChanged] = {}
        self._venues: dict[str, _VenueFills] = {}
        self._status: dict[str, str] = {}
        self._alerts: list[DayAlert] = []
        self._fills = 0

    def observe(self, event: Event) -> None:
        ts, start = event.ts, self.window.start
        if ts >= self.window.end:
            return
        match event:
            case EquitySnapshot():
                if ts >= start:
                    self._curve.append(event)
                elif self._opening is None or ts >= self._opening.ts:
                    self._opening = event
            case StrategyPnL():
                books = self._books_close if ts >= start else self._books_open
                books[(event.strategy, event.model_tag)] = event
            case ExecutionReport():
                self._standings.observe(event)
                if ts >= start and event.fill_qty > 0:
                    self._fills += 1
                    venue = self._venues.setdefault(event.venue, _VenueFills())
                    venue.fills += 1
                    venue.fees += event.fee
            case Instrument():
                self._standings.size_of(event.venue, event.symbol, event.contract_size)
            case PositionChanged():
                self._positions[(event.venue, event.symbol)] = event
            case _:
                alert = _alert(event, self._status)
                if alert is not None and ts >= start:
                    self._alerts.append(alert)

    def report(self) -> DailyReport:
        w = self.window
        curve = sorted(self._curve, key=lambda e: e.ts)
        opening = self._opening or _ZERO
        closing = curve[-1] if curve else opening
        pnl = _book_pnl(closing) - _book_pnl(opening)
        opening_equity = self._opening.equity if self._opening else closing.equity - pnl
        drawdown, drawdown_pct = _drawdown(opening_equity, [e.equity for e in curve])
        venues = self._venue_days()
        trades = sum(v.trades for v in venues)
        wins = sum(round((v.win_rate or 0.0) * v.trades) for v in venues)
        positions = tuple(
            OpenPosition(p.venue, p.symbol, p.qty, p.avg_price, p.strategy, p.ts)
            for _, p in sorted(self._positions.items())
            if p.qty != 0.0
        )
        alerts = tuple(sorted(self._alerts, key=lambda a: (a.ts, a.kind, a.source, a.text)))
        books = self._book_days()
        return DailyReport(
            day=w.day,
            timezone=w.timezone,
            start=w.start,
            end=w.end,
            has_data=bool(curve or self._fills or self._books_close or alerts),
            opening_equity=opening_equity,
            closing_equity=closing.equity,
            pnl=pnl,
            realized=closing.realized_pnl - opening.realized_pnl,
            unrealized=closing.unrealized_pnl,
            unrealized_change=closing.unrealized_pnl - opening.unrealized_pnl,
            fees=closing.fees - opening.fees,
            funding=closing.funding - opening.funding,
            max_drawdown=drawdown,
            max_drawdown_pct=drawdown_pct,
            fills=self._fills,
            trades=trades,
            win_rate=wins / trades if trades else None,
            strategies=tuple(b for b in books if not b.model),
            models=tuple(b for b in books if b.model),
            venues=venues,
            positions=positions,
            alerts=alerts,
            curve_ts=tuple(e.ts for e in curve),
            curve_equity=tuple(e.equity for e in curve),
        )

    def _figures(self, strategy: str, model: str) -> Figures:
        if model:
            return self._standings.figures("model", strategy, model)
        return self._standings.figures("strategy", strategy)

    def _book_days(self) -> list[BookDay]:
        keys = set(self._books_close)
        for row in self._standings.board().rows:
            if row.scope == "strategy":
                keys.add((row.strategy, ""))
            elif row.scope == "model" and row.model:
                keys.add((row.strategy, row.model))
        out = []
        for key in sorted(keys):
            b0 = self._books_open.get(key) or StrategyPnL(ts=0, strategy=key[0])
            b1 = self._books_close.get(key) or b0
            figures = self._figures(*key)
            out.append(
                BookDay(
                    strategy=key[0],
                    model=key[1],
                    pnl=b1.pnl - b0.pnl,
                    realized=b1.realized_pnl - b0.realized_pnl,
                    unrealized=b1.unrealized_pnl,
                    fees=b1.fees - b0.fees,
                    funding=b1.funding - b0.funding,
                    trades=figures.trades,
                    win_rate=figures.win_rate,
                )
            )
        return out

    def _venue_days(self) -> tuple[VenueDay, ...]:
        closed = {
            row.venue: row.figures for row in self._standings.board().rows if row.scope == "venue"
        }
        out = []
        for venue in sorted(closed.keys() | self._venues.keys()):
            figures = closed.get(venue)
            fills = self._venues.get(venue) or _VenueFills()
            out.append(
                VenueDay(
                    venue=venue,
                    fills=fills.fills,
                    trades=figures.trades if figures else 0,
                    win_rate=figures.win_rate if figures else None,
                    pnl=figures.pnl if figures else 0.0,
                    fees=fills.fees,
                )
            )
        return tuple(out)


def _drawdown(opening: float, equity: list[float]) -> tuple[float, float]:
    """The deepest fall below the running peak (amount >= 0, percent <= 0)."""
    peak, worst, worst_pct = opening, 0.0, 0.0
    for value in equity:
        peak = max(peak, value)
        fall = peak - value
        if fall > worst:
            worst = fall
        if peak > 0:
            worst_pct = min(worst_pct, (value / peak - 1.0) * 100.0)
    return worst, worst_pct
