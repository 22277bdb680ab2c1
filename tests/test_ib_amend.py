"""IB moves a stop in place: the real gateway and IbExchange over the real ib_async client,
the TWS fake and a real nats-server (the harness of ``tests/test_ib_gateway.py``).

A protective stop amended in place is modified at IB (``placeOrder`` with its own orderId):
it keeps its orderId and permId, and the fake holds exactly one working stop for it the
whole time, at the old trigger and then at the new one. A modify IB refuses (104: the order
filled meanwhile) leaves the order as it was and says so.
"""

from __future__ import annotations

import asyncio
import contextlib

import ccxt
import pytest

from services.venues.gateway.config import GatewayConfig, amends_in_place
from services.venues.ib.wiring import ib_exchange
from tests.test_ib_gateway import Harness, harness, until

__all__ = ["harness"]  # the fixture, imported for pytest


def test_ib_amends_in_place_by_default_and_the_setting_overrides() -> None:
    assert amends_in_place("ib", GatewayConfig())
    assert not amends_in_place("ib", GatewayConfig(amend_in_place=False))


async def test_a_stop_moved_in_place_keeps_its_ids_and_is_never_two(harness: Harness) -> None:
    await harness.start()
    bought = await harness.send(qty=10)
    await harness.filled(bought.venue_client_id, 10)
    low = round(harness.price() * 0.9, 2)
    stop = await harness.send(
        client_order_id="b1.sl",
        side="sell",
        qty=10,
        order_type="stop",
        stop_price=low,
        protective=True,
        reduce_only=True,
    )
    vcid = stop.venue_client_id
    accepted = await harness.answer(vcid, lambda a: a.kind == "accepted", "the stop")
    (working,) = harness.placed(vcid)
    order_id, perm_id = working.ticket.order_id, working.perm_id

    seen: list[int] = []

    async def watch() -> None:  # how many working stops the fake holds, all along
        while True:
            seen.append(sum(1 for o in harness.placed(vcid) if o.status == "Submitted"))
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    higher = round(low + 1.0, 2)
    await harness.send(
        action="amend",
        client_order_id="b1.sl",
        venue_client_id=vcid,
        replaces=vcid,
        side="sell",
        qty=10,
        order_type="stop",
        stop_price=higher,
        protective=True,
        reduce_only=True,
    )
    amended = await harness.answer(
        vcid, lambda a: a.source == "amend" and a.kind == "accepted", "the modify"
    )
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    assert seen and set(seen) == {1}, seen  # never zero, never two
    (working,) = harness.placed(vcid)
    assert (working.ticket.order_id, working.perm_id) == (order_id, perm_id)
    assert (working.ticket.aux_price, working.status) == (higher, "Submitted")
    assert amended.venue_order_id == accepted.venue_order_id == str(perm_id)
    (listed,) = [
        o for o in await harness.exchange.fetch_open_orders("AAPL") if o["clientOrderId"] == vcid
    ]
    assert (listed["id"], listed["triggerPrice"]) == (str(perm_id), higher)
    assert harness.position("AAPL") == 10.0  # nothing sold
    await harness.stop()


async def test_a_modify_of_an_order_that_filled_is_refused_and_it_stays_filled(
    harness: Harness,
) -> None:
    """The client has not heard of the fill (the link was down when it happened): IB refuses
    the modify with 104 and the order reads as what it is, filled."""
    tws = harness.tws
    exchange = ib_exchange(harness.venue, tws.clock)
    await exchange.load_markets()
    low = round(tws.price(tws.catalogue.by_conid[exchange.contracts["AAPL"].conId]) * 0.5, 2)
    placed = await exchange.create_order(
        "AAPL", "limit", "buy", 5, low, {"clientOrderId": "m1", "timeInForce": "GTC"}
    )
    assert placed["status"] == "open"
    ((key, working),) = [(k, o) for k, o in tws.broker.orders.items() if o.ticket.order_ref == "m1"]
    tws.faults.fill_away(key[0], key[1], 5, low)
    assert working.status == "Filled"
    with pytest.raises(ccxt.InvalidOrder, match=r"104.*modify a filled order"):
        await exchange.edit_order(None, "AAPL", "limit", "buy", 5, low + 1, {"clientOrderId": "m1"})
    assert working.ticket.lmt_price == low  # IB kept it as it was
    await until(lambda: tws.broker.positions, "the fill booked")
    (done,) = await exchange.fetch_closed_orders("AAPL")
    assert (done["clientOrderId"], done["status"], done["filled"]) == ("m1", "closed", 5.0)
    with pytest.raises(ccxt.OrderNotFound):  # no open order of that id any more
        await exchange.edit_order(None, "AAPL", "limit", "buy", 5, low + 2, {"clientOrderId": "m1"})
    await exchange.close()
