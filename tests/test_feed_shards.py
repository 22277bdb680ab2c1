"""``[market] shards``: a venue's symbols split over feed processes, by symbol alone."""

from __future__ import annotations

import asyncio

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from eventstore.bus import Bus
from services.marketdata.live.session import LiveSession
from services.marketdata.live.shards import in_shard, shard_of
from services.venues.config import VenueConfig
from tests.fakes.clock import ScaledClock
from tests.fakes.core import start_fake
from tests.fakes.prices import default_symbols
from tests.test_live_session import (
    RATE,
    VENUE,
    all_have,
    events,
    exchange_start,
    fast_exchange,
    market_of,
    until,
)

symbols_st = st.lists(st.text(min_size=1, max_size=12), unique=True, max_size=60)


@given(symbols_st, st.integers(min_value=1, max_value=8))
def test_the_shards_split_the_symbols_exactly_once(symbols: list[str], shards: int) -> None:
    parts = [in_shard(symbols, i, shards) for i in range(shards)]
    assert sorted(s for part in parts for s in part) == sorted(symbols)
    for part in parts:
        assert part == [s for s in symbols if s in part]  # the given order is kept


def test_a_symbol_always_lands_in_the_same_shard() -> None:
    assert [shard_of("BTC/USDT:USDT", n) for n in (2, 3, 4)] == [
        shard_of("BTC/USDT:USDT", n) for n in (2, 3, 4)
    ]
    assert in_shard(["A", "B"], 0, 1) == ["A", "B"]


def test_541_perpetuals_split_about_evenly() -> None:
    symbols = [s.symbol for s in default_symbols("binanceusdm", 541)]
    for shards in (2, 3, 4):
        sizes = [len(in_shard(symbols, i, shards)) for i in range(shards)]
        assert sum(sizes) == 541
        assert max(sizes) - min(sizes) < 541 / shards * 0.4, sizes


async def test_two_shards_stream_disjoint_halves_of_the_venue(bus: Bus) -> None:
    """Two feed processes' sessions of one venue: each stores the bars and instruments of its
    own symbols only, and together every symbol."""
    clock = ScaledClock(exchange_start(), RATE)
    fake = await start_fake("binanceusdm", default_symbols("binanceusdm", 8), clock)
    symbols = list(fake.specs)
    venue = msgspec.convert(fake.venue_entry(VENUE), VenueConfig)
    market = msgspec.structs.replace(market_of(symbols), shards=2)
    sessions = [
        LiveSession(bus, venue, market, clock, shard=i, exchange_factory=fast_exchange)
        for i in range(2)
    ]
    tasks = [asyncio.create_task(s.run()) for s in sessions]
    try:
        await until(lambda: all_have(bus, symbols, 2), "two bars of every symbol", 30)
        instruments = await events(bus, "MARKET", "md.instrument.>")
    finally:
        for session in sessions:
            session.stop()
        await asyncio.gather(*tasks)
        await fake.stop()
    streamed = [sorted(s.flow.active) for s in sessions]
    assert sorted(streamed[0] + streamed[1]) == sorted(symbols)
    assert not set(streamed[0]) & set(streamed[1])
    assert streamed[0] == sorted(in_shard(symbols, 0, 2))
    assert sorted(i.symbol for i in instruments) == sorted(symbols)  # each once
