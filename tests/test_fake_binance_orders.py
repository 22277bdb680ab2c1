"""Orders on the Binance fake (spot and USDT-M) through ccxt's own code path: signed REST,
the algo service for USDT-M conditional orders, the user data stream as ccxt.pro reads it,
Binance's error codes as ccxt classifies them, and the account faults the gateway relies on.

Exchange time runs 60x the wall (a one-minute candle every wall second); credentials come
from environment variables through ``VenueConfig.credentials``, as in production.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Awaitable, Callable
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
    clock = ScaledClock(START_NS, RATE)
    fake = await start_fake(exchange_id, default_symbols(exchange_id, 2), clock, **kw)
    monkeypatch.setenv("KEEL_TEST_KEY", KEY)
    monkeypatch.setenv("KEEL_TEST_SECRET", fake.api_secret)
    credentials = Credentials(api_key_env="KEEL_TEST_KEY", secret_env="KEEL_TEST_SECRET")
    config = VenueConfig(**fake.venue_entry("fake"), credentials=credentials, timeout_ms=timeout_ms)
    exchange = build_exchange(config, read_secrets(config, ("api_key", "secret")))
    await exchange.load_markets()
    return Venue(fake, exchange)


@pytest.fixture(params=["binance", "binanceusdm"])
async def venue(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Venue]:
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


def far_price(venue: Venue, factor: float) -> float:
    tick = venue.fake.specs[venue.symbol].tick_size
    return round(round(venue.last() * factor / tick) * tick, 8)


def coming_price(venue: Venue, down: bool, within_s: float = 90.0) -> float:
    """The lowest (highest) last price the next ``within_s`` exchange seconds of ticks will
    print: a stop there triggers soon, and not at once."""
    fake = venue.fake
    step = fake.step_ns // fake.updates_per_bar
    first = (fake.now_ns() // step + 3) * step
    prices = [
        fake.snapshot(venue.symbol, first + i * step).trade.price
        for i in range(int(within_s * NS / step))
    ]
    return min(prices) if down else max(prices)


async def until(check: Any, timeout_s: float = 10.0) -> Any:
    """Poll ``await check()`` until it returns something truthy."""
    async with asyncio.timeout(timeout_s):
        while True:
            result = await check()
            if result:
                return result
            await asyncio.sleep(0.05)


async def test_limit_order_by_id_and_client_id_then_cancel(venue: Venue) -> None:
    ex, symbol, cid = venue.exchange, venue.symbol, venue.cid("l1")
    price = far_price(venue, 0.9)
    order = await ex.create_order(symbol, "limit", "buy", qty_for(venue), price,
                                  {"clientOrderId": cid, "timeInForce": "GTC"})  # fmt: skip
    assert (order["status"], order["price"], order["filled"]) == ("open", price, 0)
    by_id = await ex.fetch_order(order["id"], symbol)
    by_client = await ex.fetch_order("", symbol, {"clientOrderId": cid})
    assert by_id["id"] == by_client["id"] == order["id"]
    assert by_client["clientOrderId"] == cid and by_client["timeInForce"] == "GTC"
    assert [o["id"] for o in await ex.fetch_open_orders(symbol)] == [order["id"]]
    canceled = await ex.cancel_order("", symbol, {"clientOrderId": cid})
    assert canceled["status"] == "canceled" and canceled["id"] == order["id"]
    assert canceled["info"].get("origClientOrderId", cid) == cid
    assert await ex.fetch_open_orders(symbol) == []
    with pytest.raises(ccxt.OrderNotFound, match="-2011"):
        await ex.cancel_order(order["id"], symbol)
    with pytest.raises(ccxt.OrderNotFound, match="-2013"):
        await ex.fetch_order("999", symbol)
    assert (await ex.fetch_order(order["id"], symbol))["status"] == "canceled"


async def test_edit_order(venue: Venue) -> None:
    ex, symbol = venue.exchange, venue.symbol
    amount = qty_for(venue)
    order = await ex.create_order(symbol, "limit", "buy", amount, far_price(venue, 0.9),
                                  {"clientOrderId": venue.cid("e1")})  # fmt: skip
    new_price = far_price(venue, 0.85)
    if venue.futures:  # PUT /fapi/v1/order: same order, new price and amount
        edited = await ex.edit_order(order["id"], symbol, "limit", "buy", amount * 2, new_price)
        assert edited["id"] == order["id"] and edited["price"] == new_price
        assert edited["amount"] == pytest.approx(amount * 2)
        assert edited["clientOrderId"] == venue.cid("e1")
    else:  # spot cancelReplace: the old order canceled, a new one (new id, new client id)
        edited = await ex.edit_order(order["id"], symbol, "limit", "buy", amount, new_price,
                                     {"clientOrderId": venue.cid("e2")})  # fmt: skip
        assert edited["id"] != order["id"] and edited["clientOrderId"] == venue.cid("e2")
        assert (await ex.fetch_order(order["id"], symbol))["status"] == "canceled"
        with pytest.raises(ccxt.ExchangeError, match="-2022"):  # STOP_ON_FAILURE, cancel failed
            await ex.edit_order(order["id"], symbol, "limit", "buy", amount, new_price)
    [open_order] = await ex.fetch_open_orders(symbol)
    assert (open_order["id"], open_order["price"]) == (edited["id"], new_price)


async def test_stop_market_triggers_and_fills(venue: Venue) -> None:
    """Spot STOP_LOSS on /api/v3/order; USDT-M STOP_MARKET through the algo service, whose
    triggered order fills under its own (actual) order id."""
    ex, symbol, cid = venue.exchange, venue.symbol, venue.cid("s1")
    streamed: list[dict[str, Any]] = []

    async def collect() -> None:
        while not any(o["status"] == "closed" and "aid" not in o["info"] for o in streamed):
            streamed.extend(copy.deepcopy(await ex.watch_orders(symbol)))  # ccxt reuses them

    collecting = asyncio.create_task(collect())
    await until(lambda: _subscribed(venue), 5.0)
    down = coming_price(venue, True) < venue.last()
    side = "sell" if down else "buy"
    stop = coming_price(venue, down)
    order = await ex.create_order(symbol, "market", side, qty_for(venue), None,
                                  {"triggerPrice": stop, "clientOrderId": cid})  # fmt: skip
    assert order["status"] == "open" and order["triggerPrice"] == pytest.approx(stop)
    trigger = {"trigger": True} if venue.futures else {}
    assert order["clientOrderId"] == cid
    if venue.futures:
        assert venue.fake.requests["/fapi/v1/algoOrder"] == 1
        assert order["info"]["algoType"] == "CONDITIONAL" and order["type"] == "market"
        assert order["info"]["orderType"] == "STOP_MARKET"
        assert await ex.fetch_open_orders(symbol) == []
    else:
        assert order["info"]["type"] == "STOP_LOSS"
    [listed] = await ex.fetch_open_orders(symbol, params=trigger)
    assert listed["id"] == order["id"] and listed["triggerPrice"] == pytest.approx(stop)

    async def done() -> dict[str, Any] | None:
        seen = await ex.fetch_order(order["id"], symbol, trigger)
        return seen if seen["status"] == "closed" else None

    closed = await until(done, 15.0)
    assert closed["clientOrderId"] == cid
    [trade] = await ex.fetch_my_trades(symbol)
    if venue.futures:
        actual = closed["info"]["actualOrderId"]
        assert trade["order"] == actual != order["id"]
        plain = await ex.fetch_order(actual, symbol)
        assert plain["status"] == "closed" and plain["info"]["origType"] == "STOP_MARKET"
    else:
        assert trade["order"] == order["id"] and closed["filled"] == pytest.approx(order["amount"])
    assert trade["side"] == side
    async with asyncio.timeout(5):
        await collecting
    filled = [o for o in streamed if o["status"] == "closed" and "aid" not in o["info"]]
    assert filled[-1]["id"] == trade["order"] and filled[-1]["clientOrderId"] == cid
    if venue.futures:  # ALGO_UPDATE: the algo order NEW, then TRIGGERED (ccxt: "closed")
        algo = [o["info"]["X"] for o in streamed if "aid" in o["info"]]
        assert algo[:2] == ["NEW", "TRIGGERED"] and filled[-1]["filled"] == order["amount"]


async def test_stop_limit_and_take_profits_rest_and_cancel(venue: Venue) -> None:
    ex, symbol = venue.exchange, venue.symbol
    amount = qty_for(venue)
    stop, limit, profit = far_price(venue, 1.2), far_price(venue, 1.21), far_price(venue, 0.8)
    stop_limit = await ex.create_order(symbol, "limit", "buy", amount, limit,
                                       {"triggerPrice": stop, "clientOrderId": venue.cid("sl")})  # fmt: skip
    take = await ex.create_order(symbol, "market", "buy", amount, None,
                                 {"takeProfitPrice": profit, "clientOrderId": venue.cid("tp")})  # fmt: skip
    await ex.create_order(symbol, "limit", "buy", amount, profit,
                          {"takeProfitPrice": profit, "clientOrderId": venue.cid("tpl")})  # fmt: skip
    trigger = {"trigger": True} if venue.futures else {}
    listed = {o["clientOrderId"]: o for o in await ex.fetch_open_orders(symbol, params=trigger)}
    assert set(listed) == {venue.cid("sl"), venue.cid("tp"), venue.cid("tpl")}
    kinds = (
        ("STOP", "TAKE_PROFIT_MARKET", "TAKE_PROFIT")
        if venue.futures
        else ("STOP_LOSS_LIMIT", "TAKE_PROFIT", "TAKE_PROFIT_LIMIT")
    )
    field = "orderType" if venue.futures else "type"
    assert tuple(listed[venue.cid(t)]["info"][field] for t in ("sl", "tp", "tpl")) == kinds
    assert listed[venue.cid("tpl")]["price"] == profit
    assert listed[venue.cid("tp")]["takeProfitPrice"] == pytest.approx(profit)
    assert listed[venue.cid("sl")]["price"] == limit
    by_client = await ex.fetch_order("", symbol, {"clientOrderId": venue.cid("sl"), **trigger})
    assert by_client["id"] == stop_limit["id"]
    await ex.cancel_order(stop_limit["id"], symbol, trigger)
    await ex.cancel_order("", symbol, {"clientOrderId": venue.cid("tp"), **trigger})
    await ex.cancel_order("", symbol, {"clientOrderId": venue.cid("tpl"), **trigger})
    assert await ex.fetch_open_orders(symbol, params=trigger) == []
    gone = await ex.fetch_order(take["id"], symbol, trigger)
    assert gone["status"] == "canceled"
    with pytest.raises(ccxt.OrderNotFound, match="-2011"):
        await ex.cancel_order(take["id"], symbol, trigger)


async def test_user_stream_orders_and_trades(venue: Venue) -> None:
    """watchOrders / watchMyTrades as ccxt.pro 4.5 subscribes: the ws-api signature
    subscription (spot), a listenKey stream (USDT-M); a fill split in three trades."""
    ex, symbol = venue.exchange, venue.symbol
    venue.fake.account.faults.fill_parts = 3
    orders_task = asyncio.create_task(ex.watch_orders(symbol))
    trades_task = asyncio.create_task(ex.watch_my_trades(symbol))
    await until(lambda: _subscribed(venue), 5.0)
    amount = qty_for(venue, 600)
    order = await ex.create_order(symbol, "market", "buy", amount, None,
                                  {"clientOrderId": venue.cid("w1")})  # fmt: skip
    assert order["status"] == "open" and 0 < order["filled"] < amount
    seen: list[dict[str, Any]] = []
    trades: dict[str, dict[str, Any]] = {}
    async with asyncio.timeout(10):
        seen += await orders_task
        for t in await trades_task:
            trades[t["id"]] = t
        while len(trades) < 3 or seen[-1]["status"] != "closed":
            batch_o, batch_t = await asyncio.gather(
                ex.watch_orders(symbol), ex.watch_my_trades(symbol)
            ) if len(trades) < 3 else (await ex.watch_orders(symbol), [])  # fmt: skip
            seen += batch_o
            trades |= {t["id"]: t for t in batch_t}
    assert seen[0]["id"] == order["id"] and seen[0]["clientOrderId"] == venue.cid("w1")
    assert seen[-1]["status"] == "closed" and seen[-1]["filled"] == pytest.approx(amount)
    rest = await ex.fetch_my_trades(symbol)
    assert sorted(trades) == sorted(t["id"] for t in rest) and len(rest) == 3
    assert sum(t["amount"] for t in trades.values()) == pytest.approx(amount)
    assert {t["order"] for t in trades.values()} == {order["id"]}
    if venue.futures:
        stop = await ex.create_order(symbol, "market", "sell", amount, None,
                                     {"stopPrice": far_price(venue, 0.7), "reduceOnly": True})  # fmt: skip
        async with asyncio.timeout(5):
            algo = (await ex.watch_orders(symbol))[-1]
        assert algo["id"] == stop["id"] and algo["info"]["X"] == "NEW" and algo["reduceOnly"]
        await ex.cancel_order(stop["id"], symbol, {"trigger": True})
        async with asyncio.timeout(5):
            algo = (await ex.watch_orders(symbol))[-1]
        assert algo["status"] == "canceled"


async def _subscribed(venue: Venue) -> bool:
    users = venue.fake.skin.users  # type: ignore[attr-defined]
    return bool(users.futures if venue.futures else users.spot)


async def test_spot_refusals_carry_binance_codes(spot: Venue) -> None:
    ex, symbol = spot.exchange, spot.symbol
    market_id = ex.market(symbol)["id"]
    cases: list[tuple[Callable[[], Awaitable[Any]], type[Exception], str]] = [
        (lambda: ex.create_order(symbol, "market", "buy", 100.0), ccxt.InsufficientFunds,
         "Account has insufficient balance for requested action"),
        (lambda: ex.create_order(symbol, "limit", "buy", 0.001, 1.0), ccxt.BadRequest,
         "Filter failure: NOTIONAL"),
        (lambda: ex.private_post_order({"symbol": market_id, "side": "BUY", "type": "LIMIT",
                                "timeInForce": "GTC", "quantity": "0.0015",
                                "price": str(far_price(spot, 0.9))}),
         ccxt.InvalidOrder, "LOT_SIZE"),
        (lambda: ex.private_post_order({"symbol": market_id, "side": "BUY", "type": "LIMIT",
                                "timeInForce": "GTC", "quantity": "0.01",
                                "price": str(far_price(spot, 0.9) + 0.003)}),
         ccxt.InvalidOrder, "PRICE_FILTER"),
        (lambda: ex.create_order(symbol, "market", "sell", 0.01, None,
                         {"triggerPrice": far_price(spot, 1.1)}),
         ccxt.OrderImmediatelyFillable, "Stop price would trigger immediately"),
        (lambda: ex.create_order(symbol, "limit", "buy", 0.01, far_price(spot, 1.05),
                         {"postOnly": True}),
         ccxt.OrderImmediatelyFillable, "Order would immediately match and take"),
        (lambda: ex.private_post_order({"symbol": "NOPEUSDT", "side": "BUY", "type": "MARKET",
                                "quantity": "1"}), ccxt.BadSymbol, "-1121"),
        (lambda: ex.cancel_order("12345", symbol), ccxt.OrderNotFound, "Unknown order sent"),
        (lambda: ex.fetch_order("12345", symbol), ccxt.OrderNotFound, "Order does not exist"),
    ]  # fmt: skip
    for call, error, text in cases:
        with pytest.raises(error, match=text):
            await call()
    await ex.create_order(symbol, "limit", "buy", 0.01, far_price(spot, 0.9),
                          {"clientOrderId": "dup"})  # fmt: skip
    with pytest.raises(ccxt.BadRequest, match="-1100"):  # a client id is 1-36 characters
        await ex.create_order(symbol, "limit", "buy", 0.01, far_price(spot, 0.9),
                              {"clientOrderId": "x" * 37})  # fmt: skip
    with pytest.raises(ccxt.InvalidOrder, match="Duplicate order sent"):
        await ex.create_order(symbol, "limit", "buy", 0.01, far_price(spot, 0.9),
                              {"clientOrderId": "dup"})  # fmt: skip
    assert len(await ex.fetch_open_orders(symbol)) == 1


async def test_usdm_refusals_carry_binance_codes(usdm: Venue) -> None:
    """ccxt classifies -2019/-4164/-2022 by URL (fapi.binance.com); on the fake's loopback
    URL they are plain ExchangeErrors carrying Binance's code and message."""
    ex, symbol = usdm.exchange, usdm.symbol
    market_id = ex.market(symbol)["id"]
    cases: list[tuple[Callable[[], Awaitable[Any]], type[Exception], str]] = [
        (lambda: ex.create_order(symbol, "market", "buy", 500.0), ccxt.ExchangeError,
         '"code":-2019,"msg":"Margin is insufficient."'),
        (lambda: ex.create_order(symbol, "limit", "buy", 0.001, 1000.0), ccxt.ExchangeError,
         "-4164.*no smaller than 5"),
        (lambda: ex.create_order(symbol, "market", "sell", 0.01, None, {"reduceOnly": True}),
         ccxt.ExchangeError, '"code":-2022,"msg":"ReduceOnly Order is rejected."'),
        (lambda: ex.fapiprivate_post_order({"symbol": market_id, "side": "SELL", "type": "STOP_MARKET",
                                    "quantity": "0.01", "stopPrice": str(far_price(usdm, 0.9))}),
         ccxt.ExchangeError, "-4120"),
        (lambda: ex.create_order(symbol, "market", "buy", 0.01, None,
                         {"stopPrice": far_price(usdm, 0.9)}),
         ccxt.ExchangeError, "-2021"),
        (lambda: ex.cancel_order("12345", symbol), ccxt.OrderNotFound, "-2011"),
        (lambda: ex.cancel_order("12345", symbol, {"trigger": True}), ccxt.OrderNotFound, "-2011"),
        (lambda: ex.fetch_order("12345", symbol, {"trigger": True}), ccxt.OrderNotFound, "-2013"),
    ]  # fmt: skip
    for call, error, text in cases:
        with pytest.raises(error, match=text):
            await call()
    await ex.create_order(symbol, "market", "buy", 0.01)
    closed = await ex.create_order(symbol, "market", "sell", 0.02, None, {"reduceOnly": True})
    assert closed["filled"] == pytest.approx(0.01) and closed["reduceOnly"] is True
    assert await ex.fetch_positions([symbol]) == []


