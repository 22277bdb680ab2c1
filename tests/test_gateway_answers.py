"""The gateway's pure parts: ccxt dicts as answers, error classes, each exchange's order
parameters, the leg book's fold and the API-key lock."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from pathlib import Path
from typing import Any

import ccxt
import ccxt.pro
import pytest

from contracts.envelope import Envelope
from contracts.venue_events import VenueOrder
from eventstore.errors import KeelError
from services.runtime.clock import WallClock
from services.venues.ccxt_exchange import Redactor
from services.venues.client_ids import answer_event_id, venue_client_id
from services.venues.gateway.answers import client_id_of, order_answer, trade_answer
from services.venues.gateway.ccxt_orders import OrderCalls, backoff_s, classify, exchange_reason
from services.venues.gateway.config import GatewayConfig
from services.venues.gateway.dealing import Dealer
from services.venues.gateway.legs import LegBook
from services.venues.gateway.lock import KeyLock
from services.venues.gateway.private_stream import PrivateStream
from services.venues.journal import VenueJournal


def leg_order(**fields: Any) -> VenueOrder:
    base: dict[str, Any] = {
        "ts": 1,
        "action": "new",
        "client_order_id": "o1",
        "venue_client_id": venue_client_id("v", "o1", 0),
        "strategy": "s1",
        "venue": "v",
        "symbol": "BTC/USDT",
        "side": "buy",
        "qty": 0.5,
    }
    return VenueOrder(**{**base, **fields})


def test_order_states_become_answers() -> None:
    leg = leg_order()
    cases = {"open": "accepted", "closed": "accepted", "canceled": "canceled", "expired": "expired"}
    for status, kind in cases.items():
        answer = order_answer(
            {"id": 42, "status": status, "filled": "0.2", "timestamp": 1700000000000},
            leg,
            "query",
            5,
        )
        assert (answer.kind, answer.venue_order_id, answer.cum_qty) == (kind, "42", 0.2)
        assert answer.venue_ts == 1700000000000 * 1_000_000 and answer.order_qty == 0.5
    rejected = order_answer(
        {"id": "9", "status": "rejected", "info": {"rejectReason": "X"}}, leg, "stream", 5
    )
    assert rejected.kind == "rejected" and rejected.reason == "X"
    bare = order_answer({"id": "9", "status": None}, leg, "submit", 5)
    assert bare.kind == "accepted"  # an acknowledgement with the id only


def test_trades_become_fills_with_the_venues_numbers() -> None:
    leg = leg_order()
    trade = {
        "id": "t1",
        "order": "42",
        "amount": 0.1,
        "price": 100.5,
        "fee": {"cost": 0.01, "currency": "BNB"},
        "timestamp": 1700000000001,
    }
    fill = trade_answer(trade, leg, "stream", 7)
    assert fill is not None
    assert (fill.trade_id, fill.fill_qty, fill.fill_price, fill.fee, fill.fee_currency) == (
        "t1",
        0.1,
        100.5,
        0.01,
        "BNB",
    )
    polled = trade_answer(trade, leg, "poll", 99)
    assert polled is not None and answer_event_id(polled) == answer_event_id(fill)
    assert trade_answer({**trade, "price": None}, leg, "poll", 1) is None
    assert trade_answer({**trade, "id": None}, leg, "poll", 1) is None
    rebate = trade_answer({**trade, "fee": {"cost": -0.002, "currency": "USD"}}, leg, "poll", 1)
    assert rebate is not None and rebate.fee == -0.002


def test_client_ids_are_read_where_each_exchange_puts_them() -> None:
    assert client_id_of({"clientOrderId": "a"}) == "a"
    assert client_id_of({"info": {"c": "b"}}) == "b"
    assert client_id_of({"info": {"orderLinkId": "c"}}) == "c"
    assert client_id_of({"info": {"cliOrdId": "d"}}) == "d"
    assert client_id_of({"info": {}}) == ""


def test_exceptions_are_classified_never_guessed() -> None:
    assert classify(ccxt.InsufficientFunds("x")) == "rejected"
    assert classify(ccxt.InvalidOrder("x")) == "rejected"
    assert classify(ccxt.OrderNotFound("x")) == "rejected"
    assert classify(ccxt.BadSymbol("x")) == "rejected"
    assert classify(ccxt.AuthenticationError("x")) == "rejected"
    assert classify(ccxt.RequestTimeout("x")) == "unknown"
    assert classify(ccxt.NetworkError("x")) == "unknown"
    assert classify(ccxt.ExchangeNotAvailable("x")) == "unknown"
    assert classify(ccxt.BadResponse("x")) == "unknown"
    assert classify(KeyError("x")) == "unknown"
    assert classify(ccxt.DDoSProtection("x")) == "backoff"
    assert classify(ccxt.RateLimitExceeded("x")) == "backoff"


def test_reasons_are_the_exchanges_words_without_secrets() -> None:
    redactor = Redactor({"secret": "s3cr3t-value"})
    body = 'binance {"code":-2010,"msg":"Account has insufficient balance."} key=s3cr3t-value'
    reason = exchange_reason(ccxt.InsufficientFunds(body), redactor, "binance")
    assert reason == "InsufficientFunds -2010: Account has insufficient balance."
    kraken = exchange_reason(
        ccxt.InsufficientFunds('kraken {"error":["EOrder:Insufficient funds"]}'), redactor
    )
    assert kraken == "InsufficientFunds: EOrder:Insufficient funds"
    plain = exchange_reason(ccxt.RequestTimeout("binance GET /x s3cr3t-value"), redactor, "binance")
    assert plain == "RequestTimeout: GET /x ***"


def test_backoff_is_jittered_and_capped() -> None:
    rng = random.Random(1)
    waits = [backoff_s(a, 5.0, rng) for a in range(12)]
    assert all(0 <= w <= 5.0 for w in waits) and len(set(waits)) == len(waits)


def calls_for(exchange_id: str, contract: bool) -> OrderCalls:
    exchange = getattr(ccxt.pro, exchange_id)()
    exchange.markets = {"BTC/USDT": {"contract": contract}}
    return OrderCalls(exchange, WallClock(), 5.0)


@pytest.mark.parametrize(
    ("exchange_id", "contract", "expected"),
    [
        ("binance", False, {"triggerPrice": 90.0}),
        ("binanceusdm", True, {"triggerPrice": 90.0, "reduceOnly": True}),
        (
            "bybit",
            True,
            {"triggerPrice": 90.0, "triggerDirection": "descending", "reduceOnly": True},
        ),
        ("bybit", False, {"triggerPrice": 90.0}),
        ("kraken", False, {"stopLossPrice": 90.0}),
        ("krakenfutures", True, {"triggerPrice": 90.0, "reduceOnly": True}),
    ],
)
def test_each_exchange_gets_its_own_stop_parameters(
    exchange_id: str, contract: bool, expected: dict[str, Any]
) -> None:
    calls = calls_for(exchange_id, contract)
    stop = leg_order(order_type="stop", stop_price=90.0, side="sell", reduce_only=True)
    params = calls.order_params(stop)
    assert params == {"clientOrderId": stop.venue_client_id, **expected}
    limit = leg_order(order_type="limit", limit_price=95.0, time_in_force="IOC")
    tif = "ioc" if exchange_id == "krakenfutures" else "IOC"  # ccxt knows only "ioc" there
    assert calls.order_params(limit) == {
        "clientOrderId": limit.venue_client_id,
        "timeInForce": tif,
    }
    assert calls.algo(stop) == (exchange_id == "bybit" or exchange_id == "binanceusdm")
    assert not calls.algo(limit)


def test_the_leg_book_knows_what_was_answered() -> None:
    book, journal = LegBook(), VenueJournal("v")
    order = leg_order(order_type="limit", limit_price=95.0)
    envelope = Envelope.root("order-1", 1)
    leg = book.order(order, envelope, 10)
    journal.apply(order)
    assert leg is not None and not book.handled("order-1")
    accepted = order_answer({"id": "42", "status": "open"}, order, "submit", 2)
    book.answer(accepted, Envelope("a1", "order-1", "order-1", 2))
    journal.apply(accepted)
    assert book.handled("order-1") and leg.state == "working" and leg.venue_order_id == "42"
    assert book.of_venue_order("42") is leg and not book.unsettled(journal)
    cancel = Envelope.root("cancel-1", 3)
    book.order(leg_order(action="cancel", order_type="limit", limit_price=95.0), cancel, 11)
    assert book.unsettled(journal) == [leg]
    for trade_id in ("t1", "t1", "t2"):
        fill = trade_answer(
            {"id": trade_id, "order": "42", "amount": 0.25, "price": 95.0}, order, "poll", 4
        )
        assert fill is not None
        book.answer(fill, Envelope(trade_id, "order-1", "order-1", 4))
    assert leg.filled == 0.5 and leg.state == "done" and leg.cancel is None


def test_one_gateway_per_api_key(tmp_path: Path) -> None:
    first = KeyLock(tmp_path, "binance", "key-1", "a")
    first.acquire()
    with pytest.raises(KeelError, match="in use by another gateway") as refused:
        KeyLock(tmp_path, "binance", "key-1", "b").acquire()
    assert "key-1" not in str(refused.value)
    other = KeyLock(tmp_path, "binance", "key-2", "c")
    other.acquire()  # another key: its own lock
    first.release()
    again = KeyLock(tmp_path, "binance", "key-1", "b")
    again.acquire()
    again.release()
    other.release()
    assert "key-1" not in "".join(p.name for p in (tmp_path / "locks").iterdir())


def test_orders_and_trades_find_their_leg_by_either_id() -> None:
    book = LegBook()
    order = leg_order()
    leg = book.order(order, Envelope.root("order-1", 1), 1)
    accepted = order_answer({"id": "42", "status": "open"}, order, "submit", 2)
    book.answer(accepted, Envelope("a1", "order-1", "order-1", 2))
    calls = calls_for("binance", False)
    dealer = Dealer(
        calls, book, _never, WallClock(), Redactor({}), GatewayConfig(), VenueJournal("v")
    )
    assert dealer.leg_of({"clientOrderId": order.venue_client_id}) is leg
    assert dealer.leg_of({"id": "42", "status": "canceled", "amount": 0.5}) is leg
    assert dealer.leg_of({"id": "t9", "order": "42", "amount": 0.5}) is leg
    assert dealer.leg_of({"id": "42", "amount": 0.5}) is None  # a trade whose id is 42
    assert dealer.leg_of({"id": "43", "status": "open"}) is None


async def _never(answer: object, envelope: object) -> bool:
    raise AssertionError("nothing is recorded here")


class FlakyStream:
    """An exchange whose private watches fail ``failures`` times, then answer."""

    id = "binance"

    def __init__(self, failures: int) -> None:
        self.left = {"trades": failures, "orders": failures}

    async def _watch(self, kind: str, item: dict[str, Any]) -> list[dict[str, Any]]:
        await asyncio.sleep(0.001)
        if self.left[kind] > 0:
            self.left[kind] -= 1
            raise ccxt.NetworkError("binance connection closed")
        return [item]

    async def watch_my_trades(self) -> list[dict[str, Any]]:
        return await self._watch("trades", {"id": "t1", "order": "1", "amount": 1.0})

    async def watch_orders(self) -> list[dict[str, Any]]:
        return await self._watch("orders", {"id": "1", "status": "open"})


async def test_a_failing_private_stream_is_reported_then_cleared() -> None:
    health: list[tuple[bool, str]] = []
    got: list[str] = []

    async def on_health(ok: bool, reason: str) -> None:
        health.append((ok, reason))

    async def on_items(items: list[Any]) -> None:
        got.extend(str(i["id"]) for i in items)

    exchange = FlakyStream(failures=4)
    stream = PrivateStream(
        exchange,
        WallClock(),
        Redactor({}),
        on_items,
        on_items,
        0.001,
        on_health,  # type: ignore[arg-type]
    )
    task = asyncio.create_task(stream.run())
    deadline = time.monotonic() + 10
    while not (health and health[-1][0]) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert [ok for ok, _ in health] == [False, True]
    assert "connection closed" in health[0][1] and stream.failures >= 4
    assert stream.last_ns > 0 and "t1" in got and "1" in got


def test_kraken_futures_leaves_a_recent_rest_trade_to_the_stream_that_says_its_fee() -> None:
    """Kraken Futures' REST fills carry ccxt's fee estimate, so a poll leaves a trade younger
    than twice ``poll_after_s`` to the private stream; other exchanges' REST fills say their
    fee and are taken at once."""
    config = GatewayConfig()
    now_ms = time.time_ns() // 1_000_000
    young = {"id": "t1", "timestamp": now_ms - 1_000}
    old = {"id": "t2", "timestamp": now_ms - int(3 * config.poll_after_s * 1000)}

    def dealer(exchange_id: str) -> Dealer:
        calls = calls_for(exchange_id, True)
        return Dealer(
            calls, LegBook(), _never, WallClock(), Redactor({}), config, VenueJournal("v")
        )

    kraken = dealer("krakenfutures")
    assert kraken._fee_to_come(young) and not kraken._fee_to_come(old)
    assert not kraken._fee_to_come({"id": "t3"})  # no time: nothing to wait for
    binance = dealer("binanceusdm")
    assert not binance._fee_to_come(young)
