"""``keel backtest`` and ``keel replay`` as a user runs them: a real subprocess, file data in
``tmp_path``, no NATS server (``KEEL_NATS_URL`` unset; file data never needs one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import msgspec
import polars as pl
import pytest

from contracts.codec import decode
from contracts.events import ExecutionReport, Signal
from eventstore.server import URL_ENV
from replay.backtest import BacktestSpec, run_backtest
from replay.market import DataSource
from services.config import KeelConfig
from services.marketdata.synthetic import SyntheticMarket
from tests import scenario
from tests.factories import MINUTE, write_bar_file
from tests.test_backtest import csv_text, iso

JSON_KEYS = {
    "bars",
    "signals",
    "orders",
    "fills",
    "final_equity",
    "return_pct",
    "sharpe",
    "sortino",
    "max_drawdown_pct",
    "win_rate",
    "profit_factor",
    "fees",
    "wall_s",
    "bars_per_s",
    "result_hash",
    "risk_events",
}
EMA_ARGS = ["--strategy", "ma_cross", "--param", "kind=ema", "--param", "mode=long_short"]


def keel(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != URL_ENV}
    env["COLUMNS"] = "200"
    return subprocess.run(
        [sys.executable, "-m", "cli.app", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return result


def last_json(result: subprocess.CompletedProcess[str]) -> dict:
    """The JSON object on the last line of stdout; no other line is one."""
    lines = [line for line in ok(result).stdout.splitlines() if line.strip()]
    assert lines, result.stderr
    assert not [line for line in lines[:-1] if line.lstrip().startswith("{")], result.stdout
    document = json.loads(lines[-1])
    assert isinstance(document, dict)
    return document


def assert_one_error(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Non-zero exit, no traceback, and stderr is exactly one ``error:`` line."""
    both = result.stdout + result.stderr
    assert result.returncode != 0, both
    assert "Traceback" not in both, both
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:"), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def scenario_files(tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "scenario.csv"
    data.write_text(csv_text(scenario.bars()))
    config = tmp_path / "keel.toml"
    config.write_text(scenario.CONFIG.replace("{fill}", "next_open"))
    return data, config


SCENARIO_ARGS = ["--symbol", scenario.SYMBOL, "--venue", scenario.VENUE, "--config", "keel.toml"]


# --- --json -------------------------------------------------------------------------------------


def test_json_is_one_object_on_the_last_line(tmp_path: Path) -> None:
    data, config = scenario_files(tmp_path)
    document = last_json(keel(tmp_path, "backtest", "--data", data.name, *SCENARIO_ARGS, "--json"))

    assert set(document) >= JSON_KEYS
    assert isinstance(document["risk_events"], list) and document["risk_events"] == []
    assert (document["bars"], document["signals"], document["orders"], document["fills"]) == (
        10,
        2,
        2,
        2,
    )
    assert document["final_equity"] == pytest.approx(scenario.EXPECTED_EQUITY, abs=1e-9)
    assert document["fees"] == pytest.approx(0.034, abs=1e-12)
    assert len(document["result_hash"]) == 64
    for key in JSON_KEYS - {"result_hash", "risk_events", "profit_factor"}:
        assert isinstance(document[key], int | float), key

    # the command line runs the same spec as the library
    spec = BacktestSpec(
        config=msgspec.convert(tomllib.loads(config.read_text()), KeelConfig),
        data=(DataSource(str(data), symbol=scenario.SYMBOL, venue=scenario.VENUE),),
    )
    assert run_backtest(spec).result_hash == document["result_hash"]


def test_start_and_end_window_the_bars(tmp_path: Path) -> None:
    data, _ = scenario_files(tmp_path)
    minute = MINUTE
    start = iso(scenario.T0 + 2 * minute).replace("+00:00", "Z")
    end = iso(scenario.T0 + 7 * minute)
    document = last_json(
        keel(
            tmp_path,
            "backtest",
            "--data",
            data.name,
            *SCENARIO_ARGS,
            "--start",
            start,
            "--end",
            end,
            "--json",
        )
    )
    assert document["bars"] == 5


def test_risk_events_in_json(tmp_path: Path) -> None:
    data, config = scenario_files(tmp_path)
    config.write_text(
        config.read_text().replace("max_position = 5", "max_position = 5\nmax_order_notional = 1")
    )
    document = last_json(keel(tmp_path, "backtest", "--data", data.name, *SCENARIO_ARGS, "--json"))
    assert document["fills"] == 0
    assert len(document["risk_events"]) == document["signals"] == 2
    for event in document["risk_events"]:
        assert event["ts"].endswith("Z")
        assert (event["rule"], event["action"]) == ("max_order_notional", "reject")


# --- --data / --symbol pairs --------------------------------------------------------------------