async def test_signature_timestamp_and_stream_auth(venue: Venue) -> None:
    ex, symbol = venue.exchange, venue.symbol
    ex.secret = "not-the-secret"
    with pytest.raises(ccxt.AuthenticationError, match="-1022"):
        await ex.fetch_open_orders(symbol)
    if not venue.futures:  # the ws-api answers -1022; ccxt 4.5.90 then trips on its own
        # cleanup and raises KeyError('spot') instead of AuthenticationError
        with pytest.raises((ccxt.AuthenticationError, KeyError)):
            await asyncio.wait_for(ex.watch_orders(symbol), 5)
        assert venue.fake.skin.users.spot == {}  # type: ignore[attr-defined]
    ex.secret = venue.fake.api_secret
    ex.options["timeDifference"] = 30_000  # ccxt signs 30 s in the past
    with pytest.raises(ccxt.InvalidNonce, match="-1021"):
        await ex.fetch_open_orders(symbol)
    ex.options["timeDifference"] = 0
    assert await ex.fetch_open_orders(symbol) == []
    assert venue.fake.account.orders() == []


async def test_unanswered_and_late_requests(venue: Venue) -> None:
    """hang_next: acted on, never answered; drop_next: neither; ack_delay_s: answered after
    ccxt gave up. A query by client id tells which happened."""
    ex, symbol, faults = venue.exchange, venue.symbol, venue.fake.account.faults
    amount, price = qty_for(venue), far_price(venue, 0.9)

    async def by_client(cid: str) -> dict[str, Any]:
        return await ex.fetch_order("", symbol, {"clientOrderId": cid})

    faults.hang_next = 1
    with pytest.raises(ccxt.NetworkError):
        await ex.create_order(symbol, "limit", "buy", amount, price, {"clientOrderId": "hung"})
    assert (await by_client("hung"))["status"] == "open"
    faults.drop_next = 1
    with pytest.raises(ccxt.NetworkError):
        await ex.create_order(symbol, "limit", "buy", amount, price, {"clientOrderId": "lost"})
    with pytest.raises(ccxt.OrderNotFound):
        await by_client("lost")
    faults.hang_next = 1  # aiohttp resends an idempotent DELETE whose pooled connection
    # closed unanswered: the cancel then meets its own effect (-2011)
    with pytest.raises((ccxt.NetworkError, ccxt.OrderNotFound)):
        await ex.cancel_order("", symbol, {"clientOrderId": "hung"})
    assert (await by_client("hung"))["status"] == "canceled"
    faults.ack_delay_s = 0.6
    ex.timeout = 300
    with pytest.raises(ccxt.RequestTimeout):
        await ex.create_order(symbol, "limit", "buy", amount, price, {"clientOrderId": "late"})
    faults.ack_delay_s = 0.0
    ex.timeout = 3000
    assert (await by_client("late"))["status"] == "open"
    assert venue.fake.account.faults.hang_next == venue.fake.account.faults.drop_next == 0


