"""The daily report as one self-contained HTML page, drawn with the backtest report's
plots (``replay.report``: inline plotly.js, the same equity and drawdown charts and the
same min/max reduction of long curves)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from eventstore.errors import KeelError
from replay.report import (
    PAGE_STYLE,
    drawdown_pct,
    figure_html,
    html_escape,
    html_table,
    plot_layout,
    plotly_script,
    reduced_points,
)
from services.reports.daily import DailyReport
from services.reports.daily_text import local_time, no_data_line, title

ALERTS_SHOWN = 500


def _money(value: float) -> str:
    return f"{value:,.2f}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _summary(r: DailyReport) -> str:
    rows = [
        ["PnL (realized + unrealized change - fees - funding + FX)", _money(r.pnl)],
        ["realized", _money(r.realized)],
        ["unrealized at close (change)", f"{_money(r.unrealized)} ({_money(r.unrealized_change)})"],
        ["fees", _money(r.fees)],
        ["funding (paid; negative = received)", _money(r.funding)],
        ["equity open -> close", f"{_money(r.opening_equity)} -> {_money(r.closing_equity)}"],
        ["max drawdown", f"{_money(r.max_drawdown)} ({r.max_drawdown_pct:.4f}%)"],
        ["trades closed / win rate", f"{r.trades} / {_rate(r.win_rate)}"],
        ["fills", str(r.fills)],
    ]
    return f"<h2>Summary</h2>{html_table(['figure', 'value'], rows, 'summary')}"


def _curves(r: DailyReport) -> str:
    import plotly.graph_objects as go

    if not r.curve_ts:
        return "<h2>Equity and drawdown</h2><p>No equity snapshot in the day.</p>"
    ts = np.asarray(r.curve_ts, dtype=np.int64)
    equity = np.asarray(r.curve_equity, dtype=np.float64)
    x, y = reduced_points(ts, equity)
    fig = go.Figure(go.Scatter(x=x, y=y, mode="lines", name="equity"))
    fig.add_hline(
        y=r.opening_equity, line_dash="dot", line_color="grey", annotation_text="opening equity"
    )
    equity_html = figure_html(plot_layout(fig, "Equity (UTC)", "equity"), "equity")
    x, y = reduced_points(ts, drawdown_pct(equity, r.opening_equity))
    fig = go.Figure(
        go.Scatter(x=x, y=y, mode="lines", fill="tozeroy", name="drawdown", line_color="firebrick")
    )
    title_dd = "Drawdown (% from running peak, opening equity included)"
    drawdown_html = figure_html(plot_layout(fig, title_dd, "% below peak"), "drawdown")
    return f"<h2>Equity and drawdown</h2>{equity_html}{drawdown_html}"


def _tables(r: DailyReport) -> str:
    books = [
        [
            b.strategy,
            b.model or "(all)",
            _money(b.pnl),
            _money(b.realized),
            _money(b.unrealized),
            _money(b.fees),
            _money(b.funding),
            b.trades,
            _rate(b.win_rate),
        ]
        for b in (*r.strategies, *r.models)
    ]
    venues = [
        [v.venue, v.fills, v.trades, _money(v.pnl), _rate(v.win_rate), _money(v.fees)]
        for v in r.venues
    ]
    positions = [
        [p.venue, p.symbol, f"{p.qty:g}", f"{p.avg_price:,.6g}", p.strategy] for p in r.positions
    ]
    alerts = [
        [local_time(a.ts, r.timezone, "%H:%M:%S"), a.kind, a.source, a.text]
        for a in r.alerts[:ALERTS_SHOWN]
    ]
    head = ["strategy", "model", "pnl", "realized", "unrealized", "fees", "funding", "trades"]
    return "".join(
        (
            "<h2>Per strategy and model</h2>",
            html_table([*head, "win rate"], books, "strategies"),
            "<h2>Per venue</h2><p class=note>Closed round trips net of fees, and the fees of "
            "the day's fills, in the instruments' quote currency.</p>",
            html_table(["venue", "fills", "trades", "pnl", "win rate", "fees"], venues, "venues"),
            f"<h2>Open positions at close ({len(r.positions)})</h2>",
            html_table(
                ["venue", "symbol", "qty", "avg price", "last strategy"], positions, "positions"
            ),
            f"<h2>Alerts ({len(r.alerts)}, first {min(len(r.alerts), ALERTS_SHOWN)})</h2>",
            html_table([f"time ({r.timezone})", "kind", "source", "text"], alerts, "alerts"),
        )
    )


def page(report: DailyReport) -> str:
    heading = html_escape(title(report))
    if report.has_data:
        body = _summary(report) + _curves(report) + _tables(report)
    else:
        body = f"<p>{html_escape(no_data_line(report))}</p>"
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>{heading}</title><style>{PAGE_STYLE}</style>"
        f"<script>{plotly_script()}</script></head><body><h1>{heading}</h1>{body}</body></html>\n"
    )


def write_page(report: DailyReport, path: Path) -> Path:
    """Write the page atomically (a temporary file renamed over ``path``)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(page(report), encoding="utf-8")
        temporary.replace(path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise KeelError(f"cannot write {path}: {exc}") from exc
    return path
