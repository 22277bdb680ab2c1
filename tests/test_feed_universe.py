"""``[market] universe = "usdt_perpetuals"``: every active USDT perpetual of the venue,
including one listed while the feed runs."""

from __future__ import annotations

import asyncio

import msgspec

from eventstore.bus import Bus
from services.marketdata.live.session import LiveSession
from services.venues.config import VenueConfig
from tests.fakes.clock import ScaledClock
from tests.fakes.core import start_fake
from tests.fakes.prices import SymbolSpec, default_symbols
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


async def test_a_perpetual_listed_mid_session_is_streamed(bus: Bus) -> None:
    clock = ScaledClock(exchange_start(), RATE)
    fake = await start_fake("binanceusdm", default_symbols("binanceusdm", 3), clock)
    first = list(fake.specs)
    venue = msgspec.convert(fake.venue_entry(VENUE), VenueConfig)
    market = msgspec.structs.replace(market_of([]), universe="usdt_perpetuals")
    session = LiveSession(
        bus, venue, market, clock, reload_every_s=60.0, exchange_factory=fast_exchange
    )
    task = asyncio.create_task(session.run())
    listed = SymbolSpec("NEW/USDT:USDT", "NEW", "USDT", settle="USDT", kind="perpetual", price=3.0)
    try:
        await until(lambda: all_have(bus, first, 2), "bars of the first perpetuals", 30)
        fake.specs[listed.symbol] = listed
        await until(lambda: all_have(bus, [listed.symbol], 2), "bars of the new listing", 30)
        instruments = await events(bus, "MARKET", "md.instrument.>")
    finally:
        session.stop()
        await task
        await fake.stop()
    assert sorted(session.flow.active) == sorted([*first, listed.symbol])
    new = [i for i in instruments if i.symbol == listed.symbol]
    assert len(new) == 1 and new[0].kind == "perpetual" and new[0].settle == "USDT"