async def test_a_new_order_shows_late(venue: Venue) -> None:
    """hidden_s: acknowledged, yet queries miss it for a while (cancel still reaches it)."""
    ex, symbol = venue.exchange, venue.symbol
    venue.fake.account.faults.hidden_s = 30.0  # exchange seconds: half a wall second
    order = await ex.create_order(symbol, "limit", "buy", qty_for(venue), far_price(venue, 0.9),
                                  {"clientOrderId": "shy"})  # fmt: skip
    with pytest.raises(ccxt.OrderNotFound, match="-2013"):
        await ex.fetch_order("", symbol, {"clientOrderId": "shy"})
    assert await ex.fetch_open_orders(symbol) == []

    async def visible() -> list[dict[str, Any]]:
        return await ex.fetch_open_orders(symbol)

    [seen] = await until(visible, 5.0)
    assert seen["id"] == order["id"]
    hidden = await ex.create_order(symbol, "limit", "buy", qty_for(venue), far_price(venue, 0.9))
    assert (await ex.cancel_order(hidden["id"], symbol))["status"] == "canceled"


async def test_silent_user_stream_leaves_rest_to_tell(venue: Venue) -> None:
    ex, symbol = venue.exchange, venue.symbol
    watching = asyncio.create_task(ex.watch_my_trades(symbol))
    await until(lambda: _subscribed(venue), 5.0)
    venue.fake.account.faults.silent_user_stream = True
    first = await ex.create_order(symbol, "market", "buy", qty_for(venue))
    await asyncio.sleep(0.5)
    assert not watching.done()
    assert [t["order"] for t in await ex.fetch_my_trades(symbol)] == [first["id"]]
    venue.fake.account.faults.silent_user_stream = False
    second = await ex.create_order(symbol, "market", "buy", qty_for(venue))
    async with asyncio.timeout(5):
        trades = await watching
    assert [t["order"] for t in trades] == [second["id"]]


