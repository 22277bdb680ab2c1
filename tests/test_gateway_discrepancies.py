"""Every discrepancy kind of docs/reconciliation.md, produced on purpose against the exchange
fakes, through the real gateway on a real nats-server.

The fakes' account faults make each one happen: a read that fails (a 5xx), a fill the
private stream never delivered (or delivers late), an order someone else placed, a Keel leg
the exchange shows only after Keel gave it up, an order or a stop that simply vanishes, a
position or a balance changed behind Keel's back. What the gateway stores is read back from
the log (``Discrepancy`` on ``venue.recon.<venue>``, ``VenueAnswer``, ``VenueOrder``,
``VenueStatus``), and what it did is read from the fake (the cancel, the re-placed stop).
Exchange time runs ten times faster than the wall (``ScaledClock``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec
import pytest

from contracts.envelope import Envelope
from contracts.venue_events import Discrepancy, VenueAdoption, VenueAnswer, VenueOrder
from eventstore.bus import Bus
from services.venues.client_ids import venue_client_id
from tests.fakes.bybit_rows import category_of, exec_id_text, order_id_text
from tests.fakes.clock import ScaledClock
from tests.fakes.core import start_fake
from tests.fakes.prices import default_symbols, snap
from tests.fakes.records import FakeOrder
from tests.test_gateway import (
    CONFIG,
    KEY,
    RATE,
    VENUE,
    Harness,
    _state,
    harness,
    secret_for,
    until,
)

__all__ = ["harness"]  # the fixture, imported to be used here
FAST = msgspec.structs.replace(CONFIG, reconcile_every_s=2.0, poll_after_s=3600.0)
"""Reconciliation every 2 exchange seconds (0.2 s of wall); no REST polling, so a fill the
stream did not deliver is reconciliation's to find."""
QUIET = msgspec.structs.replace(CONFIG, reconcile_every_s=3600.0, poll_after_s=3600.0)
"""Only the start's reconciliation runs by itself: the test runs the others."""
SETTLE_S = 5.0
"""``Tolerance.settle_s``: how long after a leg's last activity its numbers are judged."""


async def recon(harness: Harness) -> list[Discrepancy]:
    return await harness.events(Discrepancy, f"venue.recon.{VENUE}")


async def recorded(
    harness: Harness, check: Callable[[Discrepancy], bool], what: str, timeout: float = 20.0
) -> Discrepancy:
    deadline = time.monotonic() + timeout
    while True:
        for found in await recon(harness):
            if check(found):
                return found
        if harness.task is not None and harness.task.done():
            harness.task.result()
        if time.monotonic() > deadline:
            got = [(d.kind, d.action, d.detail) for d in await recon(harness)]
            raise AssertionError(f"timed out waiting for {what}; discrepancies: {got}")
        await asyncio.sleep(0.05)


async def reconciliations(harness: Harness, n: int) -> None:
    """Wait for ``n`` more reconciliations to end."""
    assert harness.gateway is not None
    reconciler = harness.gateway.reconciler
    target = reconciler.runs + n
    await until(lambda: _ran(reconciler.runs, target), f"{n} more reconciliations")


async def _ran(runs: int, target: int) -> bool:
    return runs >= target


def resting_price(harness: Harness) -> float:
    """A buy limit price the market does not reach during a test."""
    spec = harness.fake.specs[harness.symbol]
    return snap(harness.fake.snapshot(harness.symbol).bid * 0.8, spec.tick_size)


def order_text(harness: Harness, order_id: int) -> str:
    """The exchange's id of a fake order as ccxt reports it (Bybit's spot ids are offset)."""
    if harness.fake.exchange_id != "bybit":
        return str(order_id)
    return order_id_text(category_of(harness.fake.specs[harness.symbol]), order_id)


def trade_text(harness: Harness, trade_id: int) -> str:
    if harness.fake.exchange_id != "bybit":
        return str(trade_id)
    return exec_id_text(category_of(harness.fake.specs[harness.symbol]), trade_id)


def accepted(a: VenueAnswer) -> bool:
    return a.kind == "accepted"


