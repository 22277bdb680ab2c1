"""The order manager in front of a gateway venue: legs out as ``VenueOrder``, the venue's
recorded answers in as execution reports, paper venues untouched (pure, no I/O)."""

from __future__ import annotations

from contracts.events import Bar, Event, ExecutionReport, OrderCommand, RiskAlert
from contracts.system_events import DeadLetter, SystemStatus
from contracts.venue_events import KillSwitch, VenueAnswer, VenueOrder
from services.execution.gateway_venue import GatewayVenue
from services.execution.oms import OrderManager
from services.execution.paper_venue import PaperVenue, PaperVenueConfig
from services.execution.role import execution_role
from services.venues.client_ids import venue_client_id

NS = 1_000_000_000
T0 = 1_750_000_000 * NS
SYMBOL = "BTC/USDT"


def manager():  # type: ignore[no-untyped-def]
    return execution_role(PaperVenueConfig(), gateways=frozenset({"bin"})).decider


def order(cid: str = "o1", **kw: object) -> OrderCommand:
    fields: dict[str, object] = dict(
        ts=T0,
        action="new",
        client_order_id=cid,
        strategy="s1",
        venue="bin",
        symbol=SYMBOL,
        side="buy",
        qty=2.0,
    )
    fields.update(kw)
    return OrderCommand(**fields)  # type: ignore[arg-type]


def answer(leg: VenueOrder, kind: str, ts: int = T0 + NS, **kw: object) -> VenueAnswer:
    fields: dict[str, object] = dict(
        ts=ts,
        kind=kind,
        venue=leg.venue,
        symbol=leg.symbol,
        client_order_id=leg.client_order_id,
        venue_client_id=leg.venue_client_id,
        source="submit",
        venue_order_id="9001",
    )
    fields.update(kw)
    return VenueAnswer(**fields)  # type: ignore[arg-type]


def legs(out: list[Event] | tuple[Event, ...]) -> list[VenueOrder]:
    return [e for e in out if isinstance(e, VenueOrder)]


def reports(out: list[Event] | tuple[Event, ...]) -> list[ExecutionReport]:
    return [e for e in out if isinstance(e, ExecutionReport)]


def test_an_order_is_a_leg_and_only_the_venues_answers_report_on_it() -> None:
    oms = manager()
    out = list(oms.decide(order(), T0))
    assert reports(out) == []  # nothing is reported before the venue answers
    (leg,) = legs(out)
    assert leg.action == "new" and leg.venue_client_id == venue_client_id("bin", "o1", 0)
    assert not leg.reduce_only and not leg.protective
    (acc,) = reports(oms.decide(answer(leg, "accepted"), T0 + NS))
    assert acc.status == "accepted" and acc.venue_order_id == "9001"
    streamed = answer(leg, "accepted", T0 + NS + 1, source="stream")
    assert reports(oms.decide(streamed, T0 + NS + 1)) == []  # acknowledged once
    fill = answer(leg, "fill", T0 + 2 * NS, trade_id="t1", fill_qty=0.5, fill_price=101.25)
    fill = fill.__class__(**{**_fields(fill), "fee": 0.01, "fee_currency": "BNB"})
    (part,) = reports(oms.decide(fill, T0 + 2 * NS))
    assert (part.status, part.fill_qty, part.fill_price, part.cum_qty) == (
        "partially_filled",
        0.5,
        101.25,
        0.5,
    )
    assert (part.fee, part.fee_currency) == (0.01, "BNB")  # the venue's fee, its currency
    last = answer(leg, "fill", T0 + 3 * NS, trade_id="t2", fill_qty=1.5, fill_price=101.5)
    (done,) = reports(oms.decide(last, T0 + 3 * NS))
    assert (done.status, done.cum_qty) == ("filled", 2.0)


def _fields(event: VenueAnswer) -> dict[str, object]:
    return {f: getattr(event, f) for f in event.__struct_fields__}


def test_an_unknown_outcome_reports_nothing_and_the_rejection_keeps_the_exchanges_reason() -> None:
    oms = manager()
    (leg,) = legs(oms.decide(order(), T0))
    assert list(oms.decide(answer(leg, "unknown", reason="timeout"), T0 + NS)) == []
    why = "Account has insufficient balance for requested action."
    (rej,) = reports(oms.decide(answer(leg, "rejected", reason=why), T0 + 2 * NS))
    assert rej.status == "rejected" and rej.reason == why


