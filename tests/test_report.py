"""``replay.report``, ``replay.run_check`` and ``keel report``: a real run (ma_cross on a
synthetic market written to Parquet in a temp dir), the self-contained report.html, metrics
recomputed from the stored events, the command line as a subprocess, damaged run directories,
and downsampling."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import msgspec
import numpy as np
import polars as pl
import pytest

from eventstore.errors import KeelError
from eventstore.server import URL_ENV
from replay.backtest import BacktestSpec, run_backtest
from replay.market import DataSource
from replay.report import (
    MAX_POINTS,
    REPORT_FILE,
    _trades_table,
    drawdown_pct,
    minmax_indices,
    report_is_stale,
    write_report,
)
from replay.run_check import check_run, recompute_metrics
from replay.run_files import load_run_data
from services.config import KeelConfig
from services.marketdata.synthetic import SyntheticMarket
from tests.factories import write_bar_file

ROOT = Path(__file__).resolve().parents[1]
SYMBOLS = ("BTC/USDT", "ETH/USDT")
PARAMS = {"kind": "ema", "fast": 5, "slow": 20, "mode": "long_short", "qty": 1}
TITLES = (
    "Equity",
    "Drawdown (% from running peak)",
    "Price with entries and exits: BTC/USDT",
    "Price with entries and exits: ETH/USDT",
    "Attribution by strategy",
    "Attribution by symbol",
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stored run: ma_cross ema 5/20 long_short over 2,500 synthetic 1m bars per symbol."""
    base = tmp_path_factory.mktemp("report")
    bars: dict[str, list] = {s: [] for s in SYMBOLS}
    for bar in SyntheticMarket(symbols=SYMBOLS, bars=2_500, seed=5).generate():
        bars[bar.symbol].append(bar)
    data = tuple(
        DataSource(
            location=str(write_bar_file(base / f"{s.replace('/', '')}.parquet", bars[s])), symbol=s
        ).with_digest()
        for s in SYMBOLS
    )
    config = msgspec.convert(
        {"strategies": [{"name": "ma_cross", "instance": "ma", "params": PARAMS}]}, KeelConfig
    )
    out = base / "run"
    result = run_backtest(BacktestSpec(config=config, data=data), out)
    assert result.trades > 50 and result.fills > 50
    return out


