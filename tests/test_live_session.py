"""The live marketdata session against each exchange fake, in process, on a real nats-server.

Exchange time runs 60 times faster than the wall (``ScaledClock``): a one-minute bar lasts
a second. One scripted session per exchange goes through what a live feed meets: 429 and
503 at start, malformed frames, a dropped connection into a silent socket (a stall), an
empty minute in the exchange's own history, a delisting, and a restart after missed bars;
then every symbol's stored bars are checked to be continuous and never stored twice.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import ccxt.pro
import msgspec
import pytest
from nats.js.api import DeliverPolicy

from contracts.events import Bar, FeedStatus, Instrument
from contracts.subjects import bar_subject, symbol_token
from contracts.system_events import DeadLetter
from eventstore.bus import Bus
from eventstore.errors import KeelError
from eventstore.log_reader import read_caught_up
from eventstore.server import EmbeddedServer
from eventstore.tally import count
from services.config import MarketConfig
from services.marketdata.live.session import LiveSession
from services.venues.ccxt_exchange import build_exchange
from services.venues.config import VenueConfig
from tests.fakes.clock import ScaledClock
from tests.fakes.core import FakeExchange, default_symbols, start_fake

RATE = 60.0
STEP = 60_000_000_000
VENUE = "fx"
GRACE_S = 10.0
EXCHANGES = ["binance", "binanceusdm", "bybit", "kraken", "krakenfutures"]


def exchange_start() -> int:
    """Exchange time starts hours behind the wall, 20 s into a minute: ccxt clamps some
    requests to its own (wall) clock, e.g. Kraken Futures' chart ``to``, so the fast
    exchange clock must not overtake the wall during a test."""
    return (time.time_ns() // STEP) * STEP - 3 * 3600 * 1_000_000_000 + 20 * 1_000_000_000


def fast_exchange(venue: VenueConfig, secrets: Mapping[str, str]) -> ccxt.pro.Exchange:
    """ccxt's limiter stays on, paced for exchange time running 60 times faster (Kraken's
    3 s between public calls would be 3 exchange minutes here)."""
    exchange = build_exchange(venue, secrets)
    exchange.rateLimit = min(exchange.rateLimit, 20)
    exchange.tokenBucket = {**exchange.tokenBucket, "refillRate": 1 / 20, "rateLimit": 20}
    exchange.init_throttler()
    return exchange


def market_of(symbols: list[str]) -> MarketConfig:
    return MarketConfig(
        venue=VENUE,
        symbols=tuple(symbols),
        trades=True,
        quotes=True,
        stall_grace_s=GRACE_S,
        poll_every_s=5.0,
        funding_every_s=60.0,
        lockstep=False,
    )


def session_of(
    bus: Bus, fake: FakeExchange, clock: ScaledClock, symbols: list[str], **options: object
) -> LiveSession:
    venue = msgspec.convert(fake.venue_entry(VENUE), VenueConfig)
    return LiveSession(
        bus, venue, market_of(symbols), clock, exchange_factory=fast_exchange, **options
    )


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def bars_of(bus: Bus, symbol: str) -> int:
    return await count(bus, "MARKET", bar_subject(VENUE, symbol, "1m"))


async def events(bus: Bus, stream: str, subjects: str) -> list:
    return [s.event for s in await read_caught_up(bus, stream, subjects, DeliverPolicy.ALL)]


async def all_have(bus: Bus, symbols: list[str], n: int) -> bool:
    return all([await bars_of(bus, s) >= n for s in symbols])


def alive(task: asyncio.Task[object]) -> None:
    if task.done():
        task.result()  # raises what killed it
        raise AssertionError("the session ended by itself")


async def test_live_sessions_ride_out_what_each_exchange_does(tmp_path: Path) -> None:
    """The five scripted sessions side by side, each on its own server: they wait on
    exchange minutes most of the time, so together they take about as long as two."""
    outcomes = await asyncio.gather(
        *(on_own_server(tmp_path / ex, ex) for ex in EXCHANGES), return_exceptions=True
    )
    failures = [(ex, o) for ex, o in zip(EXCHANGES, outcomes, strict=True) if o is not None]
    if failures:
        raise AssertionError(f"{failures[0][0]}: {failures[0][1]!r}") from failures[0][1]


async def on_own_server(tmp_path: Path, exchange_id: str) -> None:
    server = EmbeddedServer(tmp_path / "nats").start()
    bus = await Bus.connect(server.url, name="test")
    try:
        await rides_out_what_an_exchange_does(bus, exchange_id)
    finally:
        await bus.close()
        server.stop()


async def rides_out_what_an_exchange_does(bus: Bus, exchange_id: str) -> None:
    clock = ScaledClock(exchange_start(), RATE)
    specs = default_symbols(exchange_id, 3)
    symbols = [s.symbol for s in specs]
    fake = await start_fake(exchange_id, specs, clock)
    try:
        # Start-up meets a rate limit and an outage: backoff, then instruments and history.
        fake.faults.http_errors.extend([429, 503])
        session = session_of(bus, fake, clock, symbols, backfill_bars=3, reload_every_s=60.0)
        task = asyncio.create_task(session.run())
        await until(lambda: all_have(bus, symbols, 5), "history and live bars")
        alive(task)
        instruments = await events(bus, "MARKET", f"md.instrument.{VENUE}.*")
        assert {i.symbol for i in instruments if isinstance(i, Instrument) and i.active} == set(
            symbols
        )
        assert await count(bus, "MARKET", f"md.trade.{VENUE}.*") > 0
        assert await count(bus, "MARKET", f"md.quote.{VENUE}.*") > 0
        if specs[0].kind == "perpetual":
            assert await count(bus, "MARKET", f"md.funding.{VENUE}.*") > 0

        # Malformed and out-of-order frames: dead letters with the reason, old candles
        # ignored, the worker carries on.
        fake.faults.malformed = 3
        fake.faults.out_of_order = 3
        await until(lambda: _positive(count(bus, "SYSTEM", "sys.dlq.marketdata")), "dead letters")
        letters = await events(bus, "SYSTEM", "sys.dlq.marketdata")
        assert all(isinstance(d, DeadLetter) and d.reason for d in letters)
        before = {s: await bars_of(bus, s) for s in symbols}
        await until(
            lambda: _grown(bus, before, 2), "live bars after the malformed frames", timeout=15
        )
        alive(task)

        # A drop into a silent socket: stale within grace + a check, REST polling keeps the
        # bars coming, and once data flows again the all-clear.
        fake.faults.silent = True
        fake.faults.drop()
        silent_from = clock.now_ns()
        asked = history_requests(fake)
        before = {s: await bars_of(bus, s) for s in symbols}
        await until(lambda: _states(bus, symbols, {"stale"}, silent_from), "stale statuses")
        seen_at = clock.now_ns()
        stale = [
            e
            for e in await events(bus, "MARKET", f"md.status.{VENUE}.*")
            if e.state == "stale" and e.ts >= silent_from - STEP
        ]
        # Said within grace + one check of the missing close (bound loose for a busy box).
        assert min(seen_at - e.ts for e in stale) <= (GRACE_S + 60) * 1e9
        await until(lambda: _grown(bus, before, 2), "bars while the stream is silent")
        assert history_requests(fake) > asked  # the REST fallback
        fake.faults.silent = False
        await until(
            lambda: _states(bus, symbols, {"streaming"}, silent_from, after="stale"),
            "the all-clear",
        )
        alive(task)

        # A minute without trades: the exchange's history has no row; accepted as empty.
        now = clock.now_ns()
        gap = now - now % STEP + 2 * STEP
        fake.faults.gaps.add(gap)
        await until(lambda: _past(bus, symbols, gap + 2 * STEP), "bars after the empty minute")
        alive(task)

        # A delisting: Instrument active=False and a delisted status; the others carry on.
        gone = symbols[-1]
        fake.faults.delist(gone)
        await until(lambda: _delisted(bus, gone), "the delisting", timeout=15)
        rest = symbols[:-1]
        before = {s: await bars_of(bus, s) for s in rest}
        await until(lambda: _grown(bus, before, 2), "bars of the symbols still listed")
        alive(task)
        session.stop()
        await asyncio.wait_for(task, 10)

        # A restart after missed bars: backfilled from the last stored bar, nothing twice.
        await clock.sleep(3 * 60)
        session = session_of(bus, fake, clock, rest)
        task = asyncio.create_task(session.run())
        now = clock.now_ns()
        await until(lambda: _past(bus, rest, now - now % STEP - STEP), "the restart's backfill")
        session.stop()
        await asyncio.wait_for(task, 10)

        bars = [e for e in await events(bus, "MARKET", f"md.bar.{VENUE}.>") if isinstance(e, Bar)]
        for symbol in symbols:
            opens = [b.open_time for b in bars if b.symbol == symbol]
            assert opens == sorted(set(opens)), f"{symbol}: a bar stored twice or out of order"
            steps = {b - a for a, b in itertools.pairwise(opens)}
            holes = [a for a, b in itertools.pairwise(opens) if b - a != STEP]
            assert steps <= {STEP, 2 * STEP}, f"{symbol}: bars missing ({sorted(steps)})"
            assert all(a + STEP == gap for a in holes), f"{symbol}: a hole besides {gap}"
            assert gap not in opens
    finally:
        await fake.stop()


def history_requests(fake: FakeExchange) -> int:
    """REST kline history requests the fake answered (each exchange names it its way)."""
    names = ("kline", "ohlc", "charts")
    return sum(n for path, n in fake.requests.items() if any(k in path.lower() for k in names))


async def _positive(counting: Awaitable[int]) -> bool:
    return await counting > 0


async def _grown(bus: Bus, before: dict[str, int], n: int) -> bool:
    return all([await bars_of(bus, s) >= k + n for s, k in before.items()])


async def _past(bus: Bus, symbols: list[str], open_ns: int) -> bool:
    for symbol in symbols:
        stored = await bus.last_event("MARKET", bar_subject(VENUE, symbol, "1m"))
        if stored is None or stored.event.open_time < open_ns:
            return False
    return True


async def _states(
    bus: Bus, symbols: list[str], states: set[str], since_ns: int, after: str = ""
) -> bool:
    """Every symbol has had one of ``states`` about a close from ``since_ns`` on (after its
    first ``after`` state, if given)."""
    seen: dict[str, bool] = {}
    started: dict[str, bool] = {}
    for status in await events(bus, "MARKET", f"md.status.{VENUE}.*"):
        if not isinstance(status, FeedStatus) or status.ts < since_ns - STEP:
            continue
        if status.state == after:
            started[status.symbol] = True
        if (not after or started.get(status.symbol)) and status.state in states:
            seen[status.symbol] = True
    return all(seen.get(s) for s in symbols)


async def _delisted(bus: Bus, symbol: str) -> bool:
    token = symbol_token(symbol)
    instrument = await bus.last_event("MARKET", f"md.instrument.{VENUE}.{token}")
    status = await bus.last_event("MARKET", f"md.status.{VENUE}.{token}")
    return (
        instrument is not None
        and not instrument.event.active
        and status is not None
        and status.event.state == "delisted"
    )


async def test_a_symbol_or_interval_the_venue_lacks_is_one_line(bus: Bus) -> None:
    clock = ScaledClock(exchange_start(), RATE)
    specs = default_symbols("binance", 2)
    fake = await start_fake("binance", specs, clock)
    try:
        venue = msgspec.convert(fake.venue_entry(VENUE), VenueConfig)
        unknown = msgspec.structs.replace(market_of([specs[0].symbol]), symbols=("NOPE/USDT",))
        with pytest.raises(KeelError, match=r"^market\.symbols: 'NOPE/USDT' is not listed"):
            await LiveSession(bus, venue, unknown, clock).run()
        odd = msgspec.structs.replace(market_of([specs[0].symbol]), interval="7m")
        with pytest.raises(KeelError, match=r"^market\.interval: '7m' is not offered"):
            await LiveSession(bus, venue, odd, clock).run()
    finally:
        await fake.stop()
