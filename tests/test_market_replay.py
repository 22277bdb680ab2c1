"""Replay of a recorded live session: a MARKET stream holding bars, quotes, an instrument, a
funding rate and feed statuses, stored in the order a live feed stores them (which is not
event-time order), replays every event in stored order, in process and on the bus."""

from __future__ import annotations

import asyncio
import re
import threading
from pathlib import Path

import nats
import polars as pl
import pytest

from contracts.codec import decode, encode
from contracts.envelope import root_envelope
from contracts.events import (
    Bar,
    Event,
    FeedStatus,
    FundingRate,
    Instrument,
    Quote,
    RiskDecision,
)
from eventstore.bus import Bus
from eventstore.errors import KeelError
from eventstore.frames import MARKET_KIND, decode_frame, frame_subject
from eventstore.server import EmbeddedServer
from replay.backtest import BacktestSpec, load_run, run_backtest
from replay.bus_replay import bus_replay
from replay.engine import ReplayEngine
from replay.market import DataSource, market_events
from replay.recorder import RunRecorder
from services.config import KeelConfig, load_config
from services.fleet import fleet_roles
from services.marketdata.synthetic import SyntheticMarket

VENUE, SYMBOL = "binance", "BTC/USDT"
SECOND = 1_000_000_000

CONFIG = """
[market]
venue = "binance"

[[strategies]]
name = "ma_cross"
instance = "ma"
params = { kind = "ema", fast = 3, slow = 8, mode = "long_short", qty = 1 }

[risk]
max_position = 5

[execution]
fill = "next_open"
fee_bps = 10
"""


def status(state: str, ts: int, reason: str = "") -> FeedStatus:
    return FeedStatus(ts=ts, venue=VENUE, symbol=SYMBOL, state=state, reason=reason)  # type: ignore[arg-type]


def quote(bar: Bar, after_s: int) -> Quote:
    mid = bar.close
    return Quote(
        ts=bar.close_time + after_s * SECOND, venue=VENUE, symbol=SYMBOL, bid=mid, ask=mid * 1.0002
    )


def session() -> list[Event]:
    """What a live worker stores, in its order: the instrument and a backfilling status at
    start (stamped now, after the bars it then backfills), the backfill, streaming with
    quotes, a funding rate stamped ahead of the bars stored after it, a stall (stale) whose
    missing bars are backfilled after the status, then streaming again."""
    bars = list(SyntheticMarket(symbols=(SYMBOL,), venue=VENUE, bars=200, seed=5).generate())
    now = bars[60].close_time
    events: list[Event] = [
        Instrument(
            ts=now, venue=VENUE, symbol=SYMBOL, base="BTC", quote="USDT", lot_size=0.001
        ),  # spot: risk refuses shorts from here on
        status("backfilling", now, "60 bars missing"),
    ]
    for i, bar in enumerate(bars):
        if i == 60:
            events.append(status("streaming", bars[59].close_time))
        if i == 120:
            events.append(status("stale", bar.close_time, "no closed bar by close + 30s"))
            events.append(quote(bars[119], 45))
        if i == 150:
            events.append(status("streaming", bars[149].close_time))
        events.append(bar)
        if i % 7 == 3:
            events.append(quote(bar, 2))
        if i == 90:
            events.append(
                FundingRate(ts=bars[100].close_time, venue=VENUE, symbol=SYMBOL, rate=0.0001)
            )
    return events


async def store(url: str, events: list[Event]) -> None:
    bus = await Bus.connect(url, name="marketdata")
    try:
        for event in events:
            await bus.publish(event, root_envelope(event), "marketdata")
    finally:
        await bus.close()


def in_process_hash(config: KeelConfig, events: list[Event]) -> str:
    roles = fleet_roles(config)
    recorder = RunRecorder([r.name for r in roles])
    ReplayEngine(roles, recorder.record).run(events)
    recorder.close()
    return recorder.result_hash()


