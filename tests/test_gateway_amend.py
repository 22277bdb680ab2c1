"""Amended protective stops at the venue gateway, against the exchange fakes on a real
nats-server: a trailing stop moved twice on every exchange leaves exactly one stop, at the
last trigger, with the position never left to a refusal. A spot account here holds only the
position, so each plain sell leg locks all of it (the case that forbids placing the new stop
first on Kraken spot); Binance spot swaps the stop in one ``order/cancelReplace`` request;
Bybit's conditional orders hold nothing until they trigger, so there (spot too) and on the
perpetuals the new stop is on the exchange before the old one is canceled; Kraken spot edits
the one stop in place (``AmendOrder``: same order, same client id), so it never leaves.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec
import pytest

from contracts.envelope import Envelope, content_id
from contracts.venue_events import Discrepancy, VenueAnswer, VenueOrder
from eventstore.bus import Bus
from services.venues.client_ids import venue_client_id
from tests.fakes.clock import ScaledClock
from tests.fakes.core import start_fake
from tests.fakes.ledger import DEFAULT_QUOTE_BALANCE
from tests.fakes.prices import default_symbols
from tests.test_gateway import CONFIG, KEY, RATE, VENUE, Harness, secret_for

EXCHANGES = ["binance", "binanceusdm", "bybit", "kraken", "krakenfutures"]
NEW_LEG = [e for e in EXCHANGES if e != "kraken"]  # Kraken spot amends in place
NEW_FIRST = ("binanceusdm", "bybit", "krakenfutures")
QTY = 0.01
_ORDER_KINDS = ("external_order", "missing_stop", "missing_order")


@pytest.fixture
async def held(
    bus: Bus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> AsyncIterator[Harness]:
    """A gateway on a fake whose spot account holds exactly ``QTY`` of the base asset."""
    exchange_id = getattr(request, "param", "binance")
    clock = ScaledClock(time.time_ns() - 3 * 3600 * 1_000_000_000, RATE)
    (spec,) = default_symbols(exchange_id, 1)
    balances = None
    if spec.kind == "spot":
        balances = {spec.quote: DEFAULT_QUOTE_BALANCE, spec.base: QTY}
    fake = await start_fake(exchange_id, [spec], clock, balances=balances)
    monkeypatch.setenv("KEEL_TEST_KEY", KEY)
    monkeypatch.setenv("KEEL_TEST_SECRET", secret_for(fake))
    h = Harness(bus, fake, clock, tmp_path / "work")
    try:
        yield h
    finally:
        if h.task is not None and not h.task.done():
            await h.stop(hard=True)
        await fake.stop()


async def _position_and_stop(h: Harness, trigger: float) -> VenueOrder:
    """A long position of ``QTY`` (bought on a perpetual; held on spot) and its stop."""
    if h.fake.specs[h.symbol].kind == "perpetual":
        entry = await h.send(qty=QTY)
        await h.answer(entry.venue_client_id, lambda a: a.kind == "fill", "the entry's fill")
    stop = await h.send(client_order_id="sl", order_type="stop", stop_price=trigger,
                        side="sell", qty=QTY, reduce_only=True, protective=True)  # fmt: skip
    await h.answer(stop.venue_client_id, _accepted, "the stop")
    return stop


async def _move(h: Harness, old: VenueOrder, number: int, trigger: float) -> VenueOrder:
    return await h.send(action="amend", client_order_id="sl", order_type="stop", side="sell",
                        venue_client_id=venue_client_id(VENUE, "sl", number),
                        replaces=old.venue_client_id, stop_price=trigger, qty=QTY,
                        reduce_only=True, protective=True)  # fmt: skip


def _accepted(a: VenueAnswer) -> bool:
    return a.kind == "accepted"


def _canceled(a: VenueAnswer) -> bool:
    return a.kind == "canceled"


def _open_stops(h: Harness) -> list:
    return [o for o in h.fake.account.orders(include_hidden=True) if o.is_open and o.stop_price]


@pytest.mark.parametrize("held", NEW_LEG, indirect=True)
async def test_a_trailing_stop_moved_twice_leaves_one_stop_at_the_last_trigger(
    held: Harness,
) -> None:
    h = held
    await h.start()
    bid = h.fake.snapshot(h.symbol).bid
    triggers = [round(bid * f, 1) for f in (0.5, 0.6, 0.7)]
    legs = [await _position_and_stop(h, triggers[0])]
    for number, trigger in enumerate(triggers[1:], start=1):
        legs.append(await _move(h, legs[-1], number, trigger))
        await h.answer(legs[-1].venue_client_id, _accepted, f"stop {number}")
        await h.answer(legs[-2].venue_client_id, _canceled, f"stop {number - 1} canceled")
    (left,) = _open_stops(h)
    assert (left.client_id, left.stop_price) == (legs[-1].venue_client_id, triggers[-1])
    for leg in legs[:-1]:
        assert [o.status for o in h.exchange_orders(leg.venue_client_id)] == ["canceled"]
    refused = [a for a in await h.answers() if a.kind in ("rejected", "unknown", "missing")]
    assert refused == []
    for old, new in itertools.pairwise(legs):
        (gone,) = h.exchange_orders(old.venue_client_id)
        (placed,) = h.exchange_orders(new.venue_client_id)
        if h.fake.exchange_id in NEW_FIRST:  # both stops on the exchange for a moment
            assert placed.created_ns < gone.updated_ns
    if h.fake.exchange_id == "binance":  # each move one request, nothing placed besides
        assert h.fake.requests["/api/v3/order/cancelReplace"] == 2
        assert h.fake.requests["/api/v3/order"] == 1
    if h.fake.exchange_id in ("binance", "binanceusdm"):
        await _refused_move(h, legs[-1])
    await h.stop()


async def _refused_move(h: Harness, stop: VenueOrder) -> None:
    """A third move the exchange refuses (a sell stop above the market). On a perpetual the
    new leg goes first, so the old stop keeps working and is not canceled later; Binance
    spot's cancel-replace cancels the old one before the new one is refused (-2021), and
    says so: the position is bare, and the order manager closes it."""
    moved = await _move(h, stop, 3, round(h.fake.snapshot(h.symbol).ask * 1.5, 1))
    refused = await h.answer(moved.venue_client_id, lambda a: a.kind == "rejected", "refusal")
    assert "would" in refused.reason and "trigger" in refused.reason, refused.reason
    if h.fake.exchange_id == "binance":
        await h.answer(stop.venue_client_id, _canceled, "the old stop canceled")
        assert _open_stops(h) == []
        return
    await h.clock.sleep(5.0)  # settling rounds: the old stop's cancel was withdrawn
    (left,) = _open_stops(h)
    assert left.client_id == stop.venue_client_id
    assert not [a for a in await h.answers(stop.venue_client_id) if _canceled(a)]


def _in_place(h: Harness, stop: VenueOrder, trigger: float, qty: float = QTY) -> VenueOrder:
    """The order manager's in-place amendment: the same leg, ``replaces`` = itself."""
    return VenueOrder(ts=h.clock.now_ns(), action="amend", client_order_id="sl",
                      venue_client_id=stop.venue_client_id, replaces=stop.venue_client_id,
                      strategy="s1", venue=VENUE, symbol=h.symbol, side="sell", qty=qty,
                      order_type="stop", stop_price=trigger, reduce_only=True,
                      protective=True)  # fmt: skip


