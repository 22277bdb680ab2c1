"""report.html: one self-contained page showing a stored backtest run.

The page reads only the run's files (``replay.run_files``) and carries a single inline copy of
plotly.js, so no network access is needed to open it: a header (strategies and parameters,
data sources, window, result hash), the metrics table, the equity curve, the drawdown
(percent below the running peak, starting cash included, as in ``max_drawdown_pct``), price
with entries and exits per symbol, attribution per strategy and per symbol, and the first
``TRADES_SHOWN`` trades. The annualisation ``P`` it shows is ``replay.run_check``'s.

Price: a run stores no bar closes (market data is an input, not an output event), and this
module adds nothing to the run's storage. The only prices a run stores are its fills, so
the price line of a symbol is drawn through its fill prices over time, with each closed
trade's entry and exit marked on it. The page says so next to the chart.

Large runs: every plotted trace is reduced to at most ``MAX_POINTS`` points by
``minmax_indices`` (per bucket of consecutive points, the minimum and the maximum, plus the
first and last point), vectorised with numpy, so the global extremes of the curve and of
the drawdown are always drawn.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from contracts.events import ExecutionReport
from eventstore.errors import KeelError
from replay.backtest import RUN_FILE
from replay.recorder import iso
from replay.run_check import annualisation
from replay.run_files import RunData, load_run_data

__all__ = [
    "MAX_POINTS",
    "REPORT_FILE",
    "TRADES_SHOWN",
    "drawdown_pct",
    "minmax_indices",
    "report_is_stale",
    "write_report",
]

REPORT_FILE = "report.html"
MAX_POINTS = 5_000
"""Most points drawn per trace."""
TRADES_SHOWN = 500

ANNUALISATION_NOTE = (
    "Sharpe and Sortino are per-bar ratios scaled by &radic;P, P = bars per year from the bar "
    "interval, counting every calendar day (crypto trades 24/7): 1s &rarr; 31,536,000; "
    "1m &rarr; 525,600; 5m &rarr; 105,120; 15m &rarr; 35,040; 1h &rarr; 8,760; "
    "4h &rarr; 2,190; 1d &rarr; 365; 1w &rarr; 52.14 (365/7); &lt;n&gt;&lt;unit&gt; divides "
    "the unit's figure by n. A spec's periods_per_year overrides it (e.g. 252 for equities "
    "on daily bars)."
)
PRICE_NOTE = (
    "A run stores no bar closes (market data is an input, not an output event), so the "
    "price line is drawn through the run's fill prices, the only prices it stores. "
    "Markers are the closed trades' entries and exits (FIFO round trips from trades.parquet). "
    f"Each trace shows at most {MAX_POINTS:,} points (the minimum and maximum of each bucket "
    "of consecutive points)."
)


# --- curves -------------------------------------------------------------------------------------


def minmax_indices(values: np.ndarray, max_points: int = MAX_POINTS) -> np.ndarray:
    """Sorted indices of at most ``max_points`` points that keep the shape of a long series.

    All indices when the series is short enough; otherwise the series is cut into buckets
    of consecutive points and each bucket keeps its minimum and its maximum, plus the first
    and last point, so the global minimum and maximum are always kept. Vectorised (one
    argmin and one argmax over a reshaped array), no loop over points.
    """
    if max_points < 4:
        raise ValueError("max_points must be >= 4")
    y = np.asarray(values, dtype=np.float64)
    n = y.size
    if n <= max_points:
        return np.arange(n)
    buckets = (max_points - 2) // 2
    size = -(-n // buckets)
    buckets = -(-n // size)
    # Pad the last bucket with the last value: an argmin / argmax landing in the padding
    # points at a value equal to y[-1], so clipping to n - 1 keeps the right value.
    grid = np.pad(y, (0, buckets * size - n), mode="edge").reshape(buckets, size)
    start = np.arange(buckets) * size
    low = np.minimum(start + grid.argmin(axis=1), n - 1)
    high = np.minimum(start + grid.argmax(axis=1), n - 1)
    return np.unique(np.concatenate(([0, n - 1], low, high)))


def drawdown_pct(equity: np.ndarray, starting_cash: float) -> np.ndarray:
    """Percent below the running peak (starting cash included), <= 0 at every point."""
    equity = np.asarray(equity, dtype=np.float64)
    peak = np.maximum.accumulate(np.maximum(equity, starting_cash))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.nan_to_num((equity / peak - 1.0) * 100.0)


def _times(ns: np.ndarray) -> np.ndarray:
    """Nanosecond timestamps as ISO strings (plotly reads them as dates)."""
    return np.datetime_as_string(np.asarray(ns, dtype=np.int64).astype("datetime64[ns]"), "ms")


def reduced_points(ts: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = minmax_indices(values)
    return _times(ts[keep]), np.asarray(values)[keep]


# --- the page -----------------------------------------------------------------------------------


def report_is_stale(run_dir: Path) -> bool:
    """True when report.html is missing or older than run.json."""
    report, run = Path(run_dir) / REPORT_FILE, Path(run_dir) / RUN_FILE
    try:
        return report.stat().st_mtime_ns < run.stat().st_mtime_ns
    except FileNotFoundError:
        return True


def write_report(run_dir: Path, data: RunData | None = None) -> Path:
    """Write ``run_dir/report.html`` from the stored files and return its path.

    ``data`` is the run already read by ``load_run_data`` (read here when omitted).
    """
    run_dir = Path(run_dir)
    data = data or load_run_data(run_dir)
    page = _page(data)
    path = run_dir / REPORT_FILE
    temporary = path.with_name(f".{REPORT_FILE}.{os.getpid()}.tmp")
    try:
        temporary.write_text(page, encoding="utf-8")
        temporary.replace(path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise KeelError(f"cannot write {path}: {exc}") from exc
    return path


def plotly_script() -> str:
    """plotly.js, inline, once per page.

    The bundle names two CDN addresses as defaults of features these charts never use
    (geo topojson, map icons); they are written ``https:\\/\\/`` (the same string in
    JavaScript) so that a page search for ``https://cdn`` finds only real references.
    """
    from plotly.offline import get_plotlyjs

    return get_plotlyjs().replace("https://cdn", "https:\\/\\/cdn")


def figure_html(figure: Any, name: str) -> str:
    """A figure's div and script, under an HTML heading repeating its title (searchable)."""
    title = figure.layout.title.text
    heading = f"<h3>{html_escape(title)}</h3>" if title else ""
    return heading + figure.to_html(
        full_html=False,
        include_plotlyjs=False,
        div_id=name,
        config={"displaylogo": False, "responsive": True},
    )


