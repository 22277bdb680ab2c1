"""A bracket entry that fills in several executions before its protective legs are
acknowledged: the legs in flight are resized once the venue answers, never placed twice
(found on the TWS fake: a 2-share entry filled 1 + 1 left stops for 1 and for 2 working)."""

from __future__ import annotations

from tests.test_gateway_venue import NS, T0, answer, legs, manager, order


def test_legs_in_flight_are_resized_after_their_answer_never_doubled() -> None:
    oms = manager()
    (entry,) = legs(oms.decide(order("e1", take_profit=110.0, stop_loss=95.0), T0))
    oms.decide(answer(entry, "accepted"), T0 + NS)
    first = answer(entry, "fill", T0 + 2 * NS, trade_id="t1", fill_qty=1.0, fill_price=100.0)
    placed = {lg.client_order_id: lg for lg in legs(oms.decide(first, T0 + 2 * NS))}
    assert set(placed) == {"e1.tp", "e1.sl"}
    assert all(lg.qty == 1.0 for lg in placed.values())
    # The entry's second execution comes before the venue answered for either leg.
    second = answer(entry, "fill", T0 + 3 * NS, trade_id="t2", fill_qty=1.0, fill_price=100.5)
    assert legs(oms.decide(second, T0 + 3 * NS)) == []  # nothing placed a second time
    # Each leg's answer resizes it to the whole position, as one amendment of that leg.
    resized = []
    for i, name in enumerate(("e1.sl", "e1.tp")):
        ts = T0 + (4 + i) * NS
        resized += legs(oms.decide(answer(placed[name], "accepted", ts), ts))
    assert sorted(lg.client_order_id for lg in resized) == ["e1.sl", "e1.tp"]
    assert all(lg.action == "amend" and lg.qty == 2.0 for lg in resized)
    assert {lg.replaces for lg in resized} == {lg.venue_client_id for lg in placed.values()}
    # Once the amendments are answered, the legs follow the position again: a partial fill
    # of the target shrinks the stop.
    amended = {lg.client_order_id: lg for lg in resized}
    for i, name in enumerate(("e1.sl", "e1.tp")):
        ts = T0 + (6 + i) * NS
        oms.decide(answer(amended[name], "accepted", ts, venue_order_id=f"v{i}"), ts)
    ts = T0 + 9 * NS
    part = answer(amended["e1.tp"], "fill", ts, trade_id="t3", fill_qty=0.5, fill_price=110.0)
    (shrunk,) = legs(oms.decide(part, ts))
    assert (shrunk.client_order_id, shrunk.action, shrunk.qty) == ("e1.sl", "amend", 1.5)


def test_a_refused_resize_keeps_the_old_stop_and_a_later_oco_cancels_it() -> None:
    oms = manager()
    (entry,) = legs(oms.decide(order("e1", take_profit=110.0, stop_loss=95.0), T0))
    oms.decide(answer(entry, "accepted"), T0 + NS)
    first = answer(entry, "fill", T0 + 2 * NS, trade_id="t1", fill_qty=1.0, fill_price=100.0)
    placed = {lg.client_order_id: lg for lg in legs(oms.decide(first, T0 + 2 * NS))}
    for i, name in enumerate(("e1.sl", "e1.tp")):
        ts = T0 + (3 + i) * NS
        oms.decide(answer(placed[name], "accepted", ts, venue_order_id=f"v{i}"), ts)
    second = answer(entry, "fill", T0 + 5 * NS, trade_id="t2", fill_qty=1.0, fill_price=100.5)
    resized = {lg.client_order_id: lg for lg in legs(oms.decide(second, T0 + 5 * NS))}
    assert resized["e1.sl"].action == "amend" and resized["e1.sl"].qty == 2.0
    # The venue refuses the new stop leg; the old one (for 1) keeps working.
    refused = answer(resized["e1.sl"], "rejected", T0 + 6 * NS, source="amend", reason="no")
    oms.decide(refused, T0 + 6 * NS)
    tp = answer(resized["e1.tp"], "accepted", T0 + 7 * NS, venue_order_id="v9")
    oms.decide(tp, T0 + 7 * NS)
    # The target fills the whole position: the kept stop must be canceled at the venue.
    done = answer(
        resized["e1.tp"], "fill", T0 + 8 * NS, trade_id="t3", fill_qty=2.0, fill_price=110.0
    )
    cancels = [lg for lg in legs(oms.decide(done, T0 + 8 * NS)) if lg.action == "cancel"]
    assert [c.venue_client_id for c in cancels] == [placed["e1.sl"].venue_client_id]
