"""The bot's answers as plain text (no parse mode: nothing from the log can be taken for
markup), from what the log holds. Pure: the reads are ``views``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from contracts.events import EquitySnapshot, ExecutionReport, PositionChanged, StrategyPnL
from services.fleet_status import StatusReport
from services.reports.daily import DailyReport
from services.reports.daily_text import body, no_data_line, title

MAX_ROWS = 20
"""Rows a list shows; Telegram caps a message at 4,096 characters."""
MAX_CHARS = 4000
WORKING = frozenset({"accepted", "partially_filled"})
HELP = (
    "Keel commands:\n"
    "/status - system status, kill switch, workers\n"
    "/pnl - equity and PnL, per strategy\n"
    "/positions - open positions\n"
    "/orders - working orders\n"
    "/daily [YYYY-MM-DD] - the daily report (default: today so far)\n"
    "/kill [reason] - halt new orders (risk rejects every signal)\n"
    "/resume - lift the kill switch"
)


def _time(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def clip(text: str) -> str:
    return text if len(text) <= MAX_CHARS else text[: MAX_CHARS - 2] + "\n…"


def _rows(lines: Sequence[str], noun: str) -> list[str]:
    shown = list(lines[:MAX_ROWS])
    if len(lines) > MAX_ROWS:
        shown.append(f"… and {len(lines) - MAX_ROWS} more {noun}")
    return shown


def status_text(report: StatusReport) -> str:
    system = report.system
    lines = [f"System {system.status}" + (f": {system.reason}" if system.source else "")]
    switch = system.kill_switch
    if switch.active:
        lines.append(f"Kill switch ON since {switch.ts} by {switch.issued_by}: {switch.reason}")
    else:
        lines.append("Kill switch off")
    alive = [w for w in report.workers if w.alive]
    lines.append(f"Workers: {len(alive)} alive of {len(report.workers)}")
    lines += [f"  {w.worker}/{w.instance} {w.state}" for w in report.workers if not w.alive]
    for feed in report.venues:
        gateway = f", gateway {feed.gateway}" if feed.gateway else ""
        states = ", ".join(f"{n} {s}" for s, n in feed.states.items())
        lines.append(f"Venue {feed.venue} ({feed.mode}{gateway}): {states or 'no symbols'}")
    if report.equity is not None:
        lines.append(f"Equity {report.equity.equity:,.2f} at {report.equity.ts}")
    lines.append(f"Open positions: {len(report.positions)}")
    if report.dead_letters or report.rejections:
        lines.append(
            f"Latest errors: {len(report.dead_letters)} dead letters, "
            f"{len(report.rejections)} risk rejections"
        )
    return clip("\n".join(lines))


def pnl_text(equity: EquitySnapshot | None, strategies: Iterable[StrategyPnL]) -> str:
    if equity is None:
        return "No equity snapshot in the log yet."
    lines = [
        f"Equity {equity.equity:,.2f} (cash {equity.cash:,.2f}) at {_time(equity.ts)}",
        f"Realized {equity.realized_pnl:+,.2f}  unrealized {equity.unrealized_pnl:+,.2f}",
        f"Fees {equity.fees:,.2f}  funding {equity.funding:+,.2f}",
    ]
    per = sorted((s for s in strategies if not s.model_tag), key=lambda s: s.strategy)
    lines += _rows(
        [
            f"  {s.strategy}: {s.pnl:+,.2f} (realized {s.realized_pnl:+,.2f}, "
            f"unrealized {s.unrealized_pnl:+,.2f})"
            for s in per
        ],
        "strategies",
    )
    return clip("\n".join(lines))


def positions_text(positions: Iterable[PositionChanged]) -> str:
    open_ = sorted((p for p in positions if p.qty != 0), key=lambda p: (p.venue, p.symbol))
    if not open_:
        return "No open positions."
    lines = [f"{len(open_)} open position" + ("" if len(open_) == 1 else "s") + ":"]
    lines += _rows(
        [
            f"  {p.venue} {p.symbol} {p.qty:+g} @ {p.avg_price:,.6g}"
            + (f" ({p.strategy})" if p.strategy else "")
            for p in open_
        ],
        "positions",
    )
    return clip("\n".join(lines))


def working_orders(reports: Iterable[ExecutionReport]) -> list[ExecutionReport]:
    """The last report of every order, in log order, kept when it is still working."""
    last: dict[str, ExecutionReport] = {}
    for report in reports:
        last.pop(report.client_order_id, None)
        last[report.client_order_id] = report
    return [r for r in last.values() if r.status in WORKING]


def orders_text(working: Sequence[ExecutionReport], lookback_h: float) -> str:
    if not working:
        return f"No working orders (execution reports of the last {lookback_h:g} h)."
    lines = [f"{len(working)} working order" + ("" if len(working) == 1 else "s") + ":"]
    lines += _rows(
        [
            f"  {r.venue} {r.symbol} {r.side} {r.cum_qty:g}/{r.order_qty:g} {r.status} "
            f"{r.client_order_id} ({r.strategy})"
            for r in working
        ],
        "orders",
    )
    return clip("\n".join(lines))


def daily_text(report: DailyReport) -> str:
    """``keel report daily``'s chat text for the day."""
    if not report.has_data:
        return no_data_line(report)
    return clip(f"{title(report)}\n{body(report)}")


def governance_text(action: str, reason: str, issued_by: str, ts: int, stored: bool) -> str:
    what = "Kill switch ON: risk rejects every signal" if action == "kill" else "Resumed"
    again = "" if stored else " (already in the log)"
    return f"{what}{again}.\nBy {issued_by} at {_time(ts)}" + (f": {reason}" if reason else "")


def not_published_text(action: str, error: Exception) -> str:
    return (
        f"{action} NOT published: the log did not take it ({type(error).__name__}). "
        f"Try again, or use keel {action} on a host that reaches NATS."
    )


def stale_text(max_age_s: float) -> str:
    return f"Ignored: the command is older than {max_age_s:g} s (sent while the bot was down)."
