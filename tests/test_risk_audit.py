"""The audit trail: rejections, risk alerts and risk's status changes become the run's
``risk_events`` ({ts, rule, action, detail}, ISO-8601 UTC), in process and in RUN_DIR."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec

from contracts.events import RiskAlert, RiskDecision
from contracts.system_events import SystemStatus
from replay.backtest import BacktestSpec, run_backtest
from replay.market import DataSource
from replay.recorder import RiskEvent, RunRecorder
from services.config import KeelConfig, StrategyConfig
from services.risk.limits import RiskLimits
from tests import scenario
from tests.test_backtest import write_csv

TS = 1_678_500_000_000_000_000  # 2023-03-11T02:00:00Z


def test_the_recorder_turns_rejections_alerts_and_statuses_into_risk_events() -> None:
    recorder = RunRecorder(["risk"])
    events = [
        RiskDecision(
            ts=TS, approved=False, strategy="ma", venue="v", symbol="BTC/USDC",
            rule="depeg_guard", reason="entries quoted in USDC halted",
        ),
        RiskAlert(ts=TS, rule="depeg_guard", action="flatten", detail="1 USDC = 0.88 USD"),
        SystemStatus(ts=TS, status="SAFE_MODE", reason="USDC depeg", source="risk", rule="depeg_guard"),
        SystemStatus(ts=TS + 1, status="RUNNING", reason="all clear", source="risk"),
    ]  # fmt: skip
    for event in events:
        recorder.record("subject", event, (event,), "risk")
    assert recorder.risk_events == [
        RiskEvent("2023-03-11T02:00:00Z", "depeg_guard", "reject", "ma BTC/USDC: entries quoted in USDC halted"),
        RiskEvent("2023-03-11T02:00:00Z", "depeg_guard", "flatten", "1 USDC = 0.88 USD"),
        RiskEvent("2023-03-11T02:00:00Z", "depeg_guard", "safe_mode", "USDC depeg"),
        RiskEvent("2023-03-11T02:00:00Z", "status", "running", "all clear"),
    ]  # fmt: skip
    assert recorder.counts.rejections == 1


def test_a_halt_and_its_end_are_in_the_run_directory(tmp_path: Path) -> None:
    """The golden scenario loses 2 on the short (1000 -> 998): a 0.1% daily loss limit
    halts it; the run's risk events say when and why."""
    data = write_csv(tmp_path / "btc.csv", scenario.bars())
    config = KeelConfig(
        strategies=(
            StrategyConfig(
                name="ma_cross",
                instance="ma",
                params={"kind": "sma", "fast": 2, "slow": 3, "mode": "long_short", "qty": 1},
            ),
        ),
        risk=RiskLimits(max_daily_loss_pct=0.1),
        portfolio=msgspec.convert({"portfolio": {"starting_cash": 1000.0}}, KeelConfig).portfolio,
    )
    spec = BacktestSpec(
        config=config,
        data=(DataSource(str(data), symbol=scenario.SYMBOL, venue=scenario.VENUE),),
    )
    result = run_backtest(spec, tmp_path / "run")
    actions = [(e.rule, e.action) for e in result.risk_events]
    assert ("max_daily_loss", "halted") in actions
    assert ("max_daily_loss", "halt") in actions
    halted = next(e for e in result.risk_events if e.action == "halted")
    assert (
        halted.ts.endswith("Z") and "daily loss" in halted.detail and "> max 0.1%" in halted.detail
    )
    stored = json.loads((tmp_path / "run" / "metrics.json").read_text())["risk_events"]
    assert stored == [msgspec.to_builtins(e) for e in result.risk_events]
