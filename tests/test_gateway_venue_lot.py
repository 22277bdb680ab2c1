"""A bracket leg the exchange cut to its lot is filled at the lot's quantity even when the
exchange's own word on the order never reaches the order manager (pure, no I/O).

The CI failure this guards: a Bybit spot stop for 0.00999 (what the account held after the
entry's fee in BTC) rests as 0.009; Bybit's submit answer has no quantity, so it echoes
0.00999, and the order stream's acknowledgement (0.009) is dropped when it comes after the
submit's. The stop's fill of 0.009 was then a partial fill, the target was resized below the
lot, and the stop never reported filled.
"""

from __future__ import annotations

from contracts.events import Event, ExecutionReport, Instrument, OrderCommand
from contracts.venue_events import VenueAnswer, VenueOrder
from services.execution.paper_venue import PaperVenueConfig
from services.execution.role import execution_role

NS = 1_000_000_000
T0 = 1_750_000_000 * NS
VENUE, SYMBOL = "vx", "BTC/USDT"


def manager(lot: float):  # type: ignore[no-untyped-def]
    oms = execution_role(PaperVenueConfig(), gateways=frozenset({VENUE})).decider
    market = Instrument(ts=T0, venue=VENUE, symbol=SYMBOL, base="BTC", quote="USDT", lot_size=lot)
    oms.decide(market, T0)
    return oms


def answer(leg: VenueOrder, kind: str, ts: int, **kw: object) -> VenueAnswer:
    fields: dict[str, object] = dict(
        ts=ts,
        kind=kind,
        venue=leg.venue,
        symbol=leg.symbol,
        client_order_id=leg.client_order_id,
        venue_client_id=leg.venue_client_id,
        source="submit",
        venue_order_id=f"v-{leg.client_order_id}",
        order_qty=leg.qty,  # Bybit's submit answer carries no quantity: the leg's is echoed
    )
    fields.update(kw)
    return VenueAnswer(**fields)  # type: ignore[arg-type]


def legs(out: list[Event] | tuple[Event, ...]) -> list[VenueOrder]:
    return [e for e in out if isinstance(e, VenueOrder)]


def reports(out: list[Event] | tuple[Event, ...]) -> list[ExecutionReport]:
    return [e for e in out if isinstance(e, ExecutionReport)]


def protected(oms) -> tuple[VenueOrder, VenueOrder]:  # type: ignore[no-untyped-def]
    """A 0.01 BTC bracket entry filled with its fee in BTC: stop and target for 0.00999,
    both acknowledged by the submit's answer only."""
    entry = OrderCommand(
        ts=T0, action="new", client_order_id="e1", strategy="s1", venue=VENUE, symbol=SYMBOL,
        side="buy", qty=0.01, stop_loss=95.0, take_profit=120.0,
    )  # fmt: skip
    (leg,) = legs(oms.decide(entry, T0))
    oms.decide(answer(leg, "accepted", T0 + NS), T0 + NS)
    fill = answer(leg, "fill", T0 + 2 * NS, source="stream", trade_id="t1", fill_qty=0.01,
                  fill_price=100.0, fee=0.00001, fee_currency="BTC")  # fmt: skip
    out = legs(oms.decide(fill, T0 + 2 * NS))
    stop = next(o for o in out if o.client_order_id == "e1.sl")
    target = next(o for o in out if o.client_order_id == "e1.tp")
    assert stop.qty == target.qty == 0.01 - 0.00001
    for i, o in enumerate((stop, target)):
        oms.decide(answer(o, "accepted", T0 + (3 + i) * NS), T0 + (3 + i) * NS)
    return stop, target


def test_a_stop_cut_to_the_lot_is_filled_by_the_lots_quantity() -> None:
    oms = manager(0.001)
    stop, _ = protected(oms)
    hit = answer(stop, "fill", T0 + 10 * NS, source="stream", trade_id="t2", fill_qty=0.009,
                 fill_price=95.0, fee=0.855, fee_currency="USDT")  # fmt: skip
    out = oms.decide(hit, T0 + 10 * NS)
    (done,) = [r for r in reports(out) if r.client_order_id == "e1.sl"]
    assert (done.status, done.fill_qty) == ("filled", 0.009)


def test_without_a_lot_the_exchanges_word_alone_ends_the_leg() -> None:
    oms = manager(0.0)
    stop, _ = protected(oms)
    hit = answer(stop, "fill", T0 + 10 * NS, source="stream", trade_id="t2", fill_qty=0.009,
                 fill_price=95.0)  # fmt: skip
    (part,) = [r for r in reports(oms.decide(hit, T0 + 10 * NS)) if r.client_order_id == "e1.sl"]
    assert part.status == "partially_filled"
    told = answer(stop, "accepted", T0 + 11 * NS, source="query", order_qty=0.009, cum_qty=0.009)
    (done,) = reports(oms.decide(told, T0 + 11 * NS))
    assert (done.client_order_id, done.status) == ("e1.sl", "filled")
