"""The fleet end to end: each worker its own process, a real nats-server, hand-computed results."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from contracts.envelope import bar_envelope
from contracts.events import (
    EquitySnapshot,
    Event,
    ExecutionReport,
    OrderCommand,
    PositionChanged,
    Signal,
)
from eventstore.bus import Bus, Stored
from eventstore.lag import wait_drained
from eventstore.server import EmbeddedServer
from services.config import load_config
from services.fleet import Fleet, WorkerProcess, consumer_names, fleet_plan
from tests import scenario
from tests.crash_worker import CRASH_CODE, start_crashing


async def events(bus: Bus, subject: str, stream: str) -> list[Event]:
    return [item.event async for item in bus.read(subject, stream) if isinstance(item, Stored)]


async def publish_and_settle(bus: Bus, names: set[str], bars: list) -> None:
    """One bar at a time, each drained before the next: a deterministic live session."""
    for bar in bars:
        await bus.publish(bar, bar_envelope(bar))
        assert await wait_drained(bus, names, timeout=30), "pipeline did not settle"


def start_fleet(tmp_path: Path, url: str, fill: str, crash: dict[str, int] | None = None):
    """The config's fleet; a worker named in ``crash`` exits before committing its Nth
    batch that published outputs (``tests/crash_worker.py``)."""
    config_path = tmp_path / "keel.toml"
    config_path.write_text(scenario.CONFIG.replace("{fill}", fill))
    config = load_config(config_path)
    fleet = Fleet(url, tmp_path / "logs")
    for worker in fleet_plan(config, config_path):
        if crash and worker.name in crash:
            start_crashing(fleet, worker.name, config_path, crash[worker.name])
        else:
            fleet.start(worker)
    return fleet, config, config_path


async def assert_scenario_outcome(bus: Bus) -> None:
    fills = [
        (e.side, e.fill_qty, e.fill_price, e.fee)
        for e in await events(bus, "exec.>", "EXECUTION")
        if isinstance(e, ExecutionReport) and e.fill_qty > 0
    ]
    assert [f[:3] for f in fills] == [f[:3] for f in scenario.EXPECTED_FILLS]
    assert [f[3] for f in fills] == pytest.approx([f[3] for f in scenario.EXPECTED_FILLS])
    positions = [e for e in await events(bus, "pf.position.>", "PORTFOLIO")]
    assert len(positions) == 2
    last = positions[-1]
    assert isinstance(last, PositionChanged)
    assert (last.qty, last.avg_price, last.realized_pnl) == (1.0, 12.0, -2.0)
    equity = (await bus.last_event("PORTFOLIO", "pf.equity")).event
    assert isinstance(equity, EquitySnapshot)
    assert equity.ts == scenario.bars()[-1].close_time
    assert equity.equity == pytest.approx(scenario.EXPECTED_EQUITY, abs=1e-9)
    assert equity.cash == pytest.approx(985.966, abs=1e-9)
    assert equity.fees == pytest.approx(0.034, abs=1e-12)


async def test_hand_made_bars_give_the_hand_computed_fills(
    tmp_path: Path, nats_server: EmbeddedServer, bus: Bus
) -> None:
    fleet, config, _ = start_fleet(tmp_path, nats_server.url, "next_open")
    names = consumer_names(config)
    try:
        assert await wait_drained(bus, names, timeout=60), "workers did not start"
        await publish_and_settle(bus, names, scenario.bars())
        signals = await events(bus, "sig.>", "SIGNALS")
        assert [(s.target_position, s.ts) for s in signals if isinstance(s, Signal)] == [
            (-1.0, scenario.bars()[4].close_time),
            (1.0, scenario.bars()[7].close_time),
        ]
        orders = [e for e in await events(bus, "ord.>", "ORDERS") if isinstance(e, OrderCommand)]
        assert [(o.side, o.qty) for o in orders] == [("sell", 1.0), ("buy", 2.0)]
        await assert_scenario_outcome(bus)
        assert fleet.failed() == []
    finally:
        fleet.stop()


async def test_execution_crash_after_publish_before_ack_fills_exactly_once(
    tmp_path: Path, nats_server: EmbeddedServer, bus: Bus
) -> None:
    """The execution worker dies after storing accepted+filled and before its ack/snapshot."""
    fleet, config, config_path = start_fleet(tmp_path, nats_server.url, "close", {"execution": 1})
    names = consumer_names(config)
    bars = scenario.bars()
    try:
        assert await wait_drained(bus, names, timeout=60), "workers did not start"
        await publish_and_settle(bus, names, bars[:4])
        await bus.publish(bars[4], bar_envelope(bars[4]))
        execution = next(w for w in fleet.workers if w.name == "execution")
        for _ in range(300):
            if execution.proc.poll() is not None:
                break
            await asyncio.sleep(0.05)
        assert execution.proc.returncode == CRASH_CODE, "fault injection did not fire"
        reports = await events(bus, "exec.>", "EXECUTION")
        assert [r.status for r in reports] == ["accepted", "filled"]

        fleet.start(WorkerProcess("execution", ["run", "execution", "--config", str(config_path)]))
        assert await wait_drained(bus, names, timeout=30), "restarted worker did not catch up"
        reports = await events(bus, "exec.>", "EXECUTION")
        assert [r.status for r in reports] == ["accepted", "filled"], "re-published copies stored"

        await publish_and_settle(bus, names, bars[5:])
        await assert_scenario_outcome(bus)
    finally:
        fleet.stop()