def test_each_data_file_takes_the_symbol_that_follows_it(tmp_path: Path) -> None:
    def bars(symbol: str, seed: int) -> list:
        return list(SyntheticMarket(symbols=(symbol,), bars=300, seed=seed).generate())

    low = bars("SOL/USDT", 1)  # ~50
    high = bars("BTC/USDT", 2)  # ~30,000
    write_bar_file(tmp_path / "low.parquet", low)
    write_bar_file(tmp_path / "high.parquet", high)
    ranges = {
        "LOW/X": (min(b.low for b in low), max(b.high for b in low)),
        "HIGH/X": (min(b.low for b in high), max(b.high for b in high)),
    }

    def symbols_and_prices(run: str, *data_args: str) -> dict[str, list[float]]:
        args = ["backtest", *data_args, *EMA_ARGS, "--out", run, "--json"]
        document = last_json(keel(tmp_path, *args))
        assert document["bars"] == 600
        events = [
            decode(p.encode())
            for p in pl.read_parquet(tmp_path / run / "events.parquet")["payload"].to_list()
        ]
        signals = {e.symbol for e in events if isinstance(e, Signal)}
        prices: dict[str, list[float]] = {}
        for e in events:
            if isinstance(e, ExecutionReport) and e.fill_qty > 0:
                prices.setdefault(e.symbol, []).append(e.fill_price)
        assert signals == set(prices)
        return prices

    for run, data_args in (
        (
            "forward",
            [
                "--data",
                "low.parquet",
                "--symbol",
                "LOW/X",
                "--data",
                "high.parquet",
                "--symbol",
                "HIGH/X",
            ],
        ),
        (
            "reverse",
            ["--data=high.parquet", "--symbol=HIGH/X", "--data=low.parquet", "--symbol=LOW/X"],
        ),
    ):
        prices = symbols_and_prices(run, *data_args)
        assert set(prices) == set(ranges), run
        for symbol, fills in prices.items():
            lo, hi = ranges[symbol]
            assert all(lo <= p <= hi for p in fills), (run, symbol)

    # without a --symbol a file's symbol is its stem
    prices = symbols_and_prices(
        "stem", "--data", "low.parquet", "--data", "high.parquet", "--symbol", "HIGH/X"
    )
    assert set(prices) == {"low", "HIGH/X"}
    assert all(ranges["LOW/X"][0] <= p <= ranges["LOW/X"][1] for p in prices["low"])


# --- --out and keel replay ----------------------------------------------------------------------


def test_out_then_replay_is_identical_until_the_data_changes(tmp_path: Path) -> None:
    data, _ = scenario_files(tmp_path)
    stored = ok(keel(tmp_path, "backtest", "--data", data.name, *SCENARIO_ARGS, "--out", "run"))
    assert "run stored in" in stored.stdout
    for name in ("run.json", "events.parquet", "trades.parquet", "equity.parquet", "metrics.json"):
        assert (tmp_path / "run" / name).is_file(), name

    replayed = ok(keel(tmp_path, "replay", "run"))
    assert "identical" in replayed.stdout
    as_json = last_json(keel(tmp_path, "replay", "run", "--json"))
    assert as_json["identical"] is True
    assert as_json["result_hash"] == as_json["recorded_hash"]

    data.write_text(data.read_text().replace(",12.0,", ",12.5,", 1))
    changed = keel(tmp_path, "replay", "run")
    assert changed.returncode == 2
    assert_one_error(changed, "changed", data.name)


def test_replay_of_a_run_hashed_in_an_older_format_says_so(tmp_path: Path) -> None:
    """A record written before result-hash format 2 has no ``hash_format``: its hash cannot be
    compared, and replay says so in one line instead of calling the run different."""
    data, _ = scenario_files(tmp_path)
    ok(keel(tmp_path, "backtest", "--data", data.name, *SCENARIO_ARGS, "--out", "run"))
    run_json = tmp_path / "run" / "run.json"
    record = json.loads(run_json.read_text())
    assert record["result"]["hash_format"] == 2
    del record["result"]["hash_format"]
    run_json.write_text(json.dumps(record))
    old = keel(tmp_path, "replay", "run")
    assert old.returncode == 2
    assert_one_error(old, "result-hash format 1", "record the run again")


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["backtest", "--data", "scenario.csv", "--strategy", "nope"], "nope"),
        (
            ["backtest", "--data", "scenario.csv", "--strategy", "ma_cross", "--param", "fast=x"],
            "fast",
        ),
        (["backtest", "--data", "missing.csv"], "missing.csv"),
        (["backtest", "--data", "empty.csv"], "empty"),
        (["backtest", "--data", "scenario.csv", "--start", "yesterday"], "--start"),
        (["backtest", "--data", "scenario.csv", "--end", "soon"], "--end"),
        (["backtest", "--data", "scenario.csv", "--param", "fast=3"], "--strategy"),
        (["backtest", "--symbol", "X", "--data", "scenario.csv"], "--symbol"),
        (["backtest", "--data", "scenario.csv", "--symbol", "A", "--symbol", "B"], "two --symbol"),
        (["backtest", "--data", "scenario.csv", "--cash", "-5"], "starting_cash"),
        (["backtest", "--data", "scenario.csv", "--start", "2030-01-01"], "no bars"),
        (["backtest"], "--data"),
        (["replay", "notarun"], "not a run directory"),
        (["replay", "damaged"], "damaged"),
    ],
)
def test_bad_input_is_one_error_line(tmp_path: Path, args: list[str], needle: str) -> None:
    scenario_files(tmp_path)
    (tmp_path / "empty.csv").write_bytes(b"")
    (tmp_path / "notarun").mkdir()
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "run.json").write_text('{"spec": 1}')
    assert_one_error(keel(tmp_path, *args), needle)


def test_param_without_equals_is_one_error_line(tmp_path: Path) -> None:
    scenario_files(tmp_path)
    args = ["backtest", "--data", "scenario.csv", "--strategy", "ma_cross", "--param", "fast"]
    assert_one_error(keel(tmp_path, *args), "key=value")
