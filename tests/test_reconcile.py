"""Reconciliation: nothing from a failed query, a missed trade becomes the same fill the
stream would have given, external orders are recorded and never Keel's, missing stops are
placed again, positions and balances beyond tolerance halt, baselines at first and after an
adoption."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.venue_events import Discrepancy, VenueAdoption
from services.venues.client_ids import answer_event_id, venue_client_id
from services.venues.journal import VenueJournal
from services.venues.reconcile import (
    Balances,
    OpenOrders,
    Positions,
    Tolerance,
    Trades,
    VenueView,
    ViewOrder,
    ViewTrade,
    reconcile,
)
from tests.test_venue_journal import BTC, PERP, SEC, T0, VENUE, answer, fill, order

NOW = T0 + 600 * SEC
TOL = Tolerance(position=0.001, balance=0.01)


def based(*events: object, usdt: float = 1000.0, btc: float = 0.0) -> VenueJournal:
    """A journal past its first reconciliation (baseline USDT/BTC), then ``events``."""
    j = VenueJournal(VENUE)
    for asset, value in (("USDT", usdt), ("BTC", btc)):
        j.apply(
            Discrepancy(
                ts=T0 - SEC,
                venue=VENUE,
                kind="balance_mismatch",
                action="baseline",
                asset=asset,
                venue_value=value,
            )
        )
    for event in events:
        j.apply(event)  # type: ignore[arg-type]
    return j


def view(
    *,
    orders: tuple[ViewOrder, ...] = (),
    trades: tuple[ViewTrade, ...] = (),
    positions: dict[str, float] | None = None,
    balances: dict[str, float] | None = None,
    complete: bool = True,
    conditional: bool = True,
) -> VenueView:
    return VenueView(
        ts=NOW,
        open_orders=OpenOrders(orders=orders, complete=complete, conditional=conditional),
        trades=Trades(trades=trades, complete=complete),
        positions=Positions(positions=positions or {}, complete=complete),
        balances=Balances(
            balances=balances if balances is not None else {"USDT": 1000.0}, complete=complete
        ),
    )


def trade(
    tid: str, vid: str, qty: float, price: float, side: str = "buy", **kw: object
) -> ViewTrade:
    return ViewTrade(
        symbol=kw.pop("symbol", BTC),  # type: ignore[arg-type]
        trade_id=tid,
        venue_order_id=vid,
        side=side,
        qty=qty,
        price=price,
        **kw,  # type: ignore[arg-type]
    )


def kinds(findings: object) -> list[tuple[str, str]]:
    return [(d.kind, d.action) for d in findings.discrepancies]  # type: ignore[attr-defined]


def test_a_failed_query_concludes_nothing_never_flat() -> None:
    """Keel holds a working order and a perpetual position; every query failed: no missing
    order, no inferred fill, no flat position, no halt (Nautilus #4736 flattened on this)."""
    leg = order("p-1", symbol=PERP, qty=2.0)
    j = based(leg, answer(leg, "accepted", venue_order_id="v1"), fill(leg, "t1", 1.0, 100.0))
    stale = VenueView(ts=NOW, trades=Trades(trades=(trade("t2", "v1", 1.0, 100.0),)))
    found = reconcile(stale, j, TOL)
    assert kinds(found) == [("query_failed", "nothing concluded")] * 4
    assert found.answers == () and found.queries == () and not found.halt
    assert "open orders: partial" in found.discrepancies[0].detail


def test_a_missed_fill_is_the_fill_the_stream_would_have_given() -> None:
    leg = order(qty=1.0)
    j = based(leg, answer(leg, "accepted", venue_order_id="v1"), fill(leg, "t1", 0.4, 100.0))
    found = reconcile(
        view(
            orders=(),
            trades=(
                trade("t1", "v1", 0.4, 100.0),
                trade("t2", "v1", 0.6, 101.0, fee=0.06, fee_currency="USDT", venue_ts=T0),
            ),
            balances={"USDT": 1000.0 - 40.0 - 60.6 - 0.06, "BTC": 1.0},
        ),
        j,
        TOL,
    )
    assert kinds(found) == [("missed_fill", "inferred fill")]
    (inferred,) = found.fills
    assert inferred.source == "reconcile" and inferred.trade_id == "t2"
    assert inferred.venue_client_id == leg.venue_client_id and inferred.cum_qty == 1.0
    stream = fill(leg, "t2", 0.6, 101.0, fee=0.06)
    assert answer_event_id(inferred) == answer_event_id(stream)
    for copy in (inferred, stream):
        j.apply(copy)
    assert j.position(BTC) == 1.0 and not found.halt
    assert j.leg(leg.venue_client_id).outcome == "filled"  # type: ignore[union-attr]
    again = reconcile(
        view(trades=(trade("t2", "v1", 0.6, 101.0),), balances={"USDT": 899.34, "BTC": 1.0}), j, TOL
    )
    assert again.answers == () and again.discrepancies == ()


def test_external_orders_are_recorded_once_and_their_trades_are_not_keels() -> None:
    j = based()
    ext = ViewOrder(symbol=BTC, venue_order_id="x1", client_id="web_abc", side="sell", qty=2.0)
    found = reconcile(
        view(
            orders=(ext,),
            trades=(trade("tx", "x0", 1.0, 100.0),),
            balances={"USDT": 900.0, "BTC": 1.0},
        ),
        j,
        TOL,
    )
    assert ("external_order", "recorded; never traded") in kinds(found)
    assert found.fills == () and found.cancels == ()
    assert found.halt and ("balance_mismatch", "halt") in kinds(found)
    usdt = next(d for d in found.discrepancies if d.asset == "USDT")
    assert (usdt.venue_value, usdt.keel_value) == (900.0, 1000.0)
    assert "tx" in usdt.detail
    for d in found.discrepancies:
        j.apply(d)
    assert j.halted and not j.seen_trade(BTC, "tx")
    again = reconcile(
        view(
            orders=(ext,),
            trades=(trade("tx", "x0", 1.0, 100.0),),
            balances={"USDT": 900.0, "BTC": 1.0},
        ),
        j,
        TOL,
    )
    assert again.halt and again.discrepancies == ()  # halted on the same numbers: once


def test_an_external_client_id_naming_a_keel_order_is_still_external() -> None:
    leg = order("o-1")
    j = based(leg, answer(leg, "accepted", venue_order_id="v1"))
    fake = ViewOrder(
        symbol=BTC,
        venue_order_id="x9",
        client_id=venue_client_id(VENUE, "o-1", 7),  # a leg Keel never made
        qty=1.0,
    )
    listed = ViewOrder(symbol=BTC, venue_order_id="v1", client_id=leg.venue_client_id, qty=1.0)
    found = reconcile(view(orders=(fake, listed)), j, TOL)
    assert kinds(found) == [("external_order", "recorded; never traded")]


def test_a_leg_in_doubt_found_open_is_accepted() -> None:
    leg = order()
    j = based(leg, answer(leg, "unknown", source="submit", ts=T0 + SEC))
    listed = ViewOrder(
        symbol=BTC, venue_order_id="v7", client_id=leg.venue_client_id, qty=1.0, filled=0.0
    )
    found = reconcile(view(orders=(listed,)), j, TOL)
    (accepted,) = found.answers
    assert accepted.kind == "accepted" and accepted.venue_order_id == "v7"
    j.apply(accepted)
    state = j.leg(leg.venue_client_id)
    assert state is not None and state.state == "working" and not state.in_doubt()


def test_a_working_order_the_venue_does_not_list_is_queried_never_assumed() -> None:
    leg = order()
    j = based(leg, answer(leg, "accepted", venue_order_id="v1"))
    found = reconcile(view(), j, TOL)
    assert kinds(found) == [("missing_order", "query")]
    assert found.queries == (leg.venue_client_id,) and found.answers == ()
    for d in found.discrepancies:
        j.apply(d)
    assert j.unsettled() == [j.leg(leg.venue_client_id)]
    again = reconcile(view(), j, TOL)
    assert again.discrepancies == () and again.queries == (leg.venue_client_id,)


def test_fresh_or_canceling_legs_are_not_judged_missing() -> None:
    fresh = order("o-1", ts=NOW - SEC)
    j = based(fresh, answer(fresh, "accepted", venue_order_id="v1", ts=NOW - SEC))
    found = reconcile(view(), j, TOL)
    assert found.discrepancies == () and found.deferred == (BTC,)
    old = order("o-2")
    j = based(old, answer(old, "accepted", venue_order_id="v2"), order("o-2", action="cancel"))
    found = reconcile(view(), j, TOL)
    assert found.discrepancies == () and found.queries == (old.venue_client_id,)


def _stop(coid: str = "s-1", qty: float = 1.0) -> object:
    return order(
        coid,
        symbol=PERP,
        side="sell",
        qty=qty,
        order_type="stop",
        stop_price=90.0,
        reduce_only=True,
        protective=True,
    )


def test_a_missing_stop_is_placed_again_as_the_next_leg() -> None:
    entry = order("e-1", symbol=PERP, qty=0.5)
    stop = _stop()
    j = based(
        entry,
        fill(entry, "t1", 0.5, 100.0),
        stop,
        answer(stop, "accepted", venue_order_id="v-stop"),  # type: ignore[arg-type]
    )
    found = reconcile(view(positions={PERP: 0.5}, balances={"USDT": 1000.0}), j, TOL)
    (replaced,) = found.replace_stops
    assert replaced.venue_client_id == venue_client_id(VENUE, "s-1", 1)
    assert replaced.replaces == stop.venue_client_id  # type: ignore[attr-defined]
    assert replaced.qty == 0.5 and replaced.stop_price == 90.0 and replaced.protective
    ((kind, action),) = kinds(found)
    assert kind == "missing_stop" and action.startswith("re-placed as ")
    assert found.queries == (stop.venue_client_id,)  # type: ignore[attr-defined]
    assert not found.halt


def test_a_missing_stop_that_traded_or_protects_nothing_is_not_placed_again() -> None:
    stop = _stop()
    j = based(stop, answer(stop, "accepted", venue_order_id="v-stop"))  # type: ignore[arg-type]
    found = reconcile(view(positions={}, balances={"USDT": 1000.0}), j, TOL)
    assert found.replace_stops == ()
    assert kinds(found)[0][1].startswith("query; not re-placed: no position")
    entry = order("e-1", symbol=PERP, qty=1.0)
    j = based(
        entry,
        fill(entry, "t1", 1.0, 100.0),
        stop,
        answer(stop, "accepted", venue_order_id="v-stop"),
    )  # type: ignore[arg-type]
    fired = trade("t9", "v-stop", 1.0, 89.0, side="sell", symbol=PERP)
    found = reconcile(view(trades=(fired,), positions={}, balances={"USDT": 989.0}), j, TOL)
    assert found.replace_stops == () and [a.trade_id for a in found.fills] == ["t9"]
    assert not found.halt


def test_stops_are_not_judged_when_conditional_orders_were_not_listed() -> None:
    stop = _stop()
    j = based(stop, answer(stop, "accepted", venue_order_id="v-stop"))  # type: ignore[arg-type]
    found = reconcile(view(conditional=False, positions={}), j, TOL)
    assert found.discrepancies == () and found.replace_stops == () and found.queries == ()


def test_a_keel_leg_over_in_the_journal_but_open_on_the_venue_is_canceled() -> None:
    leg = order()
    j = based(leg, answer(leg, "missing", source="query", ts=T0 + 60 * SEC))
    listed = ViewOrder(symbol=BTC, venue_order_id="v-late", client_id=leg.venue_client_id, qty=1.0)
    found = reconcile(view(orders=(listed,)), j, TOL)
    assert kinds(found) == [("external_order", "cancel")] and found.cancels == ("v-late",)


def test_positions_beyond_tolerance_halt_with_both_values() -> None:
    entry = order("e-1", symbol=PERP, qty=1.0)
    j = based(entry, fill(entry, "t1", 1.0, 100.0))
    ok = reconcile(view(positions={PERP: 1.0005}, balances={"USDT": 1000.0}), j, TOL)
    assert ok.discrepancies == () and not ok.halt
    bad = reconcile(view(positions={PERP: 0.0}, balances={"USDT": 1000.0}), j, TOL)
    assert bad.halt and kinds(bad) == [("position_mismatch", "halt")]
    (d,) = bad.discrepancies
    assert (d.symbol, d.venue_value, d.keel_value) == (PERP, 0.0, 1.0)
    relative = Tolerance(position=0.0, balance=0.01, position_rel=0.02)
    assert not reconcile(view(positions={PERP: 0.99}, balances={"USDT": 1000.0}), j, relative).halt


def test_a_mismatch_on_a_busy_symbol_waits() -> None:
    """A fill may be on the wire: a leg active within settle_s or in doubt defers it."""
    leg = order("e-1", symbol=PERP, qty=1.0, ts=NOW - SEC)
    j = based(leg, answer(leg, "unknown", source="submit", ts=NOW - SEC))
    found = reconcile(view(positions={PERP: 1.0}, balances={"USDT": 1000.0}), j, TOL)
    assert not found.halt and PERP in found.deferred


def test_first_reconciliation_and_adoption_take_the_venues_numbers() -> None:
    j = VenueJournal(VENUE)
    first = reconcile(view(positions={PERP: 2.0}, balances={"USDT": 500.0, "ETH": 0.0}), j, TOL)
    assert not first.halt
    assert sorted(kinds(first)) == [
        ("balance_mismatch", "baseline"),
        ("position_mismatch", "baseline"),
    ]
    for d in first.discrepancies:
        j.apply(d)
    assert j.position(PERP) == 2.0 and j.balance("USDT") == 500.0
    assert (
        reconcile(view(positions={PERP: 2.0}, balances={"USDT": 500.0}), j, TOL).discrepancies == ()
    )
    moved = reconcile(view(positions={PERP: 3.0}, balances={"USDT": 500.0}), j, TOL)
    assert moved.halt
    for d in moved.discrepancies:
        j.apply(d)
    j.apply(VenueAdoption(ts=NOW + SEC, venue=VENUE, reason="manual trade on the web"))
    adopted = reconcile(view(positions={PERP: 3.0}, balances={"USDT": 500.0}), j, TOL)
    assert kinds(adopted) == [("position_mismatch", "adopted")] and not adopted.halt
    for d in adopted.discrepancies:
        j.apply(d)
    assert not j.halted and j.position(PERP) == 3.0


def test_no_baseline_from_a_partial_view() -> None:
    j = VenueJournal(VENUE)
    partial = VenueView(
        ts=NOW,
        open_orders=OpenOrders(complete=True),
        trades=Trades(complete=True),
        positions=Positions(positions={PERP: 2.0}, complete=True),
        balances=Balances(error="timeout"),
    )
    found = reconcile(partial, j, TOL)
    assert kinds(found) == [("query_failed", "nothing concluded")] and j.baseline_pending


def test_view_from_ccxt_structures() -> None:
    v = VenueView.from_ccxt(
        ts=NOW,
        orders=[
            {
                "id": "1",
                "clientOrderId": "c1",
                "symbol": PERP,
                "side": "sell",
                "type": "stop_market",
                "amount": 2,
                "filled": 0.5,
                "triggerPrice": "90.5",
                "reduceOnly": True,
                "timestamp": 1000,
            }
        ],
        order_symbols=[PERP],
        trades=[
            {
                "id": "t",
                "order": "1",
                "symbol": PERP,
                "side": "sell",
                "amount": 0.5,
                "price": 91,
                "fee": None,
            }
        ],
        trades_error="",
        positions=None,
        positions_error="NetworkError",
        balances={"USDT": 10.0},
    )
    (o,) = v.open_orders.orders
    assert (o.client_id, o.qty, o.filled, o.stop_price, o.reduce_only, o.ts) == (
        "c1",
        2.0,
        0.5,
        90.5,
        True,
        10**9,
    )
    assert v.open_orders.complete and v.open_orders.symbols == (PERP,)
    assert v.trades.complete and v.trades.trades[0].fee == 0.0
    assert not v.positions.complete and v.positions.error == "NetworkError"
    assert v.balances.complete
    assert not VenueView.from_ccxt(ts=NOW, orders=[], orders_error="boom").open_orders.complete


@settings(max_examples=200, deadline=None)
@given(
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.floats(0.0, 5.0),
    st.floats(0.0, 5000.0),
    st.lists(st.sampled_from(["t1", "t2", "tx"]), max_size=3, unique=True),
    st.booleans(),
)
def test_incomplete_parts_never_infer_or_halt(
    orders_ok: bool,
    trades_ok: bool,
    positions_ok: bool,
    balances_ok: bool,
    venue_position: float,
    venue_usdt: float,
    trade_ids: list[str],
    list_stop: bool,
) -> None:
    entry = order("e-1", symbol=PERP, qty=2.0)
    stop = _stop()
    j = based(
        entry,
        answer(entry, "accepted", venue_order_id="v-e"),
        fill(entry, "t0", 1.0, 100.0),
        stop,
        answer(stop, "accepted", venue_order_id="v-stop"),  # type: ignore[arg-type]
    )
    trades = tuple(
        trade(t, "v-e" if t != "tx" else "x", 0.5, 100.0, symbol=PERP) for t in trade_ids
    )
    listed = (
        (ViewOrder(symbol=PERP, venue_order_id="v-stop", client_id=stop.venue_client_id),)
        if list_stop
        else ()
    )  # type: ignore[attr-defined]
    v = VenueView(
        ts=NOW,
        open_orders=OpenOrders(orders=listed, complete=orders_ok),
        trades=Trades(trades=trades, complete=trades_ok),
        positions=Positions(positions={PERP: venue_position}, complete=positions_ok),
        balances=Balances(balances={"USDT": venue_usdt}, complete=balances_ok),
    )
    found = reconcile(v, j, TOL)
    judged = {d.kind for d in found.discrepancies}
    if not trades_ok:
        assert found.fills == () and "missed_fill" not in judged
    if not orders_ok:
        assert found.replace_stops == () and found.queries == () and found.cancels == ()
        assert not judged & {"missing_order", "missing_stop", "external_order"}
    if not (trades_ok and positions_ok and balances_ok):
        assert not found.halt
        assert not judged & {"position_mismatch", "balance_mismatch"}
    else:
        assert "query_failed" not in judged or not orders_ok
    assert found.halt == any(d.action == "halt" for d in found.discrepancies)


def test_unrealized_profit_in_the_venues_total_is_not_a_balance_difference() -> None:
    """Binance USDT-M reports its margin balance (wallet + unrealized) as the total."""
    entry = order("e-1", symbol=PERP, qty=1.0)
    j = based(entry, fill(entry, "t1", 1.0, 100.0))
    marked = VenueView(
        ts=NOW,
        open_orders=OpenOrders(complete=True),
        trades=Trades(complete=True),
        positions=Positions(positions={PERP: 1.0}, complete=True),
        balances=Balances(balances={"USDT": 1025.0}, unrealized={"USDT": 25.0}, complete=True),
    )
    assert reconcile(marked, j, TOL).discrepancies == ()
    unmarked = msgspec.structs.replace(
        marked, balances=Balances(balances={"USDT": 1025.0}, complete=True)
    )
    assert reconcile(unmarked, j, TOL).halt


def test_no_baseline_while_a_leg_is_in_doubt() -> None:
    """Its trade may not be attributable yet: absorbing it into the baseline would count
    it twice once the query finds the order."""
    leg = order()
    j = VenueJournal(VENUE)
    j.apply(leg)
    j.apply(answer(leg, "unknown", source="submit", ts=T0 + SEC))
    found = reconcile(view(balances={"USDT": 900.0, "BTC": 1.0}), j, TOL)
    assert found.deferred == ("baseline",) and found.discrepancies == ()
    assert j.baseline_pending
