"""``keel sweep``: grid parsing, invalid combinations, parallel runs equal to serial ones, the
Parquet table queried with DuckDB, walk-forward folds, external events (``--events``) given to
every run and window as a backtest gets them, and bad input as one error line.

The market is ``SyntheticMarket`` (one symbol, 3,000 1m bars = 50 hours) written as CSV into a
temporary directory; the CLI runs as a real subprocess without a NATS server.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import msgspec
import polars as pl
import pytest

from contracts.codec import encode
from eventstore.errors import KeelError
from eventstore.server import URL_ENV
from replay.backtest import BacktestSpec, run_backtest
from replay.external import EventFile
from replay.market import DataSource, file_digest
from replay.sweep import (
    WINDOW_COLUMNS,
    SweepRecord,
    best_index,
    data_range,
    make_folds,
    query_hint,
    run_sweep,
    write_sweep,
)
from replay.sweep_plan import SweepSpec, WalkForward, parse_grid, plan_sweep, spec_with
from services.config import KeelConfig, StrategyConfig
from services.marketdata.synthetic import SyntheticMarket
from strategies.registry import StrategyError
from tests.external_scenario import T0, sentiment_readings
from tests.factories import MINUTE
from tests.test_backtest import write_csv
from tests.test_backtest_cli import keel as keel_cli
from tests.test_backtest_cli import last_json as cli_json
from tests.test_external_replay import SNIPER, files, listing, write_events
from tests.test_external_replay import spec as sniper_spec

SYMBOL = "BTC/USDT"
HOUR = 3600 * 10**9
GRID_ARGS = ["--grid", "fast=5,10", "--grid", "slow=30,50"]
COMBOS = {(5, 30), (5, 50), (10, 30), (10, 50)}


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Path:
    bars = list(SyntheticMarket(symbols=(SYMBOL,), bars=3000, seed=11).generate())
    return write_csv(tmp_path_factory.mktemp("market") / "btc.csv", bars)


def direct_spec(
    market: Path,
    params: dict,
    start: int | None = None,
    end: int | None = None,
    strategy: str = "ma_cross",
    events: tuple[EventFile, ...] = (),
) -> BacktestSpec:
    """The spec a single ``keel backtest --strategy <strategy>`` would run, built independently."""
    config = msgspec.structs.replace(
        KeelConfig(),
        strategies=(StrategyConfig(name=strategy, instance=strategy, params=params),),
    )
    source = DataSource(location=str(market.resolve()), symbol=SYMBOL)
    return BacktestSpec(config=config, data=(source,), start=start, end=end, events=events)


def sweep_of(market: Path, grid: list[str], **kwargs) -> SweepSpec:
    return SweepSpec(base=direct_spec(market, {"kind": "ema"}), grid=parse_grid(grid), **kwargs)


def keel(cwd: Path, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != URL_ENV}
    env["COLUMNS"] = "200"
    return subprocess.Popen(
        [sys.executable, "-m", "cli.app", "sweep", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
    )


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    stdout, stderr = proc.communicate(timeout=120)
    return proc.returncode, stdout, stderr


def ok(proc: subprocess.Popen[str]) -> tuple[str, str]:
    code, stdout, stderr = finish(proc)
    assert code == 0, stdout + stderr
    assert "Traceback" not in stdout + stderr
    return stdout, stderr


def last_json(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.strip()]
    assert not [line for line in lines[:-1] if line.lstrip().startswith("{")], stdout
    return json.loads(lines[-1])


def params_of(row: dict) -> dict:
    return {k[2:]: v for k, v in row.items() if k.startswith("p_")}


# --- parsing ------------------------------------------------------------------------------------


def test_grid_values_and_ranges() -> None:
    grid = parse_grid(["fast=5,10,20", "slow=30:60:10", "qty=0.5:2:0.5", "kind=sma, ema"])
    assert grid == {
        "fast": ["5", "10", "20"],
        "slow": [30, 40, 50],
        "qty": [0.5, 1.0, 1.5],
        "kind": ["sma", "ema"],
    }
    assert parse_grid(["slow=50:20:-10,100,50,100"]) == {"slow": [50, 40, 30, "100", "50"]}
    assert parse_grid(["qty=0.1:0.4:0.1"]) == {"qty": [0.1, 0.2, 0.3]}  # exact decimal steps


@pytest.mark.parametrize(
    ("items", "needle"),
    [
        ([], "empty grid"),
        (["fast"], "must look like key=v1,v2"),
        (["=5"], "must look like"),
        (["fast=5", "fast=6"], "given twice"),
        (["fast=5,,6"], "empty value"),
        (["fast=5:5:1"], "range is empty"),
        (["fast=1:9:0"], "step must not be 0"),
    ],
)
def test_bad_grids(items: list[str], needle: str) -> None:
    with pytest.raises(KeelError, match=needle):
        parse_grid(items)


def test_durations() -> None:
    assert WalkForward.parse("90s", "1.5h").train_ns == 90 * 10**9
    assert WalkForward.parse("90s", "1.5h").test_ns == 90 * 60 * 10**9
    assert WalkForward.parse("2d", "1w").train_ns == 48 * HOUR
    assert WalkForward.parse("2d", "1w").test_ns == 168 * HOUR
    for bad in ("7", "1y", "0d", "-1h", "h"):
        with pytest.raises(KeelError):
            WalkForward.parse(bad, "1d")


def test_folds_roll_by_the_test_window() -> None:
    folds = make_folds(0, 10, 4, 2)
    assert [(f.train_start, f.train_end, f.test_start, f.test_end) for f in folds] == [
        (0, 4, 4, 6),
        (2, 6, 6, 8),
        (4, 8, 8, 10),
    ]
    assert [f.fold for f in folds] == [1, 2, 3]
    assert len(make_folds(0, 9, 4, 2)) == 2
    assert make_folds(0, 5, 4, 2) == []


def test_best_index_directions() -> None:
    assert best_index([1.0, 3.0, 3.0, 2.0], "sharpe") == 1  # ties: grid order
    assert best_index([1.0, 0.5, 2.0], "max_drawdown_pct") == 1
    assert best_index([2.0, None, 5.0], "profit_factor") == 1  # None: no losing trade


# --- planning -----------------------------------------------------------------------------------


def test_invalid_combinations_are_skipped_and_counted(market: Path) -> None:
    plan = plan_sweep(sweep_of(market, ["fast=10:40:10", "slow=20,30"]))
    assert [(p["fast"], p["slow"]) for p in plan.params] == [(10, 20), (10, 30), (20, 30)]
    assert all(p["kind"] == "ema" for p in plan.params)
    assert plan.skipped == [
        "fast (20) must be below slow (20)",
        "fast (30) must be below slow (20)",
        "fast (30) must be below slow (30)",
    ]
    typed = plan_sweep(sweep_of(market, ["fast=5,5:6:1,5:7:1", "slow=30"]))
    assert [p["fast"] for p in typed.params] == [5, 6]  # "5" and 5: one value once typed


@pytest.mark.parametrize(
    ("grid", "needle"),
    [
        (["fast=50", "slow=20,30"], "no valid combination in the grid (2 tried)"),
        (["fats=5"], "has no param 'fats'"),
        (["fast=abc"], "grid fast='abc'"),
        (["kind=wma"], "grid kind='wma'"),
    ],
)
def test_plan_refuses(market: Path, grid: list[str], needle: str) -> None:
    with pytest.raises(StrategyError, match=re.escape(needle)):
        plan_sweep(sweep_of(market, grid))


# --- the library --------------------------------------------------------------------------------


def test_parallel_sweep_equals_serial_runs(market: Path, tmp_path: Path) -> None:
    sweep = sweep_of(market, ["fast=5,10", "slow=30,50"])
    outcome = run_sweep(sweep, workers=2)
    table = outcome.table

    assert table.height == 4
    assert {(r["p_fast"], r["p_slow"]) for r in table.iter_rows(named=True)} == COMBOS
    assert table["p_fast"].dtype == pl.Int64 and table["p_kind"].to_list() == ["ema"] * 4
    assert table["bars"].to_list() == [3000] * 4
    for row, spec in zip(table.iter_rows(named=True), outcome.specs, strict=True):
        assert spec == spec_with(sweep.base, params_of(row))
        serial = run_backtest(direct_spec(market, params_of(row)))
        assert row["result_hash"] == serial.result_hash
        assert row["return_pct"] == serial.return_pct and row["trades"] == serial.trades
    assert len(set(table["result_hash"])) == 4

    parquet = write_sweep(tmp_path / "out", sweep, outcome)
    record = msgspec.json.decode((tmp_path / "out" / "sweep.json").read_bytes(), type=SweepRecord)
    assert record.sweep == sweep and record.runs == 4 and record.skipped == []
    best = duckdb.sql(query_hint(parquet, "sharpe", 10)).pl()
    assert best.height == 4
    assert best["sharpe"].to_list() == sorted(table["sharpe"].to_list(), reverse=True)
    assert best.columns == table.columns


# --- the command line ---------------------------------------------------------------------------


def test_cli_grid_table_and_duckdb_query(
    market: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ["--strategy", "ma_cross", "--param", "kind=ema", *GRID_ARGS, "--data", str(market)]
    stdout, _ = ok(keel(tmp_path, *args, "--symbol", SYMBOL, "--workers", "2", "--top", "3"))

    assert "top 3 runs by sharpe" in stdout
    commands = [line for line in stdout.splitlines() if line.startswith("duckdb -c ")]
    assert len(commands) == 1, stdout
    query = re.fullmatch(r'duckdb -c "(.*)"', commands[0])
    assert query is not None
    assert re.fullmatch(
        r"select \* from 'sweeps/\d{8}T\d{6}Z/sweep.parquet' order by sharpe desc limit 3",
        query.group(1),
    ), query.group(1)

    monkeypatch.chdir(tmp_path)  # the printed path is relative to where keel ran
    best = duckdb.sql(query.group(1)).pl()
    table = duckdb.sql(f"select * from '{query.group(1).split(chr(39))[1]}'").pl()
    assert best.height == 3 and table.height == 4
    assert {(r["p_fast"], r["p_slow"]) for r in table.iter_rows(named=True)} == COMBOS
    assert best["sharpe"].to_list() == sorted(table["sharpe"].to_list(), reverse=True)[:3]
    for row in table.iter_rows(named=True):  # parallel processes == one direct run each
        assert row["result_hash"] == run_backtest(direct_spec(market, params_of(row))).result_hash
    out = next((tmp_path / "sweeps").iterdir())
    assert {p.name for p in out.iterdir()} == {"sweep.parquet", "sweep.json"}


def test_cli_json_counts_skipped_combinations(market: Path, tmp_path: Path) -> None:
    proc = keel(
        tmp_path,
        "--strategy",
        "ma_cross",
        "--grid",
        "fast=10:40:10",
        "--grid",
        "slow=20,30",
        "--data",
        str(market),
        "--symbol",
        SYMBOL,
        "--workers",
        "2",
        "--sort",
        "max_drawdown_pct",
        "--out",
        "grid",
        "--json",
    )
    stdout, stderr = ok(proc)
    document = last_json(stdout)

    assert set(document) >= {"runs", "skipped", "out", "best", "folds"}
    assert (document["runs"], document["skipped"], document["folds"]) == (3, 3, None)
    assert Path(document["out"]) == (tmp_path / "grid").resolve()
    notes = [line for line in stderr.splitlines() if line.strip()]
    assert len(notes) == 1 and notes[0].startswith("skipped 3 invalid combinations: "), stderr
    assert "fast (20) must be below slow (20)" in notes[0]
    table = pl.read_parquet(tmp_path / "grid" / "sweep.parquet")
    assert document["best"]["max_drawdown_pct"] == min(table["max_drawdown_pct"])
    assert document["best"]["result_hash"] in set(table["result_hash"])


def test_cli_walk_forward(market: Path, tmp_path: Path) -> None:
    proc = keel(
        tmp_path,
        "--strategy",
        "ma_cross",
        "--param",
        "kind=ema",
        "--grid",
        "fast=5,20",
        "--grid",
        "slow=30,60",
        "--data",
        str(market),
        "--symbol",
        SYMBOL,
        "--train",
        "12h",
        "--test",
        "6h",
        "--workers",
        "2",
        "--out",
        "wf",
        "--json",
    )
    document = last_json(ok(proc)[0])
    table = pl.read_parquet(tmp_path / "wf" / "sweep.parquet")

    # 50 hours of bars: folds start every 6h while start + 18h <= 50h -> 0h, 6h, ..., 30h
    folds = document["folds"]
    assert len(folds) == 6 and [f["fold"] for f in folds] == [1, 2, 3, 4, 5, 6]
    assert document["runs"] == table.height == 6 * 4 + 6
    test_rows = table.filter(pl.col("phase") == "test").sort("fold")
    train_rows = table.filter(pl.col("phase") == "train")
    assert test_rows.height == 6 and train_rows.height == 24
    ns = {c: test_rows[c].cast(pl.Int64).to_list() for c in ("train_start", "train_end")}
    ns |= {c: test_rows[c].cast(pl.Int64).to_list() for c in ("test_start", "test_end")}
    for k in range(6):
        assert ns["train_end"][k] - ns["train_start"][k] == 12 * HOUR
        assert ns["test_start"][k] == ns["train_end"][k]
        assert ns["test_end"][k] - ns["test_start"][k] == 6 * HOUR
        if k:
            assert ns["test_start"][k] == ns["test_end"][k - 1]  # test windows tile, no overlap
            assert ns["train_start"][k] - ns["train_start"][k - 1] == 6 * HOUR
    assert test_rows["bars"].to_list() == [360] * 6
    assert train_rows["bars"].to_list() == [720] * 24

    for k, test in enumerate(test_rows.iter_rows(named=True)):
        fold_train = train_rows.filter(pl.col("fold") == test["fold"])
        assert {(r["p_fast"], r["p_slow"]) for r in fold_train.iter_rows(named=True)} == {
            (5, 30),
            (5, 60),
            (20, 30),
            (20, 60),
        }
        winner = fold_train.row(int(fold_train["sharpe"].arg_max()), named=True)
        assert params_of(test) == params_of(winner)
        assert folds[k]["params"] == params_of(winner)
        assert folds[k]["train_metric"] == winner["sharpe"]
        assert folds[k]["test_metric"] == test["sharpe"]

    # the test phase really is the winner replayed on the test window alone
    first = test_rows.row(0, named=True)
    window = direct_spec(market, params_of(first), ns["test_start"][0], ns["test_end"][0])
    assert run_backtest(window).result_hash == first["result_hash"]

    oos = document["out_of_sample"]
    returns = test_rows["return_pct"].to_list()
    assert oos["mean_return_pct"] == pytest.approx(sum(returns) / 6)
    assert oos["mean_sharpe"] == pytest.approx(test_rows["sharpe"].mean())
    compounded = 1.0
    for r in returns:
        compounded *= 1 + r / 100
    assert oos["compounded_return_pct"] == pytest.approx((compounded - 1) * 100)
    assert document["best"]["phase"] == "test"


def test_library_walk_forward_matches_folds(market: Path) -> None:
    sweep = sweep_of(
        market,
        ["fast=5,10", "slow=30"],
        sort="return_pct",
        walk_forward=WalkForward.parse("1d", "12h"),
    )
    outcome = run_sweep(sweep, workers=1)
    assert outcome.folds is not None and len(outcome.folds) == 2  # t = 0h, 12h (36h <= 50h)
    tests = outcome.table.filter(pl.col("phase") == "test")
    assert tests["fold"].to_list() == [1, 2]
    for summary, row in zip(outcome.folds, tests.iter_rows(named=True), strict=True):
        assert summary.params == params_of(row)
        assert summary.test_return_pct == row["return_pct"]


BAD_INPUTS = {
    "unknown strategy": (["--strategy", "nope", *GRID_ARGS], "unknown strategy 'nope'"),
    "unknown grid key": (["--strategy", "ma_cross", "--grid", "fats=5"], "no param 'fats'"),
    "bad grid value": (["--strategy", "ma_cross", "--grid", "fast=x,5"], "fast='x'"),
    "bad range": (["--strategy", "ma_cross", "--grid", "fast=9:5:1"], "range is empty"),
    "empty grid": (["--strategy", "ma_cross"], "empty grid"),
    "no valid combination": (
        ["--strategy", "ma_cross", "--grid", "fast=40,50", "--grid", "slow=30"],
        "no valid combination",
    ),
    "train without test": (
        ["--strategy", "ma_cross", *GRID_ARGS, "--train", "7d"],
        "--train and --test",
    ),
    "bad duration": (
        ["--strategy", "ma_cross", *GRID_ARGS, "--train", "7x", "--test", "1d"],
        "--train '7x'",
    ),
    "no full fold": (
        ["--strategy", "ma_cross", *GRID_ARGS, "--train", "2d", "--test", "1d"],
        "no full fold",
    ),
    "bad sort": (["--strategy", "ma_cross", *GRID_ARGS, "--sort", "alpha"], "--sort 'alpha'"),
    "param and grid": (
        ["--strategy", "ma_cross", *GRID_ARGS, "--param", "fast=3"],
        "given both as --param and as --grid",
    ),
    "missing data": (["--strategy", "ma_cross", *GRID_ARGS, "--data", "missing.csv"], "missing"),
}


def test_bad_input_is_one_error_line(market: Path, tmp_path: Path) -> None:
    data = ["--data", str(market), "--symbol", SYMBOL]
    procs = {
        name: keel(tmp_path, *args, *([] if "--data" in args else data), "--workers", "2")
        for name, (args, _) in BAD_INPUTS.items()
    }
    for name, proc in procs.items():
        code, stdout, stderr = finish(proc)
        assert code == 2, (name, stdout, stderr)
        assert "Traceback" not in stdout + stderr, name
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), (name, stderr)
        assert BAD_INPUTS[name][1] in lines[0], (name, lines[0])
    assert not (tmp_path / "sweeps").exists()


# --- external events ----------------------------------------------------------------------------


def test_cli_sweep_with_events_rows_equal_backtests(tmp_path: Path) -> None:
    data, events = files(tmp_path)  # 10 bars of NEW/USDT, a listing at T0+2m
    fixed = [a for k in ("notional", "take_profits") for a in ("--param", f"{k}={SNIPER[k]}")]
    proc = keel(
        tmp_path,
        "--strategy",
        "listing_sniper",
        *fixed,
        "--grid",
        "delay_s=0,120",
        "--grid",
        "stop_pct=5,10",
        "--data",
        data.name,
        "--symbol",
        "NEW/USDT",
        "--venue",
        "test",
        "--events",
        events.name,
        "--workers",
        "2",
        "--out",
        "grid",
    )
    stdout, _ = ok(proc)

    assert "top 4 runs by sharpe" in stdout
    header = next(line for line in stdout.splitlines() if "delay_s" in line)
    assert "events" in header, stdout
    parquet = tmp_path / "grid" / "sweep.parquet"
    assert f"duckdb -c \"select * from '{parquet.relative_to(tmp_path)}'" in stdout
    table = duckdb.sql(f"select * from '{parquet}' order by run").pl()
    assert table.height == 4
    pinned = (EventFile(str(events.resolve()), file_digest(events)),)
    for row in table.iter_rows(named=True):  # each grid point == its own backtest, same events
        direct = run_backtest(spec_with(sniper_spec(data, pinned), params_of(row)))
        assert row["result_hash"] == direct.result_hash, params_of(row)
        assert (row["bars"], row["external_events"], row["trades"]) == (
            10,
            1,
            direct.trades,
        )
        assert row["signals"] > 0  # without the listing the sniper never trades
    assert table["result_hash"].n_unique() > 1  # the grid changes the outcome

    record = msgspec.json.decode((tmp_path / "grid" / "sweep.json").read_bytes(), type=SweepRecord)
    assert record.sweep.base.events == pinned  # the stored sweep names its events, by content


def test_cli_walk_forward_with_events_test_windows_equal_backtests(
    market: Path, tmp_path: Path
) -> None:
    lo, hi = data_range(direct_spec(market, {}))
    readings = sentiment_readings(SYMBOL, lo + 7 * MINUTE, hi, 45 * MINUTE)
    crowd = write_events(tmp_path / "crowd.jsonl", readings)
    fixed = {"cooldown_s": 0, "target_pct": 0.3}
    proc = keel(
        tmp_path,
        "--strategy",
        "meme_sentiment",
        *[a for k, v in fixed.items() for a in ("--param", f"{k}={v}")],
        "--grid",
        "min_score=0.6,0.8",
        "--grid",
        "stop_pct=0.3,1",
        "--data",
        str(market),
        "--symbol",
        SYMBOL,
        "--events",
        crowd.name,
        "--train",
        "12h",
        "--test",
        "12h",
        "--workers",
        "2",
        "--out",
        "wf",
        "--json",
    )
    document = last_json(ok(proc)[0])
    table = pl.read_parquet(tmp_path / "wf" / "sweep.parquet")

    assert len(document["folds"]) == 3 and document["runs"] == table.height == 3 * (4 + 1)
    windows = table.with_columns(pl.col(c).cast(pl.Int64) for c in WINDOW_COLUMNS)
    for row in windows.iter_rows(named=True):  # each run got the events of its window only
        start, end = (row["train_start"], row["train_end"])
        if row["phase"] == "test":
            start, end = (row["test_start"], row["test_end"])
        assert row["external_events"] == sum(start <= e.ts < end for e in readings), row
        assert row["external_events"] > 0 and row["signals"] > 0

    pinned = (EventFile(str(crowd.resolve()), file_digest(crowd)),)
    tests = windows.filter(pl.col("phase") == "test").sort("fold")
    for row in tests.iter_rows(named=True):
        window = direct_spec(
            market,
            params_of(row),
            row["test_start"],
            row["test_end"],
            strategy="meme_sentiment",
            events=pinned,
        )
        assert run_backtest(window).result_hash == row["result_hash"], row["fold"]

    # and `keel backtest` of the first test window, with the same events, says the same
    first = table.filter(pl.col("phase") == "test").sort("fold").row(0, named=True)
    backtest = cli_json(
        keel_cli(
            tmp_path,
            "backtest",
            "--strategy",
            "meme_sentiment",
            *[a for k, v in params_of(first).items() for a in ("--param", f"{k}={v}")],
            "--data",
            str(market),
            "--symbol",
            SYMBOL,
            "--events",
            crowd.name,
            "--start",
            first["test_start"].isoformat(),
            "--end",
            first["test_end"].isoformat(),
            "--json",
        )
    )
    assert backtest["result_hash"] == first["result_hash"]
    assert backtest["external_events"] == first["external_events"]


def test_a_bad_events_file_is_one_error_line(market: Path, tmp_path: Path) -> None:
    good = write_events(tmp_path / "good.jsonl", [listing(T0)])
    (tmp_path / "garbled.jsonl").write_bytes(encode(listing(T0)) + b"\n{not json\n")
    (tmp_path / "unknown.jsonl").write_bytes(b'{"type":"Rumour","ts":1}\n')
    cases = {
        "missing.jsonl": "events missing.jsonl: no such file",
        "garbled.jsonl": "garbled.jsonl:2: ",
        "unknown.jsonl": "unknown.jsonl:1: Invalid value 'Rumour'",
    }
    common = ["--strategy", "meme_sentiment", "--grid", "min_score=0.6,0.8"]
    data = ["--data", str(market), "--symbol", SYMBOL, "--workers", "2"]
    procs = {
        name: keel(tmp_path, *common, *data, "--events", good.name, "--events", name)
        for name in cases
    }
    for name, proc in procs.items():
        code, stdout, stderr = finish(proc)
        assert code != 0, (name, stdout, stderr)
        assert "Traceback" not in stdout + stderr, name
        assert not stdout.strip(), (name, stdout)
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), (name, stderr)
        assert cases[name] in lines[0], (name, lines[0])
    assert not (tmp_path / "sweeps").exists()


def test_library_sweep_refuses_bad_or_changed_events_before_running(
    market: Path, tmp_path: Path
) -> None:
    path = write_events(tmp_path / "e.jsonl", [listing(T0)])
    pinned = EventFile(str(path)).with_digest()
    sweep = sweep_of(market, ["fast=5,10", "slow=30"])
    changed = msgspec.structs.replace(
        sweep, base=msgspec.structs.replace(sweep.base, events=(pinned,))
    )
    path.write_bytes(path.read_bytes() + encode(listing(T0 + MINUTE)) + b"\n")
    with pytest.raises(KeelError, match="changed since"):  # the workers do not re-hash
        run_sweep(changed, workers=2)
    path.write_bytes(b"{not json\n")
    garbled = msgspec.structs.replace(
        sweep, base=msgspec.structs.replace(sweep.base, events=(EventFile(str(path)),))
    )
    with pytest.raises(KeelError, match=re.escape("e.jsonl:1")):
        run_sweep(garbled, workers=2)
