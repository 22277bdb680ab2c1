"""A protective stop the market triggers while no gateway listens (Binance USDT-M).

There a stop is an algo order (``clientAlgoId``); once triggered it becomes a plain order
with an id of its own, and the account's trades name only that id (``actualOrderId`` links
the two, on the algo order). A gateway killed before it heard the trigger has neither on
its log: the restart's reconciliation must ask the exchange for the algo order and take
the trades as its stop's fills, not as trades of an order Keel did not place (which left
Keel's position off the venue's and halted it: the crash test's "killed while a stop
fills").
"""

from __future__ import annotations

import msgspec
import pytest

from contracts.venue_events import Discrepancy
from tests.fakes.prices import snap
from tests.test_gateway import CONFIG, VENUE, Harness, harness, until

__all__ = ["harness"]  # the fixture, imported to be used here
QUIET = msgspec.structs.replace(CONFIG, reconcile_every_s=3600.0, poll_after_s=3600.0)
"""Only the start's reconciliation runs: the one that meets the triggered stop."""
QTY = 0.02


async def _position(harness: Harness, qty: float) -> bool:
    position = harness.fake.account.positions.get(harness.symbol)
    mine = harness.gateway.journal.position(harness.symbol) if harness.gateway else 0.0
    return position is not None and abs(position.qty - qty) < 1e-9 and abs(mine - qty) < 1e-9


@pytest.mark.parametrize("harness", ["binanceusdm"], indirect=True)
async def test_a_stop_triggered_while_the_gateway_was_down_is_its_own_fill(
    harness: Harness,
) -> None:
    await harness.start(QUIET)
    await harness.send(qty=QTY)
    await until(lambda: _position(harness, QTY), "the entry's fills")
    spec = harness.fake.specs[harness.symbol]
    stop = await harness.send(
        client_order_id="stop1",
        order_type="stop",
        stop_price=snap(harness.fake.snapshot(harness.symbol).bid * 0.5, spec.tick_size),
        side="sell",
        qty=QTY,
        reduce_only=True,
        protective=True,
    )
    vcid = stop.venue_client_id
    await harness.answer(vcid, lambda a: a.kind == "accepted", "the stop")
    await harness.stop(hard=True)  # the gateway dies; then the market triggers its stop
    [placed] = harness.exchange_orders(vcid)
    assert placed.algo
    harness.fake.account.faults.fill_now(placed.order_id)
    [trade] = harness.fake.account.fills(order_id=placed.order_id)

    gateway = await harness.start(QUIET)
    assert gateway.state == "running", "halted at the restart"
    fill = await harness.answer(vcid, lambda a: a.kind == "fill", "the stop's fill")
    assert (fill.source, fill.trade_id) == ("reconcile", str(trade.trade_id))
    assert fill.venue_order_id != str(placed.order_id)  # the triggered order's own id
    assert fill.fill_qty == pytest.approx(QTY)
    assert gateway.journal.position(harness.symbol) == pytest.approx(0.0, abs=1e-12)
    found = await harness.events(Discrepancy, f"venue.recon.{VENUE}")
    after = [(d.kind, d.action, d.trade_id) for d in found if d.action != "baseline"]
    assert after == [("missed_fill", "inferred fill", str(trade.trade_id))]
    assert harness.exchange_orders(vcid) == [placed]  # taken as filled, not placed again
    await harness.stop()
