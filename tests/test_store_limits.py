"""Issue 13, Durability: a stream at its byte limit refuses, says so, and loses nothing.

Event streams refuse new messages at ``KEEL_STREAM_MAX_BYTES`` (``eventstore/streams.py``).
A worker whose outputs are refused keeps its inputs unacknowledged, publishes a ``HALTED``
status on ``sys.status.<worker>`` naming the stream and the server's reason, logs one line,
and retries; once the limit is raised it carries on, says it runs again, and every input is
processed exactly once. The market-data feed does the same. All on a real nats-server.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import time
from pathlib import Path

import pytest

from contracts.codec import encode
from contracts.envelope import bar_envelope
from contracts.events import Bar
from contracts.system_events import SystemStatus
from eventstore.bus import Bus, Stored
from eventstore.lag import wait_drained
from eventstore.retry import StoreFull
from eventstore.server import EmbeddedServer, find_binary, free_port, port_open
from eventstore.streams import MAX_BYTES_ENV, STREAM_BY_NAME, StoreSettings
from services.marketdata.feed import Feed
from services.marketdata.synthetic import SyntheticMarket
from services.portfolio.config import PortfolioConfig
from services.portfolio.role import portfolio_role
from services.runtime.heartbeat import STORE_FULL
from services.runtime.worker import Worker, WorkerOptions

BARS = 160
LIMIT = 24_000  # bytes: room for a few dozen equity snapshots or bars


def _bars(n: int = BARS) -> list[Bar]:
    market = SyntheticMarket(
        symbols=("BTC/USDT",), venue="binanceus", interval="1m", bars=n, seed=3
    )
    return list(market.generate())


async def _limit(bus: Bus, stream: str, max_bytes: int) -> None:
    await bus.js.update_stream(STREAM_BY_NAME[stream].config(StoreSettings(max_bytes=max_bytes)))


async def _status(bus: Bus, worker: str) -> SystemStatus | None:
    last = await bus.last_event("SYSTEM", f"sys.status.{worker}")
    return last.event if last is not None and isinstance(last.event, SystemStatus) else None


async def _wait_for_status(bus: Bus, worker: str, rule: str, timeout: float = 60) -> SystemStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = await _status(bus, worker)
        if status is not None and status.rule == rule:
            return status
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {rule!r} status from {worker}: last {await _status(bus, worker)}")


async def _stored(bus: Bus, subject: str, stream: str) -> list[Stored]:
    return [item async for item in bus.read(subject, stream) if isinstance(item, Stored)]


def _lines(caplog: pytest.LogCaptureFixture, needle: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if needle in r.getMessage()]


async def test_a_worker_at_a_full_stream_waits_says_so_and_loses_nothing(
    nats_server: EmbeddedServer, bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    bars = _bars()
    await bus.publish_many((b, bar_envelope(b)) for b in bars)
    await _limit(bus, "PORTFOLIO", LIMIT)
    role = portfolio_role(PortfolioConfig(starting_cash=1000))
    worker = Worker(role, WorkerOptions(metrics_port=None, heartbeat_s=0.5))
    # The worker keeps the streams as the test set them (it would apply the environment's).
    worker_bus = await Bus.connect(nats_server.url, name="portfolio", ensure=False)
    running = asyncio.create_task(worker.run(worker_bus))
    try:
        full = await _wait_for_status(bus, "portfolio", STORE_FULL)
        assert full.status == "HALTED"
        assert "PORTFOLIO" in full.reason and "maximum bytes exceeded" in full.reason
        info = await bus.js.stream_info("PORTFOLIO")
        assert info.state.bytes <= LIMIT
        assert info.state.messages < BARS
        market = await bus.js.consumer_info("MARKET", "portfolio-market")
        assert (market.ack_floor.stream_seq or 0) < BARS  # the refused inputs stay unacknowledged
        await asyncio.sleep(1.0)  # a few refused retries: still one line, one status
        assert running.done() is False

        await _limit(bus, "PORTFOLIO", -1)
        assert await wait_drained(bus, {"portfolio-market", "portfolio-execution"}, timeout=60)
        again = await _status(bus, "portfolio")
        assert again is not None and again.status == "RUNNING" and again.rule == ""
    finally:
        worker.stop()
        await asyncio.wait_for(running, 20)
        await worker_bus.close()

    assert len(_lines(caplog, "store full")) == 1
    assert len(_lines(caplog, "accepts writes again")) == 1
    statuses = await _stored(bus, "sys.status.portfolio", "SYSTEM")
    assert [s.event.rule for s in statuses] == [STORE_FULL, ""]
    # Exactly the outputs of folding every bar once, in order, under the same ids.
    decider = portfolio_role(PortfolioConfig(starting_cash=1000)).decider
    expected = []
    for bar in bars:
        envelope = bar_envelope(bar)
        for i, out in enumerate(decider.decide(bar, envelope.event_time or bar.ts)):
            expected.append((envelope.child("portfolio", i, out.ts).event_id, encode(out)))
    stored = [
        (s.envelope.event_id, encode(s.event)) for s in await _stored(bus, "pf.>", "PORTFOLIO")
    ]
    assert len(stored) == len(expected) == BARS
    assert stored == expected


async def test_the_feed_at_a_full_stream_waits_says_so_and_loses_nothing(
    nats_server: EmbeddedServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    monkeypatch.setenv(MAX_BYTES_ENV, str(LIMIT))
    bus = await Bus.connect(nats_server.url, name="marketdata")  # every event stream limited
    bars = _bars()
    feed = Feed("marketdata", heartbeat_s=0.5)
    running = asyncio.create_task(feed.run(bus, bars))
    try:
        full = await _wait_for_status(bus, "marketdata", STORE_FULL)
        assert full.status == "HALTED" and "MARKET" in full.reason
        info = await bus.js.stream_info("MARKET")
        assert info.state.bytes <= LIMIT and info.state.messages < BARS
        await asyncio.sleep(1.0)
        assert not running.done()
        await _limit(bus, "MARKET", -1)
        result = await asyncio.wait_for(running, 60)
    finally:
        feed.stop()
        await asyncio.gather(running, return_exceptions=True)
    try:
        assert result.stored == BARS and result.duplicates == 0
        stored = await _stored(bus, "md.>", "MARKET")
        assert [(s.envelope.event_id, encode(s.event)) for s in stored] == [
            (bar_envelope(b).event_id, encode(b)) for b in bars
        ]
        again = await _status(bus, "marketdata")
        assert again is not None and again.status == "RUNNING"
        assert len(_lines(caplog, "store full")) == 1
    finally:
        await bus.close()


async def test_ingest_at_a_full_stream_is_one_store_full_error(
    nats_server: EmbeddedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A one-shot publish (``keel ingest``) does not wait: one line naming the stream."""
    monkeypatch.setenv(MAX_BYTES_ENV, str(LIMIT))
    bus = await Bus.connect(nats_server.url, name="ingest")
    try:
        with pytest.raises(StoreFull, match="MARKET: maximum bytes exceeded") as raised:
            await bus.publish_many((b, bar_envelope(b)) for b in _bars())
        assert MAX_BYTES_ENV in str(raised.value)
    finally:
        await bus.close()


async def test_a_full_server_store_is_a_refusal_naming_it_and_keeps_what_was_stored(
    tmp_path: Path,
) -> None:
    """The server's own storage limit (a full disk, as JetStream sees it) is the same
    ``StoreFull`` with the server's reason, and every acknowledged message is still there."""
    port = free_port()
    conf = tmp_path / "small.conf"
    conf.write_text(
        f"listen: 127.0.0.1:{port}\n"
        f'jetstream {{ store_dir: "{tmp_path / "store"}", max_file_store: 1MB }}\n'
    )
    server = subprocess.Popen(
        [find_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", port) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        bus = await Bus.connect(f"nats://127.0.0.1:{port}", name="test")
        try:
            stored = 0
            with pytest.raises(StoreFull) as refused:
                for bar in _bars(5_000):
                    await bus.publish(bar, bar_envelope(bar))
                    stored += 1
            assert "MARKET" in str(refused.value) and "insufficient resources" in str(refused.value)
            assert stored > 0
            info = await bus.js.stream_info("MARKET")
            assert info.state.messages == stored
        finally:
            await bus.close()
    finally:
        server.terminate()
        server.wait(timeout=10)
