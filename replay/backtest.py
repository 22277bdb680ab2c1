"""A backtest: a spec (config + data + window) replayed in process into a run directory.

RUN_DIR layout:
- ``run.json``: the spec, the result hash and the metrics (what ``keel replay`` re-runs);
- ``events.parquet``: every output event (producer, subject, type, ts, ids, JSON payload);
- ``trades.parquet``: round trips from the fills; ``equity.parquet``: the equity curve;
- ``metrics.json``: the summary; ``report.html``: interactive plots.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import numpy as np
import polars as pl

from contracts.intervals import periods_per_year
from eventstore.errors import KeelError
from replay.digest import HASH_FORMAT
from replay.engine import ReplayEngine
from replay.external import EventFile, external_count, with_events
from replay.market import DataSource, SkippedRows, market_events
from replay.metrics import (
    curve_metrics,
    pnl_stats,
)
from replay.recorded_venue import OrderCheck, RecordedSession, load_session
from replay.recorder import EQUITY_SCHEMA, TRADE_SCHEMA, RiskEvent, RunRecorder
from services.config import KeelConfig
from services.fleet import fleet_roles
from services.runtime.role import Role

RUN_FILE = "run.json"

# pl.Schema maps the Arrow schema directly: building an empty pyarrow table would import
# pandas (~50 MB) into every backtest.
TRADE_COLUMNS = dict(pl.Schema(TRADE_SCHEMA))
"""Columns of ``trades.parquet`` (one row per round trip, see replay/metrics.py Trade)."""

EQUITY_COLUMNS = dict(pl.Schema(EQUITY_SCHEMA))
"""Columns of ``equity.parquet``."""


class BacktestSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    config: KeelConfig
    data: tuple[DataSource, ...]
    start: int | None = None
    end: int | None = None
    periods_per_year: float | None = None
    events: tuple[EventFile, ...] = ()


class BacktestResult(msgspec.Struct, frozen=True):
    bars: int
    signals: int
    orders: int
    fills: int
    rejections: int
    dead_letters: int
    trades: int
    final_equity: float
    return_pct: float
    sharpe: float
    sortino: float
    max_drawdown_pct: float
    win_rate: float
    profit_factor: float | None
    exposure_pct: float
    fees: float
    wall_s: float
    bars_per_s: float
    result_hash: str
    interval: str
    risk_events: list[RiskEvent]
    external_events: int = 0
    # What ``result_hash`` hashes (replay/digest.py ``HASH_FORMAT``); records written before
    # format 2 lack the field.
    hash_format: int = 1
    # What stood in for the venues a gateway trades ("" = the paper venue only).
    venue: str = ""


class RunRecord(msgspec.Struct, frozen=True):
    spec: BacktestSpec
    result: BacktestResult


def run_backtest(
    spec: BacktestSpec,
    out_dir: Path | None = None,
    url: str | None = None,
    progress: Callable[[int], None] | None = None,
    verify_data: bool = True,
    skipped: SkippedRows | None = None,
) -> BacktestResult:
    """Replay ``spec`` in process; ``skipped`` collects the bar files' bad rows. A config
    with gateway venues on a recorded stream replays with the recorded venue answers
    (``recorded_venue.py``)."""
    started = time.perf_counter()
    roles = fleet_roles(spec.config)
    session = recorded_session(spec, url, roles)
    if session is not None:
        return _run_recorded(spec, session, roles, out_dir, progress, started)
    market = market_events(spec.data, url, spec.start, spec.end, verify_data, skipped)
    bars = with_events(market, spec.events, spec.start, spec.end, verify_data)  # --events
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    recorder = RunRecorder([r.name for r in roles], out_dir)
    engine = ReplayEngine(roles, recorder.record)
    interval = ""
    try:
        for bar in bars:
            interval = interval or getattr(bar, "interval", "")
            engine.feed(bar)
            if progress and engine.market_events % 4096 == 0:
                progress(4096)
    finally:
        recorder.close()
    if progress:
        progress(engine.market_events % 4096)
    wall = time.perf_counter() - started
    external = external_count(bars)
    count = engine.market_events - external - market.others  # bars only
    result = summarise(spec, recorder, count, interval, wall, external)
    if out_dir is not None:
        _write_run(out_dir, spec, result)
    return result


def recorded_session(
    spec: BacktestSpec, url: str | None, roles: list[Role]
) -> RecordedSession | None:
    """The recorded session a spec replays, when its config has gateway venues and its data
    is a recorded stream; None otherwise (the paper venue alone)."""
    gateways = spec.config.gateways
    if not gateways or not any(source.is_stream for source in spec.data):
        return None
    if len(spec.data) != 1 or spec.events:
        raise KeelError(
            "a recorded venue replays one recorded session: give one --data STREAM and "
            "no bar or --events files"
        )
    windowed = spec.start is not None or spec.end is not None
    return load_session(spec.data[0], url, gateways, roles, windowed)


def _run_recorded(
    spec: BacktestSpec,
    session: RecordedSession,
    roles: list[Role],
    out_dir: Path | None,
    progress: Callable[[int], None] | None,
    started: float,
) -> BacktestResult:
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    recorder = RunRecorder([r.name for r in roles], out_dir)
    check = OrderCheck(session.orders, recorder.record)
    engine = ReplayEngine(roles, check)
    try:
        session.replay(engine, progress)
        check.finish()
    finally:
        recorder.close()
    wall = time.perf_counter() - started
    result = summarise(spec, recorder, session.bars, session.interval, wall)
    result = msgspec.structs.replace(result, venue=session.describe())
    if out_dir is not None:
        _write_run(out_dir, spec, result)
    return result


def summarise(
    spec: BacktestSpec,
    recorder: RunRecorder,
    bars: int,
    interval: str,
    wall: float,
    external: int = 0,
) -> BacktestResult:
    periods = spec.periods_per_year or periods_per_year(interval)
    cash = spec.config.portfolio.initial_equity  # starting_cash, plus venues' balances
    curve = curve_metrics(
        np.frombuffer(recorder.equity, dtype=np.float64),
        np.frombuffer(recorder.exposed, dtype=np.uint8),
        cash,
        periods,
    )
    win_rate, profit_factor = pnl_stats(np.frombuffer(recorder.trade_pnl, dtype=np.float64))
    counts = recorder.counts
    return BacktestResult(
        bars=bars,
        signals=counts.signals,
        orders=counts.orders,
        fills=counts.fills,
        rejections=counts.rejections,
        dead_letters=counts.dead_letters,
        trades=len(recorder.trade_pnl),
        final_equity=curve["final_equity"],
        return_pct=curve["return_pct"],
        sharpe=curve["sharpe"],
        sortino=curve["sortino"],
        max_drawdown_pct=curve["max_drawdown_pct"],
        win_rate=win_rate,
        profit_factor=profit_factor,
        exposure_pct=curve["exposure_pct"],
        fees=math.fsum(recorder.fees),
        wall_s=round(wall, 6),
        bars_per_s=round(bars / wall, 1) if wall > 0 else 0.0,
        result_hash=recorder.result_hash(),
        interval=interval,
        risk_events=recorder.risk_events,
        external_events=external,
        hash_format=HASH_FORMAT,
    )


def _write_run(out_dir: Path, spec: BacktestSpec, result: BacktestResult) -> None:
    """The run's record; events, equity and trades were streamed by the recorder."""
    record = RunRecord(spec, result)
    (out_dir / RUN_FILE).write_bytes(msgspec.json.format(msgspec.json.encode(record)))
    (out_dir / "metrics.json").write_bytes(msgspec.json.format(msgspec.json.encode(result)))


def load_run(run_dir: Path) -> RunRecord:
    path = run_dir / RUN_FILE
    try:
        return msgspec.json.decode(path.read_bytes(), type=RunRecord)
    except FileNotFoundError as exc:
        raise KeelError(f"{run_dir} is not a run directory (no {RUN_FILE})") from exc
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise KeelError(f"{path} is damaged or from another version: {exc}") from exc
