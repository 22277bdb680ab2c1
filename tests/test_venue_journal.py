"""The venue journal: legs move forward only, a trade counts once whatever saw it, positions
and balances follow Keel's fills plus the baseline, halts and adoptions fold."""

from __future__ import annotations

import random

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.venue_events import Discrepancy, VenueAdoption, VenueAnswer, VenueOrder
from services.venues.client_ids import answer_event_id, venue_client_id
from services.venues.journal import ExactSum, VenueJournal, symbol_parts

T0 = 1_700_000_000_000_000_000
SEC = 1_000_000_000
VENUE = "binance"
BTC = "BTC/USDT"
PERP = "BTC/USDT:USDT"


def order(
    coid: str = "o-1",
    *,
    leg: int = 0,
    symbol: str = BTC,
    side: str = "buy",
    qty: float = 1.0,
    ts: int = T0,
    action: str = "new",
    venue: str = VENUE,
    **fields: object,
) -> VenueOrder:
    return VenueOrder(
        ts=ts,
        action=action,  # type: ignore[arg-type]
        client_order_id=coid,
        venue_client_id=venue_client_id(venue, coid, leg),
        strategy="s1",
        venue=venue,
        symbol=symbol,
        side=side,  # type: ignore[arg-type]
        qty=qty,
        **fields,  # type: ignore[arg-type]
    )


def answer(
    leg: VenueOrder, kind: str, *, source: str = "stream", ts: int = T0 + SEC, **fields: object
) -> VenueAnswer:
    return VenueAnswer(
        ts=ts,
        kind=kind,  # type: ignore[arg-type]
        venue=leg.venue,
        symbol=leg.symbol,
        client_order_id=leg.client_order_id,
        venue_client_id=leg.venue_client_id,
        source=source,  # type: ignore[arg-type]
        strategy=leg.strategy,
        side=leg.side,
        order_qty=leg.qty,
        **fields,  # type: ignore[arg-type]
    )


def fill(
    leg: VenueOrder,
    trade_id: str,
    qty: float,
    price: float,
    *,
    fee: float = 0.0,
    fee_currency: str = "USDT",
    source: str = "stream",
    ts: int = T0 + 2 * SEC,
) -> VenueAnswer:
    return answer(
        leg,
        "fill",
        source=source,
        ts=ts,
        trade_id=trade_id,
        fill_qty=qty,
        fill_price=price,
        fee=fee,
        fee_currency=fee_currency,
        venue_order_id="v-" + leg.client_order_id,
    )


def journal(*events: object) -> VenueJournal:
    j = VenueJournal(VENUE)
    for event in events:
        j.apply(event)  # type: ignore[arg-type]
    return j


def test_a_leg_moves_from_sent_to_working_to_filled_and_books_spot_flows() -> None:
    leg = order(qty=1.0)
    j = journal(leg)
    assert j.leg(leg.venue_client_id).state == "sent"  # type: ignore[union-attr]
    j.apply(answer(leg, "accepted", source="submit", venue_order_id="v-o-1"))
    j.apply(fill(leg, "t1", 0.4, 100.0, fee=0.04))
    state = j.leg(leg.venue_client_id)
    assert state is not None and state.state == "working" and state.venue_order_id == "v-o-1"
    j.apply(fill(leg, "t2", 0.6, 110.0, fee=0.066))
    assert state.state == "done" and state.outcome == "filled" and state.cum_qty == 1.0
    assert j.position(BTC) == 1.0
    assert j.balance("BTC") == 1.0
    assert abs(j.balance("USDT") - (-(0.4 * 100.0 + 0.6 * 110.0) - 0.106)) < 1e-9
    assert j.legs_open() == [] and j.unsettled() == []
    assert j.leg_by_venue_id("v-o-1") is state


def test_the_same_trade_from_stream_poll_and_reconcile_counts_once() -> None:
    leg = order(qty=2.0)
    j = journal(leg)
    for source in ("stream", "poll", "reconcile", "stream"):
        j.apply(fill(leg, "t1", 0.5, 100.0, source=source))
    assert j.seen_trade(BTC, "t1") and not j.seen_trade(BTC, "t2")
    assert j.position(BTC) == 0.5
    assert j.leg(leg.venue_client_id).filled_qty == 0.5  # type: ignore[union-attr]


