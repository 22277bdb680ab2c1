"""The Binance fake (spot and USDT-M) driven by ccxt itself, only ``urls``/``options`` changed.

Exchange time runs 120x the wall, so a one-minute candle closes every half second.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import ccxt
import ccxt.pro
import msgspec
import pytest

from services.marketdata.sources import read_bars
from services.venues.ccxt_exchange import build_exchange
from services.venues.config import VenueConfig
from tests.fakes.__main__ import venue_toml
from tests.fakes.clock import ScaledClock
from tests.fakes.core import NS, FakeExchange, PricePath, default_symbols, start_fake

MINUTE_MS = 60_000
RATE = 120
START_NS = 1_750_000_000 * NS - 10 * NS  # 10 exchange seconds before a minute's close
FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "reference" / "ccxt-fixtures"
IDS = ["binance", "binanceusdm"]


class Venue:
    def __init__(self, fake: FakeExchange, exchange: ccxt.pro.Exchange) -> None:
        self.fake = fake
        self.exchange = exchange
        self.symbols = list(fake.specs)


@pytest.fixture(params=IDS)
async def venue(request: pytest.FixtureRequest) -> AsyncIterator[Venue]:
    exchange_id = request.param
    clock = ScaledClock(START_NS, RATE)
    fake = await start_fake(exchange_id, default_symbols(exchange_id, 3), clock)
    exchange = build_exchange(VenueConfig(**fake.venue_entry("fake")))
    try:
        await exchange.load_markets()
        yield Venue(fake, exchange)
    finally:
        await exchange.close()
        await fake.stop()


async def closed_candles(venue: Venue, symbols: list[str], wanted: int) -> dict[str, list]:
    """Watch klines until ``wanted`` candles of each symbol have closed; the final values
    seen for each closed candle, by symbol."""
    last: dict[str, dict[int, list]] = {s: {} for s in symbols}
    done: dict[str, list] = {}
    async with asyncio.timeout(20):
        while len(done) < len(symbols):
            batch = await venue.exchange.watch_ohlcv_for_symbols([[s, "1m"] for s in symbols])
            for symbol, frames in batch.items():
                for row in frames["1m"]:
                    last[symbol][row[0]] = row
                opens = sorted(last[symbol])
                if len(opens) > wanted:
                    done[symbol] = [last[symbol][t] for t in opens[:wanted]]
    return done


def approx_candle(row: list, candle: Any) -> bool:
    values = [candle.open, candle.high, candle.low, candle.close, candle.volume]
    return row[0] == candle.open_ns // 1_000_000 and row[1:6] == pytest.approx(values)


async def test_markets_carry_the_served_specs(venue: Venue) -> None:
    for spec in venue.fake.specs.values():
        market = venue.exchange.market(spec.symbol)
        assert market["active"] is True
        assert market["precision"]["price"] == pytest.approx(spec.tick_size)
        assert market["precision"]["amount"] == pytest.approx(spec.lot_size)
        assert market["limits"]["amount"]["min"] == pytest.approx(spec.lot_size)
        assert market["limits"]["cost"]["min"] == pytest.approx(spec.min_notional)
        assert (market["base"], market["quote"]) == (spec.base, spec.quote)
        if spec.kind == "perpetual":
            assert (market["type"], market["linear"], market["settle"]) == ("swap", True, "USDT")
            assert market["contractSize"] == pytest.approx(spec.contract_size)
        else:
            assert market["type"] == "spot" and market["contractSize"] is None
    server = await venue.exchange.fetch_time()
    assert abs(server - venue.fake.now_ns() // 1_000_000) < 600_000  # 5 wall seconds
    info = "/fapi/v1/exchangeInfo" if venue.fake.exchange_id == "binanceusdm" else "/api/v3"
    assert sum(n for path, n in venue.fake.requests.items() if path.startswith(info)) >= 1
    assert not any("sapi" in path or "capital" in path for path in venue.fake.requests)


async def test_fetch_ohlcv_since_limit_across_a_gap(venue: Venue) -> None:
    fake, symbol = venue.fake, venue.symbols[0]
    forming = fake.open_of(fake.now_ns())
    gap = forming - 3 * fake.step_ns
    fake.faults.gaps.add(gap)
    since_ms = (forming - 6 * fake.step_ns) // 1_000_000
    rows = await venue.exchange.fetch_ohlcv(symbol, "1m", since=since_ms, limit=4)
    opens = [row[0] for row in rows]
    step = MINUTE_MS
    assert opens == [since_ms, since_ms + step, since_ms + 2 * step, since_ms + 4 * step]
    for row in rows:
        assert approx_candle(row, fake.path.candle(symbol, row[0] * 1_000_000))
    latest = await venue.exchange.fetch_ohlcv(symbol, "1m", limit=5)
    assert len(latest) == 5 and gap // 1_000_000 not in [r[0] for r in latest]
    assert latest[-1][0] >= forming // 1_000_000  # the forming candle comes last
    until = await venue.exchange.fetch_ohlcv(
        symbol, "1m", since=since_ms, params={"until": since_ms + step}
    )
    assert [r[0] for r in until] == [since_ms, since_ms + step]
    listing = await venue.exchange.fetch_ohlcv(symbol, "1m", since=0, limit=2)
    assert [r[0] for r in listing] == [fake.listed_ns // 1_000_000 + i * step for i in (0, 1)]


async def test_a_minute_without_trades_is_a_flat_zero_volume_candle(venue: Venue) -> None:
    fake, symbol = venue.fake, venue.symbols[0]
    forming = fake.open_of(fake.now_ns())
    quiet = forming - 2 * fake.step_ns
    fake.faults.quiet.add(quiet)
    rows = await venue.exchange.fetch_ohlcv(symbol, "1m", since=(quiet - fake.step_ns) // 10**6)
    before, flat = rows[0], rows[1]
    assert flat[0] == quiet // 1_000_000
    assert flat[1:5] == [before[4]] * 4 and flat[5] == 0
    ahead = fake.open_of(fake.now_ns()) + fake.step_ns
    fake.faults.quiet.add(ahead)
    done = await closed_candles(venue, [symbol], 3)
    seen = {row[0]: row for row in done[symbol]}
    assert seen[ahead // 1_000_000][5] == 0
    assert len(set(seen[ahead // 1_000_000][1:5])) == 1


async def test_watch_ohlcv_sees_closed_candles_with_final_values(venue: Venue) -> None:
    done = await closed_candles(venue, venue.symbols[:2], 1)
    for symbol, rows in done.items():
        for row in rows:
            assert approx_candle(row, venue.fake.path.candle(symbol, row[0] * 1_000_000))
    assert venue.fake.frames_sent > 0


async def test_watch_trades_and_bids_asks(venue: Venue) -> None:
    symbol = venue.symbols[0]
    spec = venue.fake.specs[symbol]
    trades = await venue.exchange.watch_trades(symbol)
    assert trades[-1]["symbol"] == symbol and trades[-1]["price"] > 0
    assert trades[-1]["amount"] >= spec.lot_size
    quotes = await venue.exchange.watch_bids_asks([symbol])
    quote = quotes[symbol]
    assert quote["bid"] < quote["ask"]
    assert quote["ask"] - quote["bid"] == pytest.approx(spec.tick_size)
    ticker = await venue.exchange.watch_ticker(symbol)
    assert ticker["symbol"] == symbol and ticker["last"] > 0


async def test_drop_then_the_next_watch_reconnects(venue: Venue) -> None:
    symbol = venue.symbols[0]
    await venue.exchange.watch_ohlcv(symbol, "1m")
    assert len(venue.fake.connections) == 1
    for _ in range(3):
        pending = asyncio.ensure_future(venue.exchange.watch_ohlcv(symbol, "1m"))
        await asyncio.sleep(0)
        venue.fake.faults.drop()
        try:
            async with asyncio.timeout(5):
                await pending
        except ccxt.NetworkError:
            break  # the drop reached the waiting watch
        # a candle already on the wire answered the watch before the drop: drop again
    else:
        pytest.fail("no drop reached a waiting watch in three tries")
    async with asyncio.timeout(10):
        rows = await venue.exchange.watch_ohlcv(symbol, "1m")
    assert rows and len(venue.fake.connections) == 1


async def test_silent_keeps_the_socket_and_answers_pings(venue: Venue) -> None:
    symbol = venue.symbols[0]
    await venue.exchange.watch_ohlcv(symbol, "1m")
    venue.fake.faults.silent = True
    await asyncio.sleep(0.05)  # a frame already on the wire may still arrive
    sent = venue.fake.frames_sent
    with pytest.raises(TimeoutError):
        # two exchange minutes: closes pass, nothing comes
        await asyncio.wait_for(venue.exchange.watch_ohlcv(symbol, "1m"), 120 / RATE)
    assert venue.fake.frames_sent == sent
    async with asyncio.timeout(5):  # the server's pings go on (futures: every 3 min)
        while venue.fake.pings_sent == 0:
            await asyncio.sleep(0.05)
    client = next(iter(venue.exchange.clients.values()))
    client.lastPong = None
    await client.connection.ping()
    async with asyncio.timeout(5):
        while client.lastPong is None:
            await asyncio.sleep(0.01)
    assert not client.connection.closed and len(venue.fake.connections) == 1
    venue.fake.faults.silent = False
    rows = await asyncio.wait_for(venue.exchange.watch_ohlcv(symbol, "1m"), 10)
    assert rows and venue.fake.frames_sent > sent


async def test_malformed_frames_reach_ccxt_as_wrong_typed_values(venue: Venue) -> None:
    symbol = venue.symbols[0]
    parsed: list[list] = []
    handle = venue.exchange.handle_message

    def spy(client: Any, message: Any) -> None:
        """The row ccxt stored for each kline frame, read before a later frame replaces it."""
        handle(client, message)
        if isinstance(message, dict) and message.get("e") == "kline":
            parsed.append(list(venue.exchange.ohlcvs[symbol]["1m"][-1]))

    venue.exchange.handle_message = spy  # type: ignore[method-assign]
    await venue.exchange.watch_ohlcv(symbol, "1m")
    venue.fake.faults.malformed = 1
    async with asyncio.timeout(10):
        while not any(None in row[1:6] for row in parsed):
            await venue.exchange.watch_ohlcv(symbol, "1m")
        garbled = len(parsed)
        while len(parsed) == garbled:
            await venue.exchange.watch_ohlcv(symbol, "1m")
    assert venue.fake.faults.malformed == 0
    assert None not in parsed[-1]


async def test_out_of_order_repeats_an_older_candle(venue: Venue) -> None:
    symbol = venue.symbols[0]
    arrived: list[int] = []
    handle = venue.exchange.handle_message

    def spy(client: Any, message: Any) -> None:
        if isinstance(message, dict) and message.get("e") == "kline":
            arrived.append(message["k"]["t"])
        handle(client, message)

    venue.exchange.handle_message = spy  # type: ignore[method-assign]
    await closed_candles(venue, [symbol], 1)
    venue.fake.faults.out_of_order = 1
    async with asyncio.timeout(10):
        while venue.fake.faults.out_of_order:
            await venue.exchange.watch_ohlcv(symbol, "1m")
    await venue.exchange.watch_ohlcv(symbol, "1m")
    assert any(later < earlier for earlier, later in itertools.pairwise(arrived))


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (429, ccxt.DDoSProtection),
        (418, ccxt.DDoSProtection),
        (503, ccxt.ExchangeNotAvailable),
        (500, ccxt.ExchangeNotAvailable),
    ],
)
async def test_http_errors_map_to_ccxt_exceptions(
    venue: Venue, status: int, error: type[Exception]
) -> None:
    venue.fake.faults.http_errors.extend([status])
    with pytest.raises(error):
        await venue.exchange.fetch_ohlcv(venue.symbols[0], "1m", limit=2)
    assert len(await venue.exchange.fetch_ohlcv(venue.symbols[0], "1m", limit=2)) == 2


async def test_delisting_turns_the_market_inactive_and_stops_its_stream(venue: Venue) -> None:
    gone, kept = venue.symbols[0], venue.symbols[1]
    await venue.exchange.watch_ohlcv_for_symbols([[gone, "1m"], [kept, "1m"]])
    venue.fake.faults.delist(gone)
    last_row = (await venue.exchange.fetch_ohlcv(gone, "1m", limit=3))[-1]
    markets = await venue.exchange.load_markets(reload=True)
    assert markets[gone]["active"] is False and markets[kept]["active"] is True
    seen: set[str] = set()
    for _ in range(8):
        batch = await asyncio.wait_for(
            venue.exchange.watch_ohlcv_for_symbols([[gone, "1m"], [kept, "1m"]]), 10
        )
        seen |= set(batch)
    assert seen == {kept}
    assert (await venue.exchange.fetch_ohlcv(gone, "1m", limit=3))[-1] == last_row


async def test_a_listing_mid_session_is_served(venue: Venue) -> None:
    kind = next(iter(venue.fake.specs.values())).kind
    extra = default_symbols(venue.fake.exchange_id, 8)[7]
    assert extra.kind == kind and extra.symbol not in venue.fake.specs
    venue.fake.specs[extra.symbol] = extra
    markets = await venue.exchange.load_markets(reload=True)
    assert markets[extra.symbol]["precision"]["price"] == pytest.approx(extra.tick_size)
    rows = await venue.exchange.fetch_ohlcv(extra.symbol, "1m", limit=3)
    expected = venue.fake.path.candle(extra.symbol, rows[0][0] * 1_000_000)
    assert approx_candle(rows[0], expected)
    assert abs(rows[0][1] / extra.price - 1) < 0.1  # the path starts from the listed price


async def test_a_tick_size_change_is_served(venue: Venue) -> None:
    symbol = venue.symbols[0]
    spec = venue.fake.specs[symbol]
    coarser = msgspec.structs.replace(spec, tick_size=spec.tick_size * 10)
    before = venue.fake.path.candle(symbol, START_NS)
    venue.fake.specs[symbol] = coarser
    markets = await venue.exchange.load_markets(reload=True)
    assert markets[symbol]["precision"]["price"] == pytest.approx(coarser.tick_size)
    after = venue.fake.path.candle(symbol, START_NS)
    assert after.close / coarser.tick_size == pytest.approx(round(after.close / coarser.tick_size))
    assert after.close == pytest.approx(before.close, abs=coarser.tick_size)


async def test_funding_rate_from_premium_index() -> None:
    clock = ScaledClock(START_NS, RATE)
    fake = await start_fake("binanceusdm", default_symbols("binanceusdm", 2), clock)
    exchange = build_exchange(VenueConfig(**fake.venue_entry("usdm")))
    try:
        rate = await exchange.fetch_funding_rate("BTC/USDT:USDT")
        expected = fake.funding("BTC/USDT:USDT")
        assert rate["fundingRate"] == pytest.approx(expected.rate)
        assert rate["fundingTimestamp"] == expected.next_ns // 1_000_000
        rates = await exchange.fetch_funding_rates()
        assert set(rates) == set(fake.specs)
    finally:
        await exchange.close()
        await fake.stop()


async def test_combined_stream_envelope_and_unsubscribe() -> None:
    clock = ScaledClock(START_NS, RATE)
    fake = await start_fake("binance", default_symbols("binance", 2), clock)
    try:
        url = f"{fake.ws_url}/stream?streams=btcusdt@kline_1m/ethusdt@bookTicker"
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            names: set[str] = set()
            while len(names) < 2:
                frame = json.loads((await ws.receive(timeout=5)).data)
                assert set(frame) == {"stream", "data"}
                names.add(frame["stream"])
            await ws.send_json({"method": "UNSUBSCRIBE", "params": list(names), "id": 7})
            await ws.send_json({"method": "LIST_SUBSCRIPTIONS", "id": 8})
            replies = {}
            while 8 not in replies:
                frame = json.loads((await ws.receive(timeout=5)).data)
                if "id" in frame:
                    replies[frame["id"]] = frame
            assert replies[7] == {"result": None, "id": 7}
            assert replies[8] == {"result": [], "id": 8}
    finally:
        await fake.stop()


def test_venue_entry_as_toml_builds_the_exchange() -> None:
    clock = ScaledClock(START_NS, RATE)
    fake = FakeExchange("binance", default_symbols("binance", 1), None, clock)
    fake.http_url, fake.ws_url = "http://127.0.0.1:9", "ws://127.0.0.1:9"
    table = tomllib.loads(venue_toml(fake.venue_entry("spot")))["venues"][0]
    exchange = build_exchange(VenueConfig(**table))
    assert exchange.urls["api"]["public"] == "http://127.0.0.1:9/api/v3"
    assert exchange.urls["api"]["ws"]["spot"] == "ws://127.0.0.1:9/ws"
    assert exchange.options["fetchMarkets"]["types"] == ["spot"]


# -- the recorded wire formats (../shared/reference/ccxt-fixtures) --------------------------


def recorded(kind: str) -> dict[str, Any]:
    path = FIXTURES / f"{kind}-binance.json"
    if not path.exists():
        pytest.skip(f"{FIXTURES} is absent: the recorded Binance frames are not here to compare")
    return json.loads(path.read_text())


def recorded_frame(method: str, url_part: str, event: str | None) -> dict[str, Any]:
    """The first frame ``method`` recorded on a URL containing ``url_part`` with event type
    ``event`` (None: a frame without one, spot ``bookTicker``)."""
    cases = recorded("ws")["methods"][method]
    frames = [
        m
        for case in cases
        if url_part in case["url"]
        for m in case["messages"]
        if isinstance(m, dict) and "id" not in m and m.get("e") == event
    ]
    assert frames, f"no recorded {method} frame on {url_part}"
    return frames[0]


async def raw_frames(fake: FakeExchange, streams: list[str], path: str) -> dict[str, dict]:
    """The first frame of each stream, as the fake writes it."""
    out: dict[str, dict] = {}
    async with aiohttp.ClientSession() as session, session.ws_connect(fake.ws_url + path) as ws:
        await ws.send_json({"method": "SUBSCRIBE", "params": streams, "id": 1})
        async with asyncio.timeout(10):
            while len(out) < len(streams):
                frame = json.loads((await ws.receive()).data)
                if "id" in frame:
                    continue
                kind = frame.get("e", "bookTicker")
                name = {"24hrMiniTicker": "miniTicker", "24hrTicker": "ticker"}.get(kind, kind)
                out.setdefault(name, frame)
    return out


@pytest.mark.parametrize(("exchange_id", "url_part"), [("binance", "//stream.binance.com"),
                                                       ("binanceusdm", "fstream.binance.com")])  # fmt: skip
async def test_frames_have_the_recorded_keys(exchange_id: str, url_part: str) -> None:
    clock = ScaledClock(START_NS, RATE)
    fake = await start_fake(exchange_id, default_symbols(exchange_id, 1), clock)
    try:
        streams = ["btcusdt@kline_1m", "btcusdt@trade", "btcusdt@bookTicker", "btcusdt@miniTicker"]
        path = "/market/ws/0" if exchange_id == "binanceusdm" else "/ws/0"
        ours = await raw_frames(fake, streams, path)
        methods = {"kline": "watchOHLCV", "trade": "watchTrades", "miniTicker": "watchTicker"}
        if exchange_id == "binance":
            methods["bookTicker"] = "watchBidsAsks"
        for name, method in methods.items():
            theirs = recorded_frame(method, url_part, ours[name].get("e"))
            assert list(ours[name]) == list(theirs), name
            if name == "kline":
                assert list(ours[name]["k"]) == list(theirs["k"])
            for key, value in theirs.items():
                assert type(ours[name][key]) is type(value), (name, key)
    finally:
        await fake.stop()


async def test_rest_answers_have_the_recorded_shapes() -> None:
    responses = recorded("response")["methods"]
    markets = json.loads((FIXTURES / "markets-binance.json").read_text())
    clock = ScaledClock(START_NS, RATE)
    for exchange_id, symbol, prefix in (
        ("binance", "BTC/USDT", "/api/v3"),
        ("binanceusdm", "BTC/USDT:USDT", "/fapi/v1"),
    ):
        fake = await start_fake(exchange_id, default_symbols(exchange_id, 1), clock)
        try:
            async with aiohttp.ClientSession(fake.http_url) as http:
                info = await (await http.get(f"{prefix}/exchangeInfo")).json()
                rows = await (await http.get(f"{prefix}/klines?symbol=BTCUSDT&interval=1m")).json()
                ticker = await (await http.get(f"{prefix}/ticker/24hr?symbol=BTCUSDT")).json()
        finally:
            await fake.stop()
        real = markets[symbol]["info"]
        ours = info["symbols"][0]
        assert set(ours) <= set(real), set(ours) - set(real)
        real_filters = {f["filterType"]: f for f in real["filters"]}
        for ours_filter in ours["filters"]:
            real_filter = real_filters[ours_filter["filterType"]]
            assert set(ours_filter) == set(real_filter), ours_filter["filterType"]
        case = next(
            c for c in responses["fetchOHLCV"] if c["input"][0] == symbol and len(c["input"]) <= 4
        )
        assert [type(v) for v in rows[0]] == [type(v) for v in case["httpResponse"][0]]
        if exchange_id == "binance":
            real_ticker = responses["fetchTicker"][0]["httpResponse"]
            assert set(ticker) <= set(real_ticker), set(ticker) - set(real_ticker)


# -- the core's price path and symbol lists --------------------------------------------------


def test_partial_candles_only_widen_and_converge() -> None:
    specs = default_symbols("binanceusdm", 6)
    path = PricePath.synthetic(seed=3)
    path.register(specs, 60 * NS)
    for spec in specs:
        for k in range(5):
            open_ns = START_NS - START_NS % (60 * NS) + k * 60 * NS
            steps = [path.partial(spec.symbol, open_ns, f / 8) for f in range(9)]
            assert steps[-1] == path.candle(spec.symbol, open_ns)
            for before, after in itertools.pairwise(steps):
                assert after.high >= before.high and after.low <= before.low
                assert after.volume >= before.volume and after.open == before.open
            full = steps[-1]
            assert full.low <= min(full.open, full.close) <= max(full.open, full.close) <= full.high
            ticks = full.close / spec.tick_size
            assert ticks == pytest.approx(round(ticks), abs=1e-6)
    same_seed = PricePath.synthetic(seed=3)
    same_seed.register(specs, 60 * NS)
    assert same_seed.candle(specs[0].symbol, START_NS) == path.candle(specs[0].symbol, START_NS)


def test_price_path_from_a_bar_file(tmp_path: Path) -> None:
    start_ms = 1_700_000_040_000
    lines = []
    for i in range(5):
        o = 100 + i
        lines.append(
            f"{start_ms + i * 60_000},{o},{o + 2},{o - 1},{o + 1},{10 + i},"
            f"{start_ms + i * 60_000 + 59_999},1000,7,5,500,0"
        )
    file = tmp_path / "BTCUSDT-1m.csv"
    file.write_text("\n".join(lines) + "\n")
    bars = read_bars(file, venue="binance", symbol="BTC/USDT").bars
    path = PricePath.from_bars(bars)
    spec = default_symbols("binance", 1)[0]
    path.register([spec], 60 * NS)
    first = path.candle(spec.symbol, 0)
    again = path.candle(spec.symbol, 5 * 60 * NS)  # the file is reused cyclically
    assert (first.open, first.high, first.low, first.close) == (
        again.open,
        again.high,
        again.low,
        again.close,
    )
    ratios = [(b.high / b.low, b.close / b.open) for b in bars]
    assert any(
        (first.high / first.low, first.close / first.open) == pytest.approx(r, rel=1e-3)
        for r in ratios
    )
    with pytest.raises(ValueError, match="interval"):
        FakeExchange("binance", [spec], path, ScaledClock(0, 1), interval="5m")


def test_default_symbols_reach_600_distinct_markets() -> None:
    specs = default_symbols("binanceusdm", 600)
    assert len({s.symbol for s in specs}) == 600
    assert specs[0].symbol == "BTC/USDT:USDT" and specs[5].symbol == "C001/USDT:USDT"
    assert all(s.kind == "perpetual" and s.settle == "USDT" for s in specs)
    assert default_symbols("binance", 2)[1].symbol == "ETH/USDT"
    assert default_symbols("bybit", 1, kind="perpetual")[0].symbol == "BTC/USDT:USDT"