def test_a_cancel_before_the_acknowledgement_goes_to_the_venue() -> None:
    oms = manager()
    (leg,) = legs(oms.decide(order(order_type="limit", limit_price=90.0), T0))
    cancel = order(action="cancel", ts=T0 + NS)
    out = list(oms.decide(cancel, T0 + NS))
    assert reports(out) == []  # not canceled until the venue says so
    (sent,) = legs(out)
    assert sent.action == "cancel" and sent.venue_client_id == leg.venue_client_id
    # The acknowledgement never came (a timeout): the exchange had it, so it was accepted.
    acc, end = reports(oms.decide(answer(leg, "canceled", T0 + 2 * NS), T0 + 2 * NS))
    assert (acc.status, end.status) == ("accepted", "canceled")


def test_a_filled_bracket_entry_places_reduce_only_legs_and_a_protective_stop() -> None:
    oms = manager()
    entry = order("e1", take_profit=110.0, stop_loss=95.0)
    (leg,) = legs(oms.decide(entry, T0))
    oms.decide(answer(leg, "accepted"), T0 + NS)
    fill = answer(leg, "fill", T0 + 2 * NS, trade_id="t9", fill_qty=2.0, fill_price=100.0)
    out = list(oms.decide(fill, T0 + 2 * NS))
    placed = {lg.client_order_id: lg for lg in legs(out)}
    assert set(placed) == {"e1.tp", "e1.sl"}
    assert all(lg.reduce_only and lg.side == "sell" and lg.qty == 2.0 for lg in placed.values())
    assert placed["e1.sl"].protective and placed["e1.sl"].order_type == "stop"
    assert placed["e1.sl"].stop_price == 95.0 and not placed["e1.tp"].protective


def test_an_amendment_is_one_leg_replacing_the_old_one() -> None:
    oms = manager()
    (leg,) = legs(oms.decide(order(order_type="limit", limit_price=90.0), T0))
    oms.decide(answer(leg, "accepted"), T0 + NS)
    amend = order(action="amend", ts=T0 + 2 * NS, order_type="limit", limit_price=91.0)
    (new,) = legs(oms.decide(amend, T0 + 2 * NS))
    assert new.action == "amend" and new.replaces == leg.venue_client_id
    assert new.venue_client_id == venue_client_id("bin", "o1", 1) and new.limit_price == 91.0
    # The old leg's cancel is the replacement's business: it changes nothing.
    assert reports(oms.decide(answer(leg, "canceled", T0 + 3 * NS), T0 + 3 * NS)) == []
    (acc,) = reports(oms.decide(answer(new, "accepted", T0 + 3 * NS), T0 + 3 * NS))
    assert acc.status == "accepted"


def test_answers_for_orders_keel_does_not_hold_are_not_applied() -> None:
    oms = manager()
    stray = VenueOrder(
        ts=T0,
        action="new",
        client_order_id="x",
        venue_client_id=venue_client_id("bin", "x", 0),
        strategy="s1",
        venue="bin",
        symbol=SYMBOL,
        side="buy",
        qty=1.0,
    )
    assert list(oms.decide(answer(stray, "accepted"), T0)) == []


def test_paper_venues_fill_as_before_and_gateway_bars_cost_nothing() -> None:
    oms = manager()
    out = list(oms.decide(order(venue="paper"), T0))
    assert [r.status for r in reports(out)] == ["accepted"] and legs(out) == []
    bar = Bar(
        ts=T0 + 60 * NS,
        venue="paper",
        symbol=SYMBOL,
        interval="1m",
        open_time=T0,
        close_time=T0 + 60 * NS,
        open=100.0,
        high=101.0,
        low=99.0,
        close=100.5,
        volume=10.0,
    )
    (filled,) = reports(oms.decide(bar, bar.ts))
    assert filled.status == "filled" and filled.fill_price == 100.0
    gateway_bar = bar.__class__(**{**{f: getattr(bar, f) for f in bar.__struct_fields__}})
    assert not [e for e in oms.decide(gateway_bar, bar.ts) if isinstance(e, DeadLetter)]


def test_snapshot_restore_keeps_the_working_legs() -> None:
    oms = manager()
    (leg,) = legs(oms.decide(order(order_type="limit", limit_price=90.0), T0))
    oms.decide(answer(leg, "accepted"), T0 + NS)
    again = manager()
    again.restore(oms.snapshot())
    fill = answer(leg, "fill", T0 + 2 * NS, trade_id="t1", fill_qty=2.0, fill_price=90.0)
    (done,) = reports(again.decide(fill, T0 + 2 * NS))
    assert done.status == "filled" and done.cum_qty == 2.0


