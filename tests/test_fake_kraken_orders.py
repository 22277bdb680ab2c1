"""The Kraken spot fake's private side, driven through ccxt's own code path.

Each test builds the exchange the product way: ``build_exchange`` on a ``VenueConfig`` whose
credentials name environment variables (``read_secrets``), over a fake whose exchange clock
runs 60x (a 15-second tick every quarter wall second). Kraken spot has no sandbox: the entry
is a normal venue pointed at the fake. The secret ccxt holds is ``ccxt_secret(fake)``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import ccxt
import pytest

from services.venues.ccxt_exchange import build_exchange, read_secrets
from services.venues.config import Credentials, VenueConfig
from tests.fakes.clock import ScaledClock
from tests.fakes.core import NS, FakeExchange, default_symbols, start_fake
from tests.fakes.kraken_orders import ccxt_secret, sign, txid, txid_number

BTC, ETH = "BTC/USD", "ETH/USD"
KEY = "kraken-test-key"
CREDENTIALS = Credentials(api_key_env="KEEL_TEST_KEY", secret_env="KEEL_TEST_SECRET")


def exchange_clock() -> ScaledClock:
    start = (time.time_ns() - 6 * 3600 * NS) // (60 * NS) * 60 * NS + 10 * NS
    return ScaledClock(start, 60.0)


def connect(fake: FakeExchange, monkeypatch: pytest.MonkeyPatch, timeout_ms: int = 10_000) -> Any:
    monkeypatch.setenv("KEEL_TEST_KEY", KEY)
    monkeypatch.setenv("KEEL_TEST_SECRET", ccxt_secret(fake))
    entry = fake.venue_entry("kr") | {"credentials": CREDENTIALS, "timeout_ms": timeout_ms}
    config = VenueConfig(**entry)
    exchange = build_exchange(config, read_secrets(config))
    exchange.throttler.config["refillRate"] = 1 / 20
    return exchange


@asynccontextmanager
async def venue(monkeypatch: pytest.MonkeyPatch, **given: Any) -> AsyncIterator[tuple[Any, Any]]:
    fake = await start_fake("kraken", default_symbols("kraken", 2), exchange_clock(), **given)
    exchange = connect(fake, monkeypatch)
    try:
        await exchange.load_markets()
        yield fake, exchange
    finally:
        await exchange.close()
        await fake.stop()


async def eventually(check: Callable[[], Awaitable[Any]], seconds: float = 8.0) -> Any:
    """``check()``'s first truthy result, asked every 0.1 s."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("never happened")
        await asyncio.sleep(0.1)


