"""The daily report as short plain text: the chat message and the CLI's output.

Plain text with no markup, so every chat destination shows it as it is; the number of
alerts and positions listed is bounded so one message stays readable (Telegram cuts a
message at 4,096 characters).
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from zoneinfo import ZoneInfo

from services.reports.daily import NS, DailyReport

ALERTS_SHOWN = 8
POSITIONS_SHOWN = 10
ROWS_SHOWN = 12
"""Strategy and model lines, and venue lines, each."""


def title(report: DailyReport) -> str:
    return f"Keel daily report {report.day} ({report.timezone})"


def no_data_line(report: DailyReport) -> str:
    return f"no data for {report.day} ({report.timezone}): the log holds no event of that day"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def local_time(ts: int, timezone: str, spec: str = "%H:%M") -> str:
    return datetime.fromtimestamp(ts / NS, ZoneInfo(timezone)).strftime(spec)


def _more(total: int, shown: int) -> list[str]:
    return [f"  ... and {total - shown} more"] if total > shown else []


def body(report: DailyReport) -> str:
    """The message: totals first, then per strategy, venue, open positions and alerts."""
    r = report
    if not r.has_data:
        return no_data_line(r)
    lines = [
        f"PnL {r.pnl:+,.2f} (realized {r.realized:+,.2f}, unrealized change "
        f"{r.unrealized_change:+,.2f}); equity {r.opening_equity:,.2f} -> {r.closing_equity:,.2f}",
        f"fees {r.fees:,.2f}, funding {r.funding:,.2f}; max drawdown {r.max_drawdown:,.2f} "
        f"({r.max_drawdown_pct:.2f}%)",
        f"trades {r.trades} (win rate {_rate(r.win_rate)}), fills {r.fills}; "
        f"unrealized at close {r.unrealized:+,.2f}",
    ]
    if r.strategies or r.models:
        books = sorted((*r.strategies, *r.models), key=lambda b: (b.strategy, b.model))
        lines.append("per strategy:")
        lines.extend(
            f"  {f'{b.strategy}/{b.model}' if b.model else b.strategy}: {b.pnl:+,.2f} "
            f"(realized {b.realized:+,.2f}, fees {b.fees:,.2f}), {b.trades} trades, "
            f"win {_rate(b.win_rate)}"
            for b in books[:ROWS_SHOWN]
        )
        lines.extend(_more(len(books), ROWS_SHOWN))
    if r.venues:
        lines.append("per venue:")
        lines.extend(
            f"  {v.venue}: {v.trades} trades {v.pnl:+,.2f}, win {_rate(v.win_rate)}, "
            f"{v.fills} fills, fees {v.fees:,.2f}"
            for v in r.venues[:ROWS_SHOWN]
        )
        lines.extend(_more(len(r.venues), ROWS_SHOWN))
    lines.append(f"open positions at close: {len(r.positions)}")
    lines.extend(
        f"  {p.venue} {p.symbol} {p.qty:+g} @ {p.avg_price:,.6g}"
        for p in r.positions[:POSITIONS_SHOWN]
    )
    lines.extend(_more(len(r.positions), POSITIONS_SHOWN))
    kinds = Counter(a.kind for a in r.alerts)
    summary = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
    lines.append(f"alerts: {len(r.alerts)}" + (f" ({summary})" if summary else ""))
    lines.extend(
        f"  {local_time(a.ts, r.timezone)} {a.kind} {a.source}: {a.text}"
        for a in r.alerts[:ALERTS_SHOWN]
    )
    lines.extend(_more(len(r.alerts), ALERTS_SHOWN))
    return "\n".join(lines)
