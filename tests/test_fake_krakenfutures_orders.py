"""The Kraken Futures fake's private side, driven through ccxt's own code path.

Each test builds the exchange the product way (``read_secrets`` + ``build_exchange`` on a
``[[venues]]`` entry with ``sandbox = true``: Kraken Futures' demo environment is ccxt's
sandbox) with the credentials in environment variables, on a fake whose exchange clock runs
60x. The fake's secret is ``TEST_SECRET`` (Kraken secrets are base64).
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

from eventstore.errors import KeelError
from services.venues.ccxt_exchange import build_exchange, read_secrets
from services.venues.config import Credentials, VenueConfig
from tests.fakes.clock import ScaledClock
from tests.fakes.core import NS, FakeExchange, default_symbols, start_fake
from tests.fakes.krakenfutures_orders import TEST_SECRET, sign

BTC, ETH = "BTC/USD:USD", "ETH/USD:USD"
MINUTE = 60 * NS
KEY = "kf-test-key"


def exchange_clock() -> ScaledClock:
    start = (time.time_ns() - 6 * 3600 * NS) // MINUTE * MINUTE + 10 * NS
    return ScaledClock(start, 60.0)


def entry(fake: FakeExchange, **extra: Any) -> VenueConfig:
    credentials = Credentials(api_key_env="KEEL_TEST_KEY", secret_env="KEEL_TEST_SECRET")
    return VenueConfig(**fake.venue_entry("kf"), sandbox=True, credentials=credentials, **extra)


@asynccontextmanager
async def venue(
    monkeypatch: pytest.MonkeyPatch, **extra: Any
) -> AsyncIterator[tuple[FakeExchange, Any]]:
    monkeypatch.setenv("KEEL_TEST_KEY", KEY)
    monkeypatch.setenv("KEEL_TEST_SECRET", TEST_SECRET)
    fake = await start_fake("krakenfutures", default_symbols("krakenfutures", 2), exchange_clock())
    fake.api_secret = TEST_SECRET
    config = entry(fake, **extra)
    exchange = build_exchange(config, read_secrets(config, ("api_key", "secret")))
    exchange.throttler.config["refillRate"] = 1 / 50
    try:
        await exchange.load_markets()
        yield fake, exchange
    finally:
        await exchange.close()
        await fake.stop()


async def eventually(check: Callable[[], Awaitable[Any]], seconds: float = 6.0) -> Any:
    """The first truthy result of ``check``, polled until ``seconds`` (wall) pass."""
    deadline = time.monotonic() + seconds
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            assert result, "the condition never held"
            return result
        await asyncio.sleep(0.1)


class Stream:
    """Everything one ccxt.pro ``watch_*`` call returns, gathered in the background."""

    def __init__(self, call: Callable[[], Awaitable[Any]]) -> None:
        self.results: list[Any] = []
        self.task = asyncio.get_running_loop().create_task(self.pump(call))

    async def pump(self, call: Callable[[], Awaitable[Any]]) -> None:
        while True:
            self.results.append(await call())

    def items(self) -> list[dict[str, Any]]:
        return [item for result in self.results for item in result]

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def price(ex: Any, value: float) -> float:
    return float(ex.price_to_precision(BTC, value))


async def near_stop(ex: Any, fake: FakeExchange, side: str, sign_: int) -> dict[str, Any]:
    """A stop-market order 0.02 % off the last price (the price moves on meanwhile: one
    that would trigger at once is refused, and placed again)."""
    for _ in range(5):
        last = fake.snapshot(BTC).trade.price
        trigger = price(ex, last * (1 + sign_ * 0.0002))
        try:
            return await ex.create_order(
                BTC, "market", side, 0.01, params={"triggerPrice": trigger}
            )
        except ccxt.InvalidOrder:
            continue
    raise AssertionError("the price kept running past the stop")


# -- environment and signing ----------------------------------------------------------------


async def test_demo_is_the_sandbox_and_requests_are_signed(monkeypatch: pytest.MonkeyPatch) -> None:
    async with venue(monkeypatch) as (fake, ex):
        with pytest.raises(KeelError, match="no demo trading"):
            build_exchange(VenueConfig(**fake.venue_entry("kf"), demo=True))
        balance = await ex.fetch_balance()
        assert balance["USD"]["free"] == balance["USD"]["total"] == 1_000_000.0
        wrong = build_exchange(
            VenueConfig(**fake.venue_entry("kf")), {"apiKey": KEY, "secret": "d3Jvbmc="}
        )
        with pytest.raises(ccxt.AuthenticationError) as error:
            await wrong.fetch_open_orders()
        assert "authenticationError" in str(error.value) and TEST_SECRET not in str(error.value)
        with pytest.raises(ccxt.ExchangeError, match="Failed to subscribe to authenticated feed"):
            await asyncio.wait_for(wrong.watch_my_trades(), 5)
        await wrong.close()
        # Kraken's own recipe with a Nonce (ccxt sends none): sha256(postData+nonce+path)
        query, nonce = "symbol=PF_XBTUSD", "1700000000000"
        authent = sign(TEST_SECRET, query + nonce + "/api/v3/cancelallorders")
        headers = {"APIKey": KEY, "Authent": authent, "Nonce": nonce}
        url = f"{fake.http_url}/derivatives/api/v3/cancelallorders?{query}"
        async with aiohttp.ClientSession() as session, session.post(url, headers=headers) as r:
            body = await r.json()
        assert body["result"] == "success" and body["cancelStatus"]["status"] == "noOrdersToCancel"
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, headers=headers | {"Nonce": "1"}) as r,
        ):
            assert (r.status, (await r.json())["error"]) == (401, "authenticationError")


# -- order types ----------------------------------------------------------------------------


async def test_market_limit_post_only_and_ioc(monkeypatch: pytest.MonkeyPatch) -> None:
    async with venue(monkeypatch) as (fake, ex):
        market = await ex.create_order(BTC, "market", "buy", 0.01, params={"clientOrderId": "m-1"})
        assert (market["status"], market["filled"], market["clientOrderId"]) == (
            "closed",
            0.01,
            "m-1",
        )
        (trade,) = market["trades"]
        (fill,) = fake.account.fills()
        assert trade["price"] == market["average"] == fill.price
        mine = await ex.fetch_my_trades()
        assert [(t["id"], t["order"], t["amount"], t["takerOrMaker"]) for t in mine] == [
            (trade["id"], market["id"], 0.01, "taker")
        ]
        assert mine[0]["info"]["cliOrdId"] == "m-1" and mine[0]["info"]["fee_currency"] == "USD"
        (position,) = await ex.fetch_positions()
        assert (position["side"], position["contracts"], position["entryPrice"]) == (
            "long",
            0.01,
            fill.price,
        )
        bid = (await ex.fetch_ticker(BTC))["bid"]
        rest = await ex.create_order(
            BTC, "limit", "buy", 0.02, price(ex, bid * 0.95), {"clientOrderId": "l-1"}
        )
        assert (rest["status"], rest["filled"], rest["type"]) == ("open", 0.0, "limit")
        (listed,) = await ex.fetch_open_orders()
        assert (listed["id"], listed["clientOrderId"], listed["amount"]) == (
            rest["id"],
            "l-1",
            0.02,
        )
        assert (
            listed["info"]["limitPrice"] == price(ex, bid * 0.95)
            and listed["info"]["status"] == "untouched"
        )
        fetched = await ex.fetch_order(rest["id"])
        assert (fetched["status"], fetched["clientOrderId"]) == ("open", "l-1")
        (by_client,) = await ex.fetch_orders(params={"orderIds": [], "cliOrdIds": ["l-1"]})
        assert by_client["id"] == rest["id"] and by_client["info"]["status"] == "ENTERED_BOOK"
        ask = (await ex.fetch_ticker(BTC))["ask"]
        with pytest.raises(ccxt.OrderImmediatelyFillable, match="postWouldExecute"):
            await ex.create_order(
                BTC, "limit", "buy", 0.01, price(ex, ask * 1.01), {"postOnly": True}
            )
        with pytest.raises(ccxt.OrderNotFillable, match="iocWouldNotExecute"):
            await ex.create_order(
                BTC, "limit", "buy", 0.01, price(ex, bid * 0.9), {"timeInForce": "ioc"}
            )
        ioc = await ex.create_order(
            BTC, "limit", "sell", 0.01, price(ex, bid * 0.99), {"timeInForce": "ioc"}
        )
        assert (ioc["status"], ioc["filled"]) == ("closed", 0.01)
        assert [p["contracts"] for p in await ex.fetch_positions()] == []


async def test_stops_take_profit_and_a_trigger(monkeypatch: pytest.MonkeyPatch) -> None:
    async with venue(monkeypatch) as (fake, ex):
        await ex.create_order(BTC, "market", "buy", 0.03)
        last = (await ex.fetch_ticker(BTC))["last"]
        stop = await ex.create_order(
            BTC,
            "market",
            "sell",
            0.01,
            params={
                "triggerPrice": price(ex, last * 0.8),
                "reduceOnly": True,
                "clientOrderId": "s-1",
            },
        )
        assert (stop["status"], stop["triggerPrice"], stop["reduceOnly"]) == (
            "open",
            price(ex, last * 0.8),
            True,
        )
        assert (
            stop["clientOrderId"] == "s-1"
            and stop["info"]["orderEvents"][0]["orderTrigger"]["type"] == "ioc"
        )
        stop_limit = await ex.create_order(
            BTC,
            "limit",
            "sell",
            0.01,
            price(ex, last * 0.79),
            {"stopPrice": price(ex, last * 0.8), "triggerSignal": "mark"},
        )
        assert stop_limit["triggerPrice"] == price(ex, last * 0.8)
        profit = await ex.create_order(
            BTC, "market", "sell", 0.01, params={"takeProfitPrice": price(ex, last * 1.2)}
        )
        assert profit["reduceOnly"] is True
        rows = {o["id"]: o["info"] for o in await ex.fetch_open_orders()}
        assert rows[stop["id"]]["orderType"] == "stop" and "limitPrice" not in rows[stop["id"]]
        assert rows[stop_limit["id"]]["triggerSignal"] == "mark"
        assert rows[stop_limit["id"]]["limitPrice"] == price(ex, last * 0.79)
        assert rows[profit["id"]]["orderType"] == "take_profit"
        profit_limit = await ex.create_order(
            BTC,
            "limit",
            "sell",
            0.01,
            price(ex, last * 1.25),
            {"takeProfitPrice": price(ex, last * 1.2)},
        )
        row = (await ex.fetch_open_orders())[-1]["info"]
        assert row["order_id"] == profit_limit["id"] and row["orderType"] == "take_profit"
        assert (row["limitPrice"], fake.account.open_orders()[-1].type) == (
            price(ex, last * 1.25),
            "take_profit_limit",
        )
        with pytest.raises(ccxt.InvalidOrder, match="invalidPrice"):  # would trigger at once
            await ex.create_order(
                BTC, "market", "sell", 0.01, params={"triggerPrice": price(ex, last * 1.1)}
            )
        fake.account.faults.reject_next_conditional = ["insufficient_balance"]
        entry = await ex.create_order(BTC, "market", "buy", 0.01)  # not conditional: passes
        with pytest.raises(ccxt.InsufficientFunds, match="insufficientAvailableFunds"):
            await ex.create_order(
                BTC, "market", "sell", 0.01, params={"triggerPrice": price(ex, last * 0.7)}
            )
        last_stored = fake.account.orders()[-1]  # the rejected stop is not kept
        assert (last_stored.type, last_stored.status) == ("market", "filled") and entry["id"]
        # a stop on each side just off the last price: the next move triggers one of them
        up = await near_stop(ex, fake, "buy", 1)
        down = await near_stop(ex, fake, "sell", -1)

        async def triggered() -> list[dict[str, Any]]:
            return [t for t in await ex.fetch_my_trades() if t["order"] in (up["id"], down["id"])]

        (fill,) = await eventually(triggered)
        still = [o["id"] for o in await ex.fetch_open_orders()]
        assert fill["order"] not in still and len({up["id"], down["id"]} & set(still)) == 1


# -- partial fills, amend, cancel -----------------------------------------------------------


async def test_partial_fills_amend_and_cancel(monkeypatch: pytest.MonkeyPatch) -> None:
    async with venue(monkeypatch) as (fake, ex):
        fake.account.faults.fill_parts = 3
        order = await ex.create_order(BTC, "market", "buy", 0.03, params={"clientOrderId": "p-1"})
        assert (order["status"], order["filled"]) == ("open", 0.01)  # the first of three trades

        async def all_three() -> list[dict[str, Any]]:
            trades = [t for t in await ex.fetch_my_trades() if t["order"] == order["id"]]
            return trades if len(trades) == 3 else []

        trades = await eventually(all_three)
        assert len({t["id"] for t in trades}) == 3 and sum(
            t["amount"] for t in trades
        ) == pytest.approx(0.03)
        fake.account.faults.fill_parts = 1
        bid = (await ex.fetch_ticker(BTC))["bid"]
        rest = await ex.create_order(
            BTC, "limit", "buy", 0.02, price(ex, bid * 0.9), {"clientOrderId": "a-1"}
        )
        edited = await ex.edit_order(rest["id"], BTC, "limit", "buy", 0.05, price(ex, bid * 0.85))
        assert (edited["id"], edited["status"], edited["amount"]) == (rest["id"], "open", 0.05)
        (listed,) = await ex.fetch_open_orders()
        assert (listed["amount"], listed["info"]["limitPrice"]) == (0.05, price(ex, bid * 0.85))
        with pytest.raises(ccxt.InvalidOrder, match="invalidPrice"):  # not on the tick
            await ex.edit_order(rest["id"], BTC, "limit", "buy", 0.05, bid * 0.8 + 0.01234)
        cancelled = ex.parse_order(
            (await ex.privatePostCancelorder({"cliOrdId": "a-1"}))["cancelStatus"]
        )
        assert (cancelled["id"], cancelled["status"], cancelled["clientOrderId"]) == (
            rest["id"],
            "canceled",
            "a-1",
        )
        assert await ex.fetch_open_orders() == []
        with pytest.raises(ccxt.OrderNotFound, match="notFound"):
            await ex.cancel_order(rest["id"])
        with pytest.raises(ccxt.OrderNotFound, match="notFound"):  # ccxt sends order_id=None
            await ex.cancel_order(None, BTC, {"cliOrdId": "a-1"})
        with pytest.raises(ccxt.OrderNotFound, match="filled"):
            await ex.cancel_order(order["id"])
        with pytest.raises(ccxt.OrderNotFound, match="orderForEditNotFound"):
            await ex.edit_order(rest["id"], BTC, "limit", "buy", 0.01, price(ex, bid * 0.8))
        again = await ex.create_order(
            BTC, "limit", "buy", 0.01, price(ex, bid * 0.9), {"clientOrderId": "a-2"}
        )
        killed = await ex.cancel_all_orders(BTC)
        assert [o["id"] for o in killed] == [again["id"]]


# -- errors ---------------------------------------------------------------------------------


async def test_refusals_and_the_status_window(monkeypatch: pytest.MonkeyPatch) -> None:
    async with venue(monkeypatch) as (fake, ex):
        with pytest.raises(ccxt.InsufficientFunds, match="insufficientAvailableFunds"):
            await ex.create_order(BTC, "market", "buy", 500.0)
        with pytest.raises(ccxt.ExchangeError, match="wouldNotReducePosition"):
            await ex.create_order(BTC, "market", "sell", 0.01, params={"reduceOnly": True})
        raw = await ex.privatePostSendorder(
            {"symbol": "PF_XBTUSD", "side": "buy", "size": "0.0005", "orderType": "mkt"}
        )
        assert raw["sendStatus"]["status"] == "invalidSize"
        bid = (await ex.fetch_ticker(BTC))["bid"]
        await ex.create_order(
            BTC, "limit", "buy", 0.01, price(ex, bid * 0.9), {"clientOrderId": "d-1"}
        )
        with pytest.raises(ccxt.DuplicateOrderId, match="clientOrderIdAlreadyExist"):
            await ex.create_order(
                BTC, "limit", "buy", 0.01, price(ex, bid * 0.9), {"clientOrderId": "d-1"}
            )
        fake.account.faults.reject_next = ["insufficient_balance"]
        with pytest.raises(ccxt.InsufficientFunds):
            await ex.create_order(BTC, "market", "buy", 0.01)
        fake.skin.orders.native_rejects = ["wouldCauseLiquidation"]
        refused = await ex.create_order(BTC, "market", "buy", 0.01)  # ccxt does not raise on it
        assert (refused["status"], refused["id"]) == ("rejected", None)
        assert refused["info"]["status"] == "wouldCauseLiquidation"
        with pytest.raises(ccxt.OrderNotFound):
            await ex.fetch_order("00000000-0000-0000-0000-000000000000")
        fake.skin.orders.status_window_s = 60.0  # Kraken's 5 s is 83 ms of wall time at 60x
        done = await ex.create_order(BTC, "market", "buy", 0.01, params={"clientOrderId": "w-1"})
        assert (await ex.fetch_order(done["id"]))["status"] == "closed"
        await fake.clock.sleep(fake.skin.orders.status_window_s + 1)
        with pytest.raises(ccxt.OrderNotFound):  # a finished order is forgotten after the window
            await ex.fetch_order(done["id"])
        assert [t["order"] for t in await ex.fetch_my_trades()] == [done["id"]]
        closed = await ex.fetch_closed_orders(BTC)
        assert [(o["id"], o["status"]) for o in closed] == [(done["id"], "closed")]


# -- private stream -------------------------------------------------------------------------


async def test_private_stream_through_ccxt_pro(monkeypatch: pytest.MonkeyPatch) -> None:
    async with venue(monkeypatch) as (fake, ex):
        bid = (await ex.fetch_ticker(BTC))["bid"]
        resting = await ex.create_order(
            BTC, "limit", "buy", 0.01, price(ex, bid * 0.9), {"clientOrderId": "r-1"}
        )
        snapshot = await asyncio.wait_for(ex.watch_orders(), 5)
        assert [o["id"] for o in snapshot] == [resting["id"]]
        orders, trades = Stream(ex.watch_orders), Stream(ex.watch_my_trades)
        balances = Stream(lambda: ex.watch_balance({"account": "flex_futures"}))
        positions = Stream(ex.watch_positions)
        await eventually(
            lambda: asyncio.sleep(
                0, bool(trades.results and balances.results and positions.results)
            )
        )
        market = await ex.create_order(BTC, "market", "buy", 0.02, params={"clientOrderId": "r-2"})
        await ex.cancel_order(resting["id"])
        await eventually(
            lambda: asyncio.sleep(0, any(t["order"] == market["id"] for t in trades.items()))
        )
        (fill,) = [t for t in trades.items() if t["order"] == market["id"]]
        (rest_fill,) = [t for t in await ex.fetch_my_trades() if t["order"] == market["id"]]
        assert (fill["id"], fill["amount"], fill["price"]) == (
            rest_fill["id"],
            0.02,
            rest_fill["price"],
        )
        assert fill["info"]["cli_ord_id"] == "r-2" and fill["info"]["fill_type"] == "taker"
        assert fill["fee"]["currency"] == "USD" and fill["fee"]["cost"] > 0

        # ccxt keeps a cancel (``is_cancel`` without the order) only in its cache, and reads
        # a ``full_fill`` frame as one more trade of the order (status stays None)
        def cached(order_id: str) -> dict[str, Any]:
            return {o["id"]: o for o in ex.orders}.get(order_id, {})

        await eventually(
            lambda: asyncio.sleep(0, cached(resting["id"]).get("status") == "canceled")
        )
        assert cached(resting["id"])["info"]["reason"] == "cancelled_by_user"
        assert any(o["id"] == market["id"] and o["filled"] == 0.02 for o in orders.items())
        await eventually(
            lambda: asyncio.sleep(
                0, any(p["contracts"] == 0.02 for r in positions.results for p in r)
            )
        )
        assert balances.results[-1]["USD"]["total"] == pytest.approx(
            fake.account.balances["USD"].total
        )
        for stream in (orders, trades, balances, positions):
            await stream.stop()


# -- faults the gateway relies on -----------------------------------------------------------


async def test_hang_delay_drop_hidden_and_silent(monkeypatch: pytest.MonkeyPatch) -> None:
    async with venue(monkeypatch, timeout_ms=1000) as (fake, ex):
        faults = fake.account.faults
        fake.skin.orders.status_window_s = 3600.0  # finished orders stay visible by client id
        faults.hang_next = 1
        with pytest.raises(ccxt.NetworkError):  # acted on, never answered
            await ex.create_order(BTC, "market", "buy", 0.01, params={"clientOrderId": "h-1"})
        (found,) = await ex.fetch_orders(params={"orderIds": [], "cliOrdIds": ["h-1"]})
        assert found["status"] == "closed" and found["filled"] == 0.01
        faults.ack_delay_s = 2.0
        with pytest.raises(ccxt.RequestTimeout):
            await ex.create_order(BTC, "market", "buy", 0.01, params={"clientOrderId": "h-2"})
        faults.ack_delay_s = 0.0
        assert [
            o["id"] for o in await ex.fetch_orders(params={"orderIds": [], "cliOrdIds": ["h-2"]})
        ]
        faults.drop_next = 1
        with pytest.raises(ccxt.NetworkError):  # never acted on
            await ex.create_order(BTC, "market", "buy", 0.01, params={"clientOrderId": "h-3"})
        assert await ex.fetch_orders(params={"orderIds": [], "cliOrdIds": ["h-3"]}) == []
        faults.hidden_s = 30.0  # half a wall second at 60x
        bid = (await ex.fetch_ticker(BTC))["bid"]
        late = await ex.create_order(
            BTC, "limit", "buy", 0.01, price(ex, bid * 0.9), {"clientOrderId": "h-4"}
        )
        assert await ex.fetch_open_orders() == []
        assert (await eventually(ex.fetch_open_orders))[0]["id"] == late["id"]
        faults.hidden_s = 0.0
        trades = Stream(ex.watch_my_trades)
        await eventually(lambda: asyncio.sleep(0, bool(trades.results)))
        faults.silent_user_stream = True
        quiet = await ex.create_order(BTC, "market", "buy", 0.01)
        fake.account.faults.fill_silently(fake.account.open_orders()[0].order_id)
        faults.silent_user_stream = False
        loud = await ex.create_order(BTC, "market", "buy", 0.01)
        await eventually(
            lambda: asyncio.sleep(0, any(t["order"] == loud["id"] for t in trades.items()))
        )
        assert not [t for t in trades.items() if t["order"] in (quiet["id"], late["id"])]
        rest_orders = {t["order"] for t in await ex.fetch_my_trades()}
        assert {quiet["id"], late["id"], loud["id"]} <= rest_orders
        await trades.stop()
        # the venue's state changed behind the client's back
        bid = (await ex.fetch_ticker(BTC))["bid"]
        outsider = faults.external(BTC, "sell", "limit", 0.01, price(ex, bid * 1.2))
        stop = await ex.create_order(
            BTC, "market", "sell", 0.01, params={"triggerPrice": price(ex, bid * 0.8)}
        )
        assert stop["clientOrderId"] is None  # placed without one
        faults.vanish(fake.skin.orders.lookup(stop["id"]) or 0)
        listed = {o["id"]: o["clientOrderId"] for o in await ex.fetch_open_orders()}
        assert outsider.client_id in listed.values() and stop["id"] not in listed
        faults.set_position(ETH, -0.5)
        eth = {p["symbol"]: p for p in await ex.fetch_positions()}[ETH]
        assert (eth["side"], eth["contracts"]) == ("short", 0.5)