class FrameTap:
    """Every market event a bus replay's driver publishes, in publish order, read by a
    plain subscription in its own thread (the replay runs its own event loop)."""

    def __init__(self, url: str) -> None:
        self.events: list[Event] = []
        self._url = url
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._run(),), daemon=True)

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        nc = await nats.connect(self._url)

        async def take(msg) -> None:
            self.events.extend(decode(item.data) for item in decode_frame(msg.data).events)

        await nc.subscribe(frame_subject("*", MARKET_KIND, "*"), cb=take)
        await nc.flush()
        self._ready.set()
        await self._stop.wait()
        await nc.drain()

    def __enter__(self) -> FrameTap:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def test_a_recorded_session_replays_every_market_event_in_stored_order(
    tmp_path: Path, nats_server: EmbeddedServer
) -> None:
    events = session()
    assert [e.ts for e in events] != sorted(e.ts for e in events)  # deliberately not by time
    asyncio.run(store(nats_server.url, events))
    stored = [encode(e) for e in events]
    bars = sum(isinstance(e, Bar) for e in events)

    market = market_events([DataSource("MARKET")], nats_server.url)
    assert [encode(e) for e in market] == stored
    assert market.others == len(events) - bars == 36

    config_path = tmp_path / "keel.toml"
    config_path.write_text(CONFIG)
    config = load_config(config_path)
    spec = BacktestSpec(config=config, data=(DataSource("MARKET"),))
    in_process = run_backtest(spec, tmp_path / "run", nats_server.url)
    assert in_process.bars == bars == 200
    assert in_process.orders > 5
    assert in_process.result_hash == in_process_hash(config, events)
    # the order matters: by event time the instrument, the statuses and the funding rate
    # would reach the fleet at other bars, and it would decide otherwise
    by_time = sorted(events, key=lambda e: e.ts)
    assert in_process_hash(config, by_time) != in_process.result_hash

    rules = {e.rule for e in _decoded_outputs(tmp_path / "run") if isinstance(e, RiskDecision)}
    assert {"stale_data", "spot_short"} <= rules

    work = tmp_path / "bus"
    work.mkdir()
    with FrameTap(nats_server.url) as tap:
        on_bus = bus_replay(load_run(tmp_path / "run"), nats_server.url, work)
    assert [encode(e) for e in tap.events] == stored
    assert on_bus.bars == 200
    assert (on_bus.signals, on_bus.orders, on_bus.fills, on_bus.rejections) == (
        in_process.signals,
        in_process.orders,
        in_process.fills,
        in_process.rejections,
    )
    assert on_bus.result_hash == in_process.result_hash


def test_filters_and_windows_of_a_recorded_stream(nats_server: EmbeddedServer) -> None:
    events = session()
    asyncio.run(store(nats_server.url, events))
    url = nats_server.url

    only_bars = list(market_events([DataSource("md.bar.>")], url))
    assert only_bars == [e for e in events if isinstance(e, Bar)]
    with pytest.raises(KeelError, match="no bars in the requested data and time range"):
        market_events([DataSource(f"md.status.{VENUE}.>")], url)  # statuses alone: no market
    assert list(market_events([DataSource("MARKET", symbol=SYMBOL)], url)) == events
    with pytest.raises(KeelError, match=re.escape("no market events stored on md.> for ETH/USDT")):
        market_events([DataSource("MARKET", symbol="ETH/USDT")], url)

    # bars by open time, the other events by ts, in stored order
    bars = [e for e in events if isinstance(e, Bar)]
    lo, hi = bars[100].open_time, bars[150].open_time
    windowed = market_events([DataSource("MARKET")], url, lo, hi)
    expected = [e for e in events if lo <= (e.open_time if isinstance(e, Bar) else e.ts) < hi]
    assert list(windowed) == expected
    assert sum(isinstance(e, Bar) for e in expected) == 50
    assert windowed.others == len(expected) - 50 > 3


def _decoded_outputs(run_dir: Path) -> list[Event]:
    frame = pl.read_parquet(run_dir / "events.parquet")
    return [decode(p.encode()) for p in frame["payload"]]
