"""Backtest performance metrics computed from the stored events of a run.

Pure functions, no I/O: give them the ``EquitySnapshot`` and ``ExecutionReport`` events a run
left in the log and they return numbers. The curve metrics are vectorised with numpy (a
million-point curve takes milliseconds); only turning event structs into arrays walks the
events in Python.

Definitions
-----------
Equity curve
    One point per distinct ``ts``: the LAST ``EquitySnapshot`` at that ts in input (log)
    order, since several snapshots share a ts (one per symbol's bar, one after each fill).
    Points are sorted by ts. ``gross_exposure`` is kept from the same snapshot.
Periods per year ``P``
    From the bar interval (``contracts.intervals.periods_per_year``), counting every
    calendar day (crypto trades 24/7):
    ``"1s"`` -> 31_536_000, ``"1m"`` -> 525_600, ``"1h"`` -> 8_760, ``"1d"`` -> 365,
    ``"1w"`` -> 365 / 7 = 52.142857..., and ``"<n><unit>"`` divides by ``n``. Equities on
    daily bars usually annualise with 252 trading days: pass ``periods_override=252``.
    ``Metrics.annualisation`` reports the ``P`` used.
Returns
    ``r_t = equity_t / equity_{t-1} - 1`` over the curve (one per point, i.e. per bar
    close); the first point is compared with ``starting_cash``. A return whose previous
    equity is not > 0 (a blown account) is undefined and is dropped.
sharpe
    ``mean(r) / std(r, ddof=1) * sqrt(P)``; 0.0 when fewer than 2 returns or when
    ``std(r) <= 1e-12`` (numerically zero: a constant return series differs from its mean
    only by rounding, which would otherwise give a meaningless ~1e16).
sortino
    ``mean(r) / downside_dev * sqrt(P)`` with ``downside_dev = sqrt(mean(min(r, 0)^2))``
    over ALL returns (target 0); 0.0 when there are no returns or ``downside_dev <= 1e-12``
    (no losing period).
max_drawdown_pct
    ``max_t (peak_t - equity_t) / peak_t * 100`` with ``peak_t`` the running maximum of
    ``starting_cash`` followed by the curve (so a first point below starting cash is a
    drawdown); a positive number, 0.0 with no drawdown or no points.
final_equity, return_pct
    ``final_equity`` = the last curve point's equity, or ``starting_cash`` with no points;
    ``return_pct = (final_equity / starting_cash - 1) * 100``.
Trades
    FIFO round trips per ``(strategy, venue, symbol)`` from fill reports (status
    ``filled`` or ``partially_filled`` with ``fill_qty > 0``), in input order. Every fill
    that adds to (or opens) a position is a lot; a fill against the position closes the
    oldest lots first, giving ONE ``Trade`` per (lot, closing fill) match, so a partial
    close splits a lot and a close spanning two lots gives two trades. A fill larger than
    the position flips it: it closes every lot, then its remainder opens a lot the other
    way. A fill's fee is allocated in proportion to quantity (closing part vs opening
    part, and each lot's entry fee pro rata as the lot is closed); ``Trade.fees`` is the
    entry plus exit fee share and ``Trade.pnl = direction * qty * (exit - entry) - fees``
    (net of both legs' fees). Quantities within 1e-9 (relative) of zero are treated as
    zero. Positions still open at the end are not trades. Note this is per strategy and
    FIFO, whereas the portfolio ledger is per (venue, symbol) and average cost: lot by
    lot they differ, but once everything is flat the totals agree
    (``sum(pnl) == realized - fees``).
win_rate
    Winning trades (``pnl > 0``) / trades, a fraction in [0, 1]; 0.0 with no trades.
profit_factor
    ``sum(pnl of winners) / |sum(pnl of losers)|`` (losers: ``pnl < 0``). ``None`` means
    "no losing trades but some profit" (infinite, which JSON cannot carry); 0.0 when there
    is no gross profit (including no trades at all).
fees
    The sum of ``fee`` over the fill reports counted (``fills`` counts them).
exposure_pct
    Share of curve points whose ``gross_exposure > 0``, times 100; 0.0 with no points.
bars, signals, orders
    Passed through from the caller's counts.

No metric is ever NaN or infinite (``Metrics`` refuses them, so ``msgspec.json.encode``
always works): the guards above cover the degenerate cases, and a value that would still
overflow on absurd inputs is reported as 0.0.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Literal

import msgspec
import numpy as np

from contracts.events import EquitySnapshot, ExecutionReport
from contracts.intervals import periods_per_year

__all__ = [
    "CURVE_DTYPE",
    "EquityPoint",
    "Metrics",
    "Trade",
    "compute_metrics",
    "curve_metrics",
    "curve_points",
    "equity_curve",
    "is_fill",
    "max_drawdown_pct",
    "returns",
    "sharpe",
    "sortino",
    "trade_stats",
    "trades_from_fills",
]

CURVE_DTYPE = np.dtype([("ts", np.int64), ("equity", np.float64)])
"""``equity_curve``'s structured dtype: ts stays int64 (nanoseconds exceed float precision)."""