def test_the_kill_switch_cancels_entries_keeps_stops_and_flattens_through_legs() -> None:
    oms = manager()
    entry = order("e1", take_profit=110.0, stop_loss=95.0)
    (leg,) = legs(oms.decide(entry, T0))
    oms.decide(answer(leg, "accepted"), T0 + NS)
    fill = answer(leg, "fill", T0 + 2 * NS, trade_id="t9", fill_qty=2.0, fill_price=100.0)
    oms.decide(fill, T0 + 2 * NS)
    (working,) = legs(oms.decide(order("w1", order_type="limit", limit_price=80.0), T0 + 3 * NS))
    paper = reports(oms.decide(order("p1", venue="paper", order_type="limit", limit_price=1.0), T0))
    assert [r.status for r in paper] == ["accepted"]

    cancel_only = KillSwitch(ts=T0 + 4 * NS, reason="operator")
    out = list(oms.decide(cancel_only, T0 + 4 * NS))
    sent = {(lg.client_order_id, lg.action) for lg in legs(out)}
    assert sent == {("w1", "cancel")}  # the bracket's stop and target keep protecting
    assert [(r.client_order_id, r.status) for r in reports(out)] == [("p1", "canceled")]
    assert working.venue_client_id in {lg.venue_client_id for lg in legs(out)}

    flatten = KillSwitch(ts=T0 + 5 * NS, reason="operator", flatten=True)
    out = list(oms.decide(flatten, T0 + 5 * NS))
    (close,) = [lg for lg in legs(out) if lg.action == "new"]
    assert (close.side, close.qty, close.order_type) == ("sell", 2.0, "market")
    assert close.reduce_only and not close.protective
    assert close.client_order_id.startswith("kill-") and close.strategy == "s1"
    again = list(oms.decide(flatten, T0 + 5 * NS))  # a redelivered kill repeats nothing
    assert not [lg for lg in legs(again) if lg.action == "new"]


def test_a_rejected_protective_stop_closes_the_position_and_says_so() -> None:
    oms = manager()
    (leg,) = legs(oms.decide(order("e1", stop_loss=95.0), T0))
    oms.decide(answer(leg, "accepted"), T0 + NS)
    fill = answer(leg, "fill", T0 + 2 * NS, trade_id="t1", fill_qty=2.0, fill_price=100.0)
    (stop,) = legs(oms.decide(fill, T0 + 2 * NS))
    assert stop.protective and stop.client_order_id == "e1.sl"
    why = "Order would immediately trigger."
    out = list(oms.decide(answer(stop, "rejected", T0 + 3 * NS, reason=why), T0 + 3 * NS))
    assert [(r.client_order_id, r.status) for r in reports(out)] == [("e1.sl", "rejected")]
    (close,) = legs(out)
    assert (close.action, close.side, close.qty, close.order_type) == ("new", "sell", 2.0, "market")
    assert close.reduce_only and close.client_order_id.startswith("flat-")
    (status,) = [e for e in out if isinstance(e, SystemStatus)]
    assert (status.status, status.rule, status.source) == (
        "SAFE_MODE",
        "stop_rejected",
        "execution",
    )
    assert why in status.reason and "s1|bin|BTC/USDT" in status.reason


def test_a_stop_the_gateway_placed_again_is_taken_as_the_orders_leg() -> None:
    oms = manager()
    (leg,) = legs(oms.decide(order("e1", stop_loss=95.0, take_profit=120.0), T0))
    oms.decide(answer(leg, "accepted"), T0 + NS)
    fill = answer(leg, "fill", T0 + 2 * NS, trade_id="t1", fill_qty=2.0, fill_price=100.0)
    placed = legs(oms.decide(fill, T0 + 2 * NS))
    assert [lg.client_order_id for lg in placed] == ["e1.sl", "e1.tp"]  # the stop first
    stop = placed[0]
    oms.decide(answer(stop, "accepted"), T0 + 3 * NS)
    again = VenueOrder(
        **{
            **{f: getattr(stop, f) for f in stop.__struct_fields__},
            "venue_client_id": venue_client_id("bin", "e1.sl", 1),
            "replaces": stop.venue_client_id,
        }
    )
    assert reports(oms.decide(answer(again, "accepted", T0 + 4 * NS), T0 + 4 * NS)) == []
    hit = answer(again, "fill", T0 + 5 * NS, trade_id="t2", fill_qty=2.0, fill_price=95.0)
    out = list(oms.decide(hit, T0 + 5 * NS))
    filled = [r for r in reports(out) if r.client_order_id == "e1.sl"]
    assert [r.status for r in filled] == ["filled"] and filled[0].fill_price == 95.0
    # the old leg's late cancel changes nothing
    assert reports(oms.decide(answer(stop, "canceled", T0 + 6 * NS), T0 + 6 * NS)) == []


