"""The Bybit fake (spot and linear perpetuals) driven by ccxt itself, with only the venue's
``urls``/``options`` pointing it at the loopback server; plus the raw websocket protocol and
a key-by-key comparison with frames recorded from the real exchange."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import ccxt
import pytest

from services.venues.ccxt_exchange import build_exchange
from services.venues.config import VenueConfig
from tests.fakes.bybit import BybitSkin
from tests.fakes.clock import ScaledClock
from tests.fakes.core import NS, FakeExchange, SymbolSpec

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "reference" / "ccxt-fixtures"
START_NS = 1_767_225_600 * NS + 20 * NS  # 2026-01-01 00:00:20 exchange time
RATE = 60.0  # an exchange minute per wall second
MINUTE_MS = 60_000
WAIT = 15.0  # wall seconds any single expected frame may take on a loaded machine

SPOT_BTC = SymbolSpec("BTC/USDT", "BTC", "USDT", "", "spot", 0.1, 0.000001, 1.0, 1.0, 60_000.0)
LINEAR_BTC = SymbolSpec(
    "BTC/USDT:USDT", "BTC", "USDT", "USDT", "perpetual", 0.1, 0.001, 5.0, 1.0, 60_000.0
)
LINEAR_ETH = SymbolSpec(
    "ETH/USDT:USDT", "ETH", "USDT", "USDT", "perpetual", 0.01, 0.01, 20.0, 1.0, 3_000.0
)
SPECS = [SPOT_BTC, LINEAR_BTC, LINEAR_ETH]
BOTH = pytest.mark.parametrize("spec", [SPOT_BTC, LINEAR_BTC], ids=["spot", "linear"])


@pytest.fixture
async def fake() -> AsyncIterator[FakeExchange]:
    exchange = FakeExchange("bybit", SPECS, None, ScaledClock(START_NS, RATE))
    await exchange.start()
    yield exchange
    await exchange.stop()


@pytest.fixture
async def ex(fake: FakeExchange) -> AsyncIterator[Any]:
    exchange = build_exchange(VenueConfig(**fake.venue_entry("bybit")))
    yield exchange
    await exchange.close()


def skin(fake: FakeExchange) -> BybitSkin:
    assert isinstance(fake.skin, BybitSkin)
    return fake.skin


async def watch(call: Any) -> Any:
    return await asyncio.wait_for(call, WAIT)


async def test_markets_spot_and_linear_with_only_instruments_info(
    fake: FakeExchange, ex: Any
) -> None:
    markets = await ex.load_markets()
    spot, linear = markets["BTC/USDT"], markets["BTC/USDT:USDT"]
    assert (spot["type"], spot["spot"], spot["active"], spot["settle"]) == (
        "spot",
        True,
        True,
        None,
    )
    assert spot["precision"] == {"amount": 0.000001, "price": 0.1}
    assert spot["limits"]["cost"]["min"] == 1.0
    assert (linear["type"], linear["linear"], linear["settle"]) == ("swap", True, "USDT")
    assert (linear["contractSize"], linear["active"]) == (1.0, True)
    assert linear["precision"] == {"amount": 0.001, "price": 0.1}
    assert linear["limits"]["cost"]["min"] == 5.0
    assert markets["ETH/USDT:USDT"]["precision"]["price"] == 0.01
    assert linear["info"]["contractType"] == "LinearPerpetual"
    # spot once, linear twice (Trading, then PreLaunch): no inverse, option or currency call
    assert dict(fake.requests) == {"/v5/market/instruments-info": 3}


async def test_linear_instruments_page_by_cursor(fake: FakeExchange) -> None:
    many = [
        SymbolSpec(f"C{i:03d}/USDT:USDT", f"C{i:03d}", "USDT", "USDT", "perpetual", 0.001, 1.0)
        for i in range(1, 6)
    ]
    fake.specs.update({spec.symbol: spec for spec in many})
    skin(fake).page_size_cap = 2
    exchange = build_exchange(VenueConfig(**fake.venue_entry("bybit")))
    try:
        markets = await exchange.load_markets()
    finally:
        await exchange.close()
    assert {spec.symbol for spec in many + SPECS} <= set(markets)
    assert fake.requests["/v5/market/instruments-info"] > 3  # the cursor was followed


async def test_fetch_time_is_exchange_time(fake: FakeExchange, ex: Any) -> None:
    server_ms = await ex.fetch_time()
    assert abs(server_ms - fake.now_ns() // 1_000_000) < 5 * 60_000 * RATE / 60


@BOTH
async def test_fetch_ohlcv_since_limit_across_gap(
    fake: FakeExchange, ex: Any, spec: SymbolSpec
) -> None:
    await ex.load_markets()
    first = (START_NS // NS // 60 - 20) * MINUTE_MS  # twenty minutes of history back
    fake.faults.gaps.add((first + 2 * MINUTE_MS) * 1_000_000)
    rows = await ex.fetch_ohlcv(spec.symbol, "1m", since=first, limit=5)
    opens = [row[0] for row in rows]
    assert opens == [first + k * MINUTE_MS for k in (0, 1, 3, 4, 5)]
    for row in rows:
        assert row[3] <= min(row[1], row[4]) <= max(row[1], row[4]) <= row[2]
    candle = fake.path.candle(spec.symbol, first * 1_000_000)
    assert rows[0][1:5] == [candle.open, candle.high, candle.low, candle.close]
    raw = await ex.publicGetV5MarketKline(
        {
            "category": "spot" if spec.kind == "spot" else "linear",
            "symbol": "BTCUSDT",
            "interval": "1",
            "start": first + 30_000,
            "limit": 3,
        }
    )
    starts = [int(row[0]) for row in raw["result"]["list"]]
    assert starts == [first + 3 * MINUTE_MS, first + MINUTE_MS, first]  # newest first
    assert all(isinstance(v, str) for row in raw["result"]["list"] for v in row)
    until = first + 4 * MINUTE_MS
    bounded = await ex.fetch_ohlcv(spec.symbol, "1m", since=first, params={"until": until})
    assert bounded[-1][0] == until


@BOTH
async def test_latest_klines_include_the_forming_candle(
    fake: FakeExchange, ex: Any, spec: SymbolSpec
) -> None:
    rows = await ex.fetch_ohlcv(spec.symbol, "1m", limit=3)
    forming = fake.open_of(fake.now_ns()) // 1_000_000
    assert rows[-1][0] in (forming, forming - MINUTE_MS)  # a close may fall in between
    assert [b[0] - a[0] for a, b in itertools.pairwise(rows)] == [MINUTE_MS] * 2


@BOTH
async def test_watch_ohlcv_closes_a_candle_equal_to_rest(
    fake: FakeExchange, ex: Any, spec: SymbolSpec
) -> None:
    rows = await watch(ex.watch_ohlcv(spec.symbol, "1m"))
    first_open = rows[-1][0]
    while rows[-1][0] == first_open:
        rows = await watch(ex.watch_ohlcv(spec.symbol, "1m"))
    cached = {row[0]: row for row in ex.ohlcvs[spec.symbol]["1m"]}
    rest = await ex.fetch_ohlcv(spec.symbol, "1m", since=first_open, limit=1)
    assert cached[first_open] == rest[0]


@BOTH
async def test_watch_trades_and_best_bid_ask(fake: FakeExchange, ex: Any, spec: SymbolSpec) -> None:
    trades = await watch(ex.watch_trades(spec.symbol))
    trade = trades[-1]
    assert trade["symbol"] == spec.symbol and trade["id"] and trade["side"] in ("buy", "sell")
    assert trade["price"] > 0 and trade["amount"] > 0
    books = await watch(ex.watch_bids_asks([spec.symbol]))
    quote = books[spec.symbol]
    assert 0 < quote["bid"] < quote["ask"]
    assert round(quote["ask"] - quote["bid"], 6) == spec.tick_size
    if spec.kind == "perpetual":
        ticker = await watch(ex.watch_ticker(spec.symbol))
        assert 0 < ticker["bid"] < ticker["ask"]
        funding = await ex.fetch_funding_rates([spec.symbol])
        assert funding[spec.symbol]["fundingRate"] == fake.funding(spec.symbol).rate
        assert funding[spec.symbol]["interval"] == "8h"


async def test_drop_then_reconnect(fake: FakeExchange, ex: Any) -> None:
    await watch(ex.watch_ohlcv(LINEAR_BTC.symbol, "1m"))
    assert skin(fake).connections_opened == 1
    fake.faults.drop()
    errors: list[Exception] = []
    rows: list[list[Any]] = []
    for _ in range(5):
        try:
            rows = await watch(ex.watch_ohlcv(LINEAR_BTC.symbol, "1m"))
        except ccxt.NetworkError as error:
            errors.append(error)
            continue
        if skin(fake).connections_opened == 2:
            break
    assert errors, "ccxt did not see the dropped socket"
    assert skin(fake).connections_opened == 2 and rows[-1][0] is not None


async def test_silent_socket_stays_open_and_answers_pings(fake: FakeExchange, ex: Any) -> None:
    await watch(ex.watch_ohlcv(LINEAR_BTC.symbol, "1m"))
    fake.faults.silent = True
    await asyncio.sleep(0.3)  # a frame already in flight may still arrive
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(ex.watch_ohlcv(LINEAR_BTC.symbol, "1m"), 1.5 * 60 / RATE)
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{fake.ws_url}/v5/public/linear") as ws,
    ):
        await ws.send_json({"op": "ping", "req_id": "7"})
        pong = await asyncio.wait_for(ws.receive_json(), WAIT)
    assert (pong["op"], pong["ret_msg"], pong["req_id"]) == ("ping", "pong", "7")
    assert len(fake.connections) == 1  # ccxt's socket is still open
    fake.faults.silent = False
    rows = await watch(ex.watch_ohlcv(LINEAR_BTC.symbol, "1m"))
    assert rows[-1][0] is not None and skin(fake).connections_opened == 2


async def test_malformed_frames_parse_to_nothing_and_the_stream_goes_on(
    fake: FakeExchange, ex: Any
) -> None:
    await watch(ex.watch_ohlcv(LINEAR_BTC.symbol, "1m"))
    fake.faults.malformed = 2
    seen_bad = False
    for _ in range(20):
        rows = await watch(ex.watch_ohlcv(LINEAR_BTC.symbol, "1m"))
        seen_bad = seen_bad or any(v is None for row in rows for v in row)
        if fake.faults.malformed == 0 and rows[-1][0] is not None and seen_bad:
            break
    assert seen_bad and rows[-1][0] is not None
    assert skin(fake).connections_opened == 1  # no reconnect was needed


async def test_rate_limit_and_server_errors_raise_ccxt_network_errors(
    fake: FakeExchange, ex: Any
) -> None:
    expected = {
        429: ccxt.RateLimitExceeded,  # Bybit's API limit: HTTP 200, retCode 10006
        403: ccxt.RateLimitExceeded,  # Bybit's IP limit: 403 access too frequent
        500: ccxt.ExchangeNotAvailable,
        502: ccxt.ExchangeNotAvailable,
        503: ccxt.ExchangeNotAvailable,
        504: ccxt.RequestTimeout,
    }
    for status, error in expected.items():
        fake.faults.http_errors.append(status)
        with pytest.raises(error) as caught:
            await ex.fetch_time()
        assert isinstance(caught.value, ccxt.NetworkError)
    assert await ex.fetch_time() > 0


async def test_delisting_closes_the_market_and_stops_its_stream(
    fake: FakeExchange, ex: Any
) -> None:
    await ex.load_markets()
    await watch(ex.watch_ohlcv(LINEAR_ETH.symbol, "1m"))
    fake.faults.delist(LINEAR_BTC.symbol)
    with pytest.raises(ccxt.BadRequest):  # the old market table still names it
        await ex.fetch_ohlcv(LINEAR_BTC.symbol, "1m", limit=2)
    closed = await ex.publicGetV5MarketInstrumentsInfo({"category": "linear", "status": "Closed"})
    assert [(r["symbol"], r["status"]) for r in closed["result"]["list"]] == [("BTCUSDT", "Closed")]
    markets = await ex.load_markets(True)
    assert LINEAR_BTC.symbol not in markets
    assert markets[SPOT_BTC.symbol]["active"] and markets[LINEAR_ETH.symbol]["active"]
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{fake.ws_url}/v5/public/linear") as ws,
    ):
        await ws.send_json({"op": "subscribe", "req_id": "1", "args": ["kline.1.BTCUSDT"]})
        refused = await asyncio.wait_for(ws.receive_json(), WAIT)
    assert refused["success"] is False and "BTCUSDT" in refused["ret_msg"]
    rows = await watch(ex.watch_ohlcv(LINEAR_ETH.symbol, "1m"))  # the others stream on
    assert rows[-1][0] is not None


async def raw_frames(fake: FakeExchange, channel: str, args: list[str], closes: int) -> list[dict]:
    """Every frame on a raw socket subscribed to ``args`` until ``closes`` klines confirmed."""
    frames: list[dict] = []
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{fake.ws_url}/v5/public/{channel}") as ws,
    ):
        await ws.send_json({"op": "subscribe", "req_id": 1, "args": args})
        await ws.send_json({"req_id": "2", "op": "ping"})
        while True:
            frames.append(await asyncio.wait_for(ws.receive_json(), WAIT))
            confirmed = [
                f
                for f in frames
                if str(f.get("topic", "")).startswith("kline") and f["data"][0]["confirm"]
            ]
            if len(confirmed) >= closes:
                return frames


@pytest.mark.parametrize("channel", ["spot", "linear"])
async def test_raw_protocol_acks_pongs_and_confirm_flag(fake: FakeExchange, channel: str) -> None:
    topics = ["kline.1.BTCUSDT", "publicTrade.BTCUSDT", "orderbook.1.BTCUSDT", "tickers.BTCUSDT"]
    frames = await raw_frames(fake, channel, topics, closes=1)
    ack = next(f for f in frames if f.get("op") == "subscribe")
    assert ack["success"] is True and ack["req_id"] == "1"
    assert ack["ret_msg"] == ("subscribe" if channel == "spot" else "")
    pong = next(f for f in frames if f.get("op") in ("pong", "ping"))
    assert pong["req_id"] == "2"
    assert pong.get("ret_msg") == "pong" or pong["op"] == "pong"
    klines = [f for f in frames if f.get("topic") == "kline.1.BTCUSDT"]
    closed = [f for f in klines if f["data"][0]["confirm"]]
    assert closed and all(
        f["data"][0]["confirm"] is False for f in klines[: klines.index(closed[0])]
    )
    data = closed[0]["data"][0]
    assert data["end"] - data["start"] == MINUTE_MS - 1 and data["interval"] == "1"
    after = klines[klines.index(closed[0]) + 1 :]
    assert all(f["data"][0]["start"] == data["start"] + MINUTE_MS for f in after)
    assert {f.get("topic") for f in frames} >= set(topics)


async def test_spot_refuses_more_than_ten_args_and_unknown_topics(fake: FakeExchange) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{fake.ws_url}/v5/public/spot") as ws,
    ):
        await ws.send_json({"op": "subscribe", "req_id": "1", "args": ["tickers.BTCUSDT"] * 11})
        too_many = await asyncio.wait_for(ws.receive_json(), WAIT)
        await ws.send_json({"op": "subscribe", "req_id": "2", "args": ["kline.1.NOPEUSDT"]})
        unknown = await asyncio.wait_for(ws.receive_json(), WAIT)
    assert (too_many["success"], too_many["ret_msg"]) == (False, "args size >10")
    assert unknown["success"] is False and unknown["req_id"] == "2"


def shape(value: Any) -> Any:
    """Keys and scalar types, recursively (lists by their first element)."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