ZERO_DISPERSION = 1e-12
"""A standard or downside deviation at or below this is treated as zero."""

QTY_REL_TOL = 1e-9
"""A remaining quantity within this fraction of the lot / fill it belongs to is zero."""

_FILL_STATUSES = frozenset({"filled", "partially_filled"})


class EquityPoint(msgspec.Struct, frozen=True, array_like=True):
    """One point of the equity curve; encodes as ``[ts, equity]``."""

    ts: int
    equity: float


class Trade(msgspec.Struct, frozen=True):
    """A closed FIFO round trip; ``pnl`` is net of both legs' ``fees``."""

    strategy: str
    venue: str
    symbol: str
    side: Literal["long", "short"]
    qty: float
    entry_ts: int
    exit_ts: int
    entry_price: float
    exit_price: float
    pnl: float
    fees: float


class Metrics(msgspec.Struct, frozen=True):
    """A run's performance; see the module docstring for each definition.

    ``profit_factor`` is ``None`` when there are winning trades and no losing ones.
    """

    bars: int
    signals: int
    orders: int
    fills: int
    final_equity: float
    return_pct: float
    sharpe: float
    sortino: float
    max_drawdown_pct: float
    win_rate: float
    profit_factor: float | None
    fees: float
    trades: int
    exposure_pct: float
    annualisation: float

    def __post_init__(self) -> None:
        for field in self.__struct_fields__:
            value = getattr(self, field)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{field} must be finite")


# --- equity curve -------------------------------------------------------------------------------


def _last_per_ts(ts: np.ndarray) -> np.ndarray:
    """Indices that sort ``ts`` (stably) keeping only the last entry of each distinct ts."""
    order = np.argsort(ts, kind="stable")
    sorted_ts = ts[order]
    keep = np.ones(len(order), dtype=bool)
    keep[:-1] = sorted_ts[1:] != sorted_ts[:-1]
    return order[keep]


def _curve_arrays(
    snapshots: Iterable[EquitySnapshot],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ts, equity, gross_exposure) of the curve: last snapshot per ts, sorted by ts."""
    snaps = snapshots if isinstance(snapshots, Sequence) else list(snapshots)
    n = len(snaps)
    ts = np.fromiter((s.ts for s in snaps), dtype=np.int64, count=n)
    equity = np.fromiter((s.equity for s in snaps), dtype=np.float64, count=n)
    exposure = np.fromiter((s.gross_exposure for s in snaps), dtype=np.float64, count=n)
    index = _last_per_ts(ts)
    return ts[index], equity[index], exposure[index]


def equity_curve(snapshots: Iterable[EquitySnapshot]) -> np.ndarray:
    """The equity curve as a structured array (``CURVE_DTYPE``: ``ts``, ``equity``).

    One point per distinct ts, the last snapshot at that ts in input order, sorted by ts.
    """
    ts, equity, _ = _curve_arrays(snapshots)
    curve = np.empty(len(ts), dtype=CURVE_DTYPE)
    curve["ts"] = ts
    curve["equity"] = equity
    return curve


def curve_points(curve: np.ndarray) -> list[EquityPoint]:
    """``equity_curve``'s array as structs (each JSON-encodes as ``[ts, equity]``)."""
    return [
        EquityPoint(ts=int(t), equity=float(e))
        for t, e in zip(curve["ts"].tolist(), curve["equity"].tolist(), strict=True)
    ]


# --- curve metrics (vectorised) -----------------------------------------------------------------


def _finite(value: float) -> float:
    value = float(value)
    return value if math.isfinite(value) else 0.0


def returns(equity: np.ndarray, starting_cash: float) -> np.ndarray:
    """Per-point simple returns, the first against ``starting_cash``.

    Returns whose previous equity is not > 0 are dropped (undefined).
    """
    equity = np.asarray(equity, dtype=np.float64)
    if equity.size == 0:
        return np.empty(0, dtype=np.float64)
    if starting_cash > 0 and bool((equity[:-1] > 0).all()):
        # Every return is defined: the same divisions, without the masked copies (a
        # 10-million-point curve would otherwise need ~40 bytes a point of temporaries).
        r = np.empty_like(equity)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            np.divide(equity[:1], starting_cash, out=r[:1])
            np.divide(equity[1:], equity[:-1], out=r[1:])
            r -= 1.0
        return r
    previous = np.empty_like(equity)
    previous[0] = starting_cash
    previous[1:] = equity[:-1]
    valid = previous > 0
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        r = equity[valid] / previous[valid] - 1.0
    return r