def test_the_same_trade_id_on_two_symbols_is_two_trades() -> None:
    btc, eth = order("o-1", qty=2.0), order("o-2", symbol="ETH/USDT", qty=2.0)
    j = journal(btc, eth)
    first, second = fill(btc, "7", 0.5, 100.0), fill(eth, "7", 1.0, 10.0)
    j.apply(first)
    j.apply(second)  # Binance numbers trades per symbol
    assert j.position(BTC) == 0.5 and j.seen_trade("ETH/USDT", "7")
    assert answer_event_id(first) != answer_event_id(second)


def test_a_trade_of_an_order_keel_does_not_know_is_seen_but_not_keels() -> None:
    foreign = order("someone-else")
    j = journal()
    j.apply(fill(foreign, "t9", 1.0, 100.0))
    assert j.seen_trade(BTC, "t9")
    assert j.position(BTC) == 0.0 and j.balance("USDT") == 0.0


def test_unknown_leaves_the_leg_in_doubt_until_a_query_finds_it() -> None:
    leg = order()
    j = journal(leg, answer(leg, "unknown", source="submit", ts=T0 + SEC, reason="timeout"))
    state = j.leg(leg.venue_client_id)
    assert state is not None and state.state == "unknown" and state.doubt_since == T0 + SEC
    assert j.unsettled() == [state]
    j.apply(answer(leg, "unknown", source="query", ts=T0 + 2 * SEC, reason="not found"))
    assert [q.found for q in state.queries] == [False] and j.unsettled() == [state]
    j.apply(answer(leg, "accepted", source="query", ts=T0 + 3 * SEC, venue_order_id="v1"))
    assert state.state == "working" and [q.found for q in state.queries] == [False, True]
    assert j.unsettled() == [] and state.acknowledged
    # a late copy of the submit's timeout never moves it back
    j.apply(answer(leg, "unknown", source="submit", ts=T0 + SEC, reason="timeout"))
    assert state.state == "working"


def test_a_cancel_timeout_puts_a_working_leg_in_doubt_without_changing_its_state() -> None:
    leg = order()
    j = journal(leg, answer(leg, "accepted", venue_order_id="v1"))
    j.apply(order(action="cancel"))
    j.apply(answer(leg, "unknown", source="cancel", ts=T0 + 5 * SEC))
    state = j.leg(leg.venue_client_id)
    assert state is not None and state.state == "working" and state.cancel_requested
    assert j.unsettled() == [state]
    j.apply(answer(leg, "canceled", source="query", ts=T0 + 6 * SEC))
    assert state.state == "done" and state.outcome == "canceled" and j.unsettled() == []


def test_a_refused_cancel_is_not_a_rejected_order() -> None:
    leg = order()
    j = journal(leg, answer(leg, "accepted", venue_order_id="v1"))
    j.apply(answer(leg, "rejected", source="cancel", reason="-2011 Unknown order sent."))
    state = j.leg(leg.venue_client_id)
    assert state is not None and state.state == "working" and state.reason.startswith("-2011")
    other = order("o-2")
    j.apply(other)
    j.apply(answer(other, "rejected", source="submit", reason="-2010 insufficient balance"))
    assert j.leg(other.venue_client_id).outcome == "rejected"  # type: ignore[union-attr]


def test_outcomes_keep_the_strongest_fact() -> None:
    leg = order(qty=1.0)
    j = journal(leg, answer(leg, "missing", source="query", ts=T0 + 9 * SEC))
    assert j.leg(leg.venue_client_id).outcome == "missing"  # type: ignore[union-attr]
    j.apply(fill(leg, "t1", 1.0, 100.0, source="reconcile"))
    assert j.leg(leg.venue_client_id).outcome == "filled"  # type: ignore[union-attr]
    assert j.position(BTC) == 1.0


def test_legs_numbers_replacements_and_amendments() -> None:
    first = order(qty=1.0, order_type="stop", stop_price=90.0, side="sell", protective=True)
    second = order(
        leg=1,
        qty=1.0,
        order_type="stop",
        stop_price=92.0,
        side="sell",
        protective=True,
        replaces=first.venue_client_id,
    )
    j = journal(first, second)
    assert [leg.leg for leg in j.legs_of("o-1")] == [0, 1]
    assert j.next_leg("o-1") == 2 and j.next_leg("o-unknown") == 0
    assert j.leg(first.venue_client_id).replaced_by == second.venue_client_id  # type: ignore[union-attr]
    moved = order(
        leg=1,
        qty=0.5,
        order_type="stop",
        stop_price=95.0,
        side="sell",
        protective=True,
        action="amend",
    )
    j.apply(moved)
    assert j.leg(second.venue_client_id).order.stop_price == 95.0  # type: ignore[union-attr]
    j.apply(order(leg=0, qty=1.0))  # a repeated new of a known leg changes nothing
    assert j.leg(first.venue_client_id).order.order_type == "stop"  # type: ignore[union-attr]


