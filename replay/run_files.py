"""The files ``run_backtest`` left in a run directory, read back and validated.

``run.json``, ``metrics.json``, ``events.parquet``, ``equity.parquet`` and ``trades.parquet``;
nothing is re-run and no market data is read. From the events:

* the equity curve is the ``EquitySnapshot`` events, decoded column-wise by polars, keeping
  the last snapshot of each ts in log order, sorted by ts (exactly the recorder's rule);
* fills are the ``ExecutionReport`` events with ``fill_qty > 0``;
* signals, orders and rejections (``RiskDecision`` with ``approved`` false) are counted by
  event type. Dead letters are not counted: the recorder counts them without storing them.

A missing or damaged file is a ``KeelError`` of one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import polars as pl

from contracts.events import ExecutionReport
from eventstore.errors import KeelError
from replay.backtest import (
    EQUITY_COLUMNS,
    RUN_FILE,
    TRADE_COLUMNS,
    BacktestResult,
    RunRecord,
    load_run,
)

__all__ = ["RunData", "load_run_data"]

_SNAPSHOT = pl.Struct({"equity": pl.Float64, "gross_exposure": pl.Float64})
_DECISION = pl.Struct({"approved": pl.Boolean})
_REPORTS = msgspec.json.Decoder(list[ExecutionReport])


@dataclass(frozen=True)
class RunData:
    """What a run directory holds, read and validated."""

    run_dir: Path
    record: RunRecord
    metrics: BacktestResult
    """``metrics.json``."""
    equity: pl.DataFrame
    """``equity.parquet``: ts, equity, gross_exposure."""
    trades: pl.DataFrame
    """``trades.parquet``."""
    curve: pl.DataFrame
    """The equity curve rebuilt from the EquitySnapshot events: ts, equity, gross_exposure."""
    fills: list[ExecutionReport]
    """ExecutionReport events with ``fill_qty > 0``, in log order."""
    counts: dict[str, int]
    """signals, orders and rejections counted from the events."""


def _damaged(path: Path, exc: BaseException) -> KeelError:
    first = str(exc).strip().splitlines()
    return KeelError(f"{path} is damaged: {first[0] if first else type(exc).__name__}")


def _read_table(path: Path, columns: dict[str, Any]) -> pl.DataFrame:
    if not path.is_file():
        raise KeelError(f"{path.parent} is not a complete run directory (no {path.name})")
    try:
        frame = pl.read_parquet(path, columns=list(columns))
        return frame.cast(columns, strict=True)
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        raise _damaged(path, exc) from exc


def load_run_data(run_dir: Path) -> RunData:
    """Read every stored file of a run; ``KeelError`` (one line) if one is missing or damaged."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise KeelError(f"{run_dir} is not a run directory")
    try:
        record = load_run(run_dir)
    except OSError as exc:
        raise _damaged(run_dir / RUN_FILE, exc) from exc
    metrics_path = run_dir / "metrics.json"
    try:
        metrics = msgspec.json.decode(metrics_path.read_bytes(), type=BacktestResult)
    except FileNotFoundError as exc:
        raise KeelError(f"{run_dir} is not a complete run directory (no metrics.json)") from exc
    except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise _damaged(metrics_path, exc) from exc
    equity = _read_table(run_dir / "equity.parquet", EQUITY_COLUMNS)
    trades = _read_table(run_dir / "trades.parquet", TRADE_COLUMNS)
    curve, fills, counts = _read_events(run_dir / "events.parquet")
    return RunData(run_dir, record, metrics, equity, trades, curve, fills, counts)


def _is(event_type: str) -> pl.Expr:
    return pl.col("type") == event_type


def _read_events(path: Path) -> tuple[pl.DataFrame, list[ExecutionReport], dict[str, int]]:
    if not path.is_file():
        raise KeelError(f"{path.parent} is not a complete run directory (no {path.name})")
    try:
        scan = pl.scan_parquet(path)
        # Lazy queries: the payloads are decoded by polars into typed columns (str.json_decode
        # parses floats exactly) without holding every payload string in memory at once.
        curve, rejected, report_rows, by_type = pl.collect_all(
            [
                scan.filter(_is("EquitySnapshot"))
                .select(
                    pl.col("ts").cast(pl.Int64),
                    pl.col("payload").str.json_decode(_SNAPSHOT).alias("p"),
                )
                .unnest("p")
                .group_by("ts", maintain_order=True)
                .last()
                .sort("ts", maintain_order=True),
                scan.filter(_is("RiskDecision"))
                .select(pl.col("payload").str.json_decode(_DECISION).struct.field("approved"))
                .filter(pl.col("approved").not_())
                .select(pl.len()),
                scan.filter(_is("ExecutionReport")).select("payload"),
                scan.group_by("type").len(),
            ]
        )
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        raise _damaged(path, exc) from exc
    rejections = int(rejected.item())
    payloads = report_rows["payload"].to_list()
    del report_rows
    if curve.select(pl.all().is_null().any()).row(0) != (False, False, False):
        raise KeelError(f"{path} is damaged: an EquitySnapshot without equity")
    try:
        reports = _REPORTS.decode(("[" + ",".join(payloads) + "]").encode())
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise _damaged(path, exc) from exc
    fills = [r for r in reports if r.fill_qty > 0]
    per_type = dict(zip(by_type["type"].to_list(), by_type["len"].to_list(), strict=True))
    counts = {
        "signals": per_type.get("Signal", 0),
        "orders": per_type.get("OrderCommand", 0),
        "rejections": rejections,
    }
    return curve, fills, counts