async def test_account_frames_move_ccxt_balances_and_positions(venue: Venue) -> None:
    """outboundAccountPosition (spot) and ACCOUNT_UPDATE (USDT-M) as ccxt.pro's
    watchBalance / watchPositions read them."""
    ex, symbol = venue.exchange, venue.symbol
    if venue.futures:  # ccxt's first answer is its REST snapshot: no position yet
        assert await ex.watch_positions([symbol]) == []
    watch = ex.watch_positions([symbol]) if venue.futures else ex.watch_balance()
    watching = asyncio.create_task(watch)
    await until(lambda: _subscribed(venue), 5.0)
    amount = qty_for(venue)
    await ex.create_order(symbol, "market", "buy", amount)
    async with asyncio.timeout(5):
        seen = await watching
    if venue.futures:
        [position] = seen
        assert position["symbol"] == symbol and position["contracts"] == pytest.approx(amount)
        assert position["side"] == "long"
    else:
        account = venue.fake.account.balances
        async with asyncio.timeout(5):  # the order's lock first, then the fill
            while seen["BTC"]["free"] != pytest.approx(account["BTC"].free):
                seen = await ex.watch_balance()
        assert seen["USDT"]["free"] == pytest.approx(account["USDT"].free)
        assert seen["USDT"]["used"] == pytest.approx(account["USDT"].used)


