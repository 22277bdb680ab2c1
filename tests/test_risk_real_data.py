"""Risk on real data from ../shared/data, through ``keel backtest --config`` as a user runs
it: the USDC depeg of March 2023 trips the depeg guard and it resumes after the peg held;
a daily loss limit halts a day and the next UTC day resumes; the kill switch in the config
refuses everything. Skipped when ../shared/data is absent (a fresh clone)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from tests.test_backtest_cli import keel, last_json

BINANCE_US = Path(__file__).resolve().parents[2] / "shared" / "data" / "binanceus-1m-2023-03"
pytestmark = pytest.mark.skipif(
    not (BINANCE_US / "BTCUSDC.csv").is_file(),
    reason="../shared/data/binanceus-1m-2023-03 is not present",
)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def backtest(tmp_path: Path, config: str, *data: str, start: str, end: str) -> dict:
    (tmp_path / "keel.toml").write_text(config)
    args = ["backtest", "--venue", "binanceus", "--config", "keel.toml"]
    for name in data:
        symbol = {"BTCUSDC": "BTC/USDC", "BTCUSD": "BTC/USD", "BTCUSDT": "BTC/USDT"}[name]
        args += ["--data", str(BINANCE_US / f"{name}.csv"), "--symbol", symbol]
    return last_json(keel(tmp_path, *args, "--start", start, "--end", end, "--json"))


DEPEG = """
[[strategies]]
name = "ma_cross"
instance = "ma"
symbols = ["BTC/USDC"]
params = { kind = "ema", fast = 10, slow = 30, mode = "long_short", qty = 0.1 }

[guards.depeg]
asset = "USDC"
reference = "USD"
threshold_pct = 1.0
resume_after = "6h"
action = "flatten"
"""


def test_the_usdc_depeg_of_march_2023_trips_the_guard_and_it_resumes(tmp_path: Path) -> None:
    run = backtest(
        tmp_path, DEPEG, "BTCUSDC", "BTCUSD", start="2023-03-09T00:00Z", end="2023-03-15T00:00Z"
    )
    events = run["risk_events"]
    trips = [e for e in events if (e["rule"], e["action"]) == ("depeg_guard", "flatten")]
    resumes = [e for e in events if (e["rule"], e["action"]) == ("depeg_guard", "resume")]
    assert trips and resumes, events[:20]
    first_trip = at(trips[0]["ts"])
    # USDC slid on 2023-03-10 (SVB) and bottomed around 0.88 USD on the 11th
    assert at("2023-03-10T00:00Z") <= first_trip <= at("2023-03-11T12:00Z"), trips[0]
    assert "1 USDC = 0.9" in trips[0]["detail"] and "USD" in trips[0]["detail"]
    last_resume = at(resumes[-1]["ts"])
    assert at("2023-03-12T00:00Z") <= last_resume <= at("2023-03-15T00:00Z"), resumes[-1]
    statuses = [(e["action"], e["rule"]) for e in events if e["action"] in ("safe_mode", "running")]
    assert statuses[0] == ("safe_mode", "depeg_guard")
    assert statuses[-1][0] == "running"
    # entries refused only while the guard was up: between a trip and the next resume
    windows = []
    for trip in trips:
        start = at(trip["ts"])
        end = min((at(r["ts"]) for r in resumes if at(r["ts"]) > start), default=None)
        windows.append((start, end))
    for e in events:
        if e["action"] == "reject":
            assert e["rule"] == "depeg_guard", e
            moment = at(e["ts"])
            assert any(s <= moment and (x is None or moment < x) for s, x in windows), e
    assert run["rejections"] == sum(1 for e in events if e["action"] == "reject") > 0


DAILY_LOSS = """
[[strategies]]
name = "ma_cross"
instance = "ma"
params = { kind = "ema", fast = 5, slow = 20, mode = "long_short", qty = 2 }

[risk]
max_daily_loss_pct = 1.0
flatten_on_halt = true

[portfolio]
starting_cash = 100000
"""


def test_a_daily_loss_limit_halts_the_day_and_the_next_utc_day_resumes(tmp_path: Path) -> None:
    run = backtest(
        tmp_path, DAILY_LOSS, "BTCUSDT", start="2023-03-01T00:00Z", end="2023-03-15T00:00Z"
    )
    events = run["risk_events"]
    halts = [e for e in events if (e["rule"], e["action"]) == ("max_daily_loss", "halted")]
    flattens = [e for e in events if (e["rule"], e["action"]) == ("max_daily_loss", "flatten")]
    assert halts and len(halts) == len(flattens), events[:10]
    for halt in halts:
        assert "daily loss" in halt["detail"] and "> max 1%" in halt["detail"]
        day = at(halt["ts"]).date()
        # nothing is approved for the rest of that day: every rejection that day is the halt
        for e in events:
            if e["action"] == "reject" and at(e["ts"]).date() == day and e["ts"] > halt["ts"]:
                assert e["rule"] == "max_daily_loss", e
        # and the next UTC day starts running again
        later = [e for e in events if e["action"] == "running" and e["ts"] > halt["ts"]]
        if later:
            assert at(later[0]["ts"]).date() > day, later[0]


KILLED = """
[[strategies]]
name = "ma_cross"
instance = "ma"
params = { kind = "ema", fast = 10, slow = 30, mode = "long_short", qty = 1 }

[risk]
trading_enabled = false
"""


def test_trading_disabled_in_the_config_refuses_every_signal(tmp_path: Path) -> None:
    run = backtest(tmp_path, KILLED, "BTCUSDT", start="2023-03-01T00:00Z", end="2023-03-02T00:00Z")
    assert run["fills"] == 0 and run["signals"] > 0
    assert run["rejections"] == len(run["risk_events"])
    assert {(e["rule"], e["action"]) for e in run["risk_events"]} == {("kill_switch", "reject")}