def plot_layout(figure: Any, title: str, y_title: str, height: int = 420) -> Any:
    figure.update_layout(
        title=title,
        template="plotly_white",
        height=height,
        margin={"l": 60, "r": 20, "t": 50, "b": 40},
        yaxis_title=y_title,
        legend={"orientation": "h", "y": -0.15},
        hovermode="x unified",
    )
    return figure


def html_escape(value: Any) -> str:
    return html.escape(str(value))


def html_table(header: list[str], rows: list[list[Any]], table_id: str = "") -> str:
    ident = f' id="{table_id}"' if table_id else ""
    head = "".join(f"<th>{html_escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html_escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _when(ns: int | None) -> str:
    return "-" if ns is None else iso(ns)


def _header(data: RunData) -> str:
    spec, result = data.record.spec, data.record.result
    config = spec.config
    strategies = html_table(
        ["strategy", "instance", "symbols", "params"],
        [
            [
                s.name,
                s.instance_name,
                ", ".join(s.symbols) or "all",
                ", ".join(f"{k}={v}" for k, v in sorted(s.params.items())) or "defaults",
            ]
            for s in config.strategies
        ],
        "strategies",
    )
    sources = html_table(
        ["data", "symbol", "venue", "interval", "sha256"],
        [
            [
                d.location,
                d.symbol or "(file stem)",
                d.venue,
                d.interval or "inferred",
                d.sha256[:16],
            ]
            for d in spec.data
        ],
        "sources",
    )
    ts = data.equity["ts"]
    first, last = (ts.min(), ts.max()) if data.equity.height else (None, None)
    execution = config.execution
    facts = html_table(
        ["", ""],
        [
            ["requested window", f"{_when(spec.start)} .. {_when(spec.end)} (end exclusive)"],
            ["equity curve", f"{_when(first)} .. {_when(last)}, {data.equity.height:,} points"],
            ["bars / interval", f"{result.bars:,} bars of {result.interval}"],
            ["annualisation P", f"{annualisation(data.record):,.6g} bars per year"],
            ["starting equity", f"{config.portfolio.initial_equity:,.2f}"],
            [
                "execution",
                f"fill {execution.fill}, fee {execution.fee_bps} bps, "
                f"slippage {execution.slippage_bps} bps",
            ],
            ["result hash", result.result_hash],
        ],
        "facts",
    )
    names = ", ".join(s.name for s in config.strategies)
    return (
        f"<h1>Keel backtest report: {html_escape(names)}</h1>"
        f"<p class=note>Run directory {html_escape(data.run_dir.resolve())}</p>"
        f"<h2>Strategies</h2>{strategies}<h2>Data</h2>{sources}<h2>Run</h2>{facts}"
    )


def _metrics_table(data: RunData) -> str:
    m = data.metrics
    pf = "n/a (no losing trade)" if m.profit_factor is None else f"{m.profit_factor:.4f}"
    rows = [
        ["bars", f"{m.bars:,}"],
        ["signals / orders / fills", f"{m.signals:,} / {m.orders:,} / {m.fills:,}"],
        ["rejections / dead letters", f"{m.rejections:,} / {m.dead_letters:,}"],
        ["trades", f"{m.trades:,}"],
        ["final equity", f"{m.final_equity:,.2f}"],
        ["return", f"{m.return_pct:+.4f}%"],
        ["sharpe (annualised)", f"{m.sharpe:.4f}"],
        ["sortino (annualised)", f"{m.sortino:.4f}"],
        ["max drawdown", f"{m.max_drawdown_pct:.4f}%"],
        ["win rate", f"{m.win_rate * 100:.2f}%"],
        ["profit factor", pf],
        ["exposure", f"{m.exposure_pct:.2f}% of bars"],
        ["fees", f"{m.fees:,.2f}"],
        ["speed", f"{m.bars_per_s:,.0f} bars/s ({m.wall_s:.2f}s)"],
    ]
    return f"<h2>Metrics</h2>{html_table(['metric', 'value'], rows, 'metrics')}"


def _curve_figures(data: RunData) -> str:
    import plotly.graph_objects as go

    cash = data.record.spec.config.portfolio.initial_equity
    ts = data.equity["ts"].to_numpy()
    equity = data.equity["equity"].to_numpy()
    x, y = reduced_points(ts, equity)
    fig = go.Figure(go.Scatter(x=x, y=y, mode="lines", name="equity"))
    fig.add_hline(y=cash, line_dash="dot", line_color="grey", annotation_text="starting cash")
    equity_html = figure_html(plot_layout(fig, "Equity", "equity"), "equity")

    x, y = reduced_points(ts, drawdown_pct(equity, cash))
    fig = go.Figure(
        go.Scatter(x=x, y=y, mode="lines", fill="tozeroy", name="drawdown", line_color="firebrick")
    )
    title = "Drawdown (% from running peak)"
    drawdown_html = figure_html(plot_layout(fig, title, "% below peak"), "drawdown")
    note = (
        f"<p class=note>{len(ts):,} curve points; each trace shows at most {MAX_POINTS:,} "
        "(minimum and maximum of each bucket of consecutive points, so the extremes are kept)."
        "</p>"
    )
    return f"<h2>Equity and drawdown</h2>{equity_html}{drawdown_html}{note}"


def _fill_frame(fills: list[ExecutionReport]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "ts": [f.ts for f in fills],
            "venue": [f.venue for f in fills],
            "symbol": [f.symbol for f in fills],
            "price": [f.fill_price for f in fills],
        },
        schema={"ts": pl.Int64, "venue": pl.String, "symbol": pl.String, "price": pl.Float64},
    )