@pytest.fixture
def copy_of(run_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the run, free to damage."""
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


def keel(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != URL_ENV}
    env["COLUMNS"] = "200"
    return subprocess.run(
        [sys.executable, "-m", "cli.app", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=180,
    )


def assert_one_error(result: subprocess.CompletedProcess[str], needle: str) -> None:
    both = result.stdout + result.stderr
    assert result.returncode != 0, both
    assert "Traceback" not in both, both
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), both
    assert needle in lines[0], both


# --- report.html --------------------------------------------------------------------------------


def test_write_report_is_a_self_contained_page(copy_of: Path) -> None:
    path = write_report(copy_of)
    assert path == copy_of / REPORT_FILE
    page = path.read_text(encoding="utf-8")
    record = load_run_data(copy_of).record
    for title in TITLES:
        assert title in page
    assert "ma_cross" in page and "fast=5" in page and "slow=20" in page
    assert record.result.result_hash in page
    assert "525,600" in page  # the annualisation of 1m bars is documented on the page
    assert "fill prices" in page  # the price line's source is documented on the page
    # offline: plotly.js inline exactly once, nothing loaded from elsewhere
    assert "https://cdn" not in page
    assert page.count("plotly.js v") == 1
    assert not re.search(r"<script[^>]+src=", page)
    assert not re.search(r"<link[^>]+href=\"http", page)
    assert page.count("Plotly.newPlot(") == len(TITLES)
    trades = load_run_data(copy_of).trades
    assert f"Trades (first {trades.height:,} of {trades.height:,})" in page


def test_report_of_a_run_without_trades(tmp_path: Path) -> None:
    bars = list(SyntheticMarket(symbols=("BTC/USDT",), bars=300, seed=5).generate())
    source = DataSource(location=str(write_bar_file(tmp_path / "BTCUSDT.parquet", bars)))
    params = {**PARAMS, "slow": 400}  # never warmed up: no signal, no fill
    config = msgspec.convert({"strategies": [{"name": "ma_cross", "params": params}]}, KeelConfig)
    out = tmp_path / "run"
    assert run_backtest(BacktestSpec(config=config, data=(source,)), out).fills == 0
    data = load_run_data(out)
    assert check_run(data) == []
    page = write_report(out, data).read_text(encoding="utf-8")
    assert "No fills" in page and "No closed trades" in page and "Trades (none)" in page
    assert page.count("Plotly.newPlot(") == 2  # equity and drawdown


def test_trades_table_shows_the_first_500(run_dir: Path) -> None:
    trades = load_run_data(run_dir).trades
    many = pl.concat([trades] * (600 // trades.height + 1))
    table = _trades_table(many)
    assert f"first 500 of {many.height:,}" in table
    assert table.count("<tr>") == 501  # header row + 500


def test_report_is_rewritten_only_when_stale(copy_of: Path) -> None:
    assert report_is_stale(copy_of)
    path = write_report(copy_of)
    assert not report_is_stale(copy_of)
    run_json = copy_of / "run.json"
    old = run_json.stat().st_mtime_ns - 10**9
    os.utime(path, ns=(old, old))
    assert report_is_stale(copy_of)


# --- metrics recomputed from the events ---------------------------------------------------------


def test_recomputed_metrics_equal_metrics_json(run_dir: Path) -> None:
    data = load_run_data(run_dir)
    stored = msgspec.json.decode((run_dir / "metrics.json").read_bytes())
    recomputed = recompute_metrics(data)
    assert set(recomputed) >= {"sharpe", "sortino", "max_drawdown_pct", "trades", "fees"}
    for name, value in recomputed.items():
        assert value == stored[name], name
    assert check_run(data) == []


def test_drawdown_curve_matches_max_drawdown(run_dir: Path) -> None:
    data = load_run_data(run_dir)
    cash = data.record.spec.config.portfolio.starting_cash
    drawdown = drawdown_pct(data.equity["equity"].to_numpy(), cash)
    assert drawdown.max() <= 0.0
    assert -drawdown.min() == pytest.approx(data.metrics.max_drawdown_pct, rel=1e-12)


def test_tampered_metrics_are_reported(copy_of: Path) -> None:
    metrics = msgspec.json.decode((copy_of / "metrics.json").read_bytes())
    metrics["sharpe"] += 0.5
    (copy_of / "metrics.json").write_bytes(msgspec.json.encode(metrics))
    problems = check_run(load_run_data(copy_of))
    assert any("sharpe" in p and "metrics.json" in p for p in problems), problems

    result = keel("report", str(copy_of))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "warning:" in result.stderr and "sharpe" in result.stderr


# --- keel report --------------------------------------------------------------------------------


def test_keel_report_prints_summary_and_path(copy_of: Path) -> None:
    result = keel("report", str(copy_of))
    both = result.stdout + result.stderr
    assert result.returncode == 0, both
    assert "Traceback" not in both and "warning" not in both, both
    path = (copy_of / REPORT_FILE).resolve()
    assert f"report: {path}" in result.stdout.splitlines()
    assert path.is_file()
    assert "Keel backtest" in result.stdout and "sharpe / sortino" in result.stdout

    inode = path.stat().st_ino
    assert keel("report", str(copy_of)).returncode == 0
    assert path.stat().st_ino == inode  # up to date: not rewritten
    rebuilt = keel("report", "--rebuild", str(copy_of))
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert path.stat().st_ino != inode


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        ("missing", "is not a run directory"),
        ("empty", "is not a run directory"),
        ("file", "is not a run directory"),
        ("events", "events.parquet is damaged"),
        ("no-equity", "no equity.parquet"),
        ("metrics", "metrics.json is damaged"),
        ("run-json", "run.json is damaged"),
    ],
)
def test_keel_report_bad_run_dir(copy_of: Path, tmp_path: Path, damage: str, needle: str) -> None:
    target = copy_of
    if damage == "missing":
        target = tmp_path / "nowhere"
    elif damage == "empty":
        target = tmp_path / "empty"
        target.mkdir()
    elif damage == "file":
        target = copy_of / "metrics.json"
    elif damage == "events":
        events = copy_of / "events.parquet"
        events.write_bytes(events.read_bytes()[:1000])
    elif damage == "no-equity":
        (copy_of / "equity.parquet").unlink()
    elif damage == "metrics":
        (copy_of / "metrics.json").write_text("{not json")
    elif damage == "run-json":
        (copy_of / "run.json").write_text('{"spec": 1}')
    with pytest.raises(KeelError, match=re.escape(needle)):
        load_run_data(target)
    assert_one_error(keel("report", str(target)), needle)


# --- downsampling -------------------------------------------------------------------------------


def test_minmax_downsampling_keeps_the_extremes_of_a_million_points() -> None:
    rng = np.random.default_rng(3)
    equity = 100_000.0 * np.exp(np.cumsum(rng.normal(0.0, 1e-3, 1_000_000)))
    keep = minmax_indices(equity)
    assert len(keep) <= MAX_POINTS
    assert np.all(np.diff(keep) > 0)  # sorted, unique
    assert keep[0] == 0 and keep[-1] == len(equity) - 1
    assert equity[keep].min() == equity.min() and equity[keep].max() == equity.max()
    assert int(np.argmin(equity)) in keep and int(np.argmax(equity)) in keep

    drawdown = drawdown_pct(equity, 100_000.0)
    kept = drawdown[minmax_indices(drawdown)]
    assert kept.min() == drawdown.min() and kept.max() == drawdown.max()


@pytest.mark.parametrize("n", [0, 1, 7, MAX_POINTS, MAX_POINTS + 1, 12_345])
def test_minmax_downsampling_sizes(n: int) -> None:
    values = np.sin(np.arange(n) / 50.0) * np.arange(n)
    keep = minmax_indices(values)
    if n <= MAX_POINTS:
        assert keep.tolist() == list(range(n))
    else:
        assert len(keep) <= MAX_POINTS
        assert values[keep].min() == values.min() and values[keep].max() == values.max()