@pytest.mark.parametrize("harness", ["kraken"], indirect=True)
async def test_a_failed_read_concludes_nothing(harness: Harness) -> None:
    gateway = await harness.start(QUIET)
    faults = harness.fake.account.faults
    faults.silent_user_stream = True
    order = await harness.send(order_type="limit", limit_price=resting_price(harness), qty=0.1)
    vcid = order.venue_client_id
    await harness.answer(vcid, accepted, "the acknowledgement")
    placed = harness.exchange_orders(vcid)[0]
    faults.fill_silently(placed.order_id)
    base = harness.fake.specs[harness.symbol].base
    faults.set_balance(base, 123.0)
    await harness.clock.sleep(2 * SETTLE_S)  # nothing is too fresh to judge
    before = len(await recon(harness))
    harness.fake.faults.http_errors.extend([503, 503, 503])  # open orders, trades, balances
    seen = dict(harness.fake.requests)
    await gateway.reconciler.run_once()
    assert not harness.fake.faults.http_errors
    asked = {k: v - seen.get(k, 0) for k, v in harness.fake.requests.items() if v != seen.get(k, 0)}
    assert asked == {
        "/0/private/OpenOrders": 1,
        "/0/private/TradesHistory": 1,
        "/0/private/BalanceEx": 1,
    }
    found = (await recon(harness))[before:]
    assert sorted(d.detail.split(":")[0] for d in found) == ["balances", "open orders", "trades"]
    assert {(d.kind, d.action) for d in found} == {("query_failed", "nothing concluded")}
    assert all("EService:Unavailable" in d.detail for d in found), [d.detail for d in found]
    assert not [a for a in await harness.answers(vcid) if a.kind == "fill"]
    assert gateway.state == "running" and not gateway.journal.halted
    # The same account read in full: the fill is inferred and the balance halts the venue.
    await gateway.reconciler.run_once()
    fills = [a for a in await harness.answers(vcid) if a.kind == "fill"]
    assert [a.source for a in fills] == ["reconcile"]
    assert gateway.state == "halted"
    halt = next(d for d in await recon(harness) if d.action == "halt")
    assert (halt.kind, halt.asset, halt.venue_value) == ("balance_mismatch", base, 123.0)
    # The operator adopts; the adoption's reconciliation fails: the halt is lifted, but no
    # baseline is taken from a failed view. The next complete one takes it.
    before = len(await recon(harness))
    harness.fake.faults.http_errors.extend([503, 503, 503])
    adoption = VenueAdoption(ts=harness.clock.now_ns(), venue=VENUE, reason="checked by hand")
    await harness.bus.publish(adoption, Envelope.root("adopt-balance", adoption.ts))
    await until(lambda: _state(harness, "running", after="halted"), "the halt lifted", 30)
    found = (await recon(harness))[before:]
    assert {d.kind for d in found} == {"query_failed"} and len(found) == 3
    assert gateway.journal.baseline_pending
    await gateway.reconciler.run_once()
    adopted = [d for d in await recon(harness) if d.action == "adopted"]
    assert [(d.kind, d.asset, d.venue_value) for d in adopted] == [
        ("balance_mismatch", base, 123.0)
    ]
    assert gateway.journal.balance(base) == pytest.approx(123.0)
    assert gateway.state == "running" and not gateway.journal.baseline_pending
    await harness.stop()


@pytest.mark.parametrize("harness", ["binance"], indirect=True)
async def test_a_fill_the_stream_missed_is_inferred_once(harness: Harness) -> None:
    gateway = await harness.start(FAST)
    order = await harness.send(order_type="limit", limit_price=resting_price(harness), qty=0.1)
    vcid = order.venue_client_id
    await harness.answer(vcid, accepted, "the acknowledgement")
    faults = harness.fake.account.faults
    faults.hold_user_stream = True  # the stream's frames of the fill come late
    placed = faults.fill_now(harness.exchange_orders(vcid)[0].order_id)
    trade = next(f for f in harness.fake.account.fills() if f.order_id == placed.order_id)
    inferred = await harness.answer(vcid, lambda a: a.kind == "fill", "the inferred fill")
    assert inferred.source == "reconcile" and inferred.trade_id == str(trade.trade_id)
    assert (inferred.fill_qty, inferred.fill_price, inferred.fee) == pytest.approx(
        (trade.qty, trade.price, trade.fee)
    )
    missed = await recorded(harness, lambda d: d.kind == "missed_fill", "the missed fill")
    assert (missed.action, missed.trade_id, missed.venue_client_id) == (
        "inferred fill",
        str(trade.trade_id),
        vcid,
    )
    frames = gateway.stream.frames
    faults.release_user_stream()  # the stream's copy arrives now
    await until(lambda: _more(gateway.stream.frames, frames), "the late stream frames")
    await reconciliations(harness, 2)
    fills = [a for a in await harness.answers(vcid) if a.kind == "fill"]
    assert len(fills) == 1
    assert gateway.journal.position(harness.symbol) == pytest.approx(0.1)
    assert len([d for d in await recon(harness) if d.kind == "missed_fill"]) == 1
    assert gateway.state == "running"
    await harness.stop()