async def _publish(h: Harness, order: VenueOrder) -> None:
    event_id = content_id("test-order", order.venue_client_id, order.action, order.ts)
    await h.bus.publish(order, Envelope.root(event_id, order.ts))


async def _amend_answers(h: Harness, vcid: str, count: int) -> list[VenueAnswer]:
    """The first ``count`` answers to in-place amendments of ``vcid``, waited for."""
    deadline = time.monotonic() + 20.0
    while True:
        found = [a for a in await h.answers(vcid) if a.source == "amend"]
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, f"amend answers: {found}"
        await h.clock.sleep(0.5)


@pytest.mark.parametrize("held", ["kraken"], indirect=True)
async def test_a_kraken_spot_stop_is_amended_in_place_and_never_leaves_the_exchange(
    held: Harness,
) -> None:
    h = held
    await h.start(msgspec.structs.replace(CONFIG, reconcile_every_s=2.0))
    bid = h.fake.snapshot(h.symbol).bid
    triggers = [round(bid * f, 1) for f in (0.5, 0.6, 0.7)]
    stop = await _position_and_stop(h, triggers[0])
    (order,) = h.exchange_orders(stop.venue_client_id)
    for n, trigger in enumerate(triggers[1:], start=1):
        await _publish(h, _in_place(h, stop, trigger))
        answers = await _amend_answers(h, stop.venue_client_id, n)
        assert [a.kind for a in answers] == ["accepted"] * n
        assert _open_stops(h) == [order] and order.stop_price == trigger  # the same order
    assert len({a.venue_order_id for a in answers}) == 1  # one exchange order throughout
    assert h.fake.requests["/0/private/AmendOrder"] == 2
    assert h.fake.requests["/0/private/CancelOrder"] == 0
    # A move the exchange refuses (twice the held quantity: the account cannot lock it)
    # leaves the order as it was: the old trigger protects, nothing is canceled.
    await _publish(h, _in_place(h, stop, round(bid * 0.8, 1), qty=2 * QTY))
    *_, refused = await _amend_answers(h, stop.venue_client_id, 3)
    assert refused.kind == "rejected" and "Insufficient funds" in refused.reason
    assert _open_stops(h) == [order]
    assert (order.stop_price, order.qty) == (triggers[-1], QTY)
    assert [o.status for o in h.exchange_orders(stop.venue_client_id)] == ["new"]
    kinds = {a.kind for a in await h.answers(stop.venue_client_id)}
    assert kinds <= {"accepted", "rejected"}, kinds  # never canceled, never in doubt
    journal = h.gateway.journal.leg(stop.venue_client_id) if h.gateway else None
    assert journal is not None and journal.order.stop_price == triggers[-1]
    assert journal.state == "working"
    await h.clock.sleep(6.0)  # reconciliations every 2 s: the amended order is the same leg
    found = await h.events(Discrepancy, f"venue.recon.{VENUE}")
    assert [d for d in found if d.venue_client_id or d.kind in _ORDER_KINDS] == [], found
    await h.stop()


