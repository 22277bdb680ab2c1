"""IB's day boundary: ``reqExecutions`` returns only the current day's executions.

IB keeps an account's executions in its trade log of the day: after the midnight of the
account's time zone, ``reqExecutions`` no longer returns the executions before it, whatever
time its filter gives (the TWS fake models this: ``AccountDesk.in_trade_log``). A fill made
while Keel was away, before that midnight, cannot be recovered after it. Keel must not guess
it: the position comparison finds its ledger short of IB's, the venue halts with both values
in its status, and the operator's ``keel reconcile VENUE --adopt --reason`` records the
adjustment and lifts the halt. A protective stop filled so is not placed again; with TWS's
Trade Log showing two days the reconciliation finds the fill itself.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from zoneinfo import ZoneInfo

import msgspec
import pytest
from ib_async import IB, ExecutionFilter
from nats.js.api import DeliverPolicy

from contracts.envelope import Envelope
from contracts.venue_events import VenueAdoption, VenueStatus
from eventstore.bus import Bus
from eventstore.log_reader import read_caught_up
from eventstore.server import EmbeddedServer
from services.venues.gateway.worker import Gateway
from tests.conftest import keel
from tests.fakes.clock import ScaledClock
from tests.fakes.tws.market import TWS_ZONE
from tests.test_ib_gateway import CONFIG, NS, START, VENUE, Harness, harness, until
from tests.test_ib_reconcile import recon, recorded, runs

__all__ = ["harness"]  # the fixture, imported for pytest

FAST = msgspec.structs.replace(CONFIG, reconcile_every_s=2.0)
"""Reconcile every 2 exchange seconds (0.2 s of wall time at the fake's rate)."""
EASTERN = ZoneInfo(TWS_ZONE)


def next_midnight(ns: int) -> int:
    """The next midnight of TWS's (the account's) time zone after ``ns``."""
    day = dt.datetime.fromtimestamp(ns / NS, EASTERN).date() + dt.timedelta(days=1)
    return int(dt.datetime.combine(day, dt.time(), EASTERN).timestamp()) * NS


def jump(clock: ScaledClock, to_ns: int) -> None:
    """Exchange time moves on to ``to_ns`` at once (the night the gateway was away)."""
    clock.start_ns += to_ns - clock.now_ns()


async def start(h: Harness) -> Gateway:
    gateway = Gateway(h.bus, h.venue, FAST, h.clock, work_dir=h.work, metrics_port=None)
    h.gateway, h.task = gateway, asyncio.create_task(gateway.run())
    await until(gateway.ready.is_set, "the gateway up", 30)
    return gateway


async def statuses(bus: Bus) -> list[VenueStatus]:
    found = await read_caught_up(bus, "VENUE", f"venue.status.{VENUE}", DeliverPolicy.ALL)
    return [s.event for s in found if isinstance(s.event, VenueStatus)]


async def test_req_executions_forgets_the_executions_of_earlier_days(harness: Harness) -> None:
    """The fake: an execution of yesterday is in the broker's history and positions, but
    ``reqExecutions`` (any filter) no longer returns it; today's are returned."""
    tws = harness.tws
    await harness.start()
    order = await harness.send(qty=10)
    await harness.filled(order.venue_client_id, 10)
    low = round(harness.price() * 0.5, 2)
    rest = await harness.send(qty=5, order_type="limit", limit_price=low)
    await harness.answer(rest.venue_client_id, lambda a: a.kind == "accepted", "resting")
    await harness.stop()
    (yesterday,) = tws.broker.executions
    ib = IB()
    await ib.connectAsync("127.0.0.1", tws.port, clientId=9, timeout=10)
    try:
        day_one = await ib.reqExecutionsAsync(ExecutionFilter())
        assert [f.execution.execId for f in day_one] == [yesterday.exec_id]
        jump(tws.clock, next_midnight(tws.now()) + 5 * NS)
        assert await ib.reqExecutionsAsync(ExecutionFilter()) == []
        since = dt.datetime.fromtimestamp(START / NS - 3600, dt.UTC).strftime("%Y%m%d-%H:%M:%S")
        assert await ib.reqExecutionsAsync(ExecutionFilter(time=since)) == []
        tws.desk.trade_log_days = 2  # TWS's Trade Log set to show two days
        again = await ib.reqExecutionsAsync(ExecutionFilter())
        assert [f.execution.execId for f in again] == [yesterday.exec_id]
        tws.desk.trade_log_days = 1
        (working,) = harness.placed(rest.venue_client_id)
        today = tws.broker.execute(working, 5.0, low, tws.now())
        found = await ib.reqExecutionsAsync(ExecutionFilter())
        assert [f.execution.execId for f in found] == [today.exec_id]
    finally:
        ib.disconnect()
    assert harness.position("AAPL") == 15.0  # IB's positions keep every day's trades


async def test_a_fill_before_the_boundary_halts_the_venue_until_adopted(
    harness: Harness, nats_server: EmbeddedServer
) -> None:
    h, tws = harness, harness.tws
    gateway = await start(h)
    await recorded(h, lambda d: d.action == "baseline" and d.asset == "USD", "the baseline")
    low = round(h.price() * 0.5, 2)
    order = await h.send(qty=10, order_type="limit", limit_price=low)
    vcid = order.venue_client_id
    await h.answer(vcid, lambda a: a.kind == "accepted", "the resting order")
    (working,) = h.placed(vcid)

    # The gateway goes away; IB fills the order before midnight; the gateway comes back the
    # next day, when reqExecutions no longer returns that execution.
    await h.stop()
    await until(lambda: not tws.sessions, "the session closed")
    away = tws.faults.fill_away(working.ticket.client_id, working.ticket.order_id, price=low)
    midnight = next_midnight(tws.now())
    assert away.time_ns < midnight
    jump(h.clock, midnight + 60 * NS)
    assert away not in tws.desk.in_trade_log()
    gateway = await start(h)

    halt = await recorded(
        h, lambda d: d.action == "halt" and d.kind == "position_mismatch", "the position halt"
    )
    assert (halt.symbol, halt.venue_value, halt.keel_value) == ("AAPL", 10.0, 0.0)
    await until(lambda: gateway.state == "halted", "the venue halted")
    said = await statuses(h.bus)
    halted = [s for s in said if s.state == "halted"]
    assert halted, [(s.state, s.reason) for s in said]
    # The status names every difference it halted on: IB's position first, then the cash
    # the fill moved.
    reason = halted[-1].reason
    assert reason.startswith("AAPL position: venue 10.0, Keel 0.0 (beyond tolerance)"), reason
    assert "; USD balance: venue " in reason, reason
    # Never a guessed fill: Keel has no fill for the order, only IB's position says it traded.
    assert not await h.fills(vcid)
    assert gateway.journal.position("AAPL") == 0.0

    adopted = await asyncio.to_thread(
        keel,
        nats_server.url,
        "reconcile",
        VENUE,
        "--adopt",
        "--reason",
        "filled before IB's midnight while the gateway was away (IB's statement)",
    )
    assert adopted.returncode == 0, adopted.stdout + adopted.stderr
    found = await recorded(
        h, lambda d: d.action == "adopted" and d.symbol == "AAPL", "the adopted position"
    )
    assert (found.venue_value, found.keel_value) == (10.0, 0.0)
    await until(lambda: gateway.state == "running" and not gateway.journal.halted, "lifted")
    assert gateway.journal.position("AAPL") == 10.0
    assert gateway.journal.balance("USD") == pytest.approx(tws.broker.cash)
    assert (await statuses(h.bus))[-1].state == "running"
    assert not await h.fills(vcid)
    assert {d.action for d in await recon(h)} >= {"baseline", "halt", "adopted"}
    await h.stop()


async def test_a_stop_filled_before_the_boundary_is_not_placed_again(
    harness: Harness, nats_server: EmbeddedServer
) -> None:
    """A protective stop IB filled before midnight while the gateway was away: after it,
    IB lists neither the stop nor its execution. Keel's ledger still holds the position the
    stop protected, IB's is flat: the venue halts, and the stop is not placed again (on a
    flat account it would open a short)."""
    h, tws = harness, harness.tws
    gateway = await start(h)
    await recorded(h, lambda d: d.action == "baseline" and d.asset == "USD", "the baseline")
    entry = await h.send(qty=10)
    await h.filled(entry.venue_client_id, 10)
    floor = round(h.price() * 0.5, 2)
    stop = await h.send(side="sell", qty=10, order_type="stop", stop_price=floor, protective=True)
    await h.answer(stop.venue_client_id, lambda a: a.kind == "accepted", "the stop working")
    (working,) = h.placed(stop.venue_client_id)

    await h.stop()
    await until(lambda: not tws.sessions, "the session closed")
    tws.faults.fill_away(working.ticket.client_id, working.ticket.order_id, price=floor)
    jump(h.clock, next_midnight(tws.now()) + 60 * NS)
    gateway = await start(h)

    halt = await recorded(
        h, lambda d: d.action == "halt" and d.kind == "position_mismatch", "the position halt"
    )
    assert (halt.symbol, halt.venue_value, halt.keel_value) == ("AAPL", 0.0, 10.0)
    await until(lambda: gateway.state == "halted", "the venue halted")
    missing = await recorded(h, lambda d: d.kind == "missing_stop", "the missing stop")
    assert (
        missing.action
        == "query; not re-placed: no position for it to protect (Keel 10.0, venue 0.0)"
    )
    await runs(gateway, 3)
    assert len(tws.broker.orders) == 2, [o.ticket for o in tws.broker.orders.values()]
    orders = await read_caught_up(h.bus, "VENUE", f"venue.order.{VENUE}.>", DeliverPolicy.ALL)
    assert len(orders) == 2  # no replacement stop even asked for
    assert not await h.fills(stop.venue_client_id)

    adoption = VenueAdoption(ts=h.clock.now_ns(), venue=VENUE, reason="the stop filled")
    await h.bus.publish(adoption, Envelope.root("adopt-stop", adoption.ts))
    await until(lambda: gateway.state == "running" and not gateway.journal.halted, "lifted")
    await recorded(h, lambda d: d.action == "adopted" and d.symbol == "AAPL", "adopted")
    assert gateway.journal.position("AAPL") == 0.0 and h.position("AAPL") == 0.0
    await runs(gateway, 3)
    assert len(tws.broker.orders) == 2 and gateway.state == "running"
    await h.stop()


async def test_a_trade_log_of_two_days_gives_the_fill_back(harness: Harness) -> None:
    """With TWS's Trade Log showing two days, the same night away costs nothing: the
    restart's reconciliation asks from the open leg's time and records yesterday's
    execution as the fill, and the venue runs on."""
    h, tws = harness, harness.tws
    tws.desk.trade_log_days = 2
    gateway = await start(h)
    await recorded(h, lambda d: d.action == "baseline" and d.asset == "USD", "the baseline")
    low = round(h.price() * 0.5, 2)
    order = await h.send(qty=10, order_type="limit", limit_price=low)
    vcid = order.venue_client_id
    await h.answer(vcid, lambda a: a.kind == "accepted", "the resting order")
    (working,) = h.placed(vcid)
    await h.stop()
    await until(lambda: not tws.sessions, "the session closed")
    away = tws.faults.fill_away(working.ticket.client_id, working.ticket.order_id, price=low)
    jump(h.clock, next_midnight(tws.now()) + 60 * NS)
    gateway = await start(h)
    (fill,) = await h.filled(vcid, 10)
    assert (fill.trade_id, fill.source) == (away.exec_id, "reconcile")
    await runs(gateway, 3)
    assert gateway.state == "running" and not gateway.journal.halted
    assert {d.action for d in await recon(h)} == {"baseline", "inferred fill"}
    assert gateway.journal.position("AAPL") == 10.0
    await h.stop()