async def test_state_changed_behind_the_clients_back(usdm: Venue) -> None:
    """What reconciliation meets: an external order, a missed fill, a vanished stop and a
    position moved elsewhere, each as the REST queries show it."""
    ex, symbol, faults = usdm.exchange, usdm.symbol, usdm.fake.account.faults
    external = faults.external(symbol, "buy", "limit", 0.01, far_price(usdm, 0.9))
    [seen] = await ex.fetch_open_orders(symbol)
    assert seen["id"] == str(external.order_id) and seen["clientOrderId"].startswith("external")
    faults.fill_silently(external.order_id)
    assert (await ex.fetch_order(seen["id"], symbol))["status"] == "closed"
    [trade] = await ex.fetch_my_trades(symbol)
    assert trade["order"] == seen["id"] and trade["price"] == external.price
    stop = await ex.create_order(symbol, "market", "sell", 0.01, None,
                                 {"stopPrice": far_price(usdm, 0.7), "reduceOnly": True})  # fmt: skip
    faults.vanish(int(stop["id"]))
    assert await ex.fetch_open_orders(symbol, params={"trigger": True}) == []
    with pytest.raises(ccxt.OrderNotFound, match="-2013"):
        await ex.fetch_order(stop["id"], symbol, {"trigger": True})
    faults.set_position(symbol, -0.03)
    [position] = await ex.fetch_positions([symbol])
    assert position["side"] == "short" and position["contracts"] == pytest.approx(0.03)


async def test_time_in_force(venue: Venue) -> None:
    ex, symbol = venue.exchange, venue.symbol
    amount, away, through = qty_for(venue), far_price(venue, 0.9), far_price(venue, 1.05)
    for tif in ("IOC", "FOK"):
        order = await ex.create_order(symbol, "limit", "buy", amount, away, {"timeInForce": tif})
        assert (order["status"], order["filled"], order["timeInForce"]) == ("expired", 0, tif)
    taken = await ex.create_order(symbol, "limit", "buy", amount, through, {"timeInForce": "IOC"})
    assert taken["status"] == "closed" and taken["average"] < through
    resting = await ex.create_order(symbol, "limit", "buy", amount, away, {"postOnly": True})
    assert resting["postOnly"] is True and resting["status"] == "open"
    error = ccxt.ExchangeError if venue.futures else ccxt.OrderImmediatelyFillable
    with pytest.raises(error, match="-5022" if venue.futures else "immediately match"):
        await ex.create_order(symbol, "limit", "buy", amount, through, {"postOnly": True})