def test_a_fee_taken_in_the_base_asset_sizes_the_protective_legs_to_what_is_held() -> None:
    oms = manager()
    (leg,) = legs(oms.decide(order("e1", qty=0.01, stop_loss=95.0), T0))
    oms.decide(answer(leg, "accepted"), T0 + NS)
    fill = VenueAnswer(
        **{
            **_fields(
                answer(leg, "fill", T0 + 2 * NS, trade_id="t1", fill_qty=0.01, fill_price=100.0)
            ),
            "fee": 0.00001,
            "fee_currency": "BTC",
        }
    )
    (stop,) = legs(oms.decide(fill, T0 + 2 * NS))
    assert stop.qty == 0.01 - 0.00001  # what the spot account holds after the fee


def test_a_leg_the_exchange_rounded_to_its_lot_is_filled_at_the_exchanges_quantity() -> None:
    oms = manager()
    (leg,) = legs(oms.decide(order(qty=0.00999, order_type="limit", limit_price=90.0), T0))
    oms.decide(answer(leg, "accepted", order_qty=0.009), T0 + NS)
    hit = answer(leg, "fill", T0 + 2 * NS, trade_id="t1", fill_qty=0.009, fill_price=90.0)
    (done,) = reports(oms.decide(hit, T0 + 2 * NS))
    assert done.status == "filled"


def _protected(oms) -> VenueOrder:  # type: ignore[no-untyped-def]
    """A filled bracket entry's working stop at 95 (its leg acknowledged)."""
    (leg,) = legs(oms.decide(order("e1", stop_loss=95.0), T0))
    oms.decide(answer(leg, "accepted"), T0 + NS)
    fill = answer(leg, "fill", T0 + 2 * NS, trade_id="t1", fill_qty=2.0, fill_price=100.0)
    (stop,) = legs(oms.decide(fill, T0 + 2 * NS))
    oms.decide(answer(stop, "accepted", venue_order_id="7001"), T0 + 3 * NS)
    return stop


def _move_stop(oms, to: float) -> VenueOrder:  # type: ignore[no-untyped-def]
    amend = order("e1.sl", action="amend", ts=T0 + 4 * NS, side="sell", order_type="stop",
                  stop_price=to)  # fmt: skip
    (moved,) = legs(oms.decide(amend, T0 + 4 * NS))
    assert moved.action == "amend" and moved.stop_price == to and moved.protective
    return moved


def test_a_refused_new_stop_keeps_the_old_one_working_without_a_flatten() -> None:
    oms = manager()
    stop = _protected(oms)
    moved = _move_stop(oms, 97.0)
    assert moved.replaces == stop.venue_client_id
    why = "Order would immediately trigger."
    out = list(oms.decide(answer(moved, "rejected", T0 + 5 * NS, reason=why), T0 + 5 * NS))
    assert reports(out) == [] and legs(out) == []  # no rejection, no market close
    assert not [e for e in out if isinstance(e, SystemStatus)]
    (alert,) = [e for e in out if isinstance(e, RiskAlert)]
    assert (alert.rule, alert.action, alert.venue, alert.symbol) == (
        "stop_amend_refused",
        "keep_stop",
        "bin",
        SYMBOL,
    )
    assert why in alert.detail and "97" in alert.detail and "at 95 keeps" in alert.detail
    assert oms.state.orders["e1.sl"].stop_price == 95.0  # the trigger the venue has
    # The old leg is the order's again: its fill fills the order.
    hit = answer(stop, "fill", T0 + 6 * NS, trade_id="t2", fill_qty=2.0, fill_price=95.0)
    filled = [r for r in reports(oms.decide(hit, T0 + 6 * NS)) if r.client_order_id == "e1.sl"]
    assert [r.status for r in filled] == ["filled"]


def test_a_refused_new_stop_after_the_old_one_was_canceled_closes_the_position() -> None:
    oms = manager()
    stop = _protected(oms)
    moved = _move_stop(oms, 97.0)
    gone = answer(stop, "canceled", T0 + 5 * NS, source="cancel", venue_order_id="7001")
    assert reports(oms.decide(gone, T0 + 5 * NS)) == []  # the amendment's business
    why = "Account has insufficient balance for requested action."
    out = list(oms.decide(answer(moved, "rejected", T0 + 6 * NS, reason=why), T0 + 6 * NS))
    assert [(r.client_order_id, r.status) for r in reports(out)] == [("e1.sl", "rejected")]
    (close,) = legs(out)
    assert (close.side, close.qty, close.order_type, close.reduce_only) == (
        "sell",
        2.0,
        "market",
        True,
    )
    (status,) = [e for e in out if isinstance(e, SystemStatus)]
    assert (status.status, status.rule) == ("SAFE_MODE", "stop_rejected")


