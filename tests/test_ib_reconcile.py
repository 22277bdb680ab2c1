"""IB positions and balances reconcile (docs/reconciliation.md): the gateway's journal books a
stock as shares held and cash paid, and a future as contracts with its fees in cash, so after
trading both the venue reconciles with the default tolerances; a position changed behind
Keel's back on the TWS fake halts the venue with both numbers, and an adoption lifts it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import msgspec
import pytest
from nats.js.api import DeliverPolicy

from contracts.envelope import Envelope
from contracts.venue_events import Discrepancy, VenueAdoption
from eventstore.log_reader import read_caught_up
from services.venues.gateway.worker import Gateway
from tests.test_ib_gateway import CONFIG, VENUE, Harness, harness, until

__all__ = ["harness"]

FAST = msgspec.structs.replace(CONFIG, reconcile_every_s=2.0)
"""Reconcile every 2 exchange seconds (0.2 s of wall time at the fake's rate)."""


async def recon(h: Harness) -> list[Discrepancy]:
    found = await read_caught_up(h.bus, "VENUE", f"venue.recon.{VENUE}", DeliverPolicy.ALL)
    return [s.event for s in found if isinstance(s.event, Discrepancy)]


async def recorded(h: Harness, check: Callable[[Discrepancy], bool], what: str) -> Discrepancy:
    deadline = time.monotonic() + 30.0
    while True:
        for found in await recon(h):
            if check(found):
                return found
        if time.monotonic() > deadline:
            got = [(d.kind, d.action, d.symbol, d.asset) for d in await recon(h)]
            raise AssertionError(f"timed out waiting for {what}; discrepancies: {got}")
        await asyncio.sleep(0.05)


async def runs(gateway: Gateway, n: int) -> None:
    target = gateway.reconciler.runs + n
    await until(lambda: gateway.reconciler.runs >= target, f"{n} more reconciliations")


async def test_stock_and_future_reconcile_then_a_changed_position_halts_until_adopted(
    harness: Harness,
) -> None:
    h = harness
    gateway = Gateway(h.bus, h.venue, FAST, h.clock, work_dir=h.work, metrics_port=None)
    h.gateway, h.task = gateway, asyncio.create_task(gateway.run())
    await until(gateway.ready.is_set, "the gateway up", 30)
    await recorded(h, lambda d: d.action == "baseline" and d.asset == "USD", "the baseline")
    cash = gateway.journal.balance("USD")
    assert cash == pytest.approx(h.tws.broker.cash)

    aapl = await h.send(qty=10)
    es = await h.send(symbol="ES", qty=1)
    aapl_fills = await h.filled(aapl.venue_client_id, 10)
    es_fills = await h.filled(es.venue_client_id, 1)
    await runs(gateway, 3)
    # Reconciled with the default tolerances: nothing beyond the baseline was found.
    assert {d.action for d in await recon(h)} == {"baseline"}
    assert gateway.state == "running" and not gateway.journal.halted
    journal = gateway.journal
    assert journal.position("AAPL") == 10.0 and journal.position("ES") == 1.0
    assert journal.balance_assets() == ["USD"]  # shares and contracts are positions
    paid = sum(a.fill_qty * a.fill_price + a.fee for a in aapl_fills) + sum(a.fee for a in es_fills)
    assert journal.balance("USD") == pytest.approx(cash - paid)
    assert journal.balance("USD") == pytest.approx(h.tws.broker.cash)

    # Both positions change behind Keel's back: the venue halts on each, with both values.
    for symbol, qty in (("AAPL", 25.0), ("ES", 3.0)):
        h.tws.broker.positions[h.exchange.contracts[symbol].conId].qty = qty
    halts = {}
    for symbol in ("AAPL", "ES"):
        halts[symbol] = await recorded(
            h, lambda d, s=symbol: d.action == "halt" and d.symbol == s, f"the {symbol} halt"
        )
    assert (halts["AAPL"].kind, halts["AAPL"].venue_value, halts["AAPL"].keel_value) == (
        "position_mismatch",
        25.0,
        10.0,
    )
    assert (halts["ES"].kind, halts["ES"].venue_value, halts["ES"].keel_value) == (
        "position_mismatch",
        3.0,
        1.0,
    )
    await until(lambda: gateway.state == "halted", "the venue halted")

    adoption = VenueAdoption(ts=h.clock.now_ns(), venue=VENUE, reason="checked by hand")
    await h.bus.publish(adoption, Envelope.root("adopt-ib", adoption.ts))
    adopted = {
        s: await recorded(h, lambda d, s=s: d.action == "adopted" and d.symbol == s, f"{s} adopted")
        for s in ("AAPL", "ES")
    }
    assert (adopted["AAPL"].venue_value, adopted["ES"].venue_value) == (25.0, 3.0)
    await until(lambda: gateway.state == "running" and not gateway.journal.halted, "lifted")
    assert gateway.journal.position("AAPL") == 25.0 and gateway.journal.position("ES") == 3.0
    await runs(gateway, 3)
    assert gateway.state == "running"

    # Reconciliations that overlap an adoption's (the periodic one, a reconnect's) run one
    # after another: the venue's view is adopted once, not once per run.
    h.tws.broker.positions[h.exchange.contracts["AAPL"].conId].qty = 40.0
    await recorded(h, lambda d: d.action == "halt" and d.venue_value == 40.0, "the second halt")
    again = VenueAdoption(ts=h.clock.now_ns(), venue=VENUE, reason="checked again")
    reconciler = gateway.reconciler
    await asyncio.gather(reconciler.adopt(again), reconciler.run_once(), reconciler.run_once())
    taken = [d for d in await recon(h) if d.action == "adopted" and d.venue_value == 40.0]
    assert len(taken) == 1, taken
    assert gateway.journal.position("AAPL") == 40.0 and not gateway.journal.halted
    await h.stop()
