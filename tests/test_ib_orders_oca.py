"""A bracket's target and stop at IB are one OCA group: IB cancels the sibling when one
fills, even while Keel is away, and the order manager never takes that cancel for "the stop
is gone" (which would protect, and could sell, a position that is already closed).

The pure part feeds the order manager the venue's answers in both orders (the fill and the
sibling's cancel come through separate watches); the rest runs the real gateway, IbExchange
over the real ib_async client, the TWS fake and a real nats-server, with the order manager in
the loop (``Desk``: its legs published to the gateway, the gateway's recorded answers fed
back in log order).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from nats.js.api import DeliverPolicy

from contracts.envelope import Envelope, content_id
from contracts.events import Bar, Event, ExecutionReport, Instrument, OrderCommand
from contracts.venue_events import Discrepancy, VenueAnswer, VenueOrder
from eventstore.log_reader import read_caught_up
from services.execution.gateway_venue import HOLD_NS
from services.execution.oms import OrderManager
from services.execution.paper_venue import PaperVenueConfig
from services.execution.role import execution_role
from services.venues.ib.ib_orders import OCA_REDUCE_WITH_BLOCK, oca_group
from tests.fakes.tws.orders import Working
from tests.test_ib_gateway import START, VENUE, Harness, harness, until

__all__ = ["harness"]  # the fixture, imported for pytest

NS = 1_000_000_000
T0 = START
SYMBOL = "AAPL"


def manager() -> OrderManager:
    role = execution_role(
        PaperVenueConfig(), gateways=frozenset({VENUE}), in_place=frozenset({VENUE})
    )
    assert isinstance(role.decider, OrderManager)
    return role.decider


def instrument(ts: int) -> Instrument:
    return Instrument(ts=ts, venue=VENUE, symbol=SYMBOL, base=SYMBOL, quote="USD", kind="stock")


def entry(ts: int, qty: float, take_profit: float, stop_loss: float) -> OrderCommand:
    return OrderCommand(
        ts=ts,
        action="new",
        client_order_id="e1",
        strategy="s1",
        venue=VENUE,
        symbol=SYMBOL,
        side="buy",
        qty=qty,
        take_profit=take_profit,
        stop_loss=stop_loss,
    )


def answer(leg: VenueOrder, kind: str, ts: int, **kw: object) -> VenueAnswer:
    fields: dict[str, object] = dict(
        ts=ts,
        kind=kind,
        venue=leg.venue,
        symbol=leg.symbol,
        client_order_id=leg.client_order_id,
        venue_client_id=leg.venue_client_id,
        source="stream",
        venue_order_id=f"p-{leg.client_order_id}",
    )
    fields.update(kw)
    return VenueAnswer(**fields)  # type: ignore[arg-type]


def fill(leg: VenueOrder, ts: int, qty: float, price: float, trade: str) -> VenueAnswer:
    return answer(leg, "fill", ts, trade_id=trade, fill_qty=qty, fill_price=price)


def bar(at: int, low: float = 99.0) -> Bar:
    return Bar(
        ts=at,
        venue=VENUE,
        symbol=SYMBOL,
        interval="1m",
        open_time=at - 60 * NS,
        close_time=at,
        open=100.0,
        high=101.0,
        low=low,
        close=100.0,
        volume=1000.0,
    )


def legs(out: Sequence[Event]) -> list[VenueOrder]:
    return [e for e in out if isinstance(e, VenueOrder)]


def reports(out: Sequence[Event]) -> list[ExecutionReport]:
    return [e for e in out if isinstance(e, ExecutionReport)]


def position(oms: OrderManager) -> float:
    return sum(p.qty for p in oms.state.positions.values())


def bracketed(qty: float = 10.0) -> tuple[OrderManager, VenueOrder, VenueOrder]:
    """An order manager holding ``qty`` AAPL bought, its target and stop working at IB."""
    oms = manager()
    oms.decide(instrument(T0), T0)
    (buy,) = legs(oms.decide(entry(T0, qty, 110.0, 95.0), T0))
    oms.decide(answer(buy, "accepted", T0 + NS, source="submit"), T0 + NS)
    out = oms.decide(fill(buy, T0 + 2 * NS, qty, 100.0, "x1"), T0 + 2 * NS)
    placed = {leg.client_order_id: leg for leg in legs(out)}
    tp, sl = placed["e1.tp"], placed["e1.sl"]
    for leg in (tp, sl):
        oms.decide(answer(leg, "accepted", T0 + 3 * NS, source="submit"), T0 + 3 * NS)
    assert position(oms) == qty
    return oms, tp, sl


def test_the_legs_of_one_bracket_share_one_oca_group_name() -> None:
    group = oca_group("e1.tp")
    assert group == oca_group("e1.sl") == oca_group("e1.sl2") == oca_group("e1")
    assert group != oca_group("e2.sl") and group.startswith("keel-") and len(group) == 24


def test_the_target_fills_first_then_ib_cancels_the_stop() -> None:
    oms, tp, sl = bracketed()
    out = oms.decide(fill(tp, T0 + 10 * NS, 10.0, 110.0, "x2"), T0 + 10 * NS)
    assert {(r.client_order_id, r.status) for r in reports(out)} == {
        ("e1.tp", "filled"),
        ("e1.sl", "canceled"),
    }
    assert [(leg.client_order_id, leg.action) for leg in legs(out)] == [("e1.sl", "cancel")]
    later = oms.decide(answer(sl, "canceled", T0 + 11 * NS), T0 + 11 * NS)
    assert not legs(later) and not reports(later)
    assert position(oms) == 0.0 and not oms.state.orders


def test_ib_cancels_the_stop_before_the_targets_fill_arrives() -> None:
    oms, tp, sl = bracketed()
    held = oms.decide(answer(sl, "canceled", T0 + 10 * NS), T0 + 10 * NS)
    assert not legs(held) and not reports(held)  # nothing placed again, nothing said yet
    out = oms.decide(fill(tp, T0 + 11 * NS, 10.0, 110.0, "x2"), T0 + 11 * NS)
    said = [(r.client_order_id, r.status) for r in reports(out)]
    assert said == [("e1.tp", "filled"), ("e1.sl", "canceled")]
    assert "filled" in reports(out)[1].reason
    assert not legs(out)  # no new stop, and no cancel of one IB already canceled
    assert position(oms) == 0.0 and not oms.state.orders
    late = bar(T0 + 60 * NS, low=90.0)
    assert not legs(oms.decide(late, late.ts))  # nothing waits to be released later


def test_a_partial_target_fill_after_the_cancel_protects_what_is_left() -> None:
    """A venue that cancels the stop on the target's first partial fill (an OCA group of type
    1, a stop canceled by hand): the order manager places a stop again, for what the target
    did not sell."""
    oms, tp, sl = bracketed()
    oms.decide(answer(sl, "canceled", T0 + 10 * NS), T0 + 10 * NS)
    out = oms.decide(fill(tp, T0 + 11 * NS, 4.0, 110.0, "x2"), T0 + 11 * NS)
    (again,) = legs(out)
    assert (again.client_order_id, again.action, again.qty) == ("e1.sl2", "new", 6.0)
    assert again.protective and again.stop_price == 95.0
    assert oca_group(again.client_order_id) == oca_group(tp.client_order_id)
    assert position(oms) == 6.0


def test_a_cancel_no_fill_explains_is_taken_as_gone_after_the_hold() -> None:
    oms, _, sl = bracketed()
    oms.decide(answer(sl, "canceled", T0 + 10 * NS), T0 + 10 * NS)

    assert not legs(oms.decide(bar(T0 + 10 * NS + HOLD_NS - NS), T0 + 10 * NS + HOLD_NS - NS))
    late = T0 + 10 * NS + HOLD_NS
    out = oms.decide(bar(late), late)
    assert [(r.client_order_id, r.status) for r in reports(out)] == [("e1.sl", "canceled")]
    (again,) = legs(out)  # a stop canceled by hand: the position is protected again
    assert (again.client_order_id, again.action, again.qty) == ("e1.sl2", "new", 10.0)
    assert position(oms) == 10.0


def test_a_stop_moved_after_it_filled_keeps_what_ib_says() -> None:
    """The stop is moved in place while IB is filling it: IB refuses the modify (104), the
    order manager keeps the stop IB has, then its fill closes the position and the target,
    which IB's OCA group cancels anyway, is canceled once."""
    oms, tp, sl = bracketed()
    move = OrderCommand(
        ts=T0 + 10 * NS,
        action="amend",
        client_order_id="e1.sl",
        strategy="s1",
        venue=VENUE,
        symbol=SYMBOL,
        side="sell",
        qty=10.0,
        order_type="stop",
        stop_price=97.0,
    )
    (moved,) = legs(oms.decide(move, T0 + 10 * NS))
    assert (moved.action, moved.replaces, moved.stop_price) == ("amend", sl.venue_client_id, 97.0)
    why = "InvalidOrder 104: Can't modify a filled order. Order id 3"
    refused = answer(moved, "rejected", T0 + 11 * NS, source="amend", reason=why)
    out = oms.decide(refused, T0 + 11 * NS)
    assert [(r.client_order_id, r.status) for r in reports(out)] == [("e1.sl", "accepted")]
    assert oms.state.orders["e1.sl"].stop_price == 95.0  # the trigger IB has
    out = oms.decide(fill(sl, T0 + 12 * NS, 10.0, 95.0, "x3"), T0 + 12 * NS)
    ends = {(r.client_order_id, r.status) for r in reports(out)}
    assert ends == {("e1.sl", "filled"), ("e1.tp", "canceled")}
    assert [(leg.client_order_id, leg.action) for leg in legs(out)] == [("e1.tp", "cancel")]
    assert not legs(oms.decide(answer(tp, "canceled", T0 + 13 * NS), T0 + 13 * NS))
    assert position(oms) == 0.0 and not oms.state.orders