def coming_move(fake: FakeExchange, symbol: str) -> tuple[str, float]:
    """A stop the price path will trigger within two wall seconds (it knows the future):
    halfway to the farthest last price of the next eight ticks."""
    tick_ns = fake.step_ns // fake.updates_per_bar
    now = fake.snapshot(symbol).trade.price
    first = (fake.now_ns() // tick_ns + 1) * tick_ns
    coming = [fake.snapshot(symbol, first + k * tick_ns).trade.price for k in range(8)]
    far = max(coming, key=lambda price: abs(price - now))
    assert abs(far - now) > 10 * fake.specs[symbol].tick_size
    return ("buy" if far > now else "sell"), round((now + far) / 2, 1)


def below(fake: FakeExchange, symbol: str, share: float) -> float:
    return round(fake.snapshot(symbol).bid * share, 1)


# -- auth -----------------------------------------------------------------------------------


async def test_ids_map_back_and_look_like_kraken() -> None:
    for number in (0, 1, 1_000_001, 5_000_123, 2**40):
        text = txid("O", number)
        assert len(text) == 19 and text[6] == "-" and text[12] == "-" and text.isupper()
        assert txid_number(text, "O") == number
    assert txid_number("OL7LNO-R4SAD-6UINE!", "O") is None
    assert txid_number(txid("T", 7), "O") is None


async def test_signature_nonce_and_key_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    async with venue(monkeypatch) as (fake, ex):
        balance = await ex.fetch_balance()
        assert balance["USD"]["total"] == fake.account.balances["USD"].total
        ex.incrementing_nonce = lambda: 5  # lower than the last one this key used
        with pytest.raises(ccxt.InvalidNonce, match="EAPI:Invalid nonce"):
            await ex.fetch_balance()
        wrong = connect(fake, monkeypatch)
        wrong.secret = "d3Jvbmctc2VjcmV0"  # base64, but not this account's
        try:
            with pytest.raises(ccxt.ExchangeError, match="EAPI:Invalid signature") as caught:
                await wrong.fetch_balance()
            assert ccxt_secret(fake) not in str(caught.value)
        finally:
            await wrong.close()
        path = "/0/private/Balance"
        async with aiohttp.ClientSession() as session:
            body = "nonce=9999999999999"
            headers = {"API-Sign": sign(path, body, "9999999999999", ccxt_secret(fake))}
            async with session.post(fake.http_url + path, data=body, headers=headers) as answer:
                assert (await answer.json()) == {"error": ["EAPI:Invalid key"]}


# -- orders ---------------------------------------------------------------------------------


async def test_market_and_limit_orders_fill_and_read_back(monkeypatch: pytest.MonkeyPatch) -> None:
    async with venue(monkeypatch) as (fake, ex):
        usd_before = fake.account.balances["USD"].total
        placed = await ex.create_order(BTC, "market", "buy", 0.01, None, {"clientOrderId": "m-1"})
        order = await ex.fetch_order(placed["id"])
        assert (order["status"], order["filled"], order["clientOrderId"]) == ("closed", 0.01, "m-1")
        assert order["type"] == "market" and order["side"] == "buy" and order["symbol"] == BTC
        fill = fake.account.fills()[-1]
        assert order["average"] == fill.price and order["fee"]["currency"] == "USD"
        assert fake.account.balances["USD"].total == pytest.approx(
            usd_before - 0.01 * fill.price - fill.fee
        )
        trades = await ex.fetch_my_trades(BTC)
        assert [(t["order"], t["amount"], t["price"]) for t in trades] == [
            (placed["id"], 0.01, fill.price)
        ]
        assert trades[0]["id"] == txid("T", fill.trade_id) and trades[0]["takerOrMaker"] == "taker"
        assert trades[0]["info"]["trade_id"] == fill.trade_id
        marketable = round(fake.snapshot(BTC).ask * 1.01, 1)
        taker = await ex.create_order(BTC, "limit", "buy", 0.02, marketable, {"timeInForce": "IOC"})
        assert (await ex.fetch_order(taker["id"]))["status"] == "closed"
        price = below(fake, BTC, 0.9)
        rest = await ex.create_order(BTC, "limit", "buy", 0.03, price, {"clientOrderId": "l-1"})
        assert rest["info"]["descr"]["order"] == f"buy 0.03000000 XBTUSD @ limit {price}"
        found = await ex.fetch_open_orders(params={"clientOrderId": "l-1"})
        assert [(o["id"], o["price"], o["amount"], o["status"]) for o in found] == [
            (rest["id"], price, 0.03, "open")
        ]
        assert fake.account.balances["USD"].used == pytest.approx(0.03 * price * 1.001)
        closed = await ex.fetch_closed_orders(BTC)
        assert {o["id"] for o in closed} == {placed["id"], taker["id"]}
        post = await ex.create_order(ETH, "limit", "sell", 0.1, round(fake.snapshot(ETH).ask * 2))
        assert fake.account.open_orders(ETH)[0].order_id == txid_number(post["id"], "O")


RECORDED_ORDER = {  # QueryOrders of a closed market order, ccxt's fixture (response/kraken.json)
    "refid", "userref", "status", "opentm", "starttm", "expiretm", "descr", "vol", "vol_exec",
    "cost", "fee", "price", "stopprice", "limitprice", "misc", "oflags", "trades", "reason",
    "closetm",
}  # fmt: skip
RECORDED_DESCR = {"pair", "type", "ordertype", "price", "price2", "leverage", "order", "close"}
RECORDED_TRADE = {  # TradesHistory, from ccxt's kraken.py
    "ordertxid", "postxid", "pair", "time", "type", "ordertype", "price", "cost", "fee", "vol",
    "margin", "leverage", "misc", "trade_id", "maker",
}  # fmt: skip


async def test_wire_fields_match_the_recorded_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    async with venue(monkeypatch) as (fake, ex):
        added = await ex.privatePostAddOrder(
            {"pair": "XXBTZUSD", "type": "buy", "ordertype": "market", "volume": "0.01"}
        )
        assert set(added) == {"error", "result"} and set(added["result"]) == {"descr", "txid"}
        assert added["result"]["descr"] == {"order": "buy 0.01000000 XBTUSD @ market"}
        order_id = added["result"]["txid"][0]
        queried = await ex.privatePostQueryOrders({"txid": order_id, "trades": True})
        info = queried["result"][order_id]
        assert set(info) == RECORDED_ORDER and set(info["descr"]) == RECORDED_DESCR
        assert (info["status"], info["vol"], info["vol_exec"], info["oflags"]) == (
            "closed",
            "0.01000000",
            "0.01000000",
            "fciq",  # the fee in the quote, as recorded
        )
        history = await ex.privatePostTradesHistory()
        (trade,) = history["result"]["trades"].values()
        assert set(trade) == RECORDED_TRADE and history["result"]["count"] == 1
        assert (trade["ordertxid"], trade["pair"], trade["vol"]) == (
            order_id,
            "XXBTZUSD",
            "0.01000000",
        )
        price = below(fake, BTC, 0.9)
        limit = await ex.create_order(BTC, "limit", "buy", 0.01, price, {"clientOrderId": "f-1"})
        opened = (await ex.privatePostOpenOrders())["result"]["open"][limit["id"]]
        assert set(opened) == RECORDED_ORDER - {"trades", "closetm"} | {"cl_ord_id"}
        assert opened["descr"]["price"] == f"{price:.1f}" and opened["cl_ord_id"] == "f-1"
        balances = (await ex.privatePostBalanceEx())["result"]
        assert set(balances) == {"ZUSD", "XXBT", "XETH"}
        assert set(balances["ZUSD"]) == {"balance", "hold_trade"}
        assert float(balances["ZUSD"]["hold_trade"]) == pytest.approx(
            0.01 * price * 1.001
        )  # and the fee


async def test_a_take_profit_limit_and_a_stop_already_past_its_trigger(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with venue(monkeypatch) as (fake, ex):
        last = fake.snapshot(BTC).trade.price
        profit = round(last * 1.1, 1)
        await ex.create_order(BTC, "limit", "sell", 0.01, profit + 5, {"takeProfitPrice": profit})
        (opened,) = await ex.fetch_open_orders(BTC)
        assert opened["info"]["descr"]["ordertype"] == "take-profit-limit"
        assert (opened["takeProfitPrice"], opened["price"]) == (profit, profit + 5)
        assert fake.account.open_orders(BTC)[0].type == "take_profit_limit"
        passed = round(last * 1.05, 1)  # a sell stop above the last price: Kraken fires it
        late = await ex.create_order(BTC, "market", "sell", 0.01, None, {"stopLossPrice": passed})
        order = await ex.fetch_order(late["id"])
        assert (order["status"], order["filled"]) == ("closed", 0.01)


async def test_stop_and_take_profit_orders(monkeypatch: pytest.MonkeyPatch) -> None:
    async with venue(monkeypatch) as (fake, ex):
        last = fake.snapshot(BTC).trade.price
        stop = round(last * 0.9, 1)
        market_stop = await ex.create_order(
            BTC, "market", "sell", 0.01, None, {"stopLossPrice": stop}
        )
        limit_stop = await ex.create_order(
            BTC, "limit", "sell", 0.01, round(stop - 10, 1), {"stopLossPrice": stop}
        )
        profit = round(last * 1.1, 1)
        take = await ex.create_order(BTC, "market", "sell", 0.01, None, {"takeProfitPrice": profit})
        opened = {o["id"]: o for o in await ex.fetch_open_orders(BTC)}
        assert opened[market_stop["id"]]["stopLossPrice"] == stop
        assert opened[market_stop["id"]]["info"]["descr"]["ordertype"] == "stop-loss"
        assert opened[limit_stop["id"]]["info"]["descr"]["ordertype"] == "stop-loss-limit"
        assert opened[limit_stop["id"]]["price"] == round(stop - 10, 1)
        assert opened[take["id"]]["takeProfitPrice"] == profit
        assert opened[take["id"]]["type"] == "market"
        engine = {o.order_id: o for o in fake.account.open_orders(BTC)}
        assert engine[txid_number(limit_stop["id"], "O")].type == "stop_limit"
        assert engine[txid_number(take["id"], "O")].type == "take_profit"
        side, trigger = coming_move(fake, BTC)
        moving = await ex.create_order(BTC, "market", side, 0.01, None, {"stopLossPrice": trigger})

        async def triggered() -> dict[str, Any] | None:
            order = await ex.fetch_order(moving["id"])
            return order if order["status"] == "closed" else None

        done = await eventually(triggered)
        assert done["filled"] == 0.01 and done["average"] > 0
        assert fake.account.fills()[-1].order_id == txid_number(moving["id"], "O")


async def test_partial_fills_arrive_as_separate_trades(monkeypatch: pytest.MonkeyPatch) -> None:
    async with venue(monkeypatch) as (fake, ex):
        fake.account.faults.fill_parts = 3
        placed = await ex.create_order(BTC, "market", "buy", 0.03, None, {"clientOrderId": "p-1"})
        first = await ex.fetch_order(placed["id"])
        assert first["status"] == "open" and 0 < first["filled"] < 0.03

        async def complete() -> dict[str, Any] | None:
            order = await ex.fetch_order(placed["id"])
            return order if order["status"] == "closed" else None

        done = await eventually(complete)
        assert done["filled"] == 0.03
        trades = await ex.fetch_my_trades(BTC)
        assert len(trades) == 3 and sum(t["amount"] for t in trades) == pytest.approx(0.03)
        assert len({t["id"] for t in trades}) == 3
        assert {t["order"] for t in trades} == {placed["id"]}
        with_trades = await ex.privatePostQueryOrders({"txid": placed["id"], "trades": True})
        assert sorted(with_trades["result"][placed["id"]]["trades"]) == sorted(
            t["id"] for t in trades
        )


async def test_cancel_and_amend(monkeypatch: pytest.MonkeyPatch) -> None:
    async with venue(monkeypatch) as (fake, ex):
        price = below(fake, BTC, 0.9)
        order = await ex.create_order(BTC, "limit", "buy", 0.02, price, {"clientOrderId": "a-1"})
        new_price = below(fake, BTC, 0.8)
        amended = await ex.edit_order(order["id"], BTC, "limit", "buy", 0.05, new_price)
        assert amended["id"].startswith("T")  # ccxt reports Kraken's amend_id as the id
        again = await ex.fetch_order(order["id"])
        assert (again["amount"], again["price"], again["status"]) == (0.05, new_price, "open")
        third = below(fake, BTC, 0.85)
        by_client = await ex.edit_order(
            "", BTC, "limit", "buy", None, third, {"clientOrderId": "a-1"}
        )
        assert by_client["id"] != amended["id"]
        assert (await ex.fetch_order(order["id"]))["price"] == third
        await ex.cancel_order(order["id"], BTC)
        assert (await ex.fetch_order(order["id"]))["status"] == "canceled"
        assert fake.account.balances["USD"].used == pytest.approx(0.0)
        with pytest.raises(ccxt.OrderNotFound, match="EOrder:Unknown order"):
            await ex.cancel_order(order["id"], BTC)
        other = await ex.create_order(
            BTC, "limit", "sell", 0.01, round(price * 2, 1), {"clientOrderId": "a-2"}
        )
        await ex.cancel_order(None, BTC, {"clientOrderId": "a-2"})
        gone = await ex.fetch_closed_orders(BTC, params={"clientOrderId": "a-2"})
        assert [(o["id"], o["status"], o["clientOrderId"]) for o in gone] == [
            (other["id"], "canceled", "a-2")
        ]
        with pytest.raises(ccxt.InvalidOrder, match="EOrder:Unknown order"):
            await ex.edit_order(other["id"], BTC, "limit", "sell", 0.02, round(price * 2, 1))
        batch = [
            await ex.create_order(BTC, "limit", "buy", 0.01, price, {"clientOrderId": f"b-{n}"})
            for n in range(4)
        ]
        answer = await ex.cancel_orders([batch[0]["id"], "b-1"], BTC)
        assert answer[0]["info"]["result"] == {"count": 2}
        await ex.cancel_all_orders(BTC)
        assert await ex.fetch_open_orders(BTC) == []
        statuses = [(await ex.fetch_order(o["id"]))["status"] for o in batch]
        assert statuses == ["canceled"] * 4


async def test_exchange_errors_become_ccxt_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    async with venue(monkeypatch, balances={"USD": 1000.0, "BTC": 0.0, "ETH": 0.0}) as (fake, ex):
        with pytest.raises(ccxt.InsufficientFunds, match="EOrder:Insufficient funds"):
            await ex.create_order(BTC, "market", "buy", 1.0)
        fake.account.faults.reject_next = ["insufficient_balance"]
        with pytest.raises(ccxt.InsufficientFunds):
            await ex.create_order(BTC, "limit", "buy", 0.001, below(fake, BTC, 0.5))
        with pytest.raises(ccxt.InvalidOrder, match="EOrder:Order minimum not met"):
            await ex.privatePostAddOrder(
                {"pair": "XXBTZUSD", "type": "buy", "ordertype": "market", "volume": "0.0001"}
            )
        with pytest.raises(ccxt.InvalidOrder, match="Invalid arguments:volume"):
            await ex.privatePostAddOrder(
                {"pair": "XXBTZUSD", "type": "buy", "ordertype": "market", "volume": "0"}
            )
        with pytest.raises(ccxt.ExchangeError, match="EGeneral:Invalid arguments:cl_ord_id"):
            await ex.create_order(BTC, "market", "buy", 0.001, None, {"clientOrderId": "x" * 19})
        long_form = "6d1b345e-2821-40e2-ad83-4ecb18a06876"
        with pytest.raises(ccxt.InsufficientFunds):  # a UUID passes; the money does not
            await ex.create_order(BTC, "market", "buy", 1.0, None, {"clientOrderId": long_form})
        with pytest.raises(ccxt.ExchangeError, match="EQuery:Unknown asset pair"):
            await ex.privatePostAddOrder(
                {"pair": "NOPEUSD", "type": "buy", "ordertype": "market", "volume": "1"}
            )
        with pytest.raises(ccxt.InvalidOrder, match="EOrder:Invalid order"):
            await ex.fetch_order(txid("O", 42))
        with pytest.raises(ccxt.ExchangeError, match="EGeneral:Invalid arguments:userref"):
            await ex.fetch_order(txid("O", 42), BTC, {"clientOrderId": "not-an-integer"})
        with pytest.raises(ccxt.BadRequest, match="EGeneral:Invalid arguments"):  # margin only
            await ex.create_order(BTC, "market", "sell", 0.001, None, {"reduceOnly": True})
        assert fake.account.orders() == []


# -- faults the gateway relies on -----------------------------------------------------------


async def test_hang_drop_delay_and_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    async with venue(monkeypatch) as (fake, ex):
        faults = fake.account.faults
        faults.hang_next = 1
        with pytest.raises(ccxt.NetworkError):
            await ex.create_order(
                BTC, "limit", "buy", 0.01, below(fake, BTC, 0.9), {"clientOrderId": "h-1"}
            )
        found = await ex.fetch_open_orders(params={"clientOrderId": "h-1"})
        assert len(found) == 1  # acted on, never answered
        faults.drop_next = 1
        with pytest.raises(ccxt.NetworkError):
            await ex.create_order(
                BTC, "limit", "buy", 0.01, below(fake, BTC, 0.9), {"clientOrderId": "d-1"}
            )
        assert await ex.fetch_open_orders(params={"clientOrderId": "d-1"}) == []
        faults.hang_next = 1
        with pytest.raises(ccxt.NetworkError):
            await ex.cancel_order(found[0]["id"], BTC)
        assert (await ex.fetch_order(found[0]["id"]))["status"] == "canceled"
        slow = connect(fake, monkeypatch, timeout_ms=300)
        try:
            await slow.load_markets()
            faults.ack_delay_s = 1.0
            with pytest.raises(ccxt.RequestTimeout):
                await slow.create_order(
                    BTC, "limit", "buy", 0.01, below(fake, BTC, 0.9), {"clientOrderId": "s-1"}
                )
            faults.ack_delay_s = 0.0
        finally:
            await slow.close()
        assert len(await ex.fetch_open_orders(params={"clientOrderId": "s-1"})) == 1
        faults.hidden_s = 90.0  # exchange seconds: 1.5 s of wall time at 60x
        late = await ex.create_order(
            BTC, "limit", "buy", 0.01, below(fake, BTC, 0.9), {"clientOrderId": "v-1"}
        )
        assert await ex.fetch_open_orders(params={"clientOrderId": "v-1"}) == []
        with pytest.raises(ccxt.InvalidOrder):
            await ex.fetch_order(late["id"])

        async def shown() -> list[dict[str, Any]]:
            return await ex.fetch_open_orders(params={"clientOrderId": "v-1"})

        assert [o["id"] for o in await eventually(shown)] == [late["id"]]


# -- private stream -------------------------------------------------------------------------


class Collector:
    """Every order update and trade ccxt.pro hands out, as ``watch_*`` loops would see them."""

    def __init__(self, ex: Any) -> None:
        self.orders: list[dict[str, Any]] = []
        self.trades: list[dict[str, Any]] = []
        self.tasks = [
            asyncio.create_task(self.loop(ex.watch_orders, self.orders)),
            asyncio.create_task(self.loop(ex.watch_my_trades, self.trades)),
        ]

    @staticmethod
    async def loop(watch: Callable[[], Awaitable[list[Any]]], into: list[Any]) -> None:
        while True:
            into.extend(dict(item, info=dict(item["info"])) for item in await watch())

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def exec_types(self, order_id: str) -> list[str]:
        return [o["info"]["exec_type"] for o in self.orders if o["id"] == order_id]


async def test_executions_stream_as_ccxt_pro_reads_it(monkeypatch: pytest.MonkeyPatch) -> None:
    async with venue(monkeypatch) as (fake, ex):
        price = below(fake, BTC, 0.9)
        resting = await ex.create_order(BTC, "limit", "buy", 0.01, price, {"clientOrderId": "w-0"})
        seen = Collector(ex)
        try:
            await eventually(lambda: asyncio.sleep(0, seen.orders))
            assert [(o["id"], o["status"], o["info"]["cl_ord_id"]) for o in seen.orders] == [
                (resting["id"], "open", "w-0")
            ]  # the snapshot
            assert fake.requests["/0/private/GetWebSocketsToken"] == 1
            placed = await ex.create_order(
                BTC, "market", "buy", 0.01, None, {"clientOrderId": "w-1"}
            )
            await eventually(lambda: asyncio.sleep(0, "filled" in seen.exec_types(placed["id"])))
            assert seen.exec_types(placed["id"]) == ["pending_new", "new", "filled"]
            done = [o for o in seen.orders if o["id"] == placed["id"]][-1]
            # a closing item has no symbol, so ccxt cannot merge it with the order it has: the
            # id (and info's cl_ord_id) is what ties the two
            assert (done["status"], done["symbol"], done["average"]) == (
                "closed",
                None,
                fake.account.fills()[-1].price,
            )
            rest_trades = await ex.fetch_my_trades(BTC)
            assert [(t["id"], t["order"], t["amount"], t["takerOrMaker"]) for t in seen.trades] == [
                (rest_trades[0]["id"], placed["id"], 0.01, "taker")
            ]
            trade = seen.trades[0]
            assert trade["info"]["cl_ord_id"] == "w-1" and trade["fee"]["currency"] == "USD"
            assert trade["info"]["order_status"] == "filled"
            await ex.edit_order(resting["id"], BTC, "limit", "buy", 0.02, price)
            await ex.cancel_order(resting["id"], BTC)
            await eventually(lambda: asyncio.sleep(0, "canceled" in seen.exec_types(resting["id"])))
            canceled = [o for o in seen.orders if o["id"] == resting["id"]][-1]
            assert (canceled["status"], canceled["info"]["reason"]) == (
                "canceled",
                "User requested",
            )
            assert seen.exec_types(resting["id"])[-2:] == ["amended", "canceled"]
            fake.account.faults.fill_parts = 2
            split = await ex.create_order(
                BTC, "market", "sell", 0.02, None, {"clientOrderId": "w-2"}
            )
            await eventually(lambda: asyncio.sleep(0, "filled" in seen.exec_types(split["id"])))
            parts = [t for t in seen.trades if t["order"] == split["id"]]
            assert [t["amount"] for t in parts] == [0.01, 0.01]
            assert [t["info"]["order_status"] for t in parts] == ["partially_filled", "filled"]
            fake.account.faults.silent_user_stream = True
            quiet = await ex.create_order(
                BTC, "market", "buy", 0.01, None, {"clientOrderId": "w-3"}
            )
            await asyncio.sleep(0.5)
            assert seen.exec_types(quiet["id"]) == []  # nothing streamed: polling must see it
            assert (await ex.fetch_my_trades(BTC))[-1]["order"] == quiet["id"]
            fake.account.faults.silent_user_stream = False
            loud = await ex.create_order(BTC, "limit", "buy", 0.01, price, {"clientOrderId": "w-4"})
            await eventually(lambda: asyncio.sleep(0, seen.exec_types(loud["id"])))
        finally:
            await seen.stop()


async def test_executions_needs_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    async with venue(monkeypatch) as (fake, ex):
        url = ex.urls["api"]["ws"]["privateV2"]
        assert url != ex.urls["api"]["ws"]["publicV2"]  # ccxt keeps a socket of its own
        token = (await ex.privatePostGetWebSocketsToken())["result"]["token"]
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            assert (await ws.receive_json(timeout=2))["channel"] == "status"
            for req_id, given in ((7, "not-a-token"), (8, token)):
                params = {"channel": "executions", "token": given, "snap_orders": True}
                await ws.send_json({"method": "subscribe", "params": params, "req_id": req_id})
            refused = await ws.receive_json(timeout=2)
            assert (refused["error"], refused["success"], refused["req_id"]) == (
                "ESession:Invalid session",
                False,
                7,
            )
            accepted = await ws.receive_json(timeout=2)
            assert (accepted["success"], accepted["req_id"]) == (True, 8)
            assert accepted["result"]["channel"] == "executions"
            snapshot = await ws.receive_json(timeout=2)
            assert (snapshot["channel"], snapshot["type"], snapshot["data"]) == (
                "executions",
                "snapshot",
                [],
            )
            assert len(fake.skin.executions.listeners) == 1


async def test_balances_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    async with venue(monkeypatch) as (fake, ex):
        first = await asyncio.wait_for(ex.watch_balance(), 5)
        assert first["USD"]["total"] == fake.account.balances["USD"].total
        assert first["BTC"]["total"] == fake.account.balances["BTC"].total
        watching = asyncio.create_task(ex.watch_balance())
        await asyncio.sleep(0.1)
        await ex.create_order(BTC, "market", "buy", 0.01)
        moved = await asyncio.wait_for(watching, 5)
        account = fake.account.balances
        assert moved["BTC"]["total"] == pytest.approx(account["BTC"].total)
        assert moved["USD"]["total"] == pytest.approx(account["USD"].total)
        assert moved["BTC"]["total"] > first["BTC"]["total"]


async def test_state_changed_behind_keels_back(monkeypatch: pytest.MonkeyPatch) -> None:
    async with venue(monkeypatch) as (fake, ex):
        faults = fake.account.faults
        price = below(fake, BTC, 0.9)
        theirs = faults.external(BTC, "buy", "limit", 0.01, price)
        ours = await ex.create_order(BTC, "limit", "buy", 0.02, price, {"clientOrderId": "k-1"})
        stop = await ex.create_order(
            BTC, "market", "sell", 0.01, None, {"stopLossPrice": below(fake, BTC, 0.8)}
        )
        listed = {o["id"]: o for o in await ex.fetch_open_orders(BTC)}
        assert listed[txid("O", theirs.order_id)]["clientOrderId"] == "external-1"
        faults.fill_silently(txid_number(ours["id"], "O"))
        assert (await ex.fetch_order(ours["id"]))["status"] == "closed"
        assert (await ex.fetch_my_trades(BTC))[-1]["order"] == ours["id"]
        faults.vanish(txid_number(stop["id"], "O"))
        assert stop["id"] not in {o["id"] for o in await ex.fetch_open_orders(BTC)}
        with pytest.raises(ccxt.InvalidOrder, match="EOrder:Invalid order"):
            await ex.fetch_order(stop["id"])
        faults.set_balance("ETH", 3.5)
        assert (await ex.fetch_balance())["ETH"]["total"] == 3.5


async def test_amend_moves_a_stop_in_place_and_below_the_filled_quantity_cancels_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with venue(monkeypatch) as (fake, ex):
        last = fake.snapshot(BTC).trade.price
        stop = await ex.create_order(
            BTC,
            "market",
            "sell",
            0.01,
            None,
            {"stopLossPrice": round(last * 0.8, 1), "clientOrderId": "s-1"},
        )
        moved = round(last * 0.85, 1)
        await ex.edit_order(None, BTC, "market", "sell", 0.01, None,
                            {"stopLossPrice": moved, "clientOrderId": "s-1"})  # fmt: skip
        (same,) = await ex.fetch_open_orders(BTC, params={"clientOrderId": "s-1"})
        assert (same["id"], same["stopLossPrice"], same["amount"]) == (stop["id"], moved, 0.01)
        assert fake.requests["/0/private/CancelOrder"] == 0
        with pytest.raises(ccxt.ExchangeError, match="Invalid arguments:limit_price"):
            await ex.privatePostAmendOrder({"cl_ord_id": "s-1", "limit_price": "1"})
        fake.account.faults.fill_parts = 2
        buy = await ex.create_order(BTC, "limit", "buy", 0.02, round(last * 1.05, 1),
                                    {"clientOrderId": "p-1"})  # fmt: skip

        async def part() -> dict[str, Any] | None:
            order = await ex.fetch_order(buy["id"])
            return order if 0 < order["filled"] < 0.02 else None

        half = await eventually(part)
        await ex.edit_order(buy["id"], BTC, "limit", "buy", half["filled"], None)
        after = await ex.fetch_order(buy["id"])
        assert (after["status"], after["filled"]) == ("canceled", half["filled"])
