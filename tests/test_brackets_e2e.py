"""``[risk] brackets = true``: risk attaches a signal's stop and target to the entry order and
the order manager in front of the paper venue works them as an OCO pair, in a backtest
through the same roles a live fleet runs."""

from __future__ import annotations

from pathlib import Path

import msgspec
import polars as pl

from replay.backtest import BacktestSpec, run_backtest
from replay.market import DataSource
from services.config import KeelConfig, StrategyConfig
from services.execution.paper_venue import PaperVenueConfig
from services.marketdata.synthetic import SyntheticMarket
from services.risk.limits import RiskLimits
from tests.factories import write_bar_file


def _market(path: Path) -> Path:
    bars = list(SyntheticMarket(symbols=("SOL/USDT",), bars=3_000, seed=21).generate())
    return write_bar_file(path, bars, epoch_ms=True)


def _run(tmp_path: Path, brackets: bool) -> pl.DataFrame:
    spec = BacktestSpec(
        config=KeelConfig(
            strategies=(StrategyConfig(name="trend_follower"),),
            risk=RiskLimits(brackets=brackets),
            execution=PaperVenueConfig(fill="next_open", fee_bps=10.0),
        ),
        data=(DataSource(location=str(_market(tmp_path / "sol.parquet")), symbol="SOL/USDT"),),
    )
    out = tmp_path / ("on" if brackets else "off")
    first = run_backtest(spec, out)
    assert run_backtest(spec).result_hash == first.result_hash
    return pl.read_parquet(out / "events.parquet")


def test_entries_carry_the_signal_stop_and_target_and_legs_fill(tmp_path: Path) -> None:
    events = _run(tmp_path, brackets=True)
    orders = [
        msgspec.json.decode(p)
        for p in events.filter(pl.col("type") == "OrderCommand")["payload"].to_list()
    ]
    entries = [o for o in orders if o.get("stop_loss") is not None]
    assert entries, "no entry carried a bracket"
    assert all(o["take_profit"] > o["stop_loss"] for o in entries)  # long-only strategy
    reports = [
        msgspec.json.decode(p)
        for p in events.filter(pl.col("type") == "ExecutionReport")["payload"].to_list()
    ]
    legs = {r["client_order_id"].rsplit(".", 1)[1] for r in reports if "." in r["client_order_id"]}
    assert legs == {"tp", "sl"}
    filled_legs = [r for r in reports if "." in r["client_order_id"] and r["status"] == "filled"]
    assert filled_legs, "no take-profit or stop ever filled"


def test_without_the_flag_orders_are_plain(tmp_path: Path) -> None:
    events = _run(tmp_path, brackets=False)
    orders = [
        msgspec.json.decode(p)
        for p in events.filter(pl.col("type") == "OrderCommand")["payload"].to_list()
    ]
    assert orders and not any(o.get("stop_loss") is not None for o in orders)