def missing(recorded: Any, ours: Any, where: str = "") -> list[str]:
    """What the recorded shape has that ours lacks or types differently."""
    if isinstance(recorded, dict):
        if not isinstance(ours, dict):
            return [f"{where}: not an object"]
        out: list[str] = []
        for key, item in recorded.items():
            if key not in ours:
                out.append(f"{where}.{key}: missing")
            else:
                out.extend(missing(item, ours[key], f"{where}.{key}"))
        return out
    if isinstance(recorded, list):
        if recorded and ours:
            return missing(recorded[0], ours[0], f"{where}[0]")
        return []
    return [] if recorded == ours or "NoneType" in (recorded, ours) else [f"{where}: {ours}"]


async def test_frames_and_responses_match_the_recorded_ones_key_by_key(
    fake: FakeExchange, ex: Any
) -> None:
    if not FIXTURES.is_dir():
        pytest.skip(f"reference fixtures not present at {FIXTURES}: shape comparison not run")
    ws_fixture = json.loads((FIXTURES / "ws-bybit.json").read_text())
    rest_fixture = json.loads((FIXTURES / "response-bybit.json").read_text())
    problems: list[str] = []
    recorded: dict[tuple[str, str], dict] = {}
    for method in ("watchOHLCV", "watchTrades", "watchTicker", "watchBidsAsks"):
        for case in ws_fixture["methods"][method]:
            channel = case["url"].rsplit("/", 1)[1]
            for message in case["messages"]:
                kind = str(message.get("topic", message.get("op", ""))).split(".")[0]
                recorded.setdefault((channel, kind), message)
    for channel in ("spot", "linear"):
        topics = ["kline.1.BTCUSDT", "publicTrade.BTCUSDT", "orderbook.1.BTCUSDT"]
        topics.append("tickers.BTCUSDT")
        frames = await raw_frames(fake, channel, topics, closes=1)
        ours = {str(f.get("topic", f.get("op", ""))).split(".")[0]: f for f in frames}
        for (where, kind), message in recorded.items():
            if where == channel and kind in ours:
                problems += missing(shape(message), shape(ours[kind]), f"{channel}:{kind}")
        assert {"kline", "publicTrade", "orderbook", "tickers", "subscribe"} <= set(ours)
    await ex.load_markets()
    answers = {
        "fetchOHLCV": await ex.publicGetV5MarketKline(
            {"category": "linear", "symbol": "BTCUSDT", "interval": "1", "limit": 3}
        ),
        "fetchTicker": await ex.publicGetV5MarketTickers(
            {"category": "linear", "symbol": "BTCUSDT"}
        ),
    }
    answers["fetchFundingRates"] = answers["fetchTicker"]
    for method, answer in answers.items():
        record = dict(rest_fixture["methods"][method][0]["httpResponse"])
        record["retCode"], record["time"] = 0, 0  # recorded as strings; the wire has numbers
        if method == "fetchFundingRates":  # ccxt added "timestamp" to the recorded row
            record["result"]["list"][0].pop("timestamp", None)
        problems += missing(shape(record), shape(answer), method)
    assert not problems, problems


async def test_ccxt_meets_the_spot_arg_limit_and_unsubscribes(fake: FakeExchange) -> None:
    extra = [
        SymbolSpec(f"C{i:03d}/USDT", f"C{i:03d}", "USDT", "", "spot", 0.01, 0.001)
        for i in range(11)
    ]
    fake.specs.update({spec.symbol: spec for spec in extra})
    exchange = build_exchange(VenueConfig(**fake.venue_entry("bybit")))
    try:
        await exchange.load_markets()
        with pytest.raises(ccxt.ExchangeError, match="args size >10"):
            await watch(exchange.watch_ohlcv_for_symbols([[s.symbol, "1m"] for s in extra]))
        ten = await watch(exchange.watch_ohlcv_for_symbols([[s.symbol, "1m"] for s in extra[:10]]))
        assert set(ten) <= {s.symbol for s in extra[:10]}
        await watch(exchange.watch_ohlcv(LINEAR_BTC.symbol, "1m"))
        assert await watch(exchange.un_watch_ohlcv(LINEAR_BTC.symbol, "1m")) is True
        linear = [c for c in fake.connections if c.path == "/v5/public/linear"]
        assert len(linear) == 1 and not linear[0].topics
    finally:
        await exchange.close()
