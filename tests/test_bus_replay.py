"""Replay parity: in process, through the worker processes, and against a live session."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import polars as pl

from contracts.codec import encode
from contracts.events import ExecutionReport, OrderCommand, Signal
from eventstore.bus import Bus, Stored
from eventstore.lag import wait_drained
from eventstore.server import URL_ENV, EmbeddedServer, ServerRecord
from eventstore.streams import STREAMS
from replay.backtest import BacktestSpec, load_run, run_backtest
from replay.bus_replay import bus_replay
from replay.market import DataSource
from services.config import load_config
from services.fleet import consumer_names
from services.marketdata.synthetic import SyntheticMarket
from tests.factories import write_bar_file

CONFIG = """
[market]
venue = "sim"

[[strategies]]
name = "ma_cross"
instance = "ma"
params = { kind = "ema", fast = 3, slow = 8, mode = "long_short", qty = 1 }

[risk]
max_position = 5

[execution]
fill = "next_open"
fee_bps = 10
slippage_bps = 2
"""


def write_market(path: Path, symbol: str, bars: int, seed: int) -> Path:
    market = SyntheticMarket(symbols=(symbol,), bars=bars, seed=seed, interval="1m")
    return write_bar_file(path, list(market.generate()), epoch_ms=True)


def test_bus_replay_reproduces_the_in_process_result(
    tmp_path: Path, nats_server: EmbeddedServer
) -> None:
    config_path = tmp_path / "keel.toml"
    config_path.write_text(CONFIG)
    data = (
        DataSource(str(write_market(tmp_path / "btc.parquet", "BTC/USDT", 150, 1)), "BTC/USDT"),
        DataSource(str(write_market(tmp_path / "eth.parquet", "ETH/USDT", 150, 2)), "ETH/USDT"),
    )
    spec = BacktestSpec(config=load_config(config_path), data=data)
    in_process = run_backtest(spec, tmp_path / "run")
    assert in_process.fills > 5

    work = tmp_path / "bus"
    work.mkdir()
    on_bus = bus_replay(load_run(tmp_path / "run"), nats_server.url, work)
    assert (on_bus.signals, on_bus.orders, on_bus.fills) == (
        in_process.signals,
        in_process.orders,
        in_process.fills,
    )
    assert on_bus.result_hash == in_process.result_hash
    assert on_bus.final_equity == in_process.final_equity

    async def live_streams_untouched() -> None:
        bus = await Bus.connect(nats_server.url)
        try:
            for spec_ in STREAMS:
                info = await bus.js.stream_info(spec_.name)
                assert info.state.messages == 0, spec_.name
            names = [s.config.name async for s in _stream_names(bus)]
            assert not [n for n in names if n.startswith("REPLAY_")], names
        finally:
            await bus.close()

    asyncio.run(live_streams_untouched())


async def _stream_names(bus: Bus):
    for info in await bus.js.streams_info():
        yield info


def _payloads(items: list[Stored], kind: type) -> list[bytes]:
    return [encode(i.event) for i in items if isinstance(i.event, kind)]


def test_live_paper_session_replays_to_the_same_signals_orders_and_fills(tmp_path: Path) -> None:
    """``keel up --data FILE --lockstep`` live, then ``keel backtest --data MARKET`` later."""
    config_path = tmp_path / "keel.toml"
    config_path.write_text(CONFIG)
    data = write_market(tmp_path / "btc.parquet", "BTC/USDT", 240, 5)
    env = {k: v for k, v in os.environ.items() if k != URL_ENV}
    command = [sys.executable, "-m", "cli.app"]
    up = subprocess.Popen(
        [
            *command,
            "up",
            "--data",
            str(data),
            "--symbol",
            "BTC/USDT",
            "--lockstep",
            "--config",
            str(config_path),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        live = asyncio.run(_wait_for_session(tmp_path, config_path, 240))
    finally:
        up.send_signal(signal.SIGINT)
        output, _ = up.communicate(timeout=60)
    assert up.returncode == 0, output

    backtest = subprocess.run(
        [
            *command,
            "backtest",
            "--data",
            "MARKET",
            "--config",
            str(config_path),
            "--out",
            str(tmp_path / "run"),
            "--json",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert backtest.returncode == 0, backtest.stderr
    result = json.loads(backtest.stdout.strip().splitlines()[-1])
    assert result["bars"] == 240

    events = pl.read_parquet(tmp_path / "run" / "events.parquet")
    replayed = {
        kind: [p.encode() for p in events.filter(pl.col("type") == kind)["payload"]]
        for kind in ("Signal", "OrderCommand", "ExecutionReport")
    }
    assert replayed["Signal"] == live["Signal"] and live["Signal"]
    assert replayed["OrderCommand"] == live["OrderCommand"] and live["OrderCommand"]
    live_fills = [p for p in live["ExecutionReport"] if b'"filled"' in p]
    replay_fills = [p for p in replayed["ExecutionReport"] if b'"filled"' in p]
    assert replay_fills == live_fills and live_fills


async def _wait_for_session(cwd: Path, config_path: Path, bars: int) -> dict[str, list[bytes]]:
    record_path = cwd / ".keel" / "server.json"
    deadline = time.monotonic() + 90
    while not record_path.exists():
        assert time.monotonic() < deadline, "keel up did not start its server"
        await asyncio.sleep(0.2)
    url = msgspec.json.decode(record_path.read_bytes(), type=ServerRecord).url
    bus = await Bus.connect(url, name="parity-test")
    try:
        while (await bus.js.stream_info("MARKET")).state.messages < bars:
            assert time.monotonic() < deadline, "the feed did not finish"
            await asyncio.sleep(0.2)
        assert await wait_drained(bus, consumer_names(load_config(config_path)), timeout=60)
        out: dict[str, list[bytes]] = {}
        for kind, subject, stream in (
            (Signal, "sig.>", "SIGNALS"),
            (OrderCommand, "ord.cmd.>", "ORDERS"),
            (ExecutionReport, "exec.>", "EXECUTION"),
        ):
            items = [i async for i in bus.read(subject, stream) if isinstance(i, Stored)]
            out[kind.__name__] = _payloads(items, kind)
        return out
    finally:
        await bus.close()
