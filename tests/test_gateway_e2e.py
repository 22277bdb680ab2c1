"""Issue 15's first "Done when": against the fakes of Binance, Binance USDT-M, Bybit, Kraken
and Kraken Futures a strategy trades end to end with exchange-side stops.

For each exchange a real ``keel up --config F`` (``tests/gateway_session.py``): market data
from the fake, the trend follower entering on its rising prices with a stop and a target,
risk making that a bracket entry, the order manager sending its legs as ``VenueOrder``s, the
``gateway-vx`` process that ``keel up`` started sending them through ccxt to the fake in the
venue's test mode (sandbox; Kraken spot, which has none, a live entry with ``--live``). Then
what the exchange holds is compared with what Keel stored: the entry's fills (prices, fees)
in ``exec.report``, the protective stop resting on the exchange (reduce-only on perpetuals,
on the algo endpoint on Binance USDT-M, in the conditional book on Bybit), the portfolio's
position against the venue's position or balance change, and ``keel status`` showing the
mode with the gateway running (the periodic reconciliations after the fill found no
discrepancy). Then the market gaps down: the stop fires on the exchange, its fill reaches
``exec.report``, the target is canceled there and the position is flat on both sides, with
no trade but the entry and the stop. The five sessions run side by side, each with its own nats-server, fake and
directory. The spot accounts are the fakes' default ones, which hold the base assets too,
as a testnet account does.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

from contracts.events import ExecutionReport
from contracts.venue_events import Discrepancy
from services.venues.client_ids import venue_client_id
from tests.fakes.matching import FakeOrder
from tests.gateway_session import MODES, RECONCILE_S, VENUE, GatewaySession

EXCHANGES = ["binance", "binanceusdm", "bybit", "kraken", "krakenfutures"]
DROP = 0.97
WAIT_S = 150.0
"""Generous on a loaded machine; on an idle one the entry is protected within ~30 s."""


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def entry_fills(reports: list[ExecutionReport]) -> list[ExecutionReport]:
    return [r for r in reports if r.fill_qty > 0 and not r.client_order_id.endswith((".sl", ".tp"))]


def working(reports: list[ExecutionReport], leg: str) -> ExecutionReport | None:
    return next(
        (r for r in reports if r.client_order_id.endswith(leg) and r.status == "accepted"), None
    )


async def protected(session: GatewaySession) -> bool:
    """The entry is filled and both legs are working, on Keel's side and on the exchange's."""
    assert session.fake is not None
    reports = await session.reports()
    fills = entry_fills(reports)
    if not fills or not close(sum(f.fill_qty for f in fills), fills[0].order_qty):
        return False
    legs = [working(reports, ".sl"), working(reports, ".tp")]
    if None in legs:
        return False
    ids = {venue_client_id(VENUE, leg.client_order_id, 0) for leg in legs if leg is not None}
    return ids <= {o.client_id for o in session.fake.account.open_orders()}


async def stopped_out(session: GatewaySession, sl: ExecutionReport, tp: ExecutionReport) -> bool:
    """The stop filled and the target canceled, in ``exec.report`` and on the exchange,
    and the portfolio flat (but for dust below the lot on a spot venue)."""
    reports = await session.reports()
    done = {(r.client_order_id, r.status) for r in reports}
    # A spot venue that took the entry's fee in the base leaves dust below its lot: the
    # target shrinks to it and the exchange refuses that (rejected) instead of a cancel.
    ended = {(tp.client_order_id, "canceled"), (tp.client_order_id, "rejected")}
    if (sl.client_order_id, "filled") not in done or not ended & done:
        return False
    if venue_order(session, tp.client_order_id).status != "canceled":
        return False
    positions = [p for p in await session.positions() if p.symbol == session.symbol]
    return bool(positions) and abs(positions[-1].qty) <= session.spec.lot_size * (1 + 1e-9)


def venue_order(session: GatewaySession, client_order_id: str) -> FakeOrder:
    assert session.fake is not None
    vcid = venue_client_id(VENUE, client_order_id, 0)
    found = [o for o in session.fake.account.orders() if o.client_id == vcid]
    assert len(found) == 1, f"{session.exchange_id}: {client_order_id} on the exchange: {found}"
    return found[0]


async def trades_with_exchange_side_stops(session: GatewaySession) -> None:
    await session.start()
    assert session.fake is not None
    account = session.fake.account
    start_balances = {a: b.total for a, b in account.balances.items()}
    await session.until(lambda: protected(session), "a filled entry with its legs working", WAIT_S)
    reports = await session.reports()
    fills = entry_fills(reports)
    entry_id = fills[0].client_order_id
    sl, tp = working(reports, ".sl"), working(reports, ".tp")
    assert sl is not None and tp is not None

    # The entry filled at the exchange, and exec.report carries the exchange's own trades.
    entry = venue_order(session, entry_id)
    assert entry.status == "filled" and close(entry.filled, entry.qty)
    trades = account.fills(order_id=entry.order_id)
    ours = sorted((f.fill_qty, f.fill_price, f.fee) for f in fills)
    theirs = sorted((t.qty, t.price, t.fee) for t in trades)
    assert len(ours) == len(theirs) and all(
        all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-8) for a, b in zip(x, y, strict=True))
        for x, y in zip(ours, theirs, strict=True)
    ), f"{session.exchange_id}: reports {fills} against the exchange's trades {trades}"
    assert {f.fee_currency for f in fills} == {t.fee_currency for t in trades}
    assert all(f.venue_order_id for f in fills)

    # The protective stop rests on the exchange: a stop-market order on the other side for
    # the whole position, at the bracket's price; the target is a limit order there too.
    # Where a spot venue took the buy's fee in the base asset, the account holds that much
    # less, and the legs protect what it holds, to the exchange's lot (the rest is dust).
    base_fees = sum(t.fee for t in trades if t.fee_currency == session.spec.base)
    held_at_venue = entry.qty - base_fees
    lot = session.spec.lot_size
    stop = venue_order(session, sl.client_order_id)
    assert stop.type == "stop" and stop.status == "new" and stop.side != entry.side
    assert isinstance(sl.stop_price, float) and close(stop.stop_price or 0.0, sl.stop_price)
    assert held_at_venue - lot < stop.qty <= held_at_venue + 1e-12, (stop.qty, held_at_venue)
    target = venue_order(session, tp.client_order_id)
    perpetual = session.spec.kind == "perpetual"
    # Bybit spot: the target is a conditional take-profit-limit (trigger = its limit price),
    # so neither leg holds the base asset and both rest on the position alone.
    bybit_spot = session.exchange_id == "bybit" and not perpetual
    kind = "take_profit_limit" if bybit_spot else "limit"
    assert target.type == kind and target.status == "new" and close(target.qty, stop.qty)
    assert target.algo == bybit_spot and (not bybit_spot or target.stop_price == target.price)
    assert stop.reduce_only == perpetual and target.reduce_only == perpetual
    # Binance USDT-M keeps stops on its algo endpoint, Bybit in its conditional book.
    assert stop.algo == (session.exchange_id in ("binanceusdm", "bybit"))

    # The portfolio's position is the venue's: a perpetual's position, or on spot the base
    # asset bought (its fee, when charged in the base asset, is booked as a cost in the
    # quote currency, so the position is the gross quantity).
    positions = [p for p in await session.positions() if p.symbol == session.symbol]
    assert positions, f"{session.exchange_id}: no position in the portfolio"
    held = positions[-1].qty
    if perpetual:
        assert close(held, account.positions[session.symbol].qty)
    else:
        base = session.spec.base
        bought = account.balances[base].total - start_balances.get(base, 0.0)
        assert math.isclose(held, bought + base_fees, rel_tol=1e-9), (held, bought, base_fees)
    assert close(held, entry.qty)

    # Reconciliation took the account as it was before the entry for its baseline, and the
    # periodic ones after the fill found the venue as Keel has it: nothing else recorded,
    # no halt; keel status shows the venue's mode and its gateway running.
    await session.clock.sleep(3 * RECONCILE_S)
    found = await session.events("VENUE", f"venue.recon.{VENUE}", Discrepancy)
    assert {(d.action, d.asset, d.venue_value) for d in found} == {
        ("baseline", asset, total) for asset, total in start_balances.items() if total
    }, f"{session.exchange_id}: reconciliation found {found}"
    screen = await session.status()
    mode = MODES[session.exchange_id]
    venue_line = next((line for line in screen.splitlines() if "mode " in line), screen)
    assert f"mode {mode.upper()}" in venue_line, venue_line
    assert "gateway running" in venue_line, venue_line

    # The market gaps 3 % down at the next minute: the stop fires on the exchange, Keel
    # books its fill and cancels the target there; the position is closed on both sides.
    step = session.path.step_ns
    session.path.drop((session.clock.now_ns() // step + 1) * step, DROP)
    await session.until(lambda: stopped_out(session, sl, tp), "the stop's fill", WAIT_S)
    reports = await session.reports()
    stop_fills = [r for r in reports if r.client_order_id == sl.client_order_id and r.fill_qty]
    stop = venue_order(session, sl.client_order_id)
    assert stop.status == "filled" and stop.triggered
    exits = account.fills(order_id=stop.order_id)
    assert sorted((r.fill_qty, r.fill_price) for r in stop_fills) == sorted(
        (t.qty, t.price) for t in exits
    )
    assert venue_order(session, tp.client_order_id).status == "canceled"
    others = [
        t for t in account.fills(session.symbol) if t not in trades and t not in exits
    ]  # at most the dust a fee in the base left, sold by the strategy's own exit
    assert all(t.qty <= lot * (1 + 1e-9) for t in others) and (base_fees or not others), (
        f"{session.exchange_id}: more trades than the entry and the stop: {others}"
    )
    if perpetual:
        position = account.positions.get(session.symbol)
        assert position is None or close(position.qty, 0.0)
    last = [p for p in await session.positions() if p.symbol == session.symbol][-1]
    assert abs(last.qty) <= lot * (1 + 1e-9), last  # flat, but for dust up to a lot (spot)
    await session.stop()
    assert session.up is not None and session.up.returncode == 0, session.output
    for worker in ("execution", f"gateway-{VENUE}", "risk", "portfolio"):
        assert "Traceback" not in session.log(worker), session.log(worker)


async def one(exchange_id: str, work: Path) -> None:
    session = GatewaySession(exchange_id, work)
    try:
        await trades_with_exchange_side_stops(session)
    finally:
        await session.stop()


async def test_a_strategy_trades_end_to_end_with_exchange_side_stops(tmp_path: Path) -> None:
    outcomes = await asyncio.gather(
        *(one(ex, tmp_path / ex) for ex in EXCHANGES), return_exceptions=True
    )
    failures = [(ex, o) for ex, o in zip(EXCHANGES, outcomes, strict=True) if o is not None]
    if failures:
        told = "\n".join(f"{ex}: {str(o)[:2000]!s}" for ex, o in failures)
        raise AssertionError(told) from failures[0][1]
