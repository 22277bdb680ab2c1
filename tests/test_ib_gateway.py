"""The venue gateway on Interactive Brokers: the real gateway, IbExchange over the real
ib_async client, the TWS fake and a real nats-server.

Exchange time runs ten times faster than the wall (``ScaledClock``) from Tuesday 2024-03-05
10:00 New York time, so AAPL is in its regular session and ES trades. What the gateway
stores is read back from the log and compared with what the fake's broker holds.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import ccxt
import msgspec
import pytest
from nats.js.api import DeliverPolicy

from contracts.venue_events import Discrepancy, VenueAnswer, VenueOrder
from eventstore.bus import Bus
from eventstore.errors import KeelError
from eventstore.log_reader import read_caught_up
from eventstore.server import EmbeddedServer
from services.venues.config import VenueConfig
from services.venues.gateway.config import GatewayConfig
from services.venues.gateway.worker import Gateway
from services.venues.ib.exchange import IbExchange
from services.venues.ib.wiring import ib_exchange
from tests.conftest import keel
from tests.fakes.clock import ScaledClock
from tests.fakes.tws import TwsFake
from tests.fakes.tws.orders import Working
from tests.gateway_harness import GatewayHarness

NS = 1_000_000_000
START = int(dt.datetime(2024, 3, 5, 15, 0, tzinfo=dt.UTC).timestamp()) * NS
RATE = 10.0
VENUE = "ibkr"
ACCOUNT = "DU1234567"
CONFIG = GatewayConfig(
    poll_after_s=20.0,
    poll_every_s=1.0,
    reconcile_every_s=300.0,
    unknown_queries=3,
    unknown_within_s=6.0,
    unknown_then="fail",
)
MARKETS: dict[str, dict[str, object]] = {
    "AAPL": {"kind": "stock", "base": "AAPL", "quote": "USD"},
    "ES": {"kind": "future", "base": "ES", "quote": "USD", "settle": "USD", "contract_size": 50.0},
}
"""What the order manager stamps on each leg from the fake's ``Instrument`` events."""


def venue_entry(port: int, account: str = ACCOUNT, mode: str = "demo") -> dict[str, object]:
    return {
        "name": VENUE,
        "kind": "ib",
        "mode": mode,
        "ib": {
            "port": port,
            "client_id": 7,
            "account": account,
            "connect_timeout_s": 3,
            "contracts": [
                {"type": "stock", "symbol": "AAPL", "primary_exchange": "NASDAQ"},
                {
                    "type": "future",
                    "root": "ES",
                    "exchange": "CME",
                    "expiry": "front",
                    "roll_days": 8,
                },
            ],
        },
    }


class Harness(GatewayHarness):
    def __init__(self, bus: Bus, tws: TwsFake, work: Path) -> None:
        venue = msgspec.convert(venue_entry(tws.port), VenueConfig)
        super().__init__(bus, venue, tws.clock, work)
        self.tws = tws

    async def start(self, venue: VenueConfig | None = None) -> Gateway:
        return await self._run(
            Gateway(
                self.bus,
                venue or self.venue,
                CONFIG,
                self.clock,
                work_dir=self.work,
                metrics_port=None,
            )
        )

    @property
    def exchange(self) -> IbExchange:
        assert self.gateway is not None and isinstance(self.gateway.exchange, IbExchange)
        return self.gateway.exchange

    async def send(self, symbol: str = "AAPL", **fields: object) -> VenueOrder:
        return await self._send(symbol, 10, fields, MARKETS[symbol])

    async def fills(self, vcid: str) -> list[VenueAnswer]:
        return [a for a in await self.answers(vcid) if a.kind == "fill"]

    async def filled(self, vcid: str, qty: float, timeout: float = 20.0) -> list[VenueAnswer]:
        deadline = time.monotonic() + timeout
        while sum(a.fill_qty for a in await self.fills(vcid)) < qty:
            if time.monotonic() > deadline:
                raise AssertionError(f"{vcid} not filled: {await self.fills(vcid)}")
            await asyncio.sleep(0.05)
        return await self.fills(vcid)

    def placed(self, vcid: str) -> list[Working]:
        """The fake broker's orders carrying this client id (duplicates would show here)."""
        return [o for o in self.tws.broker.orders.values() if o.ticket.order_ref == vcid]

    def price(self, symbol: str = "AAPL") -> float:
        conid = self.exchange.contracts[symbol].conId
        return self.tws.price(self.tws.catalogue.by_conid[conid])

    def position(self, symbol: str) -> float:
        held = self.tws.broker.positions.get(self.exchange.contracts[symbol].conId)
        return held.qty if held else 0.0


