"""Orders on the Binance fake (spot and USDT-M) through ccxt's own code path: signed REST,
the algo service for USDT-M conditional orders, the user data stream as ccxt.pro reads it,
Binance's error codes as ccxt classifies them, and the account faults the gateway relies on.

Exchange time runs 60x the wall (a one-minute candle every wall second); credentials come
from environment variables through ``VenueConfig.credentials``, as in production.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import ccxt
import ccxt.pro
import pytest

from services.venues.ccxt_exchange import build_exchange, read_secrets
from services.venues.config import Credentials, VenueConfig
from tests.fakes.clock import ScaledClock
from tests.fakes.core import NS, FakeExchange, default_symbols, start_fake

RATE = 60
START_NS = 1_750_000_000 * NS
KEY = "fake-key-0123456789"


class Venue:
    def __init__(self, fake: FakeExchange, exchange: ccxt.pro.Exchange) -> None:
        self.fake = fake
        self.exchange = exchange
        self.symbol = next(iter(fake.specs))

    @property
    def futures(self) -> bool:
        return self.fake.exchange_id == "binanceusdm"

    def last(self) -> float:
        return self.fake.snapshot(self.symbol).trade.price

    def cid(self, tag: str) -> str:
        return f"keel-{self.fake.exchange_id}-{tag}"


async def open_venue(
    exchange_id: str, monkeypatch: pytest.MonkeyPatch, timeout_ms: int = 3000, **kw: Any
) -> Venue:
    monkeypatch.setenv("KEEL_TEST_KEY", KEY)
    monkeypatch.setenv("KEEL_TEST_SECRET", "fake-secret")
    clock = ScaledClock(START_NS, RATE)
    fake = await start_fake(exchange_id, default_symbols(exchange_id, 2), clock, **kw)
    credentials = Credentials(api_key_env="KEEL_TEST_KEY", secret_env="KEEL_TEST_SECRET")
    config = VenueConfig(**fake.venue_entry("fake"), credentials=credentials, timeout_ms=timeout_ms)
    exchange = build_exchange(config, read_secrets(config, ("api_key", "secret")))
    await exchange.load_markets()
    return Venue(fake, exchange)


@pytest.fixture(params=["binance", "binanceusdm"])
async def venue(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Venue]:
    v = await open_venue(request.param, monkeypatch)
    try:
        yield v
    finally:
        await v.exchange.close()
        await v.fake.stop()


@pytest.fixture
async def spot(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Venue]:
    v = await open_venue("binance", monkeypatch)
    try:
        yield v
    finally:
        await v.exchange.close()
        await v.fake.stop()


@pytest.fixture
async def usdm(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Venue]:
    v = await open_venue("binanceusdm", monkeypatch)
    try:
        yield v
    finally:
        await v.exchange.close()
        await v.fake.stop()


def qty_for(venue: Venue, notional: float = 50.0) -> float:
    spec = venue.fake.specs[venue.symbol]
    lots = max(1, round(notional / venue.last() / spec.lot_size))
    return round(lots * spec.lot_size, 8)


async def test_market_order_fills_and_shows_in_trades_and_balance(venue: Venue) -> None:
    ex, symbol = venue.exchange, venue.symbol
    amount = qty_for(venue)
    order = await ex.create_order(symbol, "market", "buy", amount, None,
                                  {"clientOrderId": venue.cid("m1")})  # fmt: skip
    assert order["clientOrderId"] == venue.cid("m1")
    assert order["status"] == "closed" and order["filled"] == pytest.approx(amount)
    assert order["average"] == pytest.approx(venue.fake.snapshot(symbol).ask, rel=1e-3)
    trades = await ex.fetch_my_trades(symbol)
    assert [t["order"] for t in trades] == [order["id"]]
    assert trades[0]["amount"] == pytest.approx(amount) and trades[0]["fee"]["cost"] > 0
    balance = await ex.fetch_balance()
    if venue.futures:
        positions = await ex.fetch_positions([symbol])
        assert [p["symbol"] for p in positions] == [symbol]
        assert positions[0]["contracts"] == pytest.approx(amount)
        assert positions[0]["side"] == "long"
        assert balance["USDT"]["used"] > 0
    else:
        assert balance["BTC"]["free"] > 0 and balance["USDT"]["free"] > 0
    fetched = await ex.fetch_order(order["id"], symbol)
    assert fetched["status"] == "closed" and fetched["clientOrderId"] == venue.cid("m1")
