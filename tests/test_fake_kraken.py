"""The Kraken spot and Kraken Futures fakes, driven through ccxt's own code path.

Every test builds the exchange the product way (``build_exchange(VenueConfig(**entry))``) on a
fake whose exchange clock runs 60x (an exchange minute per wall second) and starts hours in
the past: Kraken Futures' ``fetchOHLCV`` caps ``to`` at ccxt's wall clock, so the exchange
must not run ahead of it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import aiohttp
import ccxt
import pytest

from services.venues.ccxt_exchange import build_exchange
from services.venues.config import VenueConfig
from tests.fakes.clock import ScaledClock
from tests.fakes.core import NS, FakeExchange, default_symbols, start_fake

MINUTE = 60 * NS
MS = 1_000_000
FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "reference" / "ccxt-fixtures"
BTC, ETH = "BTC/USD", "ETH/USD"
PBTC, PETH = "BTC/USD:USD", "ETH/USD:USD"


def exchange_clock() -> ScaledClock:
    """Six hours behind the wall, 10 s into a minute, 60x."""
    start = (time.time_ns() - 6 * 3600 * NS) // MINUTE * MINUTE + 10 * NS
    return ScaledClock(start, 60.0)


@asynccontextmanager
async def venue(exchange_id: str, n: int = 2) -> AsyncIterator[tuple[FakeExchange, Any]]:
    fake = await start_fake(exchange_id, default_symbols(exchange_id, n), exchange_clock())
    exchange = build_exchange(VenueConfig(**fake.venue_entry("kr")))
    exchange.throttler.config["refillRate"] = 1 / 50  # the limiter stays on, at 20 requests/s
    try:
        yield fake, exchange
    finally:
        await exchange.close()
        await fake.stop()


async def within(call: Callable[[], Awaitable[Any]], seconds: float = 5.0) -> Any:
    return await asyncio.wait_for(call(), seconds)


async def until_next(call: Callable[[], Awaitable[Any]], wanted: Callable[[Any], bool]) -> Any:
    """The first of the next few results that is ``wanted`` (a frame already on its way when
    the test set a fault may come first)."""
    for _ in range(3):
        result = await within(call)
        if wanted(result):
            return result
    raise AssertionError("the faulty frame never came")


def row(candle: Any) -> list[float]:
    return [candle.open_ns // MS, candle.open, candle.high, candle.low, candle.close, candle.volume]


async def raw_frames(url: str, sent: list[dict[str, Any]], seconds: float) -> list[dict[str, Any]]:
    """Every frame a plain websocket gets in ``seconds`` after sending ``sent``."""
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        for message in sent:
            await ws.send_json(message)
        frames: list[dict[str, Any]] = []
        deadline = asyncio.get_running_loop().time() + seconds
        while (left := deadline - asyncio.get_running_loop().time()) > 0:
            try:
                frames.append(json.loads((await ws.receive(timeout=left)).data))
            except TimeoutError:
                break
    return frames


def served_at(ex: Any) -> int:
    """The ``Date`` header of ccxt's last answer, in ms (second resolution)."""
    return int(parsedate_to_datetime(ex.last_response_headers["Date"]).timestamp() * 1000)


# -- Kraken spot ----------------------------------------------------------------------------


