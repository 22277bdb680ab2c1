"""``keel up --config live.toml``: the fleet paper-trades a venue's live data (the Binance fake,
its exchange time 60 times faster than the wall, shared with the subprocesses through
``KEEL_TEST_CLOCK``), and Ctrl-C ends it cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from nats.js.api import DeliverPolicy

from contracts.events import ExecutionReport
from eventstore.bus import Bus
from eventstore.log_reader import read_caught_up
from eventstore.server import EmbeddedServer
from eventstore.tally import count
from tests.conftest import ROOT
from tests.fakes.__main__ import venue_toml
from tests.fakes.clock import ScaledClock
from tests.fakes.core import default_symbols, start_fake
from tests.up_process import start_up, stop_up

STEP = 60_000_000_000


def live_toml(venue_entry: dict, symbols: list[str]) -> str:
    listed = ", ".join(f'"{s}"' for s in symbols)
    return f"""
[market]
venue = "fx"
symbols = [{listed}]
interval = "1m"
quotes = true

[[strategies]]
name = "ma_cross"
symbols = [{listed}]
params = {{ kind = "sma", fast = 2, slow = 3, mode = "long_short", qty = 1 }}

{venue_toml(venue_entry)}
"""


async def wait_for(bus: Bus, subjects: str, stream: str, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while await count(bus, stream, subjects) == 0:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def filled(bus: Bus) -> bool:
    stored = await read_caught_up(bus, "EXECUTION", "exec.>", DeliverPolicy.ALL)
    return any(isinstance(s.event, ExecutionReport) and s.event.fill_qty > 0 for s in stored)


async def test_keel_up_paper_trades_a_live_venue(
    tmp_path: Path, nats_server: EmbeddedServer, bus: Bus
) -> None:
    # Hours behind the wall: ccxt clamps some requests to its own clock.
    clock = ScaledClock((time.time_ns() // STEP) * STEP - 3 * 3600 * 1_000_000_000, 60.0)
    specs = default_symbols("binance", 2)
    fake = await start_fake("binance", specs, clock)
    config = tmp_path / "live.toml"
    config.write_text(live_toml(fake.venue_entry("fx"), [s.symbol for s in specs]))
    up = await start_up(tmp_path, nats_server.url, clock, config)
    try:
        await wait_for(bus, "md.instrument.fx.>", "MARKET", "instruments", 60)
        await wait_for(bus, "md.bar.fx.>", "MARKET", "live bars", 30)
        await wait_for(bus, "sig.>", "SIGNALS", "a signal", 40)
        await wait_for(bus, "exec.>", "EXECUTION", "an execution report", 30)
        deadline = time.monotonic() + 30
        while not await filled(bus):
            assert time.monotonic() < deadline, "timed out waiting for a fill"
            await asyncio.sleep(0.2)
        assert await count(bus, "MARKET", "md.quote.fx.>") > 0
        up.send_signal(signal.SIGINT)
        output, _ = await asyncio.wait_for(up.communicate(), 60)
    finally:
        await stop_up(up)
        await fake.stop()
    text = output.decode(errors="replace")
    assert up.returncode == 0, text
    assert "Traceback" not in text
    feed_log = (tmp_path / ".keel" / "logs" / "marketdata.log").read_text()
    assert "streaming 2 symbols" in feed_log
    assert "Traceback" not in feed_log


def test_a_bar_file_with_a_live_venue_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "live.toml"
    entry = {"name": "fx", "exchange": "binance"}
    config.write_text(live_toml(entry, ["BTC/USDT"]))
    done = subprocess.run(
        [sys.executable, "-m", "cli.app", "up", "--config", str(config), "--data", "bars.csv"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "300"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--data feeds a file" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
