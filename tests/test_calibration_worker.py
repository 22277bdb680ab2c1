"""The calibration worker: a file's changes become ParamsTuned events on the log, one per
changed value, against a real nats-server; a bad or missing file keeps what is in force."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

import pytest

from contracts.envelope import tuning_envelope
from contracts.events import ParamsTuned
from eventstore.bus import Bus, Stored
from eventstore.server import EmbeddedServer
from services.strategy.calibration_worker import CalibrationWatch, run_calibration, tuning_events
from strategies.ma_hmm import Calibration, Calibrations

SYMBOL = "BTC/USDT"


def changes(events: list[ParamsTuned]) -> list[tuple[str, str, float, float]]:
    return [(e.symbol, e.param, e.old, e.new) for e in events]


def write(path: Path, table: dict[str, dict[str, float]] | str, step: int) -> None:
    """Rewrite and move the mtime on, so the change shows whatever the clock resolution."""
    path.write_text(table if isinstance(table, str) else json.dumps(table))
    stamp = 1_700_000_000_000_000_000 + step * 1_000_000_000
    os.utime(path, ns=(stamp, stamp))


def test_tuning_events_are_the_changed_values_with_new_entries_whole() -> None:
    before = Calibrations(Calibration(confidence_gain=1.2), {"ETH/USDT": Calibration(1.1)})
    after = Calibrations(
        Calibration(confidence_gain=1.5),
        {"ETH/USDT": Calibration(1.1, cooldown_scale=2.0), SYMBOL: Calibration(1.5, 2.0)},
    )
    events = tuning_events("mh", before, after, 7, "calibration f")
    assert changes(events) == [
        ("*", "confidence_gain", 1.2, 1.5),
        (SYMBOL, "confidence_gain", 1.5, 1.5),
        (SYMBOL, "quote_multiplier", 1.0, 2.0),
        (SYMBOL, "cooldown_scale", 1.0, 1.0),
        ("ETH/USDT", "cooldown_scale", 1.0, 2.0),
    ]
    assert {(e.ts, e.strategy, e.reason) for e in events} == {(7, "mh", "calibration f")}
    gone = tuning_events("mh", after, Calibrations(after.default), 8, "")
    assert changes(gone) == [
        (SYMBOL, "quote_multiplier", 2.0, 1.0),
        ("ETH/USDT", "confidence_gain", 1.1, 1.5),
        ("ETH/USDT", "cooldown_scale", 2.0, 1.0),
    ]
    assert tuning_events("mh", after, after, 9, "") == []


def test_applying_the_events_gives_the_file_s_calibrations() -> None:
    """What a strategy folds from the events equals the file, entry for entry."""
    from strategies.ma_hmm import MaHmm, MaHmmParams
    from tests.test_ma_hmm import hand_model

    strat = MaHmm("mh", MaHmmParams(model_file="m"), hand_model())
    files = [
        Calibrations(Calibration(confidence_gain=1.2)),
        Calibrations(Calibration(1.5), {SYMBOL: Calibration(quote_multiplier=2.0)}),
        Calibrations(Calibration(1.5), {SYMBOL: Calibration(1.5, 3.0)}),
    ]
    in_force = Calibrations()
    for ts, target in enumerate(files):
        for event in tuning_events("mh", in_force, target, ts, ""):
            strat.on_event(event)
        assert strat.state.calibrations == target
        in_force = target


async def _tuned(bus: Bus) -> list[ParamsTuned]:
    out = []
    async for item in bus.read("gov.tune.>", "GOVERNANCE"):
        assert isinstance(item, Stored) and isinstance(item.event, ParamsTuned)
        out.append(item.event)
    return out


async def _until(bus: Bus, count: int) -> list[ParamsTuned]:
    for _ in range(200):
        events = await _tuned(bus)
        if len(events) >= count:
            return events
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {count} ParamsTuned events, got {len(events)}")


async def test_the_worker_publishes_a_file_change_as_params_tuned(
    nats_server: EmbeddedServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cal.json"
    write(path, {"*": {"confidence_gain": 1.2}}, 0)
    bus = await Bus.connect(nats_server.url, name="test")
    stop = asyncio.Event()
    task = asyncio.create_task(run_calibration(bus, CalibrationWatch("mh", path), 0.05, stop))
    try:
        first = await _until(bus, 1)
        assert changes(first) == [("*", "confidence_gain", 1.0, 1.2)]
        assert first[0].ts == os.stat(path).st_mtime_ns
        write(path, {"*": {"confidence_gain": 1.2}, SYMBOL: {"quote_multiplier": 2}}, 1)
        second = await _until(bus, 4)
        assert changes(second[1:]) == [
            (SYMBOL, "confidence_gain", 1.2, 1.0),
            (SYMBOL, "quote_multiplier", 1.0, 2.0),
            (SYMBOL, "cooldown_scale", 1.0, 1.0),
        ]
        with caplog.at_level(logging.WARNING, logger="keel.calibration"):
            write(path, "{not json", 2)
            await asyncio.sleep(0.3)
            path.unlink()
            await asyncio.sleep(0.3)
        assert len(await _tuned(bus)) == 4  # a bad or missing file changes nothing
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 2 and "keeping the calibrations in force" in warnings[0]
        write(path, {"*": {"confidence_gain": 1.2}, SYMBOL: {"quote_multiplier": 3}}, 3)
        third = await _until(bus, 5)
        assert changes(third[4:]) == [(SYMBOL, "quote_multiplier", 2.0, 3.0)]
        # a restarted worker publishing the same change again is de-duplicated
        assert not await bus.publish(third[4], tuning_envelope(third[4]))
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await bus.close()
