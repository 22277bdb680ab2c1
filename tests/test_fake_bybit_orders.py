"""The Bybit fake's private side driven by ccxt itself (signed REST and the ``/v5/private``
websocket), with keys from environment variables through ``VenueConfig.credentials``: every
order type on spot and linear, partial fills, amend, cancel, the errors ccxt raises, the
account faults a gateway must survive, and the records compared key by key with the
responses recorded from the real exchange."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import ccxt
import pytest

from services.venues.ccxt_exchange import build_exchange, read_secrets
from services.venues.config import Credentials, VenueConfig
from tests.fakes.bybit import BybitSkin
from tests.fakes.bybit_orders import BybitPrivate
from tests.fakes.bybit_rows import parse_order_id
from tests.fakes.clock import ScaledClock
from tests.fakes.core import DEFAULT_SECRET, NS, FakeExchange, SymbolSpec
from tests.gateway_session import DroppingPath

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "reference" / "ccxt-fixtures"
START_NS = 1_767_225_600 * NS + 20 * NS
RATE = 60.0  # an exchange minute per wall second: a tick every quarter of a wall second
WAIT = 15.0
KEY, SECRET = "bybit-test-key-4821", DEFAULT_SECRET
SPOT = SymbolSpec("BTC/USDT", "BTC", "USDT", "", "spot", 0.1, 0.000001, 1.0, 1.0, 60_000.0)
LINEAR = SymbolSpec(
    "BTC/USDT:USDT", "BTC", "USDT", "USDT", "perpetual", 0.1, 0.001, 5.0, 1.0, 60_000.0
)
BALANCES = {"USDT": 100_000.0, "BTC": 1.0}
Exchange = Any
LOADED: list[Any] = []


@pytest.fixture
async def fake() -> AsyncIterator[FakeExchange]:
    exchange = FakeExchange(
        "bybit", [SPOT, LINEAR], None, ScaledClock(START_NS, RATE), balances=dict(BALANCES)
    )
    await exchange.start()
    yield exchange
    await exchange.stop()


def venue(fake: FakeExchange, timeout_ms: int = 10_000) -> VenueConfig:
    credentials = Credentials(api_key_env="KEEL_TEST_KEY", secret_env="KEEL_TEST_SECRET")
    entry = fake.venue_entry("bybit")
    return VenueConfig(**entry, credentials=credentials, timeout_ms=timeout_ms)


async def connect(fake: FakeExchange, timeout_ms: int = 10_000) -> Exchange:
    """A keyed exchange with its markets: loaded from the fake once per module, then reused
    (ccxt's rate limiter makes each load cost most of a second)."""
    config = venue(fake, timeout_ms)
    exchange = build_exchange(config, read_secrets(config))
    if LOADED:
        exchange.set_markets(*LOADED)
    else:
        await exchange.load_markets()
        LOADED.extend([exchange.markets, exchange.currencies])
    return exchange


@pytest.fixture
async def ex(fake: FakeExchange, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Exchange]:
    monkeypatch.setenv("KEEL_TEST_KEY", KEY)
    monkeypatch.setenv("KEEL_TEST_SECRET", SECRET)
    exchange = await connect(fake)
    yield exchange
    await exchange.close()


def private(fake: FakeExchange) -> BybitPrivate:
    assert isinstance(fake.skin, BybitSkin)
    return fake.skin.private


async def until(check: Callable[[], Awaitable[Any]], what: str) -> Any:
    """Poll ``check`` until it returns something truthy (ticks are a quarter second apart)."""
    for _ in range(int(WAIT / 0.1)):
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def fixture_case(method: str, index: int = 0) -> dict[str, Any]:
    data = json.loads((FIXTURES / "response-bybit.json").read_text())
    return data["methods"][method][index]["httpResponse"]


async def test_keys_from_env_sign_every_call_and_currencies_load(
    fake: FakeExchange, ex: Exchange
) -> None:
    await ex.load_markets(reload=True)
    assert fake.requests["/v5/asset/coin/query-info"] >= 1  # fetchCurrencies, once it has keys
    assert {"BTC", "USDT"} <= set(ex.currencies)
    balance = await ex.fetch_balance()
    assert (balance["USDT"]["total"], balance["BTC"]["free"]) == (100_000.0, 1.0)
    assert ex.options["enableUnifiedAccount"] is True  # from /v5/user/query-api


async def test_wrong_secret_is_an_authentication_error_without_the_secret(
    fake: FakeExchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEEL_TEST_KEY", KEY)
    monkeypatch.setenv("KEEL_TEST_SECRET", "not-the-secret")
    exchange = build_exchange(venue(fake), read_secrets(venue(fake)))
    try:
        with pytest.raises(ccxt.AuthenticationError) as raised:
            await exchange.load_markets()
    finally:
        await exchange.close()
    assert '"retCode":10004' in str(raised.value) and "not-the-secret" not in str(raised.value)


async def test_a_stale_timestamp_is_outside_the_recv_window(
    fake: FakeExchange, ex: Exchange
) -> None:
    ex.options["timeDifference"] = 60_000  # ccxt stamps a minute behind the wall clock
    with pytest.raises(ccxt.InvalidNonce, match="10002"):
        await ex.fetch_balance()
    ex.options["timeDifference"] = 0
    assert (await ex.fetch_balance())["USDT"]["total"] == 100_000.0


async def test_spot_limit_rests_amends_and_cancels_by_either_id(
    fake: FakeExchange, ex: Exchange
) -> None:
    below = round(fake.snapshot(SPOT.symbol).bid * 0.9, 1)
    placed = await ex.create_order(
        SPOT.symbol, "limit", "buy", 0.01, below, {"clientOrderId": "s1"}
    )
    assert placed["id"].isdigit() and len(placed["id"]) == 19 and placed["clientOrderId"] == "s1"
    (listed,) = await ex.fetch_open_orders(SPOT.symbol)
    assert (listed["id"], listed["status"], listed["price"], listed["amount"]) == (
        placed["id"],
        "open",
        below,
        0.01,
    )
    assert (await ex.fetch_balance())["USDT"]["used"] == pytest.approx(0.01 * below)
    by_client = await ex.fetch_open_orders(SPOT.symbol, None, None, {"orderLinkId": "s1"})
    assert [o["id"] for o in by_client] == [placed["id"]]
    edited = await ex.edit_order(placed["id"], SPOT.symbol, "limit", "buy", 0.02, below - 10)
    assert edited["id"] == placed["id"]
    again = await ex.fetch_order(placed["id"], SPOT.symbol, {"acknowledged": True})
    assert (again["amount"], again["price"]) == (0.02, below - 10)
    await ex.edit_order("", SPOT.symbol, "limit", "buy", 0.03, None, {"clientOrderId": "s1"})
    await ex.cancel_order(None, SPOT.symbol, {"orderLinkId": "s1"})
    gone = await ex.fetch_order(placed["id"], SPOT.symbol, {"acknowledged": True})
    assert (gone["status"], gone["amount"]) == ("canceled", 0.03)
    assert await ex.fetch_open_orders(SPOT.symbol) == []
    with pytest.raises(ccxt.OrderNotFound):  # 170213 Order does not exist.
        await ex.cancel_order(placed["id"], SPOT.symbol)


async def test_spot_market_orders_move_balances_and_fees_in_the_received_asset(
    fake: FakeExchange, ex: Exchange
) -> None:
    bought = await ex.create_order(SPOT.symbol, "market", "buy", 0.1)
    sold = await ex.create_order(SPOT.symbol, "market", "sell", 0.05)
    by_cost = await ex.create_order(SPOT.symbol, "market", "buy", 0.01, 60_000.0)  # quoteCoin
    info = await ex.fetch_order(by_cost["id"], SPOT.symbol, {"acknowledged": True})
    assert info["info"]["marketUnit"] == "quoteCoin" and info["cost"] == pytest.approx(600, 0.01)
    trades = await ex.fetch_my_trades(SPOT.symbol)
    mine = {t["order"]: t for t in trades}
    assert mine[bought["id"]]["fee"]["currency"] == "BTC"
    assert mine[sold["id"]]["fee"]["currency"] == "USDT"
    assert mine[bought["id"]]["takerOrMaker"] == "taker" and mine[bought["id"]]["amount"] == 0.1
    balance = await ex.fetch_balance()
    assert balance["BTC"]["total"] == pytest.approx(1.0 + 0.1 * 0.999 - 0.05 + 0.01 * 0.999, 1e-3)
    closed = await ex.fetch_closed_order(sold["id"], SPOT.symbol)
    assert (closed["status"], closed["filled"]) == ("closed", 0.05)


async def test_spot_stop_order_lives_in_the_stop_book(fake: FakeExchange, ex: Exchange) -> None:
    last = fake.snapshot(SPOT.symbol).trade.price
    stop = round(last * 0.8, 1)
    placed = await ex.create_order(
        SPOT.symbol, "market", "sell", 0.01, None, {"triggerPrice": stop, "clientOrderId": "st"}
    )
    assert await ex.fetch_open_orders(SPOT.symbol) == []  # the Order book only
    (listed,) = await ex.fetch_open_orders(SPOT.symbol, None, None, {"trigger": True})
    assert (listed["id"], listed["triggerPrice"], listed["info"]["orderStatus"]) == (
        placed["id"],
        stop,
        "Untriggered",
    )
    with pytest.raises(ccxt.OrderNotFound):  # asked in the wrong book
        await ex.cancel_order(placed["id"], SPOT.symbol)
    with pytest.raises(ccxt.OrderNotFound):  # the Order book has no such order either
        await ex.fetch_order(placed["id"], SPOT.symbol, {"acknowledged": True})
    await ex.cancel_order(placed["id"], SPOT.symbol, {"trigger": True})
    done = await ex.fetch_order(placed["id"], SPOT.symbol, {"acknowledged": True, "trigger": True})
    assert (done["status"], done["info"]["orderStatus"]) == ("canceled", "Deactivated")
    params = {"stopLossPrice": stop, "reduceOnly": True}  # ccxt's spot TP/SL order
    tpsl = await ex.create_order(SPOT.symbol, "market", "sell", 0.01, None, params)
    book = {"orderFilter": "tpslOrder"}
    (listed,) = await ex.fetch_open_orders(SPOT.symbol, None, None, book)
    assert (listed["id"], listed["triggerPrice"]) == (tpsl["id"], stop)
    await ex.cancel_order(tpsl["id"], SPOT.symbol, book)
    assert await ex.fetch_open_orders(SPOT.symbol, None, None, book) == []


async def test_linear_market_position_reduce_only_and_stop_loss(
    fake: FakeExchange, ex: Exchange
) -> None:
    with pytest.raises(ccxt.InvalidOrder) as raised:  # 110017 without a position
        await ex.create_order(LINEAR.symbol, "market", "sell", 0.01, None, {"reduceOnly": True})
    assert "110017" in str(raised.value)
    opened = await ex.create_order(
        LINEAR.symbol, "market", "buy", 0.02, None, {"clientOrderId": "L1"}
    )
    assert len(opened["id"]) == 36 and opened["id"].count("-") == 4
    (position,) = await ex.fetch_positions()
    assert (position["symbol"], position["side"], position["contracts"]) == (
        LINEAR.symbol,
        "long",
        0.02,
    )
    last = fake.snapshot(LINEAR.symbol).trade.price
    stop = round(last * 0.9, 1)
    params = {"stopLossPrice": stop, "clientOrderId": "SL1"}
    protective = await ex.create_order(LINEAR.symbol, "market", "sell", 0.02, None, params)
    (listed,) = await ex.fetch_open_orders(LINEAR.symbol)
    assert (listed["id"], listed["stopLossPrice"], listed["reduceOnly"]) == (
        protective["id"],
        stop,
        True,
    )
    assert (
        listed["info"]["triggerDirection"] == 2 and listed["info"]["orderStatus"] == "Untriggered"
    )
    moved = await ex.edit_order(
        protective["id"], LINEAR.symbol, "market", "sell", None, None, {"triggerPrice": stop - 100}
    )
    assert moved["id"] == protective["id"]
    (after,) = await ex.fetch_open_orders(LINEAR.symbol)
    assert after["triggerPrice"] == stop - 100
    closed = await ex.create_order(
        LINEAR.symbol, "market", "sell", 0.05, None, {"reduceOnly": True}
    )
    done = await ex.fetch_order(closed["id"], LINEAR.symbol, {"acknowledged": True})
    assert done["filled"] == 0.02  # trimmed to the position
    assert await ex.fetch_positions() == []
    trades = await ex.fetch_my_trades(LINEAR.symbol)
    assert {t["fee"]["currency"] for t in trades} == {"USDT"}


async def test_linear_trigger_orders_need_a_direction_and_refuse_to_trigger_at_once(
    fake: FakeExchange, ex: Exchange
) -> None:
    last = fake.snapshot(LINEAR.symbol).trade.price
    with pytest.raises(ccxt.InvalidOrder) as raised:  # 110092: a rising trigger below the price
        await ex.create_order(
            LINEAR.symbol,
            "market",
            "buy",
            0.01,
            None,
            {"triggerPrice": round(last * 0.9, 1), "triggerDirection": "ascending"},
        )
    assert "110092" in str(raised.value) and "expect Rising, but trigger_price[" in str(
        raised.value
    )
    above = round(last * 1.1, 1)
    stop_limit = await ex.create_order(
        LINEAR.symbol,
        "limit",
        "buy",
        0.01,
        above + 50,
        {"triggerPrice": above, "triggerDirection": "ascending"},
    )
    take_profit = await ex.create_order(
        LINEAR.symbol,
        "market",
        "buy",
        0.01,
        None,
        {"triggerPrice": round(last * 0.9, 1), "triggerDirection": "descending"},
    )
    below = round(last * 0.9, 1)
    profit_limit = await ex.create_order(
        LINEAR.symbol,
        "limit",
        "buy",
        0.01,
        below - 50,
        {"triggerPrice": below, "triggerDirection": "descending"},
    )
    listed = {o["id"]: o for o in await ex.fetch_open_orders(LINEAR.symbol)}
    assert listed[stop_limit["id"]]["type"] == "limit"
    assert (listed[profit_limit["id"]]["price"], listed[profit_limit["id"]]["triggerPrice"]) == (
        below - 50,
        below,
    )
    assert fake.account.open_orders()[-1].type == "take_profit_limit"
    assert listed[stop_limit["id"]]["price"] == above + 50
    assert listed[take_profit["id"]]["triggerPrice"] == round(last * 0.9, 1)
    cancelled = await ex.cancel_all_orders(LINEAR.symbol)
    assert {o["id"] for o in cancelled} == set(listed)


async def test_fill_parts_split_a_fill_over_ticks(fake: FakeExchange, ex: Exchange) -> None:
    fake.account.faults.fill_parts = 3
    placed = await ex.create_order(LINEAR.symbol, "market", "buy", 0.03)

    async def filled() -> Any:
        order = await ex.fetch_order(placed["id"], LINEAR.symbol, {"acknowledged": True})
        return order if order["status"] == "closed" else None

    first = await ex.fetch_order(placed["id"], LINEAR.symbol, {"acknowledged": True})
    assert first["status"] == "open" and 0 < first["filled"] < 0.03
    assert first["info"]["orderStatus"] == "PartiallyFilled"
    done = await until(filled, "the last part")
    trades = await ex.fetch_my_trades(LINEAR.symbol)
    assert len(trades) == 3 and sum(t["amount"] for t in trades) == pytest.approx(0.03)
    assert done["filled"] == 0.03 and len({t["id"] for t in trades}) == 3


async def test_refusals_are_the_errors_ccxt_raises(fake: FakeExchange, ex: Exchange) -> None:
    with pytest.raises(ccxt.InsufficientFunds) as raised:  # spot 170131
        await ex.create_order(SPOT.symbol, "market", "sell", 5.0)
    assert "170131" in str(raised.value)
    with pytest.raises(ccxt.InsufficientFunds) as raised:  # linear 110007
        await ex.create_order(LINEAR.symbol, "market", "buy", 100.0)
    assert "110007" in str(raised.value)
    with pytest.raises(ccxt.InvalidOrder) as raised:  # 170140 below the minimum value
        await ex.create_order(SPOT.symbol, "limit", "buy", 0.000001, 50_000.0)
    assert "170140" in str(raised.value)
    fake.account.faults.reject_next = ["lot_size", "tick_size"]
    with pytest.raises(ccxt.InvalidOrder, match="170137"):
        await ex.create_order(SPOT.symbol, "market", "buy", 0.01)
    with pytest.raises(ccxt.BadRequest, match="10001"):
        await ex.create_order(LINEAR.symbol, "market", "buy", 0.01)
    with pytest.raises(ccxt.OrderNotFound, match="110001"):
        await ex.cancel_order(None, LINEAR.symbol, {"orderLinkId": "never-placed"})
    await ex.create_order(LINEAR.symbol, "limit", "buy", 0.01, 50_000.0, {"clientOrderId": "d"})
    with pytest.raises(ccxt.InvalidOrder, match="110072"):
        await ex.create_order(LINEAR.symbol, "limit", "buy", 0.01, 50_000.0, {"clientOrderId": "d"})
    with pytest.raises(ccxt.OrderNotFound):
        await ex.fetch_order(
            "5ab5f1c6-0b2e-4e7a-9d3f-00000000dead", LINEAR.symbol, {"acknowledged": True}
        )


async def test_private_stream_orders_trades_positions_and_wallet(
    fake: FakeExchange, ex: Exchange
) -> None:
    orders = asyncio.ensure_future(ex.watch_orders())
    trades = asyncio.ensure_future(ex.watch_my_trades())
    balance = asyncio.ensure_future(ex.watch_balance())
    await until(lambda: asyncio.sleep(0, len(private(fake).stream.connections) > 0), "the socket")
    await until(
        lambda: asyncio.sleep(
            0, any(len(c.state.get("private", ())) >= 3 for c in private(fake).stream.connections)
        ),
        "three subscriptions",
    )
    placed = await ex.create_order(
        LINEAR.symbol, "market", "buy", 0.01, None, {"clientOrderId": "w"}
    )
    got_orders = await asyncio.wait_for(orders, WAIT)
    got_trades = await asyncio.wait_for(trades, WAIT)
    got_balance = await asyncio.wait_for(balance, WAIT)
    assert placed["id"] in {o["id"] for o in got_orders}
    assert all(o["symbol"] == LINEAR.symbol and o["clientOrderId"] == "w" for o in got_orders)
    (trade,) = got_trades
    assert (trade["symbol"], trade["order"], trade["amount"]) == (LINEAR.symbol, placed["id"], 0.01)
    rest = await ex.fetch_my_trades(LINEAR.symbol)
    assert [t["id"] for t in rest] == [trade["id"]]  # the same execId on both paths
    assert got_balance["USDT"]["total"] is not None
    positions = await asyncio.wait_for(ex.watch_positions([LINEAR.symbol]), WAIT)
    assert positions[0]["contracts"] == 0.01
    spot = await ex.create_order(SPOT.symbol, "market", "buy", 0.001)
    later = await asyncio.wait_for(ex.watch_orders(SPOT.symbol), WAIT)
    assert later[-1]["id"] == spot["id"] and later[-1]["symbol"] == SPOT.symbol


async def test_silent_user_stream_leaves_polling_to_find_the_fill(
    fake: FakeExchange, ex: Exchange
) -> None:
    orders = asyncio.ensure_future(ex.watch_orders())
    await until(lambda: asyncio.sleep(0, bool(private(fake).stream.connections)), "the socket")
    await asyncio.sleep(0.3)
    fake.account.faults.silent_user_stream = True
    sent = fake.frames_sent
    placed = await ex.create_order(LINEAR.symbol, "market", "buy", 0.01)
    await asyncio.sleep(0.5)
    assert not orders.done() and fake.frames_sent == sent
    (trade,) = await ex.fetch_my_trades(LINEAR.symbol)
    assert trade["order"] == placed["id"]
    orders.cancel()


async def test_raw_private_socket_auth_and_refusals(fake: FakeExchange) -> None:
    expires = str(time.time_ns() // 1_000_000 + 10_000)
    good = hmac.new(SECRET.encode(), f"GET/realtime{expires}".encode(), hashlib.sha256).hexdigest()
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{fake.ws_url}/v5/private") as ws,
    ):
        await ws.send_json({"op": "subscribe", "req_id": "1", "args": ["order"]})
        early = await ws.receive_json(timeout=WAIT)
        assert (early["success"], early["ret_msg"]) == (False, "Request not authorized")
        await ws.send_json({"op": "auth", "args": [KEY, expires, "0" * 64]})
        bad = await ws.receive_json(timeout=WAIT)
        assert bad["success"] is False and bad["ret_msg"].startswith("error sign!")
        await ws.send_json({"op": "auth", "args": [KEY, expires, good]})
        ok = await ws.receive_json(timeout=WAIT)
        assert (ok["success"], ok["op"]) == (True, "auth")
        await ws.send_json({"op": "subscribe", "req_id": "2", "args": ["order", "nope"]})
        unknown = await ws.receive_json(timeout=WAIT)
        assert unknown["success"] is False and "nope" in unknown["ret_msg"]
        await ws.send_json({"op": "subscribe", "req_id": "3", "args": ["order", "execution"]})
        assert (await ws.receive_json(timeout=WAIT))["success"] is True
        fake.account.place(SPOT.symbol, "buy", "market", 0.001, client_id="raw")
        frames = [await ws.receive_json(timeout=WAIT) for _ in range(3)]
        assert [f["topic"] for f in frames] == ["order", "execution", "order"]
        assert [frames[0]["data"][0]["orderStatus"], frames[2]["data"][0]["orderStatus"]] == [
            "New",
            "Filled",
        ]
        assert all(f["data"][0]["category"] == "spot" and f["creationTime"] for f in frames)
        assert frames[1]["data"][0]["orderLinkId"] == "raw"
        await ws.send_json({"op": "ping", "req_id": "9"})
        while (pong := await ws.receive_json(timeout=WAIT)).get("op") != "pong":
            pass
        assert pong["req_id"] == "9"


async def test_hang_next_acts_but_never_answers(fake: FakeExchange, ex: Exchange) -> None:
    fake.account.faults.hang_next = 1
    with pytest.raises(ccxt.NetworkError):
        await ex.create_order(LINEAR.symbol, "limit", "buy", 0.01, 50_000.0, {"clientOrderId": "h"})
    (found,) = await ex.fetch_open_orders(LINEAR.symbol, None, None, {"orderLinkId": "h"})
    assert found["status"] == "open"
    fake.account.faults.hang_next = 1
    with pytest.raises(ccxt.NetworkError):
        await ex.cancel_order(found["id"], LINEAR.symbol)
    gone = await ex.fetch_order(found["id"], LINEAR.symbol, {"acknowledged": True})
    assert gone["status"] == "canceled"


async def test_drop_next_neither_acts_nor_answers(fake: FakeExchange, ex: Exchange) -> None:
    fake.account.faults.drop_next = 1
    with pytest.raises(ccxt.NetworkError):
        await ex.create_order(LINEAR.symbol, "limit", "buy", 0.01, 50_000.0, {"clientOrderId": "x"})
    assert await ex.fetch_open_orders(LINEAR.symbol, None, None, {"orderLinkId": "x"}) == []


async def test_ack_delay_beyond_the_timeout_and_hidden_orders(
    fake: FakeExchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KEEL_TEST_KEY", KEY)
    monkeypatch.setenv("KEEL_TEST_SECRET", SECRET)
    exchange = await connect(fake, timeout_ms=300)
    try:
        fake.account.faults.ack_delay_s = 1.0
        with pytest.raises(ccxt.RequestTimeout):
            await exchange.create_order(
                SPOT.symbol, "limit", "buy", 0.01, 50_000.0, {"clientOrderId": "slow"}
            )
        fake.account.faults.ack_delay_s = 0.0
        assert fake.account.find(client_id="slow") is not None  # acted on before the delay
        fake.account.faults.hidden_s = 30.0  # exchange seconds: half a wall second
        late = await exchange.create_order(SPOT.symbol, "limit", "buy", 0.01, 50_000.0)
        ids = [o["id"] for o in await exchange.fetch_open_orders(SPOT.symbol)]
        assert late["id"] not in ids

        async def shown() -> bool:
            return late["id"] in [o["id"] for o in await exchange.fetch_open_orders(SPOT.symbol)]

        await until(shown, "the hidden order")
    finally:
        await exchange.close()


async def test_records_have_the_recorded_exchange_keys(fake: FakeExchange, ex: Exchange) -> None:
    limit = await ex.create_order(LINEAR.symbol, "limit", "buy", 0.01, 50_000.0)
    market = await ex.create_order(LINEAR.symbol, "market", "buy", 0.01)
    spot = await ex.create_order(SPOT.symbol, "market", "sell", 0.01)
    raw_open = (await ex.fetch_open_order(limit["id"], LINEAR.symbol))["info"]
    assert set(fixture_case("fetchOpenOrder")["result"]["list"][0]) - {"nextPageCursor"} <= set(
        raw_open
    ) | {"isLeverage"}
    raw_closed = (await ex.fetch_closed_order(market["id"], LINEAR.symbol))["info"]
    expected = set(fixture_case("fetchClosedOrder")["result"]["list"][0])
    assert expected - {
        "nextPageCursor",
        "slippageToleranceType",
        "slippageTolerance",
        "extraFees",
    } <= set(raw_closed)
    raw_spot = (await ex.fetch_order(spot["id"], SPOT.symbol, {"acknowledged": True}))["info"]
    assert set(fixture_case("fetchOrder", 1)["result"]["list"][0]) - {"nextPageCursor"} <= set(
        raw_spot
    )
    for index, symbol in ((2, SPOT.symbol), (3, LINEAR.symbol)):
        recorded = set(fixture_case("fetchMyTrades", index)["result"]["list"][0])
        (trade,) = await ex.fetch_my_trades(symbol)
        assert recorded - {"nextPageCursor"} <= set(trade["info"])
    position = (await ex.fetch_positions())[0]["info"]
    assert set(fixture_case("fetchPositions")["result"]["list"][0]) - {"nextPageCursor"} <= set(
        position
    )
    coin = fixture_case("fetchBalance")["result"]["list"][0]["coin"][0]
    raw = await ex.privateGetV5AccountWalletBalance({"accountType": "UNIFIED"})
    assert set(coin) <= set(raw["result"]["list"][0]["coin"][0])


async def test_changes_behind_the_gateways_back(fake: FakeExchange, ex: Exchange) -> None:
    below = round(fake.snapshot(LINEAR.symbol).bid * 0.9, 1)
    mine = await ex.create_order(LINEAR.symbol, "limit", "buy", 0.01, below, {"clientOrderId": "m"})
    above = round(fake.snapshot(LINEAR.symbol).ask * 1.1, 1)
    other = fake.account.faults.external(LINEAR.symbol, "sell", "limit", 0.02, above)
    listed = {o["clientOrderId"]: o for o in await ex.fetch_open_orders(LINEAR.symbol)}
    assert set(listed) == {"m", other.client_id} and listed[other.client_id]["amount"] == 0.02
    fake.account.faults.fill_silently(parse_order_id("linear", mine["id"]))
    (trade,) = await ex.fetch_my_trades(LINEAR.symbol)
    assert (trade["order"], trade["price"], trade["takerOrMaker"]) == (mine["id"], below, "maker")
    fake.account.faults.vanish(other.order_id)
    assert await ex.fetch_open_orders(LINEAR.symbol) == []
    fake.account.faults.set_position(LINEAR.symbol, -0.5)
    (position,) = await ex.fetch_positions()
    assert (position["side"], position["contracts"]) == ("short", 0.5)
    fake.account.faults.set_balance("BTC", 3.0)
    assert (await ex.fetch_balance())["BTC"]["free"] == 3.0


async def test_spot_conditional_orders_hold_nothing_until_they_trigger(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bybit's Place Order: "the conditional order does not occupy the margin. If the margin
    is insufficient after the conditional order is triggered, the order will be cancelled".
    With 0.01 BTC two stops and a take-profit of 0.01 each rest; a gap down triggers both
    stops: the older sells the 0.01, the other is cancelled (REST and stream say why), and
    the take-profit keeps waiting. A plain limit sell still locks what it sells."""
    monkeypatch.setenv("KEEL_TEST_KEY", KEY)
    monkeypatch.setenv("KEEL_TEST_SECRET", SECRET)
    path = DroppingPath()
    fake = FakeExchange(
        "bybit", [SPOT, LINEAR], path, ScaledClock(START_NS, RATE), balances=dict(BALANCES)
    )
    await fake.start()
    exchange = await connect(fake)
    try:
        fake.account.faults.set_balance("BTC", 0.01)
        last = fake.snapshot(SPOT.symbol).trade.price
        limit = await exchange.create_order(
            SPOT.symbol, "limit", "sell", 0.01, round(last * 1.5, 1)
        )
        assert (await exchange.fetch_balance())["BTC"]["used"] == pytest.approx(0.01)
        with pytest.raises(ccxt.InsufficientFunds, match="170131"):
            await exchange.create_order(SPOT.symbol, "limit", "sell", 0.01, round(last * 1.6, 1))
        await exchange.cancel_order(limit["id"], SPOT.symbol)
        legs = {}
        for name, trigger in (("a", 0.9), ("b", 0.85)):
            params = {"triggerPrice": round(last * trigger, 1), "clientOrderId": name}
            legs[name] = await exchange.create_order(
                SPOT.symbol, "market", "sell", 0.01, None, params
            )
        target = round(last * 1.2, 1)
        legs["tp"] = await exchange.create_order(
            SPOT.symbol, "limit", "sell", 0.01, target, {"triggerPrice": target}
        )
        wallet = await exchange.fetch_balance()
        assert (wallet["BTC"]["free"], wallet["BTC"]["used"]) == (pytest.approx(0.01), 0.0)
        seen: list[dict[str, Any]] = []

        async def watch() -> None:
            while True:
                seen.extend(await exchange.watch_orders(SPOT.symbol))

        watcher = asyncio.ensure_future(watch())
        await until(lambda: asyncio.sleep(0, private(fake).stream.connections), "the socket")
        await asyncio.sleep(0.5)  # the subscription is in place
        step = fake.step_ns
        path.drop((fake.now_ns() // step + 1) * step, 0.8)
        flag = {"trigger": True, "acknowledged": True}

        async def state(name: str) -> dict[str, Any]:
            return await exchange.fetch_order(legs[name]["id"], SPOT.symbol, flag)

        starved = await until(
            lambda: _finished(state("b")), "the second stop cancelled when it triggered"
        )
        assert (starved["status"], starved["filled"]) == ("canceled", 0.0)
        assert starved["info"]["orderStatus"] == "Cancelled"
        assert starved["info"]["cancelType"] == "CancelByCannotAffordOrderCost"
        sold = await state("a")
        assert (sold["status"], sold["filled"]) == ("closed", 0.01)
        waiting = await state("tp")
        assert (waiting["status"], waiting["info"]["orderStatus"]) == ("open", "Untriggered")
        assert (await exchange.fetch_balance())["BTC"]["total"] == pytest.approx(0.0, abs=1e-9)
        await until(
            lambda: asyncio.sleep(
                0, any(o["id"] == starved["id"] and o["status"] == "canceled" for o in seen)
            ),
            "the stream's cancel",
        )
        streamed = next(o for o in seen if o["id"] == starved["id"] and o["status"] == "canceled")
        assert streamed["info"]["cancelType"] == "CancelByCannotAffordOrderCost"
        watcher.cancel()
    finally:
        await exchange.close()
        await fake.stop()


async def _finished(pending: Awaitable[dict[str, Any]]) -> dict[str, Any] | None:
    order = await pending
    return order if order["status"] != "open" else None


async def test_linear_conditional_entry_takes_its_margin_when_it_triggers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On linear too a conditional order holds no margin while it waits: a stop entry needing
    more margin than the wallet has is accepted, and cancelled when a gap up triggers it."""
    monkeypatch.setenv("KEEL_TEST_KEY", KEY)
    monkeypatch.setenv("KEEL_TEST_SECRET", SECRET)
    path = DroppingPath()
    clock = ScaledClock(START_NS, RATE)
    fake = FakeExchange("bybit", [SPOT, LINEAR], path, clock, balances={"USDT": 100.0})
    await fake.start()
    exchange = await connect(fake)
    try:
        last = fake.snapshot(LINEAR.symbol).trade.price
        trigger = round(last * 1.1, 1)
        params = {"triggerPrice": trigger, "triggerDirection": "ascending"}
        placed = await exchange.create_order(LINEAR.symbol, "market", "buy", 0.05, None, params)
        assert (await exchange.fetch_balance())["USDT"]["used"] == 0.0  # margin ~330 > 100
        step = fake.step_ns
        path.drop((fake.now_ns() // step + 1) * step, 1.3)
        flag = {"acknowledged": True}  # linear: one book
        done = await until(
            lambda: _finished(exchange.fetch_order(placed["id"], LINEAR.symbol, flag)),
            "the entry cancelled when it triggered",
        )
        assert (done["status"], done["filled"]) == ("canceled", 0.0)
        assert done["info"]["cancelType"] == "CancelByCannotAffordOrderCost"
        assert await exchange.fetch_positions() == []
    finally:
        await exchange.close()
        await fake.stop()