async def test_kraken_markets_time_and_legacy_names() -> None:
    async with venue("kraken", 5) as (fake, ex):
        markets = await ex.load_markets()
        btc = markets[BTC]
        assert (btc["id"], btc["altname"], btc["wsId"]) == ("XXBTZUSD", "XBTUSD", "XBT/USD")
        assert (btc["base"], btc["quote"], btc["type"], btc["active"]) == (
            "BTC",
            "USD",
            "spot",
            True,
        )
        spec = fake.specs[BTC]
        assert btc["precision"] == {"amount": spec.lot_size, "price": spec.tick_size}
        assert btc["limits"]["amount"]["min"] == spec.lot_size
        assert btc["info"]["tick_size"] == "0.1" and btc["info"]["status"] == "online"
        assert markets["DOGE/USD"]["id"] == "XXDGZUSD"
        assert markets["SOL/USD"]["id"] == "SOLUSD"
        assert dict(fake.requests) == {"/0/public/Assets": 1, "/0/public/AssetPairs": 1}
        server_ms = await ex.fetch_time()
        assert abs(server_ms - fake.now_ns() // MS) < 60_000  # exchange time, not the wall's
        assert abs(served_at(ex) - fake.now_ns() // MS) < 60_000
        ticker = await ex.fetch_ticker(BTC)
        assert ticker["ask"] - ticker["bid"] == pytest.approx(spec.tick_size)


async def test_kraken_ohlc_since_gap_last_and_720_window() -> None:
    async with venue("kraken") as (fake, ex):
        forming = fake.open_of(fake.now_ns())
        gap = forming - 5 * MINUTE
        fake.faults.gaps.add(gap)
        rows = await ex.fetch_ohlcv(BTC, "1m", since=(forming - 8 * MINUTE) // MS, limit=6)
        opens = [forming + k * MINUTE for k in (-8, -7, -6, -4, -3, -2)]
        assert [r[0] for r in rows] == [o // MS for o in opens]
        assert rows == [row(fake.path.candle(BTC, o)) for o in opens]
        raw = await ex.publicGetOHLC({"pair": "XXBTZUSD", "interval": 1, "since": 0})
        assert raw["error"] == []
        got = raw["result"]["XXBTZUSD"]
        times = [r[0] for r in got]
        assert times[-1] - times[0] <= 719 * 60 and len(got) == 719  # one gap minute inside
        assert gap // NS not in times
        assert raw["result"]["last"] == times[-1] - 60  # newest committed; the last row forms
        assert all(len(r) == 8 and isinstance(r[1], str) for r in got)
        since = times[-4]
        later = await ex.publicGetOHLC({"pair": "XXBTZUSD", "interval": 1, "since": since})
        assert later["result"]["XXBTZUSD"][0][0] == since + 60  # since is exclusive
        before = fake.open_of(fake.now_ns()) // NS
        future = await ex.publicGetOHLC({"pair": "XXBTZUSD", "interval": 1, "since": 2**32})
        (only,) = future["result"]["XXBTZUSD"]  # the forming row is always there
        assert before <= only[0] <= fake.open_of(fake.now_ns()) // NS


async def test_kraken_watch_ohlcv_closes_a_candle_as_rest_has_it() -> None:
    async with venue("kraken") as (fake, ex):
        seen: dict[int, list[float]] = {}
        first = await within(lambda: ex.watch_ohlcv(BTC, "1m"))
        assert len(first) > 1  # the v2 snapshot: recent candles, the forming one last
        forming = first[-1][0]
        seen.update({r[0]: r for r in first})
        while max(seen) <= forming:
            seen.update({r[0]: r for r in await within(lambda: ex.watch_ohlcv(BTC, "1m"))})
        closed = seen[forming]
        assert closed == row(fake.path.candle(BTC, forming * MS))
        rest = await ex.fetch_ohlcv(BTC, "1m", since=forming, limit=1)
        assert rest == [closed]


async def test_kraken_trades_and_bid_ask() -> None:
    async with venue("kraken") as (fake, ex):
        snapshot = await within(lambda: ex.watch_trades(BTC))
        assert len(snapshot) >= 50  # the snapshot (and a print that raced it)
        ids = [int(t["id"]) for t in snapshot]
        assert ids == sorted(ids)
        update = await within(lambda: ex.watch_trades(BTC))
        assert int(update[-1]["id"]) > ids[-1]
        assert update[-1]["timestamp"] <= fake.now_ns() // MS
        quotes = await within(lambda: ex.watch_bids_asks([BTC]))
        quote = quotes[BTC]
        assert quote["ask"] - quote["bid"] == pytest.approx(fake.specs[BTC].tick_size)
        ticker = await within(lambda: ex.watch_ticker(ETH))
        assert ticker["bid"] < ticker["ask"]


async def test_kraken_drop_reconnect_silent_and_heartbeat() -> None:
    async with venue("kraken") as (fake, ex):
        await within(lambda: ex.watch_trades(BTC))
        fake.faults.drop()
        with pytest.raises(ccxt.NetworkError):
            for _ in range(20):
                await within(lambda: ex.watch_trades(BTC))
        again = await within(lambda: ex.watch_trades(BTC))
        assert again and len(fake.connections) == 1
        fake.faults.silent = True
        await asyncio.sleep(0.3)
        with pytest.raises(TimeoutError):
            for _ in range(5):
                await within(lambda: ex.watch_trades(BTC), 1.5)
        # ccxt 4.5's watch_heartbeat never resolves (a v2 heartbeat has no "event"): look raw
        subscribe = {"method": "subscribe", "params": {"channel": "trade", "symbol": [BTC]}}
        frames = await raw_frames(f"{fake.ws_url}/v2", [subscribe], 2.5)
        kinds = [f.get("channel") or f.get("method") for f in frames]
        assert kinds[:3] == ["status", "subscribe", "trade"]  # acknowledged, the snapshot
        assert kinds[3:] and set(kinds[3:]) == {"heartbeat"}  # then alive, and no data
        fake.faults.silent = False
        assert await within(lambda: ex.watch_trades(BTC))


async def test_kraken_malformed_kline_reaches_the_caller_as_none() -> None:
    async with venue("kraken") as (fake, ex):
        await within(lambda: ex.watch_ohlcv(BTC, "1m"))
        fake.faults.malformed = 1
        rows = await until_next(lambda: ex.watch_ohlcv(BTC, "1m"), lambda r: r[-1][1] is None)
        assert rows[-1][0] is not None and rows[-1][1:] == [None] * 5  # the candle, no values
        good = await within(lambda: ex.watch_ohlcv(BTC, "1m"))
        assert None not in good[-1]


async def test_kraken_malformed_trade_reaches_the_caller_as_none() -> None:
    async with venue("kraken") as (fake, ex):
        await within(lambda: ex.watch_trades(ETH))
        fake.faults.malformed = 1
        trades = await until_next(lambda: ex.watch_trades(ETH), lambda t: t[-1]["price"] is None)
        assert trades[-1]["amount"] is None and trades[-1]["timestamp"] is None
        assert (await within(lambda: ex.watch_trades(ETH)))[-1]["price"] is not None


async def test_kraken_rate_limit_and_outages() -> None:
    async with venue("kraken") as (fake, ex):
        await ex.load_markets()
        fake.faults.http_errors.extend([429, 503, 500, 502])
        with pytest.raises(ccxt.DDoSProtection):  # HTTP 200, "EAPI:Rate limit exceeded"
            await ex.fetch_ohlcv(BTC, "1m", limit=2)
        for _ in range(3):
            with pytest.raises(ccxt.ExchangeNotAvailable):
                await ex.fetch_ohlcv(BTC, "1m", limit=2)
        assert len(await ex.fetch_ohlcv(BTC, "1m", limit=2)) == 2


async def test_kraken_delisting() -> None:
    async with venue("kraken") as (fake, ex):
        await ex.load_markets()
        await within(lambda: ex.watch_trades(ETH))
        fake.faults.delist(ETH)
        await asyncio.sleep(0.3)
        with pytest.raises(TimeoutError):
            for _ in range(5):
                await within(lambda: ex.watch_trades(ETH), 1.0)
        subscribe = {"method": "subscribe", "params": {"channel": "ohlc", "symbol": [ETH]}}
        refused = await raw_frames(f"{fake.ws_url}/v2", [subscribe | {"req_id": 7}], 0.5)
        assert refused[1]["success"] is False and refused[1]["req_id"] == 7
        assert refused[1]["error"].startswith("Currency pair not supported")
        markets = await ex.load_markets(reload=True)
        assert ETH not in markets and BTC in markets  # Kraken drops a delisted pair
        with pytest.raises(ccxt.ExchangeError, match="EQuery:Unknown asset pair"):
            await ex.publicGetOHLC({"pair": "XETHZUSD", "interval": 1})  # not a BadSymbol
        assert await within(lambda: ex.watch_trades(BTC))


# -- Kraken Futures -------------------------------------------------------------------------


async def test_futures_markets_funding_and_ticker() -> None:
    async with venue("krakenfutures", 5) as (fake, ex):
        markets = await ex.load_markets()
        btc = markets[PBTC]
        spec = fake.specs[PBTC]
        assert (btc["id"], btc["type"], btc["linear"], btc["settle"]) == (
            "PF_XBTUSD",
            "swap",
            True,
            "USD",
        )
        assert btc["precision"] == {"amount": spec.lot_size, "price": spec.tick_size}
        assert btc["contractSize"] == spec.contract_size and btc["active"] is True
        assert btc["info"]["type"] == "flexible_futures"
        assert markets["DOGE/USD:USD"]["id"] == "PF_DOGEUSD"
        assert dict(fake.requests) == {"/derivatives/api/v3/instruments": 1}
        rates = await ex.fetch_funding_rates([PBTC])
        expected = fake.funding(PBTC)
        assert rates[PBTC]["fundingRate"] == pytest.approx(expected.rate)
        assert rates[PBTC]["interval"] == "1h"
        ticker = await ex.fetch_ticker(PBTC)
        assert ticker["ask"] - ticker["bid"] == pytest.approx(spec.tick_size)
        raw = await ex.publicGetTickers()  # no fetchTime: serverTime or Date for a skew check
        assert raw["result"] == "success" and raw["serverTime"].endswith("Z")
        assert abs(served_at(ex) - fake.now_ns() // MS) < 60_000


async def test_futures_trades_make_the_candles_rest_serves() -> None:
    """No candle feed: a minute's prints from the stream are exactly REST's trade candle."""
    async with venue("krakenfutures") as (fake, ex):
        trades: dict[str, dict[str, Any]] = {}
        snapshot = await within(lambda: ex.watch_trades(PBTC))
        assert len(snapshot) >= 100
        trades.update({t["id"]: t for t in snapshot})
        first_open = max(t["timestamp"] for t in snapshot) // 60_000 * 60_000
        while max(t["timestamp"] for t in trades.values()) < first_open + 60_000:
            trades.update({t["id"]: t for t in await within(lambda: ex.watch_trades(PBTC))})
        minute = sorted(
            (t for t in trades.values() if first_open <= t["timestamp"] < first_open + 60_000),
            key=lambda t: t["timestamp"],
        )
        assert len(minute) == fake.updates_per_bar
        prices = [t["price"] for t in minute]
        built = [first_open, prices[0], max(prices), min(prices), prices[-1]]
        volume = sum(t["amount"] for t in minute)
        rest = await ex.fetch_ohlcv(PBTC, "1m", since=first_open, limit=1)
        assert rest[0][:5] == built and rest[0][5] == pytest.approx(volume)


async def test_futures_gap_minute_has_no_candle_and_no_trades() -> None:
    async with venue("krakenfutures") as (fake, ex):
        forming = fake.open_of(fake.now_ns())
        fake.faults.gaps.add(forming - 3 * MINUTE)
        rows = await ex.fetch_ohlcv(PBTC, "1m", since=(forming - 5 * MINUTE) // MS, limit=4)
        # ccxt asks for the span of 4 candles (from..from+4 min): the gap leaves 3
        assert [r[0] for r in rows] == [(forming + k * MINUTE) // MS for k in (-5, -4, -2)]
        snapshot = await within(lambda: ex.watch_trades(PBTC))
        gap_ms = (forming - 3 * MINUTE) // MS
        assert not [t for t in snapshot if gap_ms <= t["timestamp"] < gap_ms + 60_000]


async def test_futures_bid_ask_ticker_drop_silent_malformed() -> None:
    async with venue("krakenfutures") as (fake, ex):
        quotes = await within(lambda: ex.watch_bids_asks([PBTC]))
        assert quotes[PBTC]["bid"] < quotes[PBTC]["ask"]
        ticker = await within(lambda: ex.watch_ticker(PETH))
        assert ticker["markPrice"] is not None and ticker["info"]["relative_funding_rate"] > 0
        await within(lambda: ex.watch_trades(PBTC))
        fake.faults.drop()
        with pytest.raises(ccxt.NetworkError):
            for _ in range(20):
                await within(lambda: ex.watch_trades(PBTC))
        assert await within(lambda: ex.watch_trades(PBTC))
        fake.faults.silent = True
        await asyncio.sleep(0.3)
        with pytest.raises(TimeoutError):
            for _ in range(5):
                await within(lambda: ex.watch_trades(PBTC), 1.5)
        fake.skin.heartbeat_s = 0.4
        sent = [
            {"event": "subscribe", "feed": "heartbeat"},
            {"event": "subscribe", "feed": "trade", "product_ids": ["PF_XBTUSD"]},
        ]
        frames = await raw_frames(f"{fake.ws_url}/ws/v1", sent, 1.0)
        kinds = [f.get("event") or f.get("feed") for f in frames]
        assert kinds[:4] == ["info", "subscribed", "subscribed", "trade_snapshot"]
        assert kinds[4:] and set(kinds[4:]) == {"heartbeat"}
        fake.faults.silent = False
        assert await within(lambda: ex.watch_trades(PBTC))
        fake.faults.malformed = 1
        bad = await until_next(lambda: ex.watch_trades(PBTC), lambda t: t[-1]["price"] is None)
        assert bad[-1]["amount"] is None and bad[-1]["timestamp"] is None
        good = await within(lambda: ex.watch_trades(PBTC))
        assert good[-1]["price"] is not None


async def test_futures_errors_and_delisting() -> None:
    async with venue("krakenfutures") as (fake, ex):
        await ex.load_markets()
        fake.faults.http_errors.extend([429, 503, 500])
        with pytest.raises(ccxt.DDoSProtection):
            await ex.fetch_tickers()
        for _ in range(2):
            with pytest.raises(ccxt.ExchangeNotAvailable):
                await ex.fetch_tickers()
        await within(lambda: ex.watch_trades(PETH))
        fake.faults.delist(PETH)
        markets = await ex.load_markets(reload=True)
        assert markets[PETH]["active"] is False and markets[PBTC]["active"] is True
        rates = await ex.fetch_funding_rates([PETH])
        assert rates[PETH]["info"]["suspended"] is True
        with pytest.raises(TimeoutError):
            for _ in range(5):
                await within(lambda: ex.watch_trades(PETH), 1.0)
        # with a limit and no since ccxt windows by its wall clock, hours ahead of this fake's
        since = (fake.now_ns() - 10 * MINUTE) // MS
        before = await ex.fetch_ohlcv(PETH, "1m", since=since, limit=30)
        await asyncio.sleep(1.5)  # an exchange minute and a half
        assert before and await ex.fetch_ohlcv(PETH, "1m", since=since, limit=30) == before


# -- wire formats against the recorded ones ---------------------------------------------------


def shape(value: Any) -> Any:
    """Keys all the way down (lists by their first element), leaves by JSON kind."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return "value"


def missing(recorded: Any, ours: Any, where: str = "") -> list[str]:
    """Keys the recorded frame has that ours lacks (ours may carry a few more)."""
    if isinstance(recorded, dict):
        if not isinstance(ours, dict):
            return [where or "."]
        out = [f"{where}.{k}" for k in recorded if k not in ours]
        for k in recorded:
            if k in ours:
                out += missing(recorded[k], ours[k], f"{where}.{k}")
        return out
    if isinstance(recorded, list) and recorded:
        return missing(recorded[0], ours[0], f"{where}[0]") if ours else [f"{where}[]"]
    return []


def recorded(name: str) -> dict[str, Any]:
    if not FIXTURES.is_dir():
        pytest.skip(f"no recorded ccxt fixtures at {FIXTURES} (a fresh clone has none)")
    return json.loads((FIXTURES / name).read_text())


def frame_key(frame: dict[str, Any]) -> tuple[Any, ...]:
    return (frame.get("channel"), frame.get("type"), frame.get("method"), frame.get("feed"))


async def test_wire_formats_match_the_recorded_exchanges() -> None:
    ws_rec = recorded("ws-kraken.json")["methods"]
    rest_rec = recorded("response-kraken.json")["methods"]
    futures_rec = recorded("response-krakenfutures.json")["methods"]
    problems: list[str] = []
    async with venue("kraken") as (fake, ex):
        await ex.load_markets()
        for method in ("watchTicker", "watchOHLCV"):
            case = ws_rec[method][0]
            ours = await raw_frames(f"{fake.ws_url}/v2", case["sentMessages"], 1.2)
            by_key = {frame_key(f): f for f in ours}
            for message in case["messages"]:
                if frame_key(message) == ("heartbeat", None, None, None):
                    continue
                mine = by_key.get(frame_key(message))
                if mine is None:
                    problems.append(f"{method}: no frame like {frame_key(message)}")
                    continue
                problems += [f"{method} {frame_key(message)}{m}" for m in missing(message, mine)]
        ohlc = await ex.publicGetOHLC({"pair": "XXBTZUSD", "interval": 1})
        ticker = await ex.publicGetTicker({"pair": "XXBTZUSD"})
        for name, ours_raw in (("fetchOHLCV", ohlc), ("fetchTicker", ticker)):
            theirs = rest_rec[name][0]["httpResponse"]
            pair = next(k for k in theirs["result"] if k != "last")
            theirs = {
                "error": [],
                "result": {"XXBTZUSD" if k == pair else k: v for k, v in theirs["result"].items()},
            }
            problems += [f"{name}{m}" for m in missing(theirs, ours_raw)]
        assert len(ohlc["result"]["XXBTZUSD"][0]) == len(
            rest_rec["fetchOHLCV"][0]["httpResponse"]["result"]["XBTUSDT"][0]
        )
    async with venue("krakenfutures") as (fake, ex):
        raw = await ex.publicGetTickers()
        theirs = futures_rec["fetchFundingRates"][0]["httpResponse"]
        problems += [f"tickers{m}" for m in missing(theirs, raw)]
        assert set(shape(theirs["tickers"][0])) == set(shape(raw["tickers"][0]))
    assert problems == []
