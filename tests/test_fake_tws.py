"""The TWS API fake, driven by the real ib_async client pointed at it by host, port and id.

The fake's exchange clock starts on Tuesday 2024-03-05 10:00 New York time (stocks in their
regular session, ES and EUR.USD trading) and runs 60x, so a 5-second bar lasts 83 ms.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import tomllib
from collections.abc import AsyncIterator, Callable

import msgspec
import pytest
from ib_async import (
    IB,
    ContFuture,
    Contract,
    ExecutionFilter,
    Forex,
    Future,
    LimitOrder,
    MarketOrder,
    Stock,
    StopLimitOrder,
    StopOrder,
)

from services.venues.config import VenueConfig
from tests.fakes.clock import ScaledClock
from tests.fakes.tws import TwsFake
from tests.fakes.tws import messages as m
from tests.fakes.tws.__main__ import venue_toml
from tests.fakes.tws.faults import IN_USE, PACING
from tests.fakes.tws.wire import UNSET_DOUBLE, UNSET_INTEGER, frame, split, text

NS = 1_000_000_000
START = int(dt.datetime(2024, 3, 5, 15, 0, tzinfo=dt.UTC).timestamp()) * NS
AAPL = Stock("AAPL", "SMART", "USD")


@pytest.fixture
async def tws(caplog: pytest.LogCaptureFixture) -> AsyncIterator[TwsFake]:
    """The fake; afterwards, ib_async's decoder must not have failed on any message."""
    async with TwsFake(ScaledClock(START, 60.0)) as fake:
        yield fake
    failures = [r.getMessage() for r in caplog.records if r.name == "ib_async.Decoder"]
    assert failures == []