def test_perpetual_positions_and_realized_profit_in_the_settle_asset() -> None:
    buy = order("p-1", symbol=PERP, qty=2.0)
    sell = order("p-2", symbol=PERP, side="sell", qty=3.0)
    j = journal(buy, sell)
    j.apply(fill(buy, "t1", 1.0, 100.0))
    j.apply(fill(buy, "t2", 1.0, 110.0))
    j.apply(fill(sell, "t3", 3.0, 120.0, fee=0.36))
    assert j.position(PERP) == -1.0
    # closed 2 at 120 against an average entry of 105: +30, minus the fee
    assert abs(j.balance("USDT") - (30.0 - 0.36)) < 1e-9
    assert j.position_symbols() == [PERP] and j.tracked("USDT")
    inverse = order("i-1", symbol="BTC/USD:BTC", qty=100.0)
    j.apply(inverse)
    j.apply(fill(inverse, "t4", 100.0, 50000.0, fee_currency="BTC"))
    assert j.position("BTC/USD:BTC") == 100.0 and not j.tracked("BTC")


def test_baseline_halt_and_adoption_fold_from_discrepancies() -> None:
    j = journal()
    assert j.baseline_pending and not j.halted
    j.apply(
        Discrepancy(
            ts=T0,
            venue=VENUE,
            kind="balance_mismatch",
            action="baseline",
            asset="USDT",
            venue_value=1000.0,
            keel_value=0.0,
        )
    )
    assert j.balance("USDT") == 1000.0 and not j.baseline_pending
    j.apply(
        Discrepancy(
            ts=T0 + SEC,
            venue=VENUE,
            kind="position_mismatch",
            action="halt",
            symbol=PERP,
            venue_value=1.0,
            keel_value=0.0,
            detail="position differs",
        )
    )
    assert j.halted and j.halt_reason == "position differs"
    j.apply(VenueAdoption(ts=T0 + 2 * SEC, venue=VENUE, reason="checked by hand"))
    assert not j.halted and j.baseline_pending
    j.apply(
        Discrepancy(
            ts=T0 + 3 * SEC,
            venue=VENUE,
            kind="position_mismatch",
            action="adopted",
            symbol=PERP,
            venue_value=1.0,
            keel_value=0.0,
        )
    )
    assert j.position(PERP) == 1.0 and not j.baseline_pending
    assert j.position_symbols() == [PERP] and j.balance_assets() == ["USDT"]


def test_recorded_findings_about_orders_are_remembered() -> None:
    leg = order(side="sell", order_type="stop", stop_price=90.0, protective=True)
    j = journal(leg, answer(leg, "accepted", venue_order_id="v1"))
    found = Discrepancy(
        ts=T0 + 9 * SEC,
        venue=VENUE,
        kind="missing_stop",
        action="re-placed",
        venue_client_id=leg.venue_client_id,
        venue_order_id="v1",
    )
    j.apply(found)
    state = j.leg(leg.venue_client_id)
    assert state is not None and state.reported_missing and state.doubt_since == T0 + 9 * SEC
    assert j.reported("missing_stop", leg.venue_client_id, "v1")
    assert not j.reported("external_order", "", "v1")


def test_other_venues_events_are_ignored() -> None:
    j = journal(order(venue="bybit"))
    assert list(j.legs()) == []


def test_snapshot_restores_the_same_journal() -> None:
    leg = order(qty=2.0)
    j = journal(leg, answer(leg, "accepted", venue_order_id="v1"), fill(leg, "t1", 0.5, 100.0))
    again = VenueJournal.restore(j.snapshot())
    assert again.snapshot() == j.snapshot()
    assert again.position(BTC) == 0.5 and again.seen_trade(BTC, "t1")
    assert again.leg(leg.venue_client_id).state == "working"  # type: ignore[union-attr]
    copy = j.copy()
    copy.apply(fill(leg, "t2", 0.5, 100.0))
    assert j.position(BTC) == 0.5 and copy.position(BTC) == 1.0