def _markers(go: Any, frame: pl.DataFrame, ts: str, price: str, **style: Any) -> Any:
    x, y = reduced_points(frame[ts].to_numpy(), frame[price].to_numpy())
    return go.Scatter(x=x, y=y, mode="markers", **style)


def _price_figures(data: RunData) -> str:
    import plotly.graph_objects as go

    fills = _fill_frame(data.fills)
    parts = [f"<h2>Price with entries and exits</h2><p class=note>{PRICE_NOTE}</p>"]
    if fills.is_empty():
        parts.append("<p>No fills: nothing to draw.</p>")
        return "".join(parts)
    keys = fills.select("venue", "symbol").unique(maintain_order=True).sort("venue", "symbol")
    several_venues = keys["venue"].n_unique() > 1
    for number, (venue, symbol) in enumerate(keys.iter_rows()):
        label = f"{venue} {symbol}" if several_venues else symbol
        own = fills.filter((pl.col("venue") == venue) & (pl.col("symbol") == symbol))
        x, y = reduced_points(own["ts"].to_numpy(), own["price"].to_numpy())
        fig = go.Figure(
            go.Scatter(x=x, y=y, mode="lines", name="fill price", line_color="steelblue")
        )
        trades = data.trades.filter((pl.col("venue") == venue) & (pl.col("symbol") == symbol))
        for side, shape, colour in (
            ("long", "triangle-up", "green"),
            ("short", "triangle-down", "red"),
        ):
            legs = trades.filter(pl.col("side") == side)
            if legs.is_empty():
                continue
            fig.add_trace(
                _markers(
                    go,
                    legs,
                    "entry_ts",
                    "entry_price",
                    name=f"entry ({side})",
                    marker={"symbol": shape, "color": colour, "size": 9},
                )
            )
            fig.add_trace(
                _markers(
                    go,
                    legs,
                    "exit_ts",
                    "exit_price",
                    name=f"exit ({side})",
                    marker={"symbol": "x", "color": colour, "size": 7, "opacity": 0.7},
                )
            )
        title = f"Price with entries and exits: {label}"
        parts.append(figure_html(plot_layout(fig, title, "price"), f"price-{number}"))
    return "".join(parts)


