"""The recorded venue's order check: each market's venue orders must come again in their
recorded order, byte for byte and under the same ids; two markets' orders may interleave
differently (the live workers took them in arrival order, docs/replay.md)."""

from __future__ import annotations

import pytest

from contracts.codec import encode
from contracts.envelope import Envelope
from contracts.events import Event
from contracts.subjects import subject_for
from contracts.venue_events import VenueOrder
from eventstore.errors import KeelError
from replay.engine import LazyEnvelope
from replay.recorded_venue import OrderCheck, Recorded

T = 1_700_000_000_000_000_000


def order(symbol: str, n: int, qty: float = 1.0) -> tuple[VenueOrder, Envelope]:
    vcid = f"{symbol.replace('/', '')}-{n}"
    event = VenueOrder(
        ts=T + n,
        action="new",
        client_order_id=f"o-{vcid}",
        venue_client_id=vcid,
        strategy="trend",
        venue="ib",
        symbol=symbol,
        side="buy",
        qty=qty,
    )
    return event, Envelope.root(f"id-{vcid}", T + n)


def recorded(items: list[tuple[VenueOrder, Envelope]]) -> list[Recorded]:
    return [
        Recorded(T + seq, "VENUE", seq, subject_for(e), env, e, "execution", encode(e))
        for seq, (e, env) in enumerate(items, start=1)
    ]


class Sink:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, subject: str, event: Event, envelope: LazyEnvelope, producer: str) -> None:
        self.seen.append(subject)


LIVE = [order("AAPL", 1), order("ES", 2), order("AAPL", 3), order("ES", 4)]


def replay(check: OrderCheck, items: list[tuple[VenueOrder, Envelope]]) -> None:
    for event, env in items:
        check(subject_for(event), event, env, "execution")
    check.finish()


def test_markets_may_interleave_differently_but_each_keeps_its_order() -> None:
    sink = Sink()
    check = OrderCheck(recorded(LIVE), sink)
    replay(check, [LIVE[1], LIVE[0], LIVE[3], LIVE[2]])
    assert check.checked == 4 and len(sink.seen) == 4


def test_one_markets_orders_in_another_order_are_refused() -> None:
    check = OrderCheck(recorded(LIVE), Sink())
    with pytest.raises(KeelError, match=r"venue order 1, new AAPL-3 \(ib AAPL\), differs"):
        replay(check, [LIVE[2], LIVE[1], LIVE[0], LIVE[3]])


def test_a_changed_field_is_named() -> None:
    changed = order("ES", 2, qty=2.0)
    check = OrderCheck(recorded(LIVE), Sink())
    with pytest.raises(KeelError, match=r"qty 1.0 -> 2.0"):
        replay(check, [LIVE[0], changed])


def test_an_extra_or_a_missing_order_is_refused() -> None:
    with pytest.raises(KeelError, match="that the session never sent"):
        replay(OrderCheck(recorded(LIVE[:1]), Sink()), LIVE[:2])
    with pytest.raises(KeelError, match=r"the replay 3 \(the first missing is VENUE #4\)"):
        replay(OrderCheck(recorded(LIVE), Sink()), LIVE[:3])