async def until(check: Callable[[], object], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def connect(fake: TwsFake, client_id: int = 1) -> tuple[IB, list[tuple[int, int, str]]]:
    ib = IB()
    errors: list[tuple[int, int, str]] = []
    ib.errorEvent += lambda req_id, code, msg, contract: errors.append((req_id, code, msg))
    await ib.connectAsync(
        "127.0.0.1", fake.port, clientId=client_id, timeout=5, raiseSyncErrors=True
    )
    return ib, errors


async def qualified(ib: IB, contract: Contract) -> Contract:
    (found,) = await ib.qualifyContractsAsync(contract)
    assert isinstance(found, Contract)
    return found


def test_field_conventions() -> None:
    assert [text(v) for v in (None, True, False, UNSET_DOUBLE, UNSET_INTEGER, 50.0, 0.25, 7)] == [
        "", "1", "0", "", "", "50", "0.25", "7",
    ]  # fmt: skip
    encoded = frame([4, 2, -1, 2104, "ok"])
    assert int.from_bytes(encoded[:4], "big") == len(encoded) - 4
    assert split(encoded[4:]) == ["4", "2", "-1", "2104", "ok"]


async def test_connect_handshake_and_startup_requests(tws: TwsFake) -> None:
    ib, errors = await connect(tws)
    assert ib.client.serverVersion() == m.SERVER_VERSION
    assert ib.managedAccounts() == ["DU1234567"]
    assert ib.client._reqIdSeq >= 1
    assert {code for _, code, _ in errors} == {2104, 2106, 2158}
    values = {v.tag: v.value for v in ib.accountValues() if v.currency in ("USD", "")}
    assert values["AccountCode"] == "DU1234567"
    assert float(values["NetLiquidation"]) == 1_000_000.0
    summary = {v.tag: v.value for v in await ib.accountSummaryAsync()}
    assert float(summary["AvailableFunds"]) == 1_000_000.0
    now = await ib.reqCurrentTimeAsync()
    assert abs(now.timestamp() * NS - tws.clock.now_ns()) < 120 * NS
    ib.disconnect()


async def test_qualify_stocks_future_contfut_and_fx(tws: TwsFake) -> None:
    ib, _ = await connect(tws)
    aapl, brk, es, front, eur = await ib.qualifyContractsAsync(
        AAPL,
        Stock("BRK B", "SMART", "USD"),
        Future("ES", "202406", "CME"),
        ContFuture("ES", "CME"),
        Forex("EURUSD"),
    )
    assert (aapl.conId, aapl.primaryExchange) == (265598, "NASDAQ")
    assert (brk.localSymbol, brk.primaryExchange) == ("BRK B", "NYSE")
    assert (es.localSymbol, es.multiplier, es.lastTradeDateOrContractMonth) == (
        "ESM4",
        "50",
        "20240621",
    )
    assert front.secType == "CONTFUT" and front.lastTradeDateOrContractMonth == "20240315"
    assert (eur.localSymbol, eur.exchange) == ("EUR.USD", "IDEALPRO")
    (stock,) = await ib.reqContractDetailsAsync(AAPL)
    assert (stock.minTick, stock.timeZoneId, stock.longName) == (0.01, "US/Eastern", "APPLE INC")
    assert stock.liquidHours.startswith("20240305:0930-20240305:1600;")
    assert "20240309:CLOSED" in stock.tradingHours
    futures = await ib.reqContractDetailsAsync(Future("ES", exchange="CME"))
    assert len(futures) == 4 and {d.minTick for d in futures} == {0.25}
    assert futures[0].timeZoneId == "US/Central" and futures[0].lastTradeTime == "08:30"
    assert futures[0].tradingHours.startswith("20240305:1700-20240306:1600;")
    (fx,) = await ib.reqContractDetailsAsync(eur)
    assert fx.minTick == 0.00005
    assert await ib.reqContractDetailsAsync(Stock("NOPE", "SMART", "USD")) == []
    ib.disconnect()


async def test_historical_bars_and_keep_up_to_date(tws: TwsFake) -> None:
    ib, _ = await connect(tws)
    aapl = await qualified(ib, AAPL)
    bars = await ib.reqHistoricalDataAsync(aapl, "", "1800 S", "1 min", "TRADES", True)
    assert 29 <= len(bars) <= 31
    first = bars[0]
    assert first.date == dt.datetime(2024, 3, 5, 9, 30, tzinfo=first.date.tzinfo)
    assert all(b.low <= min(b.open, b.close) <= max(b.open, b.close) <= b.high for b in bars)
    daily = await ib.reqHistoricalDataAsync(aapl, "", "10 D", "1 day", "TRADES", True)
    assert all(isinstance(b.date, dt.date) and b.date.weekday() < 5 for b in daily)
    live = await ib.reqHistoricalDataAsync(
        aapl, "", "600 S", "1 min", "TRADES", True, keepUpToDate=True
    )
    count = len(live)
    new_bars: list[bool] = []
    live.updateEvent += lambda bars, has_new: new_bars.append(has_new)
    await until(lambda: True in new_bars and len(new_bars) >= 3)
    assert len(live) > count and live[-1].date > live[-2].date
    ib.cancelHistoricalData(live)
    ib.disconnect()


async def test_realtime_five_second_bars(tws: TwsFake) -> None:
    ib, _ = await connect(tws)
    es = await qualified(ib, ContFuture("ES", "CME"))
    bars = ib.reqRealTimeBars(es, 5, "TRADES", False)
    await until(lambda: len(bars) >= 3)
    assert (bars[1].time - bars[0].time).total_seconds() == 5
    assert all(b.open_ % 0.25 == 0 and b.close % 0.25 == 0 for b in bars)
    ib.cancelRealTimeBars(bars)
    ib.disconnect()


async def test_partial_fills_then_filled_with_commission_per_execution(tws: TwsFake) -> None:
    ib, _ = await connect(tws)
    aapl = await qualified(ib, AAPL)
    tws.broker.max_fill = 40
    statuses: list[tuple[str, float]] = []
    trade = ib.placeOrder(aapl, MarketOrder("BUY", 100, orderRef="keel-1"))
    trade.statusEvent += lambda t: statuses.append((t.orderStatus.status, t.orderStatus.filled))
    await until(lambda: trade.orderStatus.status == "Filled" and len(trade.fills) == 3)
    await until(lambda: all(f.commissionReport.execId for f in trade.fills))
    assert [f.execution.shares for f in trade.fills] == [40, 40, 20]
    assert ("Submitted", 40.0) in statuses and ("Filled", 100.0) in statuses
    assert {f.execution.orderRef for f in trade.fills} == {"keel-1"}
    assert len({f.execution.execId for f in trade.fills}) == 3
    assert [f.commissionReport.commission for f in trade.fills] == [1.0, 0.0, 0.0]
    assert [p.position for p in ib.positions()] == [100.0]
    ib.disconnect()


async def test_rejection_201_and_cancel_and_modify(tws: TwsFake) -> None:
    ib, errors = await connect(tws)
    aapl = await qualified(ib, AAPL)
    big = ib.placeOrder(aapl, MarketOrder("BUY", 100_000))
    await until(lambda: big.orderStatus.status == "Cancelled")
    code, message = next((c, t) for r, c, t in errors if r == big.order.orderId)
    assert code == 201 and "EQUITY WITH LOAN VALUE" in message
    tws.faults.reject_next_order()
    small = ib.placeOrder(aapl, MarketOrder("BUY", 1))
    await until(lambda: small.orderStatus.status == "Cancelled")
    assert not small.fills

    price = tws.price(tws.catalogue.by_conid[aapl.conId])
    resting = ib.placeOrder(aapl, LimitOrder("BUY", 5, round(price * 0.5, 2)))
    await until(lambda: resting.orderStatus.status == "Submitted")
    ib.cancelOrder(resting.order)
    await until(lambda: resting.orderStatus.status == "Cancelled")
    assert any(c == 202 for r, c, _ in errors if r == resting.order.orderId)

    order = LimitOrder("BUY", 5, round(price * 0.5, 2))
    moved = ib.placeOrder(aapl, order)
    await until(lambda: moved.orderStatus.status == "Submitted")
    order.lmtPrice = round(price * 1.5, 2)
    ib.placeOrder(aapl, order)
    await until(lambda: moved.orderStatus.status == "Filled")
    assert moved.fills[0].execution.price <= order.lmtPrice
    ib.client.placeOrder(order.orderId, aapl, order)
    await until(lambda: any(c == 104 for r, c, _ in errors if r == order.orderId))

    ib.client.placeOrder(big.order.orderId - 1, aapl, MarketOrder("BUY", 1))
    await until(lambda: (big.order.orderId - 1, 103, "Duplicate order id") in errors)
    ib.client.placeOrder(resting.order.orderId, aapl, resting.order)
    await until(lambda: (resting.order.orderId, 103, "Duplicate order id") in errors)
    ib.disconnect()


async def test_order_layouts_read_back_field_by_field(tws: TwsFake) -> None:
    ib, _ = await connect(tws, client_id=1)
    watcher, _ = await connect(tws, client_id=2)
    aapl = await qualified(ib, AAPL)
    price = tws.price(tws.catalogue.by_conid[aapl.conId])
    order = StopLimitOrder("SELL", 3, round(price * 0.4, 2), round(price * 0.5, 2))
    order.orderRef, order.ocaGroup, order.ocaType, order.tif = "keel-7", "grp", 2, "GTC"
    trade = ib.placeOrder(aapl, order)
    await until(lambda: trade.orderStatus.status == "Submitted")
    (seen,) = await watcher.reqAllOpenOrdersAsync()
    o = seen.order
    assert (o.orderId, o.clientId, o.permId) == (order.orderId, 1, trade.orderStatus.permId)
    assert (o.action, o.totalQuantity, o.orderType, o.tif) == ("SELL", 3.0, "STP LMT", "GTC")
    assert (o.lmtPrice, o.auxPrice) == (order.lmtPrice, order.auxPrice)
    assert (o.orderRef, o.ocaGroup, o.ocaType, o.parentId) == ("keel-7", "grp", 2, 0)
    assert seen.orderStatus.status == "Submitted" and seen.contract.conId == aapl.conId
    assert await watcher.reqOpenOrdersAsync() == []
    ib.cancelOrder(order)
    await until(lambda: trade.orderStatus.status == "Cancelled")
    (done,) = await watcher.reqCompletedOrdersAsync(False)
    assert (done.order.orderRef, done.order.ocaType, done.order.permId) == ("keel-7", 2, o.permId)
    assert done.orderStatus.status == "Cancelled"
    assert done.order.filledQuantity == 0
    watcher.disconnect()
    ib.disconnect()


async def test_bracket_children_wait_for_parent_and_cancel_each_other(tws: TwsFake) -> None:
    ib, _ = await connect(tws)
    es = await qualified(ib, Future("ES", "202406", "CME"))
    price = tws.price(tws.catalogue.by_conid[es.conId])
    parent, take, stop = ib.bracketOrder("BUY", 2, price + 250, price + 400, price - 400)
    trades = [ib.placeOrder(es, o) for o in (parent, take, stop)]
    await until(lambda: trades[0].orderStatus.status == "Filled")
    await until(
        lambda: (
            trades[1].orderStatus.status == "Submitted"
            and trades[2].orderStatus.status == "Submitted"
        )
    )
    assert trades[1].orderStatus.parentId == parent.orderId
    take.lmtPrice = price - 200
    ib.placeOrder(es, take)
    await until(lambda: trades[1].orderStatus.status == "Filled")
    await until(lambda: trades[2].orderStatus.status == "Cancelled")
    await until(lambda: not ib.positions())
    assert tws.broker.positions[es.conId].qty == 0
    assert trades[0].fills[0].commissionReport.commission == 4.5

    first = LimitOrder("BUY", 1, price - 300, ocaGroup="oca-1", ocaType=1)
    second = StopOrder("BUY", 1, price - 200, ocaGroup="oca-1", ocaType=1)
    one, two = ib.placeOrder(es, first), ib.placeOrder(es, second)
    await until(
        lambda: two.orderStatus.status == "Filled" and one.orderStatus.status == "Cancelled"
    )
    ib.disconnect()


async def test_fills_while_away_recovered_by_req_executions(tws: TwsFake) -> None:
    ib, _ = await connect(tws, client_id=3)
    aapl = await qualified(ib, AAPL)
    price = tws.price(tws.catalogue.by_conid[aapl.conId])
    trade = ib.placeOrder(aapl, LimitOrder("BUY", 10, round(price * 0.5, 2), orderRef="keel-away"))
    await until(lambda: trade.orderStatus.status == "Submitted")
    ib.disconnect()
    await until(lambda: not tws.sessions)
    missed = tws.faults.fill_away(3, trade.order.orderId, 4, round(price * 0.5, 2))

    ib, _ = await connect(tws, client_id=3)
    assert [(p.contract.conId, p.position) for p in ib.positions()] == [(aapl.conId, 4.0)]
    (open_trade,) = ib.openTrades()
    assert open_trade.order.orderRef == "keel-away" and open_trade.orderStatus.filled == 4
    fills = await ib.reqExecutionsAsync(ExecutionFilter(clientId=3))
    assert [(f.execution.execId, f.execution.orderRef) for f in fills] == [
        (missed.exec_id, "keel-away")
    ]
    (seen,) = [f for f in ib.fills() if f.execution.execId == missed.exec_id]
    assert seen.commissionReport.commission == 1.0
    later = m.tws_time(tws.clock.now_ns() + 60 * NS)
    assert await ib.reqExecutionsAsync(ExecutionFilter(time=later)) == []
    assert await ib.reqExecutionsAsync(ExecutionFilter(clientId=9)) == []
    ib.disconnect()


async def test_daily_restart_keeps_orders_positions_and_executions(tws: TwsFake) -> None:
    ib, _ = await connect(tws)
    aapl = await qualified(ib, AAPL)
    price = tws.price(tws.catalogue.by_conid[aapl.conId])
    filled = ib.placeOrder(aapl, MarketOrder("BUY", 7))
    resting = ib.placeOrder(aapl, LimitOrder("SELL", 7, round(price * 2, 2)))
    await until(
        lambda: filled.orderStatus.status == "Filled" and resting.orderStatus.status == "Submitted"
    )
    lost = asyncio.Event()
    ib.disconnectedEvent += lost.set
    restart = asyncio.create_task(tws.faults.restart(down_s=120))
    await asyncio.wait_for(lost.wait(), 5)
    with pytest.raises(ConnectionRefusedError):
        await IB().connectAsync("127.0.0.1", tws.port, clientId=1, timeout=2)
    await restart
    ib, errors = await connect(tws)
    assert [p.position for p in ib.positions()] == [7.0]
    assert [t.order.orderId for t in ib.openTrades()] == [resting.order.orderId]
    fills = await ib.reqExecutionsAsync()
    assert [f.execution.execId for f in fills] == [f.execution.execId for f in filled.fills]
    assert {code for _, code, _ in errors} == {2104, 2106, 2158}
    ib.disconnect()


async def test_pacing_violation_162(tws: TwsFake) -> None:
    tws.pace_same_s = 3600  # wide: a loaded machine must not let the fast clock run past it
    ib, errors = await connect(tws)
    aapl = await qualified(ib, AAPL)
    first = await ib.reqHistoricalDataAsync(aapl, "", "300 S", "1 min", "TRADES", False)
    again = await ib.reqHistoricalDataAsync(aapl, "", "300 S", "1 min", "TRADES", False)
    assert first and not again
    assert (again.reqId, 162, PACING) in errors
    tws.faults.pace_next_historical()
    other = await ib.reqHistoricalDataAsync(aapl, "", "600 S", "5 mins", "MIDPOINT", False)
    assert not other and any(r == other.reqId and c == 162 for r, c, _ in errors)
    ib.disconnect()


async def test_client_id_in_use_326(tws: TwsFake) -> None:
    ib, _ = await connect(tws, client_id=5)
    second = IB()
    codes: list[tuple[int, str]] = []
    second.errorEvent += lambda req_id, code, msg, contract: codes.append((code, msg))
    with pytest.raises((TimeoutError, ConnectionError)):
        await second.connectAsync("127.0.0.1", tws.port, clientId=5, timeout=1)
    assert codes == [(326, IN_USE)]
    ib.disconnect()
    await until(lambda: not tws.sessions)
    tws.faults.hold_client_id(5)
    with pytest.raises((TimeoutError, ConnectionError)):
        await IB().connectAsync("127.0.0.1", tws.port, clientId=5, timeout=1)
    tws.faults.release_client_id(5)
    again, _ = await connect(tws, client_id=5)
    again.disconnect()


async def test_link_loss_1100_and_restore_1101_1102(tws: TwsFake) -> None:
    ib, errors = await connect(tws)
    eur = await qualified(ib, Forex("EURUSD"))
    bars = ib.reqRealTimeBars(eur, 5, "MIDPOINT", False)
    await until(lambda: len(bars) >= 1)
    tws.faults.lose_link()
    await until(lambda: any(c == 1100 for _, c, _ in errors))
    trade = ib.placeOrder(eur, MarketOrder("BUY", 20_000))
    await asyncio.sleep(0.3)
    assert trade.orderStatus.status == "PendingSubmit"
    tws.faults.restore_link(data_lost=False)
    await until(lambda: trade.orderStatus.status == "Filled")
    assert trade.fills[0].commissionReport.commission == 2.0
    count = len(bars)
    await until(lambda: len(bars) > count)

    price = tws.price(tws.catalogue.by_conid[eur.conId])
    resting = ib.placeOrder(eur, LimitOrder("SELL", 20_000, round(price * 1.2, 4)))
    await until(lambda: resting.orderStatus.status == "Submitted")
    tws.faults.lose_link()
    missed = tws.faults.fill_away(1, resting.order.orderId)
    tws.faults.restore_link(data_lost=False)
    await until(lambda: sum(c == 1102 for _, c, _ in errors) == 2)
    assert resting.orderStatus.status == "Submitted" and not resting.fills
    fills = await ib.reqExecutionsAsync(ExecutionFilter(side="SELL"))
    assert [f.execution.execId for f in fills] == [missed.exec_id]
    assert [f.execution.execId for f in resting.fills] == [missed.exec_id]
    assert [(p.contract.conId, p.position) for p in ib.positions()] == [(eur.conId, 20_000.0)]

    tws.faults.lose_link()
    tws.faults.restore_link(data_lost=True)
    await until(lambda: any(c == 1101 for _, c, _ in errors))
    assert (
        -1,
        1102,
        "Connectivity between IB and Trader Workstation has been restored - data maintained.",
    ) in errors
    assert not any(tws.sessions[1].streams)
    ib.disconnect()


async def test_drop_every_connection(tws: TwsFake) -> None:
    first, _ = await connect(tws, client_id=1)
    second, _ = await connect(tws, client_id=2)
    gone: list[int] = []
    first.disconnectedEvent += lambda: gone.append(1)
    second.disconnectedEvent += lambda: gone.append(2)
    tws.faults.drop()
    await until(lambda: sorted(gone) == [1, 2])
    back, _ = await connect(tws, client_id=1)
    assert back.isConnected()
    back.disconnect()


def test_served_by_hand_entry_is_a_valid_venue() -> None:
    entry = tomllib.loads(venue_toml("127.0.0.1", 4002, "DU1234567"))["venues"][0]
    venue = msgspec.convert(entry, VenueConfig)
    assert venue.ib is not None and (venue.ib.port, venue.ib.account) == (4002, "DU1234567")