def test_a_replaced_stop_that_fills_before_its_cancel_fills_the_order() -> None:
    oms = manager()
    stop = _protected(oms)
    moved = _move_stop(oms, 97.0)
    oms.decide(answer(moved, "accepted", T0 + 5 * NS, venue_order_id="7002"), T0 + 5 * NS)
    hit = answer(stop, "fill", T0 + 6 * NS, trade_id="t2", fill_qty=2.0, fill_price=95.0,
                 venue_order_id="7001")  # fmt: skip
    out = list(oms.decide(hit, T0 + 6 * NS))
    filled = [r for r in reports(out) if r.client_order_id == "e1.sl"]
    assert [(r.status, r.fill_price) for r in filled] == [("filled", 95.0)]
    (cancel,) = legs(out)  # the new stop protects nothing now
    assert (cancel.action, cancel.venue_client_id) == ("cancel", moved.venue_client_id)
    assert oms.state.positions[next(iter(oms.state.positions))].qty == 0.0


def in_place_manager() -> OrderManager:
    """The order manager for a venue whose protective legs are amended in place."""
    gateways = frozenset({"bin"})
    venue = GatewayVenue(gateways, PaperVenue(PaperVenueConfig()), in_place=gateways)
    return OrderManager(venue)


def test_an_in_place_venue_moves_a_stop_on_the_same_leg_and_keeps_it_on_a_refusal() -> None:
    oms = in_place_manager()
    stop = _protected(oms)
    moved = _move_stop(oms, 97.0)
    # One amendment of the same leg: no cancel, no new client id.
    assert (moved.venue_client_id, moved.replaces) == (stop.venue_client_id,) * 2
    taken = answer(moved, "accepted", T0 + 5 * NS, source="amend", venue_order_id="7001")
    (live,) = reports(oms.decide(taken, T0 + 5 * NS))  # the order's leg is live again
    assert (live.client_order_id, live.status) == ("e1.sl", "accepted")
    assert oms.venue.working_leg("e1.sl").stop_price == 97.0
    again = _move_stop(oms, 98.0)
    assert again.venue_client_id == stop.venue_client_id and again.stop_price == 98.0
    why = "EOrder:Invalid price"
    refused = answer(again, "rejected", T0 + 6 * NS, source="amend", reason=why)
    out = list(oms.decide(refused, T0 + 6 * NS))
    assert [r.status for r in reports(out)] == ["accepted"] and legs(out) == []
    assert not [e for e in out if isinstance(e, SystemStatus)]  # no market close
    (alert,) = [e for e in out if isinstance(e, RiskAlert)]
    assert (alert.rule, alert.action) == ("stop_amend_refused", "keep_stop")
    assert why in alert.detail and "at 97 keeps" in alert.detail
    assert oms.state.orders["e1.sl"].stop_price == 97.0  # the trigger the venue has
    assert oms.venue.working_leg("e1.sl").stop_price == 97.0
    hit = answer(stop, "fill", T0 + 7 * NS, trade_id="t2", fill_qty=2.0, fill_price=97.0)
    filled = [r for r in reports(oms.decide(hit, T0 + 7 * NS)) if r.client_order_id == "e1.sl"]
    assert [(r.status, r.fill_price) for r in filled] == [("filled", 97.0)]


def test_an_unknown_in_place_amendment_waits_for_the_venues_word() -> None:
    oms = in_place_manager()
    stop = _protected(oms)
    moved = _move_stop(oms, 97.0)
    lost = answer(moved, "unknown", T0 + 5 * NS, source="amend", reason="timeout")
    assert list(oms.decide(lost, T0 + 5 * NS)) == []
    assert oms.state.orders["e1.sl"].stop_price == 97.0
    again = _move_stop(oms, 98.0)  # the next move before the answer: in place too
    assert (again.venue_client_id, again.stop_price) == (stop.venue_client_id, 98.0)
    snap = oms.snapshot()  # a restart in between keeps the pending amendments
    oms = in_place_manager()
    oms.restore(snap)
    for n, sent in enumerate((moved, again)):
        ts = T0 + (9 + n) * NS
        settled = answer(sent, "accepted", ts, source="amend", venue_order_id="7001")
        assert [r.status for r in reports(oms.decide(settled, ts))] == ["accepted"]
    assert oms.venue.working_leg("e1.sl").stop_price == 98.0
    assert oms.venue.state.amending == {}
    assert oms.venue.working_leg("e1.sl").venue_client_id == stop.venue_client_id