def sharpe(r: np.ndarray, periods: float) -> float:
    """``mean(r) / std(r, ddof=1) * sqrt(periods)``; 0.0 below 2 returns or with zero std."""
    r = np.asarray(r, dtype=np.float64)
    if r.size < 2:
        return 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        std = float(np.std(r, ddof=1))
        if not math.isfinite(std) or std <= ZERO_DISPERSION:
            return 0.0
        return _finite(float(np.mean(r)) / std * math.sqrt(periods))


def sortino(r: np.ndarray, periods: float) -> float:
    """``mean(r) / sqrt(mean(min(r, 0)^2)) * sqrt(periods)``; 0.0 with no downside."""
    r = np.asarray(r, dtype=np.float64)
    if r.size == 0:
        return 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        downside = np.minimum(r, 0.0)
        downside_dev = math.sqrt(float(np.mean(np.multiply(downside, downside, out=downside))))
        if not math.isfinite(downside_dev) or downside_dev <= ZERO_DISPERSION:
            return 0.0
        return _finite(float(np.mean(r)) / downside_dev * math.sqrt(periods))


def max_drawdown_pct(equity: np.ndarray, starting_cash: float) -> float:
    """Largest fall from the running peak (``starting_cash`` included), in percent, >= 0."""
    equity = np.asarray(equity, dtype=np.float64)
    if equity.size == 0:
        return 0.0
    peak = np.maximum.accumulate(np.maximum(equity, starting_cash))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        fall = np.subtract(peak, equity)
        drawdown = float(np.max(np.divide(fall, peak, out=fall))) * 100.0
    return max(_finite(drawdown), 0.0)


def curve_metrics(
    equity: np.ndarray, gross_exposure: np.ndarray, starting_cash: float, periods: float
) -> dict[str, float]:
    """The curve-derived metrics from plain arrays (already one point per ts, in ts order).

    ``gross_exposure`` may be any numeric array (a backtest passes one byte a point). The
    drawdown is computed before the returns so their temporaries are never alive together.
    """
    if not (math.isfinite(starting_cash) and starting_cash > 0):
        raise ValueError("starting_cash must be finite and > 0")
    equity = np.asarray(equity, dtype=np.float64)
    exposure = np.asarray(gross_exposure)
    if exposure.shape != equity.shape:
        raise ValueError("equity and gross_exposure must have the same length")
    final = float(equity[-1]) if equity.size else float(starting_cash)
    drawdown = max_drawdown_pct(equity, starting_cash)
    r = returns(equity, starting_cash)
    return {
        "final_equity": final,
        "return_pct": _finite((final / starting_cash - 1.0) * 100.0),
        "sharpe": sharpe(r, periods),
        "sortino": sortino(r, periods),
        "max_drawdown_pct": drawdown,
        "exposure_pct": float(np.count_nonzero(exposure > 0)) / equity.size * 100.0
        if equity.size
        else 0.0,
    }


# --- trades -------------------------------------------------------------------------------------


def is_fill(report: ExecutionReport) -> bool:
    """A report that moved a position: status filled / partially_filled and ``fill_qty > 0``."""
    return report.status in _FILL_STATUSES and report.fill_qty > 0


class _Lot:
    __slots__ = ("fee", "orig", "price", "qty", "ts")

    def __init__(self, qty: float, price: float, ts: int, fee: float) -> None:
        self.qty = qty  # remaining, > 0
        self.orig = qty
        self.price = price
        self.ts = ts
        self.fee = fee  # entry fee not yet allocated to a trade


class _Book:
    __slots__ = ("direction", "lots")

    def __init__(self) -> None:
        self.direction = 0  # +1 long, -1 short, 0 flat
        self.lots: deque[_Lot] = deque()