async def _more(now: int, before: int) -> bool:
    return now > before


@pytest.mark.parametrize("harness", ["bybit"], indirect=True)
async def test_an_external_order_is_recorded_once_and_never_traded(harness: Harness) -> None:
    gateway = await harness.start(FAST)
    # Keel trades the symbol (Bybit lists open orders per symbol: those Keel has legs on).
    mine = await harness.send(order_type="limit", limit_price=resting_price(harness), qty=0.1)
    await harness.answer(mine.venue_client_id, accepted, "Keel's order")
    faults = harness.fake.account.faults
    theirs = faults.external(harness.symbol, "buy", "limit", 0.1, price=resting_price(harness))
    found = await recorded(harness, lambda d: d.kind == "external_order", "the external order")
    assert (found.action, found.venue_order_id) == (
        "recorded; never traded",
        order_text(harness, theirs.order_id),
    )
    assert found.venue_client_id == theirs.client_id
    await reconciliations(harness, 3)
    external = [d for d in await recon(harness) if d.kind == "external_order"]
    assert len(external) == 1
    assert theirs.is_open  # not canceled, not amended: not Keel's to manage
    assert {a.venue_client_id for a in await harness.answers()} == {mine.venue_client_id}
    orders = await harness.events(VenueOrder, f"venue.order.{VENUE}.>")
    assert {o.venue_client_id for o in orders} == {mine.venue_client_id}
    # It trades: not a fill of Keel's; the base balance differs and the venue halts.
    faults.fill_silently(theirs.order_id)
    trade = next(f for f in harness.fake.account.fills() if f.order_id == theirs.order_id)
    await until(lambda: _state(harness, "halted"), "the halt")
    base = harness.fake.specs[harness.symbol].base
    halts = [d for d in await recon(harness) if d.action == "halt"]
    assert any(d.kind == "balance_mismatch" and d.asset == base for d in halts), halts
    assert any(trade_text(harness, trade.trade_id) in d.detail for d in halts), [
        d.detail for d in halts
    ]
    assert not [a for a in await harness.answers() if a.kind == "fill"]
    assert gateway.journal.balance(base) != pytest.approx(harness.fake.account.balances[base].total)
    await harness.stop()


@pytest.mark.parametrize("harness", ["bybit"], indirect=True)
async def test_a_leg_given_up_but_open_on_the_exchange_is_canceled(harness: Harness) -> None:
    gateway = await harness.start(FAST)
    faults = harness.fake.account.faults
    faults.silent_user_stream = True  # only queries can tell
    faults.hidden_s = 20.0  # the exchange lists the order 20 exchange seconds late
    faults.hang_next = 1  # placed, and the answer never comes
    order = await harness.send(order_type="limit", limit_price=resting_price(harness), qty=0.1)
    vcid = order.venue_client_id
    await harness.answer(vcid, lambda a: a.kind == "missing", "the fate rule's verdict", 30)
    faults.hidden_s = 0.0
    placed = harness.exchange_orders(vcid)[0]
    assert placed.is_open  # Keel gave it up; the exchange still has it
    found = await recorded(
        harness, lambda d: d.kind == "external_order" and d.action == "cancel", "the cancel", 30
    )
    assert (found.venue_client_id, found.venue_order_id) == (
        vcid,
        order_text(harness, placed.order_id),
    )
    await until(lambda: _closed(placed), "the cancel on the exchange")
    assert placed.status == "canceled"
    await reconciliations(harness, 3)
    assert len([d for d in await recon(harness) if d.kind == "external_order"]) == 1
    assert len(harness.exchange_orders(vcid)) == 1  # canceled, never sent again
    assert gateway.state == "running"
    await harness.stop()


async def _closed(order: FakeOrder) -> bool:
    return not order.is_open


