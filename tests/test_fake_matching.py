"""The fakes' exchange-neutral account and matching engine, driven directly (no ccxt): prices
are scripted per symbol and exchange time is set by hand, so every case is exact."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.fakes.clock import ScaledClock
from tests.fakes.core import NS, Candle, FakeExchange, PricePath, SymbolSpec
from tests.fakes.matching import Account, FakeFill, FakeOrder, NoAnswer, OrderError

T0 = 1_767_225_600 * NS
SPOT = SymbolSpec("BTC/USDT", "BTC", "USDT", "", "spot", 0.1, 0.001, 5.0, 1.0, 100.0)
PERP = SymbolSpec("BTC/USDT:USDT", "BTC", "USDT", "USDT", "perpetual", 0.1, 0.001, 5.0, 1.0, 100.0)


class ScriptedPath(PricePath):
    """Every candle of a symbol is flat at the level the test last set."""

    def __init__(self) -> None:
        super().__init__()
        self.level: dict[str, float] = {}

    def candle(self, symbol: str, open_ns: int) -> Candle:
        price = self.level.get(symbol, self._spec(symbol).price)
        return Candle(open_ns, price, price, price, price, 10.0, 10)


class HandClock:
    def __init__(self) -> None:
        self.now = T0

    def now_ns(self) -> int:
        return self.now

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0)

    def wall_seconds(self, seconds: float) -> float:
        return seconds


class OrderSkin:
    """The smallest skin: one REST route that places an order and answers through the gate."""

    exchange_ids = ("binance",)
    ws_paths = ("/ws",)

    def __init__(self, fake: FakeExchange, exchange_id: str) -> None:
        self.fake = fake

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/order", self.order)]

    async def order(self, request: web.Request) -> web.Response:
        account = self.fake.account
        try:
            order = account.place(SPOT.symbol, "buy", "market", 0.1)
        except OrderError as error:
            await account.answer_gate("place")
            return web.json_response({"error": error.code}, status=400)
        await account.answer_gate("place")
        return web.json_response({"id": order.order_id, "status": order.status})


class Venue:
    def __init__(self, balances: dict[str, float] | None = None) -> None:
        self.path = ScriptedPath()
        self.clock = HandClock()
        self.fake = FakeExchange(OrderSkin, [SPOT, PERP], self.path, self.clock, balances=balances)
        self.account: Account = self.fake.account
        self.events: list[tuple[FakeOrder, FakeFill | None]] = []
        self.account.on_update(lambda order, fill: self.events.append((order, fill)))

    def price(self, value: float, symbol: str = SPOT.symbol) -> None:
        self.path.level[symbol] = value

    def tick(self, seconds: float = 15.0) -> None:
        self.clock.now += int(seconds * NS)
        self.account.match(self.clock.now)


@pytest.fixture
def venue() -> Venue:
    return Venue({"USDT": 10_000.0, "BTC": 5.0})


def free(venue: Venue, asset: str) -> float:
    return round(venue.account.balances[asset].free, 9)


def used(venue: Venue, asset: str) -> float:
    return round(venue.account.balances[asset].used, 9)


def test_spot_market_orders_fill_at_the_touch_with_the_fee_in_the_asset_received(
    venue: Venue,
) -> None:
    buy = venue.account.place(SPOT.symbol, "buy", "market", 1.0, client_id="a")
    assert (buy.status, buy.filled, buy.avg_price) == ("filled", 1.0, 100.0)  # the ask
    assert (free(venue, "USDT"), free(venue, "BTC")) == (9_900.0, 5.999)
    sell = venue.account.place(SPOT.symbol, "sell", "market", 2.0)
    assert sell.avg_price == 99.9  # the bid, one tick under
    assert free(venue, "USDT") == round(9_900.0 + 199.8 * 0.999, 9)
    assert free(venue, "BTC") == 3.999
    fills = venue.account.fills(SPOT.symbol)
    assert [(f.fee_currency, f.maker) for f in fills] == [("BTC", False), ("USDT", False)]
    assert fills[0].fee == pytest.approx(0.001)
    assert fills[0].trade_id != fills[1].trade_id
    assert [(o.status, f is not None) for o, f in venue.events] == [
        ("new", False),
        ("filled", True),
        ("new", False),
        ("filled", True),
    ]


def test_a_resting_limit_locks_its_cost_and_fills_as_maker_at_its_price(venue: Venue) -> None:
    order = venue.account.place(SPOT.symbol, "buy", "limit", 2.0, price=95.0)
    assert order.status == "new"
    assert (free(venue, "USDT"), used(venue, "USDT")) == (9_810.0, 190.0)
    venue.tick()
    assert order.status == "new"
    venue.price(94.0)
    venue.tick()
    assert (order.status, order.avg_price) == ("filled", 95.0)
    fill = venue.account.fills(order_id=order.order_id)[0]
    assert fill.maker and fill.fee == pytest.approx(2.0 * 0.0008)
    assert (free(venue, "USDT"), used(venue, "USDT")) == (9_810.0, 0.0)
    assert free(venue, "BTC") == round(5.0 + 2.0 * (1 - 0.0008), 9)


def test_a_marketable_limit_takes_at_the_touch(venue: Venue) -> None:
    order = venue.account.place(SPOT.symbol, "buy", "limit", 1.0, price=105.0)
    assert (order.status, order.avg_price) == ("filled", 100.0)
    assert not venue.account.fills(order_id=order.order_id)[0].maker
    assert used(venue, "USDT") == 0.0
    assert free(venue, "USDT") == 9_900.0


def test_time_in_force(venue: Venue) -> None:
    ioc = venue.account.place(SPOT.symbol, "buy", "limit", 1.0, price=90.0, tif="IOC")
    assert (ioc.status, ioc.filled) == ("expired", 0.0)
    assert used(venue, "USDT") == 0.0
    venue.account.faults.fill_parts = 3
    fok = venue.account.place(SPOT.symbol, "buy", "limit", 0.3, price=100.0, tif="FOK")
    assert fok.status == "filled"
    assert len(venue.account.fills(order_id=fok.order_id)) == 3
    with pytest.raises(OrderError) as caught:
        venue.account.place(SPOT.symbol, "sell", "limit", 1.0, price=99.9, tif="GTX")
    assert caught.value.code == "post_only_rejected"
    maker = venue.account.place(SPOT.symbol, "sell", "limit", 1.0, price=101.0, tif="GTX")
    assert maker.status == "new"


def test_stops_and_take_profits_trigger_on_the_last_trade(venue: Venue) -> None:
    account = venue.account
    with pytest.raises(OrderError) as caught:
        account.place(SPOT.symbol, "sell", "stop", 1.0, stop_price=101.0)
    assert caught.value.code == "would_trigger_immediately"
    stop = account.place(SPOT.symbol, "sell", "stop", 1.0, stop_price=97.0, algo=True)
    take = account.place(SPOT.symbol, "sell", "take_profit", 1.0, stop_price=104.0)
    stop_limit = account.place(SPOT.symbol, "buy", "stop_limit", 1.0, stop_price=103.0, price=102.0)
    assert [o.order_id for o in account.open_orders(algo=True)] == [stop.order_id]
    assert used(venue, "BTC") == 2.0 and used(venue, "USDT") == 102.0
    venue.price(103.0)
    venue.tick()
    assert stop_limit.triggered and stop_limit.status == "new"  # ask 103 > limit 102: rests
    venue.price(101.5)
    venue.tick()
    assert (stop_limit.status, stop_limit.avg_price) == ("filled", 102.0)
    assert account.fills(order_id=stop_limit.order_id)[0].maker
    venue.price(96.0)
    venue.tick()
    assert (stop.status, stop.triggered, stop.avg_price) == ("filled", True, 95.9)
    assert take.status == "new" and not take.triggered
    venue.price(104.5)
    venue.tick()
    assert (take.status, take.avg_price) == ("filled", 104.4)
    triggered = [o.order_id for o, fill in venue.events if o.triggered and fill is None]
    assert triggered == [stop_limit.order_id, stop.order_id, take.order_id]


def test_fill_parts_split_a_fill_over_successive_ticks(venue: Venue) -> None:
    venue.account.faults.fill_parts = 3
    order = venue.account.place(SPOT.symbol, "buy", "market", 1.0, client_id="parts")
    assert (order.status, order.filled) == ("partially_filled", 0.333)
    venue.price(101.0)
    venue.tick()
    assert (order.status, order.filled) == ("partially_filled", 0.666)
    venue.tick()
    assert (order.status, order.filled) == ("filled", 1.0)
    fills = venue.account.fills(order_id=order.order_id)
    assert [f.qty for f in fills] == [0.333, 0.333, 0.334]
    assert [f.price for f in fills] == [100.0, 101.0, 101.0]
    assert order.avg_price == pytest.approx((0.333 * 100 + 0.667 * 101) / 1.0)
    assert [o.status for o, _ in venue.events] == [
        "new",
        "partially_filled",
        "partially_filled",
        "filled",
    ]
    assert used(venue, "USDT") == 0.0


def test_filters_and_refusals(venue: Venue) -> None:
    account = venue.account
    cases: list[tuple[str, dict[str, Any]]] = [
        ("lot_size", {"qty": 0.0015}),
        ("lot_size", {"qty": 0.0001}),
        ("tick_size", {"qty": 1.0, "type": "limit", "price": 95.05}),
        ("min_notional", {"qty": 0.04}),
        ("bad_request", {"qty": 1.0, "type": "limit"}),
        ("bad_request", {"qty": 1.0, "type": "stop"}),
        ("bad_request", {"qty": -1.0}),
        ("bad_symbol", {"qty": 1.0, "symbol": "NOPE/USDT"}),
        ("insufficient_balance", {"qty": 101.0}),
        ("insufficient_balance", {"qty": 6.0, "side": "sell"}),
        ("bad_request", {"qty": 1.0, "reduce_only": True}),
    ]
    for code, args in cases:
        symbol = args.pop("symbol", SPOT.symbol)
        side = args.pop("side", "buy")
        kind = args.pop("type", "market")
        qty = args.pop("qty")
        with pytest.raises(OrderError) as caught:
            account.place(symbol, side, kind, qty, **args)
        assert caught.value.code == code, (code, args)
    assert account.orders() == [] and venue.events == []
    account.place(SPOT.symbol, "buy", "limit", 1.0, price=90.0, client_id="same")
    with pytest.raises(OrderError) as caught:
        account.place(SPOT.symbol, "buy", "limit", 1.0, price=91.0, client_id="same")
    assert caught.value.code == "duplicate_client_id"
    account.cancel(client_id="same")
    again = account.place(SPOT.symbol, "buy", "limit", 1.0, price=91.0, client_id="same")
    assert account.find(client_id="same") is again
    with pytest.raises(ValueError):
        OrderError("not_a_code")


def test_cancel_and_amend(venue: Venue) -> None:
    account = venue.account
    order = account.place(SPOT.symbol, "buy", "limit", 1.0, price=90.0, client_id="c1")
    assert account.find(order_id=order.order_id) is order
    assert account.find(order_id=order.order_id, client_id="other") is None
    amended = account.amend(client_id="c1", qty=2.0, price=91.0)
    assert amended is order and (order.qty, order.price) == (2.0, 91.0)
    assert used(venue, "USDT") == 182.0
    with pytest.raises(OrderError) as caught:
        account.amend(order_id=order.order_id, qty=200.0)
    assert caught.value.code == "insufficient_balance"
    assert (order.qty, used(venue, "USDT")) == (2.0, 182.0)
    account.amend(order_id=order.order_id, price=100.0)  # now marketable: takes at once
    assert order.status == "filled" and used(venue, "USDT") == 0.0
    for selector in ({"order_id": order.order_id}, {"client_id": "nobody"}, {}):
        with pytest.raises(OrderError) as caught:
            account.cancel(**selector)
        assert caught.value.code in ("unknown_order", "bad_request")
    resting = account.place(SPOT.symbol, "sell", "limit", 1.0, price=110.0)
    with pytest.raises(OrderError) as caught:
        account.cancel(order_id=resting.order_id, symbol="ETH/USDT")
    assert caught.value.code == "unknown_order"
    assert used(venue, "BTC") == 1.0
    canceled = account.cancel(order_id=resting.order_id, symbol=SPOT.symbol)
    assert canceled.status == "canceled" and used(venue, "BTC") == 0.0
    assert [o.order_id for o in account.orders()] == [order.order_id, resting.order_id]
    assert account.open_orders() == []
    venue.account.faults.fill_parts = 2
    partial = account.place(SPOT.symbol, "buy", "market", 1.0)
    with pytest.raises(OrderError) as caught:
        account.amend(order_id=partial.order_id, qty=0.5)
    assert caught.value.code == "bad_request"


def test_perpetual_positions_margin_and_pnl() -> None:
    venue = Venue({"USDT": 1_000.0})
    account = venue.account
    venue.price(100.0, PERP.symbol)
    account.place(PERP.symbol, "buy", "market", 2.0)
    position = account.positions[PERP.symbol]
    assert (position.qty, position.entry_price) == (2.0, 100.0)
    assert used(venue, "USDT") == 20.0  # 200 notional at 10x
    assert free(venue, "USDT") == round(1_000.0 - 0.2 - 20.0, 9)  # taker fee in USDT
    venue.price(110.0, PERP.symbol)
    account.place(PERP.symbol, "buy", "market", 2.0)
    assert (position.qty, position.entry_price) == (4.0, 105.0)
    account.place(PERP.symbol, "sell", "market", 5.0)  # through flat: 1 short at the bid
    assert (position.qty, position.entry_price) == (-1.0, 109.9)
    assert position.realized_pnl == pytest.approx(4.0 * (109.9 - 105.0))
    assert position.unrealized(100.0) == pytest.approx(9.9)
    fees = sum(f.fee for f in account.fills())
    wallet = account.balances["USDT"].total
    assert wallet == pytest.approx(1_000.0 + position.realized_pnl - fees)
    assert used(venue, "USDT") == pytest.approx(10.99)
    with pytest.raises(OrderError) as caught:
        account.place(PERP.symbol, "buy", "market", 1_000.0)
    assert caught.value.code == "insufficient_balance"
    order = account.place(PERP.symbol, "sell", "limit", 1.0, price=120.0)
    assert used(venue, "USDT") == pytest.approx(10.99 + 12.0)
    account.cancel(order_id=order.order_id)
    assert used(venue, "USDT") == pytest.approx(10.99)


def test_reduce_only_is_refused_trimmed_or_expired() -> None:
    venue = Venue({"USDT": 10_000.0})
    account = venue.account
    with pytest.raises(OrderError) as caught:
        account.place(PERP.symbol, "sell", "market", 1.0, reduce_only=True)
    assert caught.value.code == "reduce_only_rejected"
    account.place(PERP.symbol, "buy", "market", 1.0)
    with pytest.raises(OrderError) as caught:
        account.place(PERP.symbol, "buy", "market", 1.0, reduce_only=True)
    assert caught.value.code == "reduce_only_rejected"
    take = account.place(
        PERP.symbol, "sell", "take_profit", 3.0, stop_price=110.0, reduce_only=True
    )
    stop = account.place(PERP.symbol, "sell", "stop", 1.0, stop_price=90.0, reduce_only=True)
    assert take.qty == 1.0  # trimmed to the position
    assert used(venue, "USDT") == 10.0  # reduce-only orders hold no margin
    venue.price(111.0, PERP.symbol)
    venue.tick(1.0)
    assert take.status == "filled" and account.positions[PERP.symbol].qty == 0.0
    venue.price(89.0, PERP.symbol)
    venue.tick(1.0)
    assert (stop.status, stop.filled) == ("expired", 0.0)
    assert account.open_orders() == []


def test_faults_that_change_the_venue_behind_keels_back(venue: Venue) -> None:
    account, faults = venue.account, venue.account.faults
    faults.reject_next = ["insufficient_balance", "lot_size"]
    for code in ("insufficient_balance", "lot_size"):
        with pytest.raises(OrderError) as caught:
            account.place(SPOT.symbol, "buy", "market", 1.0)
        assert caught.value.code == code
    faults.drop_next = 1
    with pytest.raises(NoAnswer):
        account.place(SPOT.symbol, "buy", "market", 1.0)
    assert account.orders() == [] and free(venue, "USDT") == 10_000.0
    faults.hidden_s = 30.0
    late = account.place(SPOT.symbol, "buy", "limit", 1.0, price=90.0, client_id="late")
    assert account.find(client_id="late") is None and account.open_orders() == []
    assert account.find(client_id="late", include_hidden=True) is late
    venue.tick(31.0)
    assert account.find(client_id="late") is late
    faults.hidden_s = 0.0
    events = len(venue.events)
    faults.silent_user_stream = True
    quiet = account.place(SPOT.symbol, "buy", "market", 1.0)
    faults.silent_user_stream = False
    assert quiet.status == "filled" and len(venue.events) == events
    faults.fill_silently(late.order_id)
    assert (late.status, late.avg_price) == ("filled", 90.0) and len(venue.events) == events
    with pytest.raises(OrderError):
        faults.fill_silently(late.order_id)
    stop = account.place(SPOT.symbol, "sell", "stop", 1.0, stop_price=80.0)
    faults.vanish(stop.order_id)
    assert account.find(order_id=stop.order_id) is None and used(venue, "BTC") == 0.0
    venue.price(70.0)
    venue.tick()
    assert account.fills(order_id=stop.order_id) == []
    faults.set_balance("USDT", 12.5)
    assert free(venue, "USDT") == 12.5
    faults.set_position(PERP.symbol, -3.0)
    assert (account.positions[PERP.symbol].qty, account.positions[PERP.symbol].entry_price) == (
        -3.0,
        100.0,
    )
    other = faults.external(SPOT.symbol, "sell", "limit", 1.0, price=150.0)
    assert other.external and other.client_id.startswith("external-")
    assert account.open_orders(SPOT.symbol) == [other]
    assert [(o.order_id, o.external) for o, _ in venue.events[events:]] == [
        (stop.order_id, False),
        (other.order_id, True),
    ]  # nothing for the vanishing, the silent fill, the balance or the position


async def test_answer_gate_holds_or_swallows_the_answer(venue: Venue) -> None:
    account = venue.account
    account.faults.ack_delay_s = 0.01
    await account.answer_gate("place")
    account.faults.ack_delay_s = 0.0
    account.faults.hang_next = 1
    with pytest.raises(NoAnswer):
        await account.answer_gate("cancel")
    await account.answer_gate("cancel")
    assert account.faults.hang_next == 0


async def test_the_core_matches_every_tick_and_closes_unanswered_requests() -> None:
    path = ScriptedPath()
    clock = ScaledClock(T0, 600.0)
    fake = FakeExchange(OrderSkin, [SPOT], path, clock, updates_per_bar=60)
    assert base64.b64decode(fake.api_secret, validate=True) == b"fake-secret"
    await fake.start()
    try:
        order = fake.account.place(SPOT.symbol, "buy", "limit", 1.0, price=95.0)
        path.level[SPOT.symbol] = 94.0  # nobody subscribed to market data
        for _ in range(200):
            if order.status == "filled":
                break
            await asyncio.sleep(0.02)
        assert (order.status, order.avg_price) == ("filled", 95.0)
        fake.account.faults.hang_next = 1
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ServerDisconnectedError):
                await session.post(f"{fake.http_url}/order")
            async with session.post(f"{fake.http_url}/order") as answer:
                assert (answer.status, (await answer.json())["status"]) == (200, "filled")
        assert [o.side for o in fake.account.orders()] == ["buy", "buy", "buy"]
    finally:
        await fake.stop()


def test_default_balances_are_generous() -> None:
    fake = FakeExchange(OrderSkin, [SPOT, PERP], ScriptedPath(), HandClock())
    assert fake.account.kind == "spot"
    assert fake.account.balances["USDT"].free == 1_000_000.0
    assert fake.account.balances["BTC"].free == 10_000.0


def test_a_triggered_post_only_stop_limit_that_would_take_expires(venue: Venue) -> None:
    order = venue.account.place(
        SPOT.symbol, "buy", "stop_limit", 1.0, stop_price=103.0, price=104.0, tif="GTX"
    )
    venue.price(103.0)
    venue.tick()
    assert (order.triggered, order.status, order.filled) == (True, "expired", 0.0)
    assert used(venue, "USDT") == 0.0


def test_a_failing_update_callback_does_not_stop_the_matching(
    venue: Venue, caplog: pytest.LogCaptureFixture
) -> None:
    order = venue.account.place(SPOT.symbol, "sell", "limit", 1.0, price=101.0)

    def broken(order: FakeOrder, fill: FakeFill | None) -> None:
        raise RuntimeError("a skin bug")

    venue.account.on_update(broken)
    venue.price(102.0)
    venue.tick()
    assert (order.status, order.avg_price) == ("filled", 101.0)
    assert "fake matching" in caplog.text


def test_a_hidden_order_stays_hidden_even_once_filled(venue: Venue) -> None:
    venue.account.faults.hidden_s = 5.0
    order = venue.account.place(SPOT.symbol, "buy", "market", 1.0, client_id="gone-fast")
    assert order.status == "filled"
    assert venue.account.find(order_id=order.order_id) is None
    assert venue.account.orders() == []
    venue.clock.now += 5 * NS
    assert venue.account.find(client_id="gone-fast") is order


def test_an_amended_post_only_that_would_take_is_refused(venue: Venue) -> None:
    order = venue.account.place(SPOT.symbol, "buy", "limit", 1.0, price=95.0, tif="GTX")
    with pytest.raises(OrderError) as caught:
        venue.account.amend(order_id=order.order_id, price=100.0)
    assert caught.value.code == "post_only_rejected"
    assert (order.price, order.status, used(venue, "USDT")) == (95.0, "new", 95.0)


def test_a_late_tick_never_dates_a_fill_before_its_order(venue: Venue) -> None:
    venue.clock.now = T0 + 10 * NS
    order = venue.account.place(SPOT.symbol, "sell", "limit", 1.0, price=101.0)
    venue.price(102.0)
    venue.account.match(T0 + 5 * NS)  # the tick due before the order, run after it
    fill = venue.account.fills(order_id=order.order_id)[0]
    assert fill.ts_ns == order.updated_ns == order.created_ns == T0 + 10 * NS


def test_fees_in_the_quote_on_both_sides_when_the_account_says_so(venue: Venue) -> None:
    account = venue.account
    account.fee_asset = "quote"  # as Kraken spot
    resting = account.place(SPOT.symbol, "buy", "limit", 1.0, price=95.0)
    assert used(venue, "USDT") == round(95.0 * 1.001, 9)  # the cost and the taker fee
    account.cancel(order_id=resting.order_id)
    assert (free(venue, "USDT"), used(venue, "USDT")) == (10_000.0, 0.0)
    account.place(SPOT.symbol, "buy", "market", 1.0)
    assert (free(venue, "USDT"), free(venue, "BTC")) == (round(10_000.0 - 100.0 * 1.001, 9), 6.0)
    account.place(SPOT.symbol, "sell", "market", 1.0)
    assert free(venue, "BTC") == 5.0
    assert free(venue, "USDT") == round(10_000.0 - 100.1 + 99.9 * 0.999, 9)
    fills = account.fills(SPOT.symbol)
    assert [f.fee_currency for f in fills] == ["USDT", "USDT"]
    assert [f.fee for f in fills] == [pytest.approx(0.1), pytest.approx(0.0999)]


def test_a_take_profit_limit_triggers_then_rests_as_a_limit(venue: Venue) -> None:
    account = venue.account
    with pytest.raises(OrderError) as caught:
        account.place(SPOT.symbol, "sell", "take_profit_limit", 1.0, stop_price=99.0, price=99.0)
    assert caught.value.code == "would_trigger_immediately"
    with pytest.raises(OrderError, match="needs a positive price"):
        account.place(SPOT.symbol, "sell", "take_profit_limit", 1.0, stop_price=103.0)
    take = account.place(
        SPOT.symbol, "sell", "take_profit_limit", 1.0, stop_price=103.0, price=105.0
    )
    venue.price(102.0)
    venue.tick()
    assert not take.triggered
    venue.price(103.0)
    venue.tick()
    assert (take.triggered, take.status) == (True, "new")  # bid 102.9 < limit 105: rests
    venue.price(105.5)
    venue.tick()
    assert (take.status, take.avg_price) == ("filled", 105.0)
    assert account.fills(order_id=take.order_id)[0].maker


def test_a_stop_past_its_trigger_is_refused_or_triggered_at_once(venue: Venue) -> None:
    account = venue.account
    with pytest.raises(OrderError) as caught:
        account.place(SPOT.symbol, "sell", "stop", 1.0, stop_price=101.0)
    assert caught.value.code == "would_trigger_immediately" and account.orders() == []
    stop = account.place(SPOT.symbol, "sell", "stop", 1.0, stop_price=101.0, trigger_now="fill")
    assert (stop.triggered, stop.status, stop.avg_price) == (True, "filled", 99.9)
    limit = account.place(
        SPOT.symbol, "buy", "stop_limit", 1.0, stop_price=99.0, price=98.0, trigger_now="fill"
    )
    assert (limit.triggered, limit.status) == (True, "new")  # ask 100 > 98: rests
    later = account.place(SPOT.symbol, "buy", "stop", 1.0, stop_price=104.0)
    with pytest.raises(OrderError, match="trigger immediately"):
        account.amend(order_id=later.order_id, stop_price=99.0)
    account.amend(order_id=later.order_id, stop_price=99.0, trigger_now="fill")
    assert (later.triggered, later.status) == (True, "filled")


def test_a_stop_placement_can_be_rejected_on_purpose(venue: Venue) -> None:
    account = venue.account
    account.faults.reject_next = ["insufficient_balance"]
    with pytest.raises(OrderError) as caught:
        account.place(SPOT.symbol, "sell", "stop", 1.0, stop_price=97.0, algo=True)
    assert caught.value.code == "insufficient_balance" and account.orders() == []
    account.faults.reject_next_conditional = ["bad_request"]
    entry = account.place(SPOT.symbol, "buy", "market", 1.0)
    assert entry.status == "filled"  # not conditional: untouched
    with pytest.raises(OrderError) as caught:
        account.place(SPOT.symbol, "sell", "take_profit_limit", 1.0, stop_price=104.0, price=104.0)
    assert caught.value.code == "bad_request"
    assert account.faults.reject_next_conditional == []
    assert account.place(SPOT.symbol, "sell", "stop", 1.0, stop_price=97.0).status == "new"
    assert [o.type for o in account.orders()] == ["market", "stop"]