class TradeBook:
    """FIFO lots per (strategy, venue, symbol), fed one fill at a time: a backtest folds its
    fills as they happen instead of keeping them all."""

    def __init__(self) -> None:
        self._books: dict[tuple[str, str, str], _Book] = {}

    def add(self, fill: ExecutionReport) -> list[Trade]:
        """The round trips this fill closes (none for a report that is not a fill)."""
        if not is_fill(fill):
            return []
        key = (fill.strategy, fill.venue, fill.symbol)
        book = self._books.get(key)
        if book is None:
            book = self._books[key] = _Book()
        sign = 1 if fill.side == "buy" else -1
        price = fill.fill_price
        remaining = fill.fill_qty
        fee_left = fill.fee
        tol = QTY_REL_TOL * fill.fill_qty
        trades: list[Trade] = []

        if book.lots and book.direction != sign:
            side: Literal["long", "short"] = "long" if book.direction > 0 else "short"
            while book.lots and remaining > tol:
                lot = book.lots[0]
                matched = min(lot.qty, remaining)
                lot_done = lot.qty - matched <= QTY_REL_TOL * lot.orig
                remaining -= matched
                fill_done = remaining <= tol
                entry_fee = lot.fee if lot_done else lot.fee * matched / lot.qty
                exit_fee = fee_left if fill_done else fill.fee * matched / fill.fill_qty
                fee_left -= exit_fee
                pnl = book.direction * matched * (price - lot.price) - entry_fee - exit_fee
                trades.append(
                    Trade(
                        strategy=fill.strategy,
                        venue=fill.venue,
                        symbol=fill.symbol,
                        side=side,
                        qty=matched,
                        entry_ts=lot.ts,
                        exit_ts=fill.ts,
                        entry_price=lot.price,
                        exit_price=price,
                        pnl=pnl,
                        fees=entry_fee + exit_fee,
                    )
                )
                if lot_done:
                    book.lots.popleft()
                else:
                    lot.qty -= matched
                    lot.fee -= entry_fee
            if not book.lots:
                book.direction = 0

        if remaining > tol:  # opens, adds to, or (after a flip) reopens a position
            book.direction = sign
            book.lots.append(_Lot(remaining, price, fill.ts, fee_left))
        return trades


def trades_from_fills(fills: Iterable[ExecutionReport]) -> list[Trade]:
    """FIFO round trips per (strategy, venue, symbol), in the order they close.

    Reports that are not fills (``is_fill``) are skipped; see the module docstring for lot
    matching, flips and fee allocation. Open positions at the end produce no trade.
    """
    book = TradeBook()
    return [trade for fill in fills for trade in book.add(fill)]


def trade_stats(trades: Sequence[Trade]) -> tuple[float, float | None]:
    """``(win_rate, profit_factor)`` of closed trades, as defined in the module docstring."""
    pnl = np.fromiter((t.pnl for t in trades), dtype=np.float64, count=len(trades))
    return pnl_stats(pnl)


def pnl_stats(pnl: np.ndarray) -> tuple[float, float | None]:
    """``(win_rate, profit_factor)`` from the trades' net pnl."""
    if not pnl.size:
        return 0.0, 0.0
    gross_profit = float(pnl[pnl > 0].sum())
    gross_loss = -float(pnl[pnl < 0].sum())
    win_rate = float(np.count_nonzero(pnl > 0)) / pnl.size
    if gross_profit <= 0:
        return win_rate, 0.0
    if gross_loss <= 0:
        return win_rate, None
    return win_rate, _finite(gross_profit / gross_loss)


# --- everything ---------------------------------------------------------------------------------


def compute_metrics(
    *,
    snapshots: Iterable[EquitySnapshot],
    fills: Iterable[ExecutionReport],
    starting_cash: float,
    interval: str,
    bars: int,
    signals: int,
    orders: int,
    periods_override: float | None = None,
) -> Metrics:
    """All metrics of a run. ``fills`` may hold any execution reports; only fills count.

    ``periods_override`` replaces ``periods_per_year(interval)`` (e.g. 252 for equities on
    daily bars); ``interval`` is still validated.
    """
    periods = periods_per_year(interval)
    if periods_override is not None:
        if not (math.isfinite(periods_override) and periods_override > 0):
            raise ValueError("periods_override must be finite and > 0")
        periods = float(periods_override)
    _, equity, exposure = _curve_arrays(snapshots)
    curve = curve_metrics(equity, exposure, starting_cash, periods)

    real_fills = [f for f in fills if is_fill(f)]
    trades = trades_from_fills(real_fills)
    win_rate, profit_factor = trade_stats(trades)
    fees = math.fsum(f.fee for f in real_fills)
    return Metrics(
        bars=bars,
        signals=signals,
        orders=orders,
        fills=len(real_fills),
        final_equity=curve["final_equity"],
        return_pct=curve["return_pct"],
        sharpe=curve["sharpe"],
        sortino=curve["sortino"],
        max_drawdown_pct=curve["max_drawdown_pct"],
        win_rate=win_rate,
        profit_factor=profit_factor,
        fees=_finite(fees),
        trades=len(trades),
        exposure_pct=curve["exposure_pct"],
        annualisation=periods,
    )