@pytest.mark.parametrize("harness", ["binance"], indirect=True)
async def test_a_missing_order_is_queried_and_the_fate_rule_decides(harness: Harness) -> None:
    gateway = await harness.start(FAST)
    faults = harness.fake.account.faults
    price = resting_price(harness)
    gone = await harness.send(order_type="limit", limit_price=price, qty=0.1)
    ended = await harness.send(order_type="limit", limit_price=price, qty=0.1)
    for leg in (gone, ended):
        await harness.answer(leg.venue_client_id, accepted, "the acknowledgement")
    faults.vanish(harness.exchange_orders(gone.venue_client_id)[0].order_id)
    faults.cancel_silently(harness.exchange_orders(ended.venue_client_id)[0].order_id)
    # The canceled one: the query by client id finds it canceled.
    canceled = await harness.answer(
        ended.venue_client_id, lambda a: a.kind == "canceled", "the query's answer"
    )
    assert canceled.source == "query"
    # The vanished one: queries keep missing; the venue once acknowledged it, so it fails.
    missing = await harness.answer(
        gone.venue_client_id, lambda a: a.kind == "missing", "the fate rule's verdict", 30
    )
    assert missing.source == "query" and missing.reason
    misses = [
        a
        for a in await harness.answers(gone.venue_client_id)
        if a.kind == "unknown" and a.source == "query"
    ]
    assert len(misses) >= CONFIG.unknown_queries
    await reconciliations(harness, 3)
    reported = [d for d in await recon(harness) if d.kind == "missing_order"]
    assert sorted(d.venue_client_id for d in reported) == sorted(
        [gone.venue_client_id, ended.venue_client_id]
    )
    assert {d.action for d in reported} == {"query"}
    assert not harness.exchange_orders(gone.venue_client_id)  # never sent again
    assert gateway.state == "running"
    await harness.stop()


@pytest.mark.parametrize("harness", ["binanceusdm"], indirect=True)
async def test_a_vanished_stop_is_placed_again_capped_at_the_position(harness: Harness) -> None:
    gateway = await harness.start(FAST)
    await harness.send(qty=0.02)
    await until(lambda: _position(harness, 0.02), "the entry's fills")
    last = harness.fake.snapshot(harness.symbol).bid
    spec = harness.fake.specs[harness.symbol]
    stop_price = snap(last * 0.5, spec.tick_size)
    stop = await harness.send(
        client_order_id="stop1",
        order_type="stop",
        stop_price=stop_price,
        side="sell",
        qty=0.02,
        reduce_only=True,
        protective=True,
    )
    await harness.answer(stop.venue_client_id, accepted, "the stop")
    await harness.send(side="sell", qty=0.01, reduce_only=True)  # half the position closed
    await until(lambda: _position(harness, 0.01), "the partial close")
    harness.fake.account.faults.vanish(harness.exchange_orders(stop.venue_client_id)[0].order_id)
    again = venue_client_id(VENUE, "stop1", 1)
    found = await recorded(harness, lambda d: d.kind == "missing_stop", "the missing stop")
    assert found.action == f"re-placed as {again}" and found.venue_client_id == stop.venue_client_id
    await harness.answer(again, accepted, "the re-placed stop")
    orders = [
        o
        for o in await harness.events(VenueOrder, f"venue.order.{VENUE}.>")
        if o.venue_client_id == again
    ]
    assert len(orders) == 1
    new = orders[0]
    assert (new.replaces, new.order_type, new.stop_price, new.side) == (
        stop.venue_client_id,
        "stop",
        stop_price,
        "sell",
    )
    assert new.qty == pytest.approx(0.01) and new.reduce_only and new.protective
    placed = harness.exchange_orders(again)
    assert len(placed) == 1 and placed[0].is_open and placed[0].algo and placed[0].reduce_only
    assert placed[0].qty == pytest.approx(0.01) and placed[0].stop_price == stop_price
    await reconciliations(harness, 3)
    assert len([d for d in await recon(harness) if d.kind == "missing_stop"]) == 1
    assert len(harness.exchange_orders(again)) == 1
    queried = [a for a in await harness.answers(stop.venue_client_id) if a.source == "query"]
    assert queried, "the vanished leg was not queried"
    assert gateway.state == "running"
    await harness.stop()


async def _position(harness: Harness, qty: float) -> bool:
    position = harness.fake.account.positions.get(harness.symbol)
    mine = harness.gateway.journal.position(harness.symbol) if harness.gateway else 0.0
    return position is not None and abs(position.qty - qty) < 1e-9 and abs(mine - qty) < 1e-9