def _attribution(data: RunData) -> str:
    import plotly.graph_objects as go

    parts = [
        "<h2>Attribution</h2><p class=note>Closed trades only (trades.parquet): gross pnl "
        "before fees, fees of both legs, net pnl = gross - fees. Positions still open at the "
        "end are not trades.</p>"
    ]
    if data.trades.is_empty():
        parts.append("<p>No closed trades.</p>")
        return "".join(parts)
    for key, title in (
        ("strategy", "Attribution by strategy"),
        ("symbol", "Attribution by symbol"),
    ):
        grouped = (
            data.trades.group_by(key)
            .agg(
                pl.len().alias("trades"),
                (pl.col("pnl") + pl.col("fees")).sum().alias("gross_pnl"),
                pl.col("fees").sum().alias("fees"),
                pl.col("pnl").sum().alias("net_pnl"),
                (pl.col("pnl") > 0).mean().alias("win_rate"),
            )
            .sort(key)
        )
        names = grouped[key].to_list()
        fig = go.Figure(
            [
                go.Bar(x=names, y=grouped["gross_pnl"].to_list(), name="gross pnl"),
                go.Bar(x=names, y=(-grouped["fees"]).to_list(), name="fees (cost)"),
                go.Bar(x=names, y=grouped["net_pnl"].to_list(), name="net pnl"),
            ]
        )
        fig.update_layout(barmode="group")
        plot_layout(fig, title, "pnl", height=380).update_layout(hovermode="closest")
        rows = [
            [n, f"{t:,}", f"{g:,.2f}", f"{f:,.2f}", f"{p:,.2f}", f"{w * 100:.1f}%"]
            for n, t, g, f, p, w in grouped.iter_rows()
        ]
        table = html_table(
            [key, "trades", "gross pnl", "fees", "net pnl", "win rate"], rows, f"by-{key}"
        )
        parts.append(figure_html(fig, f"attribution-{key}") + table)
    net = data.trades["pnl"].sum()
    change = data.metrics.final_equity - data.record.spec.config.portfolio.initial_equity
    parts.append(
        f"<p class=note>Closed trades net {net:,.2f}; final equity - starting cash "
        f"{change:,.2f}; the difference is the positions still open at the end.</p>"
    )
    return "".join(parts)


def _trades_table(trades: pl.DataFrame, limit: int = TRADES_SHOWN) -> str:
    shown = trades.head(limit).with_columns(
        pl.from_epoch(pl.col(c), "ns").dt.strftime("%Y-%m-%d %H:%M:%S")
        for c in ("entry_ts", "exit_ts")
    )
    rows = [
        [
            r["strategy"],
            r["venue"],
            r["symbol"],
            r["side"],
            f"{r['qty']:g}",
            r["entry_ts"],
            f"{r['entry_price']:,.6g}",
            r["exit_ts"],
            f"{r['exit_price']:,.6g}",
            f"{r['pnl']:,.4f}",
            f"{r['fees']:,.4f}",
        ]
        for r in shown.iter_rows(named=True)
    ]
    header = [
        "strategy",
        "venue",
        "symbol",
        "side",
        "qty",
        "entry (UTC)",
        "entry price",
        "exit (UTC)",
        "exit price",
        "net pnl",
        "fees",
    ]
    caption = f"first {shown.height:,} of {trades.height:,}" if trades.height else "none"
    return f"<h2>Trades ({caption})</h2>{html_table(header, rows, 'trades')}"


PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; }
th { background: #f3f3f3; }
#trades td, #metrics td:nth-child(2) { font-variant-numeric: tabular-nums; }
.note { color: #555; font-size: 0.9em; }
"""


def _page(data: RunData) -> str:
    names = ", ".join(s.name for s in data.record.spec.config.strategies)
    body = "".join(
        (
            _header(data),
            _metrics_table(data),
            f"<p class=note>Annualisation: {ANNUALISATION_NOTE} This run: P = "
            f"{annualisation(data.record):,.6g}.</p>",
            _curve_figures(data),
            _price_figures(data),
            _attribution(data),
            _trades_table(data.trades),
        )
    )
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>Keel report: {html_escape(names)} {html_escape(data.record.result.result_hash[:16])}</title>"
        f"<style>{PAGE_STYLE}</style><script>{plotly_script()}</script></head>"
        f"<body>{body}</body></html>\n"
    )