@pytest.mark.parametrize("held", ["kraken"], indirect=True)
async def test_a_lost_kraken_amend_answer_is_settled_by_a_query_and_sent_again_only_if_needed(
    held: Harness,
) -> None:
    """The exchange amended the stop but its answer never came (``unknown``): a query
    shows the order carries the new trigger, so the amendment is ``accepted`` with no
    second request. Then an answer lost for a move the order does not carry (its trigger
    put back on the exchange meanwhile): the amendment is sent again. A query comes 20
    exchange seconds (2 s here) after the amendment: time to put the trigger back."""
    h = held
    await h.start(msgspec.structs.replace(CONFIG, unknown_within_s=40.0))
    bid = h.fake.snapshot(h.symbol).bid
    stop = await _position_and_stop(h, round(bid * 0.5, 1))
    (order,) = h.exchange_orders(stop.venue_client_id)
    h.fake.account.faults.hang_next = 1
    await _publish(h, _in_place(h, stop, round(bid * 0.6, 1)))
    lost, settled = await _amend_answers(h, stop.venue_client_id, 2)
    assert (lost.kind, settled.kind) == ("unknown", "accepted")
    assert h.fake.requests["/0/private/AmendOrder"] == 1 and order.stop_price == round(bid * 0.6, 1)
    h.fake.account.faults.hang_next = 1
    await _publish(h, _in_place(h, stop, round(bid * 0.7, 1)))
    await _amend_answers(h, stop.venue_client_id, 3)
    h.fake.account.amend(client_id=stop.venue_client_id, stop_price=round(bid * 0.6, 1))
    *_, again = await _amend_answers(h, stop.venue_client_id, 4)
    assert again.kind == "accepted" and h.fake.requests["/0/private/AmendOrder"] == 3
    assert _open_stops(h) == [order] and order.stop_price == round(bid * 0.7, 1)
    assert not [o for o in h.exchange_orders(stop.venue_client_id) if o.status == "canceled"]
    await h.stop()


@pytest.mark.parametrize("held", ["kraken"], indirect=True)
async def test_a_kraken_amend_unanswered_at_a_crash_is_not_sent_again_when_the_order_has_it(
    held: Harness,
) -> None:
    h = held
    await h.start()
    bid = h.fake.snapshot(h.symbol).bid
    stop = await _position_and_stop(h, round(bid * 0.5, 1))
    (order,) = h.exchange_orders(stop.venue_client_id)
    h.fake.account.faults.ack_delay_s = 1.0  # the exchange acts, its answer waits
    await _publish(h, _in_place(h, stop, round(bid * 0.6, 1)))
    await until_true(lambda: order.stop_price == round(bid * 0.6, 1), "the exchange amended")
    await h.stop(hard=True)  # the gateway dies before it hears the answer
    h.fake.account.faults.ack_delay_s = 0.0
    assert [a for a in await h.answers(stop.venue_client_id) if a.source == "amend"] == []
    await h.start()
    (settled,) = await _amend_answers(h, stop.venue_client_id, 1)
    assert settled.kind == "accepted"
    assert h.fake.requests["/0/private/AmendOrder"] == 1  # not sent again
    assert _open_stops(h) == [order]
    await h.stop()


async def until_true(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 20.0
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("held", ["krakenfutures"], indirect=True)
async def test_an_ioc_limit_on_kraken_futures_never_rests(held: Harness) -> None:
    h = held
    await h.start()
    bid = h.fake.snapshot(h.symbol).bid
    ioc = await h.send(order_type="limit", limit_price=round(bid * 0.5, 1), qty=QTY,
                       time_in_force="IOC")  # fmt: skip
    refused = await h.answer(ioc.venue_client_id, lambda a: a.kind == "rejected", "no fill")
    assert "iocWouldNotExecute" in refused.reason or "OrderNotFillable" in refused.reason
    assert not [o for o in h.exchange_orders(ioc.venue_client_id) if o.is_open]
    fok = await h.send(order_type="limit", limit_price=bid, qty=QTY, time_in_force="FOK")
    no = await h.answer(fok.venue_client_id, lambda a: a.kind == "rejected", "no FOK")
    assert "no fill-or-kill" in no.reason and not h.exchange_orders(fok.venue_client_id)
    await h.stop()