def test_symbol_parts() -> None:
    assert symbol_parts("BTC/USDT") == symbol_parts("BTC/USDT")
    assert not symbol_parts("BTC/USDT").derivative
    parts = symbol_parts("BTC/USDT:USDT-251226")
    assert (parts.base, parts.quote, parts.settle) == ("BTC", "USDT", "USDT")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-1e12, 1e12, allow_nan=False), max_size=30), st.randoms())
def test_exact_sum_does_not_depend_on_order(values: list[float], rnd: random.Random) -> None:
    forward, shuffled = ExactSum(), ExactSum()
    for v in values:
        forward.add(v)
    mixed = list(values)
    rnd.shuffle(mixed)
    for v in mixed:
        shuffled.add(v)
    assert forward.value == shuffled.value


def _summary(j: VenueJournal) -> object:
    legs = sorted(
        (
            leg.venue_client_id,
            leg.state,
            leg.outcome,
            leg.cum_qty,
            leg.venue_order_id,
            sorted(leg.fills),
            [(q.ts, q.found) for q in leg.queries],
            leg.doubt_since,
        )
        for leg in j.legs()
    )
    money = [(s, j.position(s)) for s in (BTC, "ETH/USDT")]
    money += [(a, j.balance(a)) for a in ("BTC", "ETH", "USDT")]
    return legs, money, sorted(j.state.trades)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_the_fold_of_answers_is_order_insensitive_and_ignores_copies(data: st.DataObject) -> None:
    """Answers for known legs, in any order and with any copies (the same fact seen on the
    stream, by a poll, by a query and by reconciliation), fold to the same journal."""
    legs = [order("o-1", qty=1.0), order("o-2", symbol="ETH/USDT", side="sell", qty=3.0)]
    answers: list[VenueAnswer] = []
    for n, leg in enumerate(legs):
        answers.append(answer(leg, "unknown", source="submit", ts=T0 + SEC))
        answers.append(answer(leg, "unknown", source="query", ts=T0 + 2 * SEC))
        answers.append(
            answer(
                leg,
                "accepted",
                source="query",
                ts=T0 + 3 * SEC,
                venue_order_id="v-" + leg.client_order_id,
            )
        )
        parts = data.draw(st.integers(1, 4), label=f"parts{n}")
        qty = leg.qty / parts
        for i in range(parts):
            price = data.draw(st.floats(1.0, 1e5), label=f"price{n}-{i}")
            answers.append(fill(leg, f"t{n}-{i}", qty, price, fee=qty * price * 0.001))
        if data.draw(st.booleans(), label=f"cancel{n}"):
            answers.append(answer(leg, "canceled", source="cancel", ts=T0 + 9 * SEC))
    sources = ("stream", "poll", "reconcile")
    copies = [
        msg_copy(a, data.draw(st.sampled_from(sources), label="src"))
        for a in data.draw(st.lists(st.sampled_from(answers), max_size=12), label="copies")
    ]
    mixed = data.draw(st.permutations(answers + copies), label="order")
    assert _summary(journal(*legs, *answers)) == _summary(journal(*legs, *mixed))


def msg_copy(a: VenueAnswer, source: str) -> VenueAnswer:
    """The same fact as another source would record it: a fill seen by a poll or by
    reconciliation, later; other answers are repeated as they were (a query found at another
    time is another query, not a copy)."""
    if a.kind != "fill":
        return a
    return msgspec.structs.replace(a, source=source, ts=a.ts + 7)  # type: ignore[arg-type]


def test_a_refused_replacement_gives_the_order_its_old_stop_back() -> None:
    stop = order("s-1", side="sell", order_type="stop", stop_price=90.0, protective=True)
    moved = order(
        "s-1",
        leg=1,
        side="sell",
        action="amend",
        order_type="stop",
        stop_price=95.0,
        protective=True,
        replaces=stop.venue_client_id,
    )
    j = journal(stop)
    j.apply(answer(stop, "accepted", source="submit", venue_order_id="v-s-1"))
    j.apply(moved)
    assert j.leg(stop.venue_client_id).replaced_by == moved.venue_client_id  # type: ignore[union-attr]
    j.apply(answer(moved, "rejected", source="amend", reason="Stop price would trigger"))
    kept = j.leg(stop.venue_client_id)
    assert kept is not None and kept.state == "working" and kept.replaced_by == ""
