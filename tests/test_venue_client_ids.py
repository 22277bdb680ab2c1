"""Venue leg ids fit every exchange and come back the same; answer ids name one fact each."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.venue_events import VENUE_CLIENT_ID, VenueAnswer
from services.venues.client_ids import answer_event_id, leg_number, venue_client_id

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
T0 = 1_700_000_000_000_000_000


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=60), st.integers(0, 50))
def test_client_id_is_uuid_shaped_and_maps_back(venue: str, order: str, leg: int) -> None:
    cid = venue_client_id(venue, order, leg)
    assert UUID.fullmatch(cid) and VENUE_CLIENT_ID.fullmatch(cid)
    assert venue_client_id(venue, order, leg) == cid
    assert leg_number(venue, order, cid) == leg


def test_client_ids_differ_by_venue_order_and_leg() -> None:
    ids = {
        venue_client_id(venue, order, leg)
        for venue in ("binance", "bybit")
        for order in ("o-1", "o-2")
        for leg in range(3)
    }
    assert len(ids) == 12
    # the unit separator keeps "a"+"b\x1fc" apart from "a\x1fb"+"c"
    assert venue_client_id("a", "b", 0) != venue_client_id("a\x1fb", "", 0)
    assert leg_number("binance", "o-1", venue_client_id("binance", "o-2", 0)) is None
    assert leg_number("binance", "o-1", "external-1") is None


def test_negative_leg_is_refused() -> None:
    try:
        venue_client_id("binance", "o-1", -1)
    except ValueError as exc:
        assert "leg" in str(exc)
    else:
        raise AssertionError("a negative leg was accepted")


def _answer(kind: str, source: str = "stream", **fields: object) -> VenueAnswer:
    base: dict[str, object] = {
        "ts": T0,
        "kind": kind,
        "venue": "binance",
        "symbol": "BTC/USDT",
        "client_order_id": "o-1",
        "venue_client_id": venue_client_id("binance", "o-1", 0),
        "source": source,
    }
    if kind == "fill":
        base |= {"trade_id": "t1", "fill_qty": 0.1, "fill_price": 100.0}
    return VenueAnswer(**(base | fields))  # type: ignore[arg-type]


def test_a_fill_has_one_id_whatever_saw_it() -> None:
    stream = _answer("fill", "stream", ts=T0, fee=0.01)
    poll = _answer("fill", "poll", ts=T0 + 5, venue_ts=T0 - 3)
    recon = _answer("fill", "reconcile", ts=T0 + 99)
    assert answer_event_id(stream) == answer_event_id(poll) == answer_event_id(recon)
    assert answer_event_id(stream) != answer_event_id(_answer("fill", trade_id="t2"))
    other_venue = _answer("fill", venue="bybit")
    assert answer_event_id(other_venue) != answer_event_id(stream)


def test_order_facts_are_source_independent_and_distinct() -> None:
    acc = [
        _answer("accepted", s, ts=T0 + i, order_qty=1.0)
        for i, s in enumerate(("submit", "stream", "query"))
    ]
    assert len({answer_event_id(a) for a in acc}) == 1
    cancels = [
        _answer("canceled", s, ts=T0 + i, cum_qty=0.4) for i, s in enumerate(("cancel", "stream"))
    ]
    assert len({answer_event_id(a) for a in cancels}) == 1
    distinct = [
        acc[0],
        cancels[0],
        _answer("accepted", order_qty=1.0, cum_qty=0.4),
        _answer("canceled", cum_qty=0.0),
        _answer("expired", cum_qty=0.4),
        _answer("rejected", "submit", reason="-2010 insufficient balance"),
        _answer("rejected", "cancel", reason="-2011 unknown order"),
        _answer("unknown", "submit", ts=T0),
        _answer("unknown", "submit", ts=T0 + 1),
        _answer("unknown", "query", ts=T0 + 1),
        _answer("missing", "query", ts=T0 + 1),
        _answer("accepted", "amend", ts=T0 + 7, order_qty=1.0),
        _answer("accepted", "amend", ts=T0 + 8, order_qty=1.0),
    ]
    assert len({answer_event_id(a) for a in distinct}) == len(distinct)


def test_a_republished_unknown_keeps_its_id() -> None:
    first = _answer("unknown", "submit", ts=T0 + 3, reason="timeout")
    again = _answer("unknown", "submit", ts=T0 + 3, reason="timeout")
    assert answer_event_id(first) == answer_event_id(again)
