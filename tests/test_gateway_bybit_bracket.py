"""A bracket on Bybit spot through the venue gateway, with the account holding only the
position (and the parameters that make it so): Bybit's conditional orders hold nothing until they trigger, so the stop and the
target (sent as a conditional take-profit-limit) both rest on the same base; a moved stop is
on the exchange before the old one is canceled; a gap down fires the stop, which sells the
position, and the target is canceled (the order manager's OCO cancel, sent here as it sends
it)."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from contracts.venue_events import VenueAnswer
from eventstore.bus import Bus
from services.venues.client_ids import venue_client_id
from tests.fakes.clock import ScaledClock
from tests.fakes.core import start_fake
from tests.fakes.ledger import DEFAULT_QUOTE_BALANCE
from tests.fakes.prices import decimals, default_symbols, snap
from tests.gateway_session import DroppingPath
from tests.test_gateway import KEY, RATE, VENUE, Harness, secret_for
from tests.test_gateway_answers import calls_for, leg_order

QTY = 0.01
DROP = 0.8


@pytest.fixture
async def bybit_spot(
    bus: Bus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Harness, DroppingPath]]:
    """A gateway on the Bybit fake, spot, whose account holds quote and no base asset."""
    clock = ScaledClock(time.time_ns() - 3 * 3600 * 1_000_000_000, RATE)
    (spec,) = default_symbols("bybit", 1)
    path = DroppingPath()
    balances = {spec.quote: DEFAULT_QUOTE_BALANCE, spec.base: 0.0}
    fake = await start_fake("bybit", [spec], clock, path=path, balances=balances)
    monkeypatch.setenv("KEEL_TEST_KEY", KEY)
    monkeypatch.setenv("KEEL_TEST_SECRET", secret_for(fake))
    h = Harness(bus, fake, clock, tmp_path / "work")
    try:
        yield h, path
    finally:
        if h.task is not None and not h.task.done():
            await h.stop(hard=True)
        await fake.stop()


def _is(kind: str) -> Callable[[VenueAnswer], bool]:
    return lambda a: a.kind == kind


async def test_stop_and_target_both_rest_and_the_stop_sells_the_position(
    bybit_spot: tuple[Harness, DroppingPath],
) -> None:
    h, path = bybit_spot
    spec = h.fake.specs[h.symbol]
    await h.start()
    entry = await h.send(qty=QTY)
    await h.answer(entry.venue_client_id, _is("fill"), "the entry's fill")
    base = h.fake.account.balances[spec.base]
    lot = spec.lot_size
    held = round(math.floor(base.free / lot + 1e-9) * lot, decimals(lot))
    assert held > 0 and base.used == 0.0
    tick = h.fake.snapshot(h.symbol)
    stop = await h.send(client_order_id="sl", order_type="stop", side="sell", qty=held,
                        stop_price=snap(tick.bid * 0.9, spec.tick_size), reduce_only=True,
                        protective=True)  # fmt: skip
    target = await h.send(client_order_id="tp", order_type="limit", side="sell", qty=held,
                          limit_price=snap(tick.ask * 1.2, spec.tick_size),
                          reduce_only=True)  # fmt: skip
    await h.answer(stop.venue_client_id, _is("accepted"), "the stop")
    await h.answer(target.venue_client_id, _is("accepted"), "the target")
    (resting_tp,) = h.exchange_orders(target.venue_client_id)
    assert (resting_tp.type, resting_tp.stop_price, resting_tp.price) == (
        "take_profit_limit",
        target.limit_price,
        target.limit_price,
    )
    assert h.fake.skin.private.extras[resting_tp.order_id].order_filter == "StopOrder"
    assert base.used == 0.0  # neither leg holds the base

    moved = await h.send(action="amend", client_order_id="sl", order_type="stop", side="sell",
                         venue_client_id=venue_client_id(VENUE, "sl", 1),
                         replaces=stop.venue_client_id, qty=held, reduce_only=True,
                         protective=True,
                         stop_price=snap(tick.bid * 0.92, spec.tick_size))  # fmt: skip
    await h.answer(moved.venue_client_id, _is("accepted"), "the moved stop")
    await h.answer(stop.venue_client_id, _is("canceled"), "the old stop canceled")
    (old,) = h.exchange_orders(stop.venue_client_id)
    (new,) = h.exchange_orders(moved.venue_client_id)
    assert new.created_ns < old.updated_ns  # new first: no moment without a stop

    step = h.fake.step_ns
    path.drop((h.fake.now_ns() // step + 1) * step, DROP)
    sold = await h.answer(moved.venue_client_id, _is("fill"), "the stop's fill", timeout=40.0)
    assert sold.fill_qty == pytest.approx(held)
    oco = await h.send(action="cancel", client_order_id="tp", side="sell", qty=held,
                       order_type="limit", limit_price=target.limit_price,
                       venue_client_id=target.venue_client_id, reduce_only=True)  # fmt: skip
    await h.answer(oco.venue_client_id, _is("canceled"), "the target canceled")
    assert [o.status for o in h.exchange_orders(target.venue_client_id)] == ["canceled"]
    assert base.total < lot  # the position is sold: at most the lot's dust remains
    refused = [a for a in await h.answers() if a.kind in ("rejected", "unknown", "missing")]
    assert refused == []
    trades = {f.client_id for f in h.fake.account.fills(h.symbol)}
    assert trades == {entry.venue_client_id, moved.venue_client_id}
    await h.stop()


@pytest.mark.parametrize(
    ("exchange_id", "contract", "conditional"),
    [("bybit", False, True), ("bybit", True, False), ("binance", False, False)],
)
def test_only_a_bybit_spot_target_goes_out_as_a_conditional_order(
    exchange_id: str, contract: bool, conditional: bool
) -> None:
    """A bracket's target (reduce-only, not protective, a limit) on Bybit spot is a
    take-profit-limit (``triggerPrice`` = its limit), kept in the conditional book and
    holding nothing; elsewhere a plain limit. A Bybit stop never holds the balance."""
    calls = calls_for(exchange_id, contract)
    target = leg_order(order_type="limit", limit_price=110.0, side="sell", reduce_only=True)
    params = calls.order_params(target)
    assert ("triggerPrice" in params) == conditional
    if conditional:
        assert params["triggerPrice"] == 110.0 and params["timeInForce"] == "GTC"
    assert calls.algo(target) == conditional
    assert calls.locks_balance(target) == (not contract and not conditional)
    entry = leg_order(order_type="limit", limit_price=90.0)
    assert "triggerPrice" not in calls.order_params(entry) and not calls.algo(entry)
    assert calls.locks_balance(entry) == (not contract)
    stop = leg_order(order_type="stop", stop_price=90.0, side="sell", reduce_only=True,
                     protective=True)  # fmt: skip
    assert calls.locks_balance(stop) == (exchange_id == "binance")