@pytest.fixture
async def harness(bus: Bus, tmp_path: Path) -> AsyncIterator[Harness]:
    async with TwsFake(ScaledClock(START, RATE)) as tws:
        h = Harness(bus, tws, tmp_path / "work")
        try:
            yield h
        finally:
            if h.task is not None and not h.task.done():
                await h.stop(hard=True)


async def until(check: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_partial_fills_stop_cancel_and_positions(harness: Harness) -> None:
    await harness.start()
    harness.tws.broker.max_fill = 40
    order = await harness.send(qty=100)
    vcid = order.venue_client_id
    accepted = await harness.answer(vcid, lambda a: a.kind == "accepted", "the acknowledgement")
    fills = await harness.filled(vcid, 100)
    executions = [e for e in harness.tws.broker.executions if e.order_ref == vcid]
    assert sorted(a.trade_id for a in fills) == sorted(e.exec_id for e in executions)
    assert sorted(a.fill_qty for a in fills) == [20.0, 40.0, 40.0]
    assert {a.venue_order_id for a in fills} == {accepted.venue_order_id}
    assert sorted(a.fee for a in fills) == [0.0, 0.0, 1.0]  # IBKR Pro: 1.00 minimum per order
    assert {a.fee_currency for a in fills} == {"USD"}
    for a in fills:
        (e,) = [e for e in executions if e.exec_id == a.trade_id]
        assert a.fill_price == pytest.approx(e.price)
    harness.tws.broker.max_fill = None

    # A sell stop above the market triggers at once: the exchange fills it.
    stop_price = round(harness.price() * 1.02, 2)
    stop = await harness.send(side="sell", qty=30, order_type="stop", stop_price=stop_price)
    await harness.filled(stop.venue_client_id, 30)
    (working,) = harness.placed(stop.venue_client_id)
    assert working.ticket.order_type == "STP" and working.ticket.aux_price == stop_price

    # A resting limit, canceled.
    low = round(harness.price() * 0.5, 2)
    rest = await harness.send(qty=5, order_type="limit", limit_price=low)
    await harness.answer(rest.venue_client_id, lambda a: a.kind == "accepted", "resting")
    await harness.send(
        action="cancel",
        client_order_id=rest.client_order_id,
        venue_client_id=rest.venue_client_id,
        qty=5,
        order_type="limit",
        limit_price=low,
    )
    gone = await harness.answer(rest.venue_client_id, lambda a: a.kind == "canceled", "cancel")
    assert gone.source in ("cancel", "stream")
    assert harness.placed(rest.venue_client_id)[0].status == "Cancelled"

    # A future: one contract at the front month's price, in contracts.
    es = await harness.send(symbol="ES", qty=2)
    es_fills = await harness.filled(es.venue_client_id, 2)
    assert sum(a.fee for a in es_fills) == pytest.approx(4.5)

    assert harness.position("AAPL") == 70.0 and harness.position("ES") == 2.0
    rows = await harness.exchange.fetch_positions(["AAPL", "ES"])
    assert {r["symbol"]: r["contracts"] * (1 if r["side"] == "long" else -1) for r in rows} == {
        "AAPL": 70.0,
        "ES": 2.0,
    }
    assert harness.gateway is not None
    assert harness.gateway.journal.position("AAPL") == 70.0
    assert harness.gateway.journal.position("ES") == 2.0
    assert all(
        len(harness.placed(o)) == 1 for o in (vcid, stop.venue_client_id, es.venue_client_id)
    )
    await harness.stop()


async def test_rejection_201_keeps_ibs_reason(harness: Harness) -> None:
    await harness.start()
    harness.tws.faults.reject_next_order()
    order = await harness.send(qty=10)
    refused = await harness.answer(order.venue_client_id, lambda a: a.kind == "rejected", "201")
    assert refused.reason.startswith("InsufficientFunds 201: Order rejected - reason:YOUR ORDER"), (
        refused.reason
    )
    too_big = await harness.send(symbol="ES", qty=1000)
    refused = await harness.answer(too_big.venue_client_id, lambda a: a.kind == "rejected", "201")
    assert "INITIAL MARGIN" in refused.reason
    assert not await harness.fills(order.venue_client_id)
    await harness.stop()


async def test_fills_during_a_link_loss_are_recovered_once(harness: Harness) -> None:
    gateway = await harness.start()
    low = round(harness.price() * 0.5, 2)
    order = await harness.send(qty=10, order_type="limit", limit_price=low)
    vcid = order.venue_client_id
    await harness.answer(vcid, lambda a: a.kind == "accepted", "resting")
    (working,) = harness.placed(vcid)
    harness.tws.faults.lose_link()
    await until(lambda: not harness.exchange.connection.ready, "1100 seen")
    missed = harness.tws.faults.fill_away(7, working.ticket.order_id, 4, low)
    await asyncio.sleep(0.3)
    assert not await harness.fills(vcid)  # nobody heard of it
    harness.tws.faults.restore_link(data_lost=False)
    (recovered,) = await harness.filled(vcid, 4)
    assert (recovered.trade_id, recovered.fill_qty, recovered.fee) == (missed.exec_id, 4.0, 1.0)
    assert recovered.source == "reconcile"  # asked for by the restore, not heard live
    later = harness.tws.faults.fill_away(7, working.ticket.order_id, 6, low)
    # ...this one the stream does not hear either: the next poll or reconciliation finds it.
    fills = await harness.filled(vcid, 10, timeout=30)
    assert sorted(a.trade_id for a in fills) == sorted([missed.exec_id, later.exec_id])
    await gateway.reconciler.run_once()
    assert len(await harness.fills(vcid)) == 2  # each execution applied once
    assert gateway.journal.position("AAPL") == harness.position("AAPL") == 10.0
    await harness.stop()


async def test_daily_restart_keeps_working_orders_without_duplicates(harness: Harness) -> None:
    gateway = await harness.start()
    low = round(harness.price() * 0.5, 2)
    order = await harness.send(qty=10, order_type="limit", limit_price=low)
    vcid = order.venue_client_id
    accepted = await harness.answer(vcid, lambda a: a.kind == "accepted", "resting")
    generation = harness.exchange.connection.generation
    await harness.tws.faults.restart(down_s=30)
    await until(
        lambda: (
            harness.exchange.connection.ready
            and harness.exchange.connection.generation > generation
        ),
        "reconnected after the restart",
    )
    (working,) = harness.placed(vcid)
    assert working.status == "Submitted"
    open_orders = await harness.exchange.fetch_open_orders("AAPL")
    assert [(o["clientOrderId"], o["id"]) for o in open_orders] == [(vcid, accepted.venue_order_id)]
    after = await harness.send(qty=3)  # trading goes on after the restart
    await harness.filled(after.venue_client_id, 3)
    harness.tws.broker.execute(working, 10, low, harness.clock.now_ns())
    (done,) = await harness.filled(vcid, 10)
    (execution,) = [e for e in harness.tws.broker.executions if e.order_ref == vcid]
    assert (done.trade_id, done.fill_qty) == (execution.exec_id, 10.0)
    found = await read_caught_up(harness.bus, "VENUE", f"venue.recon.{VENUE}", DeliverPolicy.ALL)
    kinds = {s.event.kind for s in found if isinstance(s.event, Discrepancy)}
    assert not kinds & {"missing_order", "external_order", "position_mismatch"}, kinds
    assert len(harness.placed(vcid)) == 1
    assert gateway.journal.position("AAPL") == harness.position("AAPL") == 13.0
    await harness.stop()


async def test_wrong_account_stops_the_gateway_with_one_line(harness: Harness) -> None:
    venue = msgspec.convert(venue_entry(harness.tws.port, "DU7654321"), VenueConfig)
    with pytest.raises(KeelError) as raised:
        await harness.start(venue)
    text = str(raised.value)
    assert "\n" not in text
    assert "account DU7654321 is not served by this IB session (it serves DU1234567)" in text


def test_demo_without_an_account_is_refused_in_one_line(
    nats_server: EmbeddedServer, tmp_path: Path
) -> None:
    config = tmp_path / "keel.toml"
    config.write_text(
        '[[venues]]\nname = "ibkr"\nkind = "ib"\nmode = "demo"\n\n[venues.ib]\nport = 4002\n\n'
        '[[venues.ib.contracts]]\ntype = "stock"\nsymbol = "AAPL"\nprimary_exchange = "NASDAQ"\n'
    )
    done = keel(nats_server.url, "run", "gateway", "--venue", "ibkr", "--config", str(config))
    said = (done.stdout + done.stderr).strip()
    assert done.returncode != 0
    assert "Traceback" not in said
    assert 'mode = "demo" sends orders to IB: ib.account must name the account' in said


async def test_exchange_queries_raise_when_ib_cannot_answer(harness: Harness) -> None:
    """Never an empty answer from a session that is down, lost its link or dropped: a
    ccxt NetworkError, which the gateway reads as unknown; a refused cancel is no cancel."""
    tws = harness.tws
    exchange = ib_exchange(harness.venue, tws.clock)
    await exchange.load_markets()
    placed = await exchange.create_order("AAPL", "market", "buy", 5, None, {"clientOrderId": "q1"})
    assert placed["clientOrderId"] == "q1" and placed["id"]
    await until(lambda: tws.broker.positions, "the fill")
    with pytest.raises(ccxt.OrderNotFound):  # 10148: filled, cannot be canceled
        await exchange.cancel_order(placed["id"], "AAPL", {"clientOrderId": "q1"})
    (done,) = await exchange.fetch_closed_orders("AAPL")
    assert (done["status"], done["filled"], done["clientOrderId"]) == ("closed", 5.0, "q1")
    with pytest.raises(ccxt.DuplicateOrderId):
        await exchange.create_order("AAPL", "market", "buy", 5, None, {"clientOrderId": "q1"})
    tws.faults.lose_link()
    await until(lambda: not exchange.connection.ready, "1100")
    queries = (
        exchange.fetch_open_orders,
        exchange.fetch_closed_orders,
        exchange.fetch_my_trades,
        exchange.fetch_positions,
        exchange.fetch_balance,
    )
    for query in queries:
        with pytest.raises(ccxt.NetworkError):
            await query()
    with pytest.raises(ccxt.NetworkError):
        await exchange.create_order("AAPL", "market", "buy", 1, None, {"clientOrderId": "q2"})
    tws.faults.restore_link(data_lost=True)
    await until(lambda: exchange.connection.ready, "1101")
    assert [p["contracts"] for p in await exchange.fetch_positions()] == [5.0]
    generation = exchange.connection.generation
    tws.faults.drop()  # the query goes out on a socket that is closing
    with pytest.raises(ccxt.NetworkError):
        await exchange.fetch_positions()
    await until(
        lambda: exchange.connection.ready and exchange.connection.generation > generation,
        "reconnected",
    )
    (trade,) = await exchange.fetch_my_trades("AAPL")
    assert (trade["amount"], trade["fee"]) == (5.0, {"cost": 1.0, "currency": "USD"})
    await exchange.close()


async def test_a_new_order_ib_refuses_with_a_warning_code_is_rejected(harness: Harness) -> None:
    """434 is a warning to ib_async (a modification that fails leaves the order live), but
    a new order it answers is refused: rejected with IB's words, not left open; so is a
    price off the tick (110)."""
    exchange = ib_exchange(harness.venue, harness.tws.clock)
    await exchange.load_markets()
    with pytest.raises(ccxt.InvalidOrder, match=r"434.*The order size cannot be zero"):
        await exchange.create_order("AAPL", "market", "buy", 0, None, {"clientOrderId": "w1"})
    with pytest.raises(ccxt.InvalidOrder, match=r"110.*minimum price variation"):
        await exchange.create_order("AAPL", "limit", "buy", 1, 100.001, {"clientOrderId": "w2"})
    await exchange.close()
