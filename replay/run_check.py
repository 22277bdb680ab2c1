"""A stored run's metrics recomputed from its events and compared with what it stored.

``recompute_metrics`` rebuilds the summary from the run's files (``replay.run_files``) with the
same functions ``run_backtest`` uses (``replay.metrics``): the equity curve from the
``EquitySnapshot`` events, trades as the fills' FIFO round trips (``trades_from_fills``), fees
as their sum, and the counts by event type. ``check_run`` compares them with ``metrics.json``
(1e-9 relative) and checks that ``equity.parquet``, ``trades.parquet`` and ``run.json`` agree
with the events.

Annualisation
-------------
Sharpe and Sortino are per-bar ratios scaled by ``sqrt(P)``, ``P`` the number of bars in a
year, from the bar interval, counting every calendar day (crypto trades 24/7; see
``contracts.intervals.periods_per_year``): ``1s`` -> 31,536,000; ``1m`` -> 525,600;
``5m`` -> 105,120; ``15m`` -> 35,040; ``1h`` -> 8,760; ``4h`` -> 2,190; ``1d`` -> 365;
``1w`` -> 52.14 (365 / 7); ``<n><unit>`` divides the unit's figure by ``n``. A spec's
``periods_per_year`` overrides it (e.g. 252 for equities on daily bars).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from contracts.intervals import periods_per_year
from eventstore.errors import KeelError
from replay.backtest import BacktestResult, RunRecord
from replay.metrics import curve_metrics, trade_stats, trades_from_fills
from replay.run_files import RunData

__all__ = ["annualisation", "check_run", "metric_differences", "recompute_metrics"]

REL_TOL = 1e-9
ABS_TOL = 1e-12
"""Below this absolute difference two metrics agree whatever their size (e.g. 0.0 vs 1e-17)."""


def annualisation(record: RunRecord) -> float:
    """``P``, the bars per year the run's Sharpe and Sortino were scaled with."""
    if record.spec.periods_per_year:
        return float(record.spec.periods_per_year)
    try:
        return periods_per_year(record.result.interval)
    except ValueError as exc:
        raise KeelError(f"run.json: {exc}") from exc


def recompute_metrics(data: RunData) -> dict[str, Any]:
    """The run's metrics recomputed from its events (keys as in ``metrics.json``)."""
    cash = data.record.spec.config.portfolio.initial_equity
    curve = curve_metrics(
        data.curve["equity"].to_numpy(),
        data.curve["gross_exposure"].to_numpy(),
        cash,
        annualisation(data.record),
    )
    trades = trades_from_fills(data.fills)
    win_rate, profit_factor = trade_stats(trades)
    return {
        **data.counts,
        "fills": len(data.fills),
        "trades": len(trades),
        **curve,
        "win_rate": win_rate,
        "profit_factor": profit_factor,
        "fees": math.fsum(f.fee for f in data.fills),
    }


def _agree(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL)
    return a == b


def metric_differences(stored: BacktestResult, recomputed: dict[str, Any]) -> list[str]:
    """``"name recomputed (stored s)"`` for each metric that differs beyond 1e-9 relative."""
    return [
        f"{name} {value!r} (stored {getattr(stored, name)!r})"
        for name, value in recomputed.items()
        if not _agree(value, getattr(stored, name))
    ]


def check_run(data: RunData) -> list[str]:
    """Disagreements between a run's files, one line each; empty when everything agrees."""
    problems: list[str] = []
    recomputed = recompute_metrics(data)
    differences = metric_differences(data.metrics, recomputed)
    if differences:
        problems.append(
            "metrics recomputed from events.parquet differ from metrics.json: "
            + ", ".join(differences)
        )
    if data.metrics != data.record.result:
        problems.append("metrics.json differs from the result in run.json")
    stored, rebuilt = data.equity, data.curve
    same_curve = stored.height == rebuilt.height and (
        np.array_equal(stored["ts"].to_numpy(), rebuilt["ts"].to_numpy())
        and np.allclose(
            stored["equity"].to_numpy(), rebuilt["equity"].to_numpy(), rtol=REL_TOL, atol=0
        )
    )
    if not same_curve:
        problems.append(
            f"equity.parquet ({stored.height:,} points) differs from the EquitySnapshot "
            f"events ({rebuilt.height:,} points)"
        )
    trades = recomputed["trades"]
    if data.trades.height != trades:
        problems.append(
            f"trades.parquet has {data.trades.height:,} trades, the fills give {trades:,}"
        )
    return problems