# --- the real gateway and the TWS fake --------------------------------------------------


class Desk:
    """The order manager in the loop: what it decides is published for the gateway; the
    gateway's recorded answers are fed to it in log order."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self.oms = manager()
        self.fed: set[int] = set()
        self.inputs: list[Event] = []
        self.sent: list[VenueOrder] = []
        self.reports: list[ExecutionReport] = []

    async def decide(self, event: Event) -> None:
        self.inputs.append(event)
        for out in self.oms.decide(event, event.ts):
            if isinstance(out, VenueOrder):
                self.sent.append(out)
                event_id = content_id("desk", out.venue_client_id, out.action, out.ts)
                await self.harness.bus.publish(out, Envelope.root(event_id, out.ts))
            elif isinstance(out, ExecutionReport):
                self.reports.append(out)

    async def pump(self) -> None:
        found = await read_caught_up(
            self.harness.bus, "VENUE", f"venue.answer.{VENUE}.>", DeliverPolicy.ALL
        )
        for stored in found:
            if stored.seq not in self.fed and isinstance(stored.event, VenueAnswer):
                self.fed.add(stored.seq)
                await self.decide(stored.event)

    async def until(self, check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            await self.pump()
            if check():
                return
            if self.harness.task is not None and self.harness.task.done():
                self.harness.task.result()
            if time.monotonic() > deadline:
                said = [(r.client_order_id, r.status) for r in self.reports]
                raise AssertionError(f"timed out waiting for {what}; reports: {said}")
            await asyncio.sleep(0.05)

    def answered(self, oid: str, kind: str) -> bool:
        return any(
            isinstance(e, VenueAnswer) and e.client_order_id == oid and e.kind == kind
            for e in self.inputs
        )

    def status(self, oid: str) -> str:
        said = [r.status for r in self.reports if r.client_order_id == oid]
        return said[-1] if said else ""

    def at_ib(self, oid: str) -> list[Working]:
        vcids = {leg.venue_client_id for leg in self.sent if leg.client_order_id == oid}
        return [o for o in self.harness.tws.broker.orders.values() if o.ticket.order_ref in vcids]


async def _bracket_at_ib(harness: Harness) -> tuple[Desk, Working, Working]:
    """10 AAPL bought through the order manager, its target and stop working at the fake."""
    await harness.start()
    desk = Desk(harness)
    now = harness.clock.now_ns()
    price = harness.price()
    await desk.decide(instrument(now))
    await desk.decide(entry(now, 10.0, round(price * 1.05, 2), round(price * 0.95, 2)))
    await desk.until(
        lambda: desk.status("e1.tp") == "accepted" and desk.status("e1.sl") == "accepted",
        "the target and the stop working",
    )
    (tp,) = desk.at_ib("e1.tp")
    (sl,) = desk.at_ib("e1.sl")
    assert harness.position(SYMBOL) == 10.0
    return desk, tp, sl


def _sold(harness: Harness) -> float:
    return sum(e.shares for e in harness.tws.broker.executions if e.side == "SLD")


async def test_ib_cancels_the_stop_when_the_target_fills_and_keel_sells_once(
    harness: Harness,
) -> None:
    desk, tp, sl = await _bracket_at_ib(harness)
    group = oca_group("e1")
    assert (tp.ticket.oca_group, tp.ticket.oca_type) == (group, OCA_REDUCE_WITH_BLOCK)
    assert (sl.ticket.oca_group, sl.ticket.oca_type) == (group, OCA_REDUCE_WITH_BLOCK)
    harness.tws.broker.execute(tp, 10, tp.ticket.lmt_price or 0.0, harness.clock.now_ns())
    assert sl.status == "Cancelled"  # IB's doing, not Keel's
    await desk.until(
        lambda: (
            desk.status("e1.tp") == "filled"
            and desk.status("e1.sl") == "canceled"
            and desk.answered("e1.sl", "canceled")
        ),  # the fill alone already ends it (OCO)
        "the fill and IB's cancel of the sibling",
    )
    placed = sorted(leg.client_order_id for leg in desk.sent if leg.action == "new")
    assert placed == ["e1", "e1.sl", "e1.tp"]  # no stop placed again
    assert position(desk.oms) == 0.0 == harness.position(SYMBOL)
    assert _sold(harness) == 10.0

    # The same answers in the other order (the watches race): the same outcome.
    answers = [e for e in desk.inputs if isinstance(e, VenueAnswer)]
    tp_fill = next(a for a in answers if a.client_order_id == "e1.tp" and a.kind == "fill")
    sl_end = next(a for a in answers if a.client_order_id == "e1.sl" and a.kind == "canceled")
    for first, second in ((tp_fill, sl_end), (sl_end, tp_fill)):
        replica = manager()
        after: list[VenueOrder] = []
        said: list[ExecutionReport] = []
        cut = desk.inputs.index(min(tp_fill, sl_end, key=desk.inputs.index))
        rest = [e for e in desk.inputs[cut:] if e is not tp_fill and e is not sl_end]
        for event in [*desk.inputs[:cut], first, second, *rest]:
            out = replica.decide(event, event.ts)
            if desk.inputs.index(event) >= cut:
                after += legs(out)
            said += reports(out)
        assert not [leg for leg in after if leg.action == "new"], after
        assert position(replica) == 0.0 and not replica.state.orders
        ends = {r.client_order_id: r.status for r in said}
        assert (ends["e1.tp"], ends["e1.sl"]) == ("filled", "canceled")
    await harness.stop()


async def test_the_target_fills_during_a_link_loss_and_nothing_is_sold_twice(
    harness: Harness,
) -> None:
    desk, tp, sl = await _bracket_at_ib(harness)
    harness.tws.faults.lose_link()
    await until(lambda: not harness.exchange.connection.ready, "1100 seen")
    harness.tws.faults.fill_away(tp.ticket.client_id, tp.ticket.order_id, 10, tp.ticket.lmt_price)
    assert sl.status == "Cancelled"  # IB canceled the stop while Keel was away
    await asyncio.sleep(0.3)
    await desk.pump()
    assert desk.status("e1.tp") == "accepted"  # nobody heard of it
    harness.tws.faults.restore_link(data_lost=False)
    await desk.until(
        lambda: desk.status("e1.tp") == "filled" and desk.status("e1.sl") == "canceled",
        "the fill and the stop's end, after the link returned",
    )
    assert position(desk.oms) == 0.0 == harness.position(SYMBOL)
    placed = sorted(leg.client_order_id for leg in desk.sent if leg.action == "new")
    assert placed == ["e1", "e1.sl", "e1.tp"]  # no stop placed again
    assert [o.status for o in desk.at_ib("e1.sl")] == ["Cancelled"]
    assert _sold(harness) == 10.0  # the target's 10, nothing twice
    assert not [o for o in harness.tws.broker.open_orders(None)]
    assert harness.gateway is not None
    assert harness.gateway.journal.position(SYMBOL) == 0.0
    # The order manager's cancel of the stop came too late (IB: 10148); a query says how the
    # stop ended, and a reconciliation finds nothing to place again.
    sl_leg = next(leg for leg in desk.sent if leg.client_order_id == "e1.sl")
    await harness.answer(sl_leg.venue_client_id, lambda a: a.kind == "canceled", "the stop's end")
    await harness.gateway.reconciler.run_once()
    await desk.pump()
    found = await read_caught_up(harness.bus, "VENUE", f"venue.recon.{VENUE}", DeliverPolicy.ALL)
    kinds = {s.event.kind for s in found if isinstance(s.event, Discrepancy)}
    assert not kinds & {"missing_stop", "position_mismatch", "external_order"}, kinds
    assert len(harness.tws.broker.orders) == 3 and _sold(harness) == 10.0
    await harness.stop()