@pytest.mark.parametrize("harness", ["krakenfutures"], indirect=True)
async def test_a_baseline_then_a_position_changed_behind_keels_back_halts_until_adopted(
    harness: Harness,
) -> None:
    gateway = await harness.start(FAST)
    # The first reconciliation: the venue's numbers are the starting point, once.
    balances = {a: b.total for a, b in harness.fake.account.balances.items() if b.total}
    baseline = {d.asset: d for d in await recon(harness) if d.action == "baseline"}
    assert set(baseline) == set(balances) and balances
    for asset, total in balances.items():
        assert (baseline[asset].kind, baseline[asset].keel_value) == ("balance_mismatch", 0.0)
        assert baseline[asset].venue_value == pytest.approx(total)
        assert gateway.journal.balance(asset) == pytest.approx(total)
    assert gateway.state == "running" and not gateway.journal.baseline_pending
    await harness.send(qty=0.01)
    await until(lambda: _position(harness, 0.01), "the entry's fill")
    # The position changes behind Keel's back: the venue halts with both numbers.
    faults = harness.fake.account.faults
    faults.set_position(harness.symbol, 0.5)
    await until(lambda: _state(harness, "halted"), "the halt", 30)
    halt = await recorded(harness, lambda d: d.action == "halt", "the halt's discrepancy")
    assert (halt.kind, halt.symbol) == ("position_mismatch", harness.symbol)
    assert (halt.venue_value, halt.keel_value) == pytest.approx((0.5, 0.01))
    refused = await harness.send(qty=0.01)
    answer = await harness.answer(refused.venue_client_id, lambda a: a.kind == "rejected", "no")
    assert answer.reason.startswith("venue halted")
    await reconciliations(harness, 2)
    positions = [d for d in await recon(harness) if d.kind == "position_mismatch"]
    assert [d.action for d in positions] == ["halt"]  # not reported again every cycle
    faults.set_position(harness.symbol, 0.6)  # ... only when the numbers change
    again = await recorded(harness, lambda d: d.action == "halt" and d.venue_value == 0.6, "0.6")
    assert again.keel_value == pytest.approx(0.01)
    adoption = VenueAdoption(ts=harness.clock.now_ns(), venue=VENUE, reason="checked by hand")
    await harness.bus.publish(adoption, Envelope.root("adopt-position", adoption.ts))
    await until(lambda: _state(harness, "running", after="halted"), "the halt lifted", 30)
    adopted = await recorded(
        harness, lambda d: d.kind == "position_mismatch" and d.action == "adopted", "adopted"
    )
    assert (adopted.venue_value, adopted.keel_value) == pytest.approx((0.6, 0.01))
    assert gateway.journal.position(harness.symbol) == pytest.approx(0.6)
    await reconciliations(harness, 3)
    assert gateway.state == "running" and not gateway.journal.halted
    assert len([d for d in await recon(harness) if d.action == "baseline"]) == len(baseline)
    await harness.stop()


@pytest.fixture
async def bybit_perpetuals(
    bus: Bus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Harness]:
    """Bybit with two linear perpetuals (the ``harness`` fixture's fake lists one market)."""
    clock = ScaledClock(time.time_ns() - 3 * 3600 * 1_000_000_000, RATE)
    fake = await start_fake("bybit", default_symbols("bybit", 2, "perpetual"), clock)
    monkeypatch.setenv("KEEL_TEST_KEY", KEY)
    monkeypatch.setenv("KEEL_TEST_SECRET", secret_for(fake))
    h = Harness(bus, fake, clock, tmp_path / "work")
    try:
        yield h
    finally:
        if h.task is not None and not h.task.done():
            await h.stop(hard=True)
        await fake.stop()


async def test_positions_on_two_bybit_perpetuals_are_compared(bybit_perpetuals: Harness) -> None:
    """ccxt asks Bybit for one symbol's positions at a time (it refuses a list of two): the
    positions part must not fail for good once Keel trades a second perpetual."""
    harness = bybit_perpetuals
    await harness.start(FAST)
    first, second = sorted(harness.fake.specs)
    for symbol in (first, second):
        harness.symbol = symbol
        await harness.send(qty=0.01)
        await until(lambda: _position(harness, 0.01), f"the fill on {symbol}")
    harness.fake.account.faults.set_position(first, 0.5)
    await until(lambda: _state(harness, "halted"), "the halt", 30)
    halt = await recorded(harness, lambda d: d.action == "halt", "the halt's discrepancy")
    assert (halt.kind, halt.symbol) == ("position_mismatch", first)
    assert (halt.venue_value, halt.keel_value) == pytest.approx((0.5, 0.01))
    failed = [d.detail for d in await recon(harness) if d.kind == "query_failed"]
    assert not failed
    await harness.stop()
