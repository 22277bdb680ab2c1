"""The order manager: state machine, idempotent ids, TIF and expiry, brackets and OCO, trailing
stops, the stop validator, amendments, and restarts in the middle of an open bracket.

Every scenario is hand-computed from the bars below (one minute each, volume 10) with the
paper venue's rules (docs/fill-models.md); docs/orders.md walks through the same examples.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from msgspec import UNSET

from contracts.codec import decode, encode
from contracts.events import Event, ExecutionReport, OrderCommand, RiskAlert
from contracts.keys import BookId, InstrumentId
from contracts.system_events import DeadLetter
from services.execution.oms import OrderManager
from services.execution.orders import (
    FINAL,
    STATUSES,
    TRANSITIONS,
    IllegalTransition,
    advance,
    allowed,
    check_reports,
)
from services.execution.orders_config import OrdersConfig
from services.execution.paper_venue import PaperVenue, PaperVenueConfig
from tests.factories import BTC, MINUTE, T0, VENUE, ohlc_bar

TOKEN = "BTC-USDT"
BOOK = BookId("s", InstrumentId(VENUE, BTC))


def close(i: int) -> int:
    return T0 + (i + 1) * MINUTE


def cmd(
    oid: str = "e1",
    ts: int = close(0),
    side: str = "buy",
    qty: float = 2.0,
    action: str = "new",
    strategy: str = "s",
    **more: Any,
) -> OrderCommand:
    return OrderCommand(
        ts=ts,
        action=action,  # type: ignore[arg-type]
        client_order_id=oid,
        strategy=strategy,
        venue=VENUE,
        symbol=BTC,
        side=side,  # type: ignore[arg-type]
        qty=qty,
        model_tag="mt",
        **more,
    )


def oms(config: OrdersConfig | None = None, **venue: Any) -> OrderManager:
    return OrderManager(PaperVenue(PaperVenueConfig(**{"fee_bps": 0.0, **venue})), config)


def run(manager: OrderManager, events: list[Event]) -> list[Event]:
    out: list[Event] = []
    for event in events:
        out.extend(manager.decide(event, event.ts))
    return out


def reports(events: list[Event]) -> list[ExecutionReport]:
    return [e for e in events if isinstance(e, ExecutionReport)]


def rows(events: list[Event]) -> list[tuple]:
    """(bar whose close stamps it, status, id, fill price, fill qty, cum qty, order qty)."""
    return [
        (
            (r.ts - T0) // MINUTE - 1,
            r.status,
            r.client_order_id,
            r.fill_price,
            r.fill_qty,
            r.cum_qty,
            r.order_qty,
        )
        for r in reports(events)
    ]


B0 = ohlc_bar(0, 100.0, 101.0, 99.0, 100.5)
B1 = ohlc_bar(1, 102.0, 104.0, 101.0, 103.0)


# --- the state machine ----------------------------------------------------------------------


def test_transition_table() -> None:
    assert set(TRANSITIONS) == set(STATUSES)
    assert allowed("new", "accepted") and allowed("new", "rejected")
    assert not allowed("new", "filled") and not allowed("new", "partially_filled")
    assert allowed("accepted", "expired") and allowed("partially_filled", "expired")
    assert allowed("accepted", "accepted")  # an amendment
    assert not allowed("partially_filled", "rejected")
    for final in FINAL:
        assert TRANSITIONS[final] == frozenset()
    with pytest.raises(IllegalTransition, match="filled -> canceled"):
        advance("filled", "canceled")
    assert advance("accepted", "filled") == "filled"


@given(st.lists(st.sampled_from(STATUSES), max_size=12))
def test_advance_never_leaves_the_table(steps: list[str]) -> None:
    """Whatever statuses are thrown at it, an order only ever moves along the table."""
    status = "new"
    for step in steps:
        try:
            after = advance(status, step)
        except IllegalTransition:
            assert step not in TRANSITIONS[status]
            continue
        assert step in TRANSITIONS[status]
        status = after
    assert status in STATUSES


def test_check_reports_finds_illegal_sequences() -> None:
    def rep(status: str, cum: float = 0.0, fill: float = 0.0) -> ExecutionReport:
        return ExecutionReport(
            ts=1,
            status=status,  # type: ignore[arg-type]
            client_order_id="x",
            strategy="s",
            venue="v",
            symbol="y",
            side="buy",
            order_qty=2.0,
            venue_order_id="paper-1",
            fill_price=100.0 if fill else 0.0,
            fill_qty=fill,
            cum_qty=cum,
        )

    assert check_reports([rep("accepted"), rep("filled", 2.0, 2.0)]) == []
    assert check_reports([rep("filled", 2.0, 2.0)]) == ["x: illegal transition new -> filled"]
    errors = check_reports([rep("accepted"), rep("canceled"), rep("filled", 2.0, 2.0)])
    assert errors == ["x: illegal transition canceled -> filled"]
    errors = check_reports([rep("accepted"), rep("partially_filled", 1.0, 2.0)])
    assert errors == ["x: fills add up to 2.0, cum_qty 1.0"]


# --- plain orders pass through unchanged ----------------------------------------------------


def test_plain_orders_give_the_venues_reports_byte_for_byte() -> None:
    events: list[Event] = [
        B0,
        cmd("m1"),
        cmd("l1", order_type="limit", limit_price=97.5, side="buy"),
        B1,
        cmd("l1", action="cancel"),
        cmd("s1", order_type="stop", stop_price=99.0, side="sell", qty=1.0),
        ohlc_bar(2, 103.0, 103.5, 97.0, 98.0),
        cmd("gone", action="cancel"),
    ]
    bare = PaperVenue(PaperVenueConfig(fee_bps=10.0))
    venue_out = [encode(e) for ev in events for e in bare.decide(ev, ev.ts)]
    managed = [encode(e) for e in run(oms(fee_bps=10.0), events)]
    assert managed == venue_out
    assert b"parent_id" not in b"".join(managed)


# --- idempotent client order ids ------------------------------------------------------------


def test_a_repeated_order_is_acknowledged_once_and_never_executed_twice() -> None:
    manager = oms()
    first = cmd("e1")
    out = run(manager, [B0, first, first, B1, first, ohlc_bar(2, 103.0, 103.5, 97.0, 98.0)])
    assert rows(out) == [
        (0, "accepted", "e1", 0.0, 0.0, 0.0, 2.0),
        (1, "filled", "e1", 102.0, 2.0, 2.0, 2.0),
    ]
    dead = [e for e in out if isinstance(e, DeadLetter)]
    assert [d.reason for d in dead] == [
        "order manager: duplicate client_order_id (accepted): not executed again",
        "order manager: duplicate client_order_id (filled): not executed again",
    ]
    assert dead[0].subject == f"ord.cmd.{VENUE}.{TOKEN}"
    assert decode(dead[0].payload) == first
    assert sum(r.fill_qty for r in reports(out)) == 2.0


def test_finished_ids_are_remembered_up_to_keep_done() -> None:
    manager = oms(OrdersConfig(keep_done=2))
    run(manager, [B0, *(cmd(f"o{i}", order_type="limit", limit_price=50.0) for i in range(3))])
    run(manager, [cmd(f"o{i}", action="cancel", ts=close(0) + 1) for i in range(3)])
    assert list(manager.state.done) == ["o1", "o2"]


# --- time in force and expiry ---------------------------------------------------------------


def test_ioc_fok_and_gtc_lifecycles() -> None:
    manager = oms(max_participation=0.25)
    bars = [B0, B1, ohlc_bar(2, 103.0, 103.5, 97.0, 98.0)]
    out = run(
        manager,
        [
            bars[0],
            cmd("ioc", qty=6.0, time_in_force="IOC"),
            cmd("fok", qty=6.0, time_in_force="FOK"),
            cmd("gtc", qty=2.0, order_type="limit", limit_price=97.5),
            *bars[1:],
        ],
    )
    assert rows(out) == [
        (0, "accepted", "ioc", 0.0, 0.0, 0.0, 6.0),
        (0, "accepted", "fok", 0.0, 0.0, 0.0, 6.0),
        (0, "accepted", "gtc", 0.0, 0.0, 0.0, 2.0),
        (1, "partially_filled", "ioc", 102.0, 2.5, 2.5, 6.0),
        (1, "canceled", "ioc", 0.0, 0.0, 2.5, 6.0),
        (1, "canceled", "fok", 0.0, 0.0, 0.0, 6.0),
        (2, "filled", "gtc", 97.5, 2.0, 2.0, 2.0),
    ]
    assert check_reports(reports(out)) == []
    assert manager.state.done == {"ioc": "canceled", "fok": "canceled", "gtc": "filled"}


def test_good_till_date_expires_before_the_first_bar_closing_after_it() -> None:
    """A buy limit at 95.5 would fill on bar 3 (low 95); it is good till 30 s into bar 3,
    so bar 3 (closing after that) cannot fill it: it expires, stamped at its expiry time."""
    expiry = T0 + 3 * MINUTE + 30_000_000_000
    manager = oms()
    out = run(
        manager,
        [
            B0,
            cmd("gtd", order_type="limit", limit_price=95.5, expire_at=expiry),
            B1,
            ohlc_bar(2, 103.0, 103.5, 97.0, 98.0),
            ohlc_bar(3, 98.0, 99.0, 95.0, 96.0),
        ],
    )
    assert [(r.status, r.ts, r.cum_qty) for r in reports(out)] == [
        ("accepted", close(0), 0.0),
        ("expired", expiry, 0.0),
    ]
    assert reports(out)[1].reason == f"good till {expiry}: expired"
    assert manager.state.orders == {}


def test_good_till_date_fills_before_its_expiry() -> None:
    manager = oms()
    out = run(
        manager,
        [
            B0,
            cmd("gtd", order_type="limit", limit_price=97.5, expire_at=close(2)),
            B1,
            ohlc_bar(2, 103.0, 103.5, 97.0, 98.0),
            ohlc_bar(3, 98.0, 99.0, 95.0, 96.0),
        ],
    )
    assert [(r.status, r.fill_price) for r in reports(out)] == [
        ("accepted", 0.0),
        ("filled", 97.5),
    ]


def test_expire_at_not_after_the_order_time_is_rejected() -> None:
    out = run(oms(), [B0, cmd("late", expire_at=close(0))])
    assert [(r.status, r.reason) for r in reports(out)] == [
        ("rejected", "expire_at is not after the order time")
    ]


# --- brackets and OCO -----------------------------------------------------------------------


def bracket(**more: Any) -> OrderCommand:
    return cmd("e1", take_profit=106.0, stop_loss=97.5, **more)


def legs(events: list[Event]) -> list[tuple]:
    return [
        (r.status, r.client_order_id, r.parent_id, r.stop_price, r.limit_price, r.reason)
        for r in reports(events)
        if r.client_order_id != "e1"
    ]


def test_bracket_target_hit_cancels_the_stop() -> None:
    """Entry fills 2 at bar 1's open (102); the OCO pair goes in at bar 1's close; bar 2
    reaches 107 >= 106: the take-profit fills at 106 (maker fee 10 bps: 0.212), the stop is
    canceled."""
    out = run(
        oms(fee_bps=10.0),
        [
            B0,
            bracket(),
            B1,
            ohlc_bar(2, 103.0, 107.0, 102.5, 106.5),
            ohlc_bar(3, 106.5, 107.0, 90.0, 91.0),
        ],
    )
    assert rows(out) == [
        (0, "accepted", "e1", 0.0, 0.0, 0.0, 2.0),
        (1, "filled", "e1", 102.0, 2.0, 2.0, 2.0),
        (1, "accepted", "e1.tp", 0.0, 0.0, 0.0, 2.0),
        (1, "accepted", "e1.sl", 0.0, 0.0, 0.0, 2.0),
        (2, "filled", "e1.tp", 106.0, 2.0, 2.0, 2.0),
        (2, "canceled", "e1.sl", 0.0, 0.0, 0.0, 2.0),
    ]
    assert legs(out) == [
        ("accepted", "e1.tp", "e1", UNSET, 106.0, "bracket take_profit"),
        ("accepted", "e1.sl", "e1", 97.5, UNSET, "bracket stop_loss"),
        ("filled", "e1.tp", "e1", UNSET, 106.0, ""),
        ("canceled", "e1.sl", "e1", 97.5, UNSET, "OCO: e1.tp filled"),
    ]
    tp_fill = reports(out)[4]
    assert tp_fill.side == "sell" and tp_fill.fee == pytest.approx(0.212)
    assert check_reports(reports(out)) == []


def test_bracket_stop_hit_cancels_the_target() -> None:
    out = run(oms(), [B0, bracket(), B1, ohlc_bar(2, 101.0, 102.0, 96.0, 97.0)])
    assert rows(out)[4:] == [
        (2, "filled", "e1.sl", 97.5, 2.0, 2.0, 2.0),
        (2, "canceled", "e1.tp", 0.0, 0.0, 0.0, 2.0),
    ]
    assert reports(out)[-1].reason == "OCO: e1.sl filled"


def test_bracket_stop_gapped_through_fills_at_the_open() -> None:
    out = run(oms(), [B0, bracket(), B1, ohlc_bar(2, 96.0, 96.5, 95.0, 95.5)])
    assert rows(out)[4] == (2, "filled", "e1.sl", 96.0, 2.0, 2.0, 2.0)


def test_both_legs_reached_on_one_bar_the_stop_is_assumed_first() -> None:
    """Bar 2 (103 / 107 / 96) reaches both 106 and 97.5; OHLC cannot tell which came first,
    so the worse one for the position, the stop, fills; the take-profit's fill is void."""
    out = run(oms(), [B0, bracket(), B1, ohlc_bar(2, 103.0, 107.0, 96.0, 100.0)])
    assert rows(out)[4:] == [
        (2, "filled", "e1.sl", 97.5, 2.0, 2.0, 2.0),
        (2, "canceled", "e1.tp", 0.0, 0.0, 0.0, 2.0),
    ]
    assert sum(r.fill_qty for r in reports(out) if r.side == "sell") == 2.0


def test_both_legs_reached_the_one_the_bar_opened_through_wins() -> None:
    """Bar 2 opens at 107, through the take-profit: that came first (fills at the open)."""
    out = run(oms(), [B0, bracket(), B1, ohlc_bar(2, 107.0, 108.0, 96.0, 100.0)])
    assert rows(out)[4:] == [
        (2, "filled", "e1.tp", 107.0, 2.0, 2.0, 2.0),
        (2, "canceled", "e1.sl", 0.0, 0.0, 0.0, 2.0),
    ]


def test_partial_entry_fills_size_the_legs_and_partial_leg_fills_shrink_the_sibling() -> None:
    """max_participation 0.25 of volume 4: at most 1 per bar. The entry (2.5) fills 1, 1,
    0.5; the legs follow 1 -> 2 -> 2.5. The stop then fills 1, 1, 0.5 (triggered at 95 on
    bar 4, then a market order at the next opens) and the take-profit shrinks 2.5 -> 1.5 ->
    0.5 and is canceled when the stop completes."""
    manager = oms(max_participation=0.25)
    events: list[Event] = [
        ohlc_bar(0, 100.0, 101.0, 99.0, 100.5, volume=4.0),
        cmd("e1", qty=2.5, take_profit=110.0, stop_loss=95.0),
        ohlc_bar(1, 102.0, 104.0, 101.0, 103.0, volume=4.0),
        ohlc_bar(2, 103.0, 104.0, 102.0, 103.5, volume=4.0),
        ohlc_bar(3, 103.5, 104.0, 103.0, 103.8, volume=4.0),
        ohlc_bar(4, 103.0, 103.0, 94.0, 95.0, volume=4.0),
        ohlc_bar(5, 94.5, 96.0, 93.0, 94.0, volume=4.0),
        ohlc_bar(6, 94.0, 95.0, 93.5, 94.5, volume=4.0),
    ]
    out = run(manager, events)
    assert rows(out) == [
        (0, "accepted", "e1", 0.0, 0.0, 0.0, 2.5),
        (1, "partially_filled", "e1", 102.0, 1.0, 1.0, 2.5),
        (1, "accepted", "e1.tp", 0.0, 0.0, 0.0, 1.0),
        (1, "accepted", "e1.sl", 0.0, 0.0, 0.0, 1.0),
        (2, "partially_filled", "e1", 103.0, 1.0, 2.0, 2.5),
        (2, "accepted", "e1.tp", 0.0, 0.0, 0.0, 2.0),
        (2, "accepted", "e1.sl", 0.0, 0.0, 0.0, 2.0),
        (3, "filled", "e1", 103.5, 0.5, 2.5, 2.5),
        (3, "accepted", "e1.tp", 0.0, 0.0, 0.0, 2.5),
        (3, "accepted", "e1.sl", 0.0, 0.0, 0.0, 2.5),
        (4, "partially_filled", "e1.sl", 95.0, 1.0, 1.0, 2.5),
        (4, "accepted", "e1.tp", 0.0, 0.0, 0.0, 1.5),
        (5, "partially_filled", "e1.sl", 94.5, 1.0, 2.0, 2.5),
        (5, "accepted", "e1.tp", 0.0, 0.0, 0.0, 0.5),
        (6, "filled", "e1.sl", 94.0, 0.5, 2.5, 2.5),
        (6, "canceled", "e1.tp", 0.0, 0.0, 0.0, 0.5),
    ]
    amended = [r.reason for r in reports(out) if r.reason.startswith("amended")]
    assert amended == [
        "amended: qty 1 -> 2",
        "amended: qty 1 -> 2",
        "amended: qty 2 -> 2.5",
        "amended: qty 2 -> 2.5",
        "amended: qty 2.5 -> 1.5",
        "amended: qty 1.5 -> 0.5",
    ]
    assert check_reports(reports(out)) == []
    assert manager.state.groups == {} and manager.state.orders == {}
    assert manager.state.positions[BOOK].qty == 0.0


def test_a_market_order_closing_the_position_cancels_the_legs_first() -> None:
    """Legs are reduce-only: a working market sell that closes the position takes their
    place, so the stop cannot fill on the same bar and open a short."""
    manager = oms()
    out = run(manager, [B0, bracket(), B1, cmd("x1", side="sell", ts=close(1))])
    assert [(r.status, r.client_order_id, r.reason) for r in reports(out)][-3:] == [
        ("accepted", "x1", ""),
        ("canceled", "e1.tp", "reduce-only: working market orders close the position"),
        ("canceled", "e1.sl", "reduce-only: working market orders close the position"),
    ]
    out = run(manager, [ohlc_bar(2, 96.0, 97.0, 95.0, 95.5)])  # would have hit the stop
    assert rows(out) == [(2, "filled", "x1", 96.0, 2.0, 2.0, 2.0)]
    assert manager.state.groups == {}


def test_explicit_oco_group_first_fill_cancels_the_other() -> None:
    manager = oms()
    out = run(
        manager,
        [
            B0,
            cmd("a", order_type="limit", limit_price=97.5, oco_group="g"),
            cmd("b", order_type="stop", stop_price=104.5, oco_group="g"),
            B1,
            ohlc_bar(2, 103.0, 103.5, 97.0, 98.0),
        ],
    )
    assert [(r.status, r.client_order_id, r.reason) for r in reports(out)][2:] == [
        ("filled", "a", ""),
        ("canceled", "b", "OCO: a filled"),
    ]


def test_bad_bracket_prices_are_rejected() -> None:
    out = run(oms(), [B0, cmd("e1", take_profit=95.0, stop_loss=97.5)])
    assert [(r.status, r.reason) for r in reports(out)] == [
        ("rejected", "take_profit 95 must be above stop_loss 97.5 for a buy")
    ]


# --- trailing stops -------------------------------------------------------------------------

TRAIL_BARS = [
    B0,
    B1,  # entry fills at 102
    ohlc_bar(2, 103.0, 105.0, 102.5, 104.5),
    ohlc_bar(3, 104.5, 106.0, 103.5, 105.5),
    ohlc_bar(4, 105.5, 105.8, 104.0, 104.2),
    ohlc_bar(5, 104.0, 104.5, 103.0, 103.2),
    ohlc_bar(6, 103.0, 103.0, 101.0, 101.5),
]


def stop_path(events: list[Event]) -> list[tuple[int, str, float]]:
    return [
        ((r.ts - T0) // MINUTE - 1, r.status, r.stop_price)  # type: ignore[misc]
        for r in reports(events)
        if r.client_order_id.startswith("e1.sl")
    ]


def test_trailing_stop_by_percent_follows_the_high_and_never_loosens() -> None:
    """2 % below the highest high since the entry filled: 97 (the given stop) until bar 2
    (high 105: 102.9), bar 3 (high 106: 103.88), bar 4 keeps 103.88 (a lower high never
    loosens it), bar 5's low 103 reaches it: it fills at 103.88."""
    events = [B0, cmd("e1", qty=1.0, stop_loss=97.0, trail_pct=2.0), *TRAIL_BARS[1:]]
    out = run(oms(), events)
    assert stop_path(out) == [
        (1, "accepted", 97.0),
        (2, "accepted", 105.0 - 105.0 * 2.0 / 100.0),
        (3, "accepted", 106.0 - 106.0 * 2.0 / 100.0),
        (5, "filled", 106.0 - 106.0 * 2.0 / 100.0),
    ]
    assert reports(out)[-1].fill_price == 106.0 - 106.0 * 2.0 / 100.0
    assert reports(out)[3].reason == "amended: trailing stop 97 -> 102.9 (best 105)"


def test_trailing_stop_by_a_given_atr() -> None:
    """trail_atr 2 x atr 1.5 = 3 below the best: starts at the fill 102 - 3 = 99; 102 after
    bar 2, 103 after bar 3; bar 5's low 103 fills it at 103."""
    events = [B0, cmd("e1", qty=1.0, trail_atr=2.0, atr=1.5), *TRAIL_BARS[1:]]
    assert stop_path(run(oms(), events)) == [
        (1, "accepted", 99.0),
        (2, "accepted", 102.0),
        (3, "accepted", 103.0),
        (5, "filled", 103.0),
    ]


def test_trailing_stop_by_the_order_managers_atr() -> None:
    """Wilder ATR(2) of the bars: true ranges 2, 3.5 -> 2.75; then 2.5 -> 2.625, 2.5 ->
    2.5625, 1.8 -> 2.18125, 1.5 -> 1.840625. The entry (after bar 1) fills at bar 2's open
    103: stop 103 - 2 x 2.625; then the highest high 106 less 2 x ATR as the ATR shrinks."""
    atr1 = (2.0 + 3.5) / 2
    atr2 = (atr1 * 1 + 2.5) / 2
    atr3 = (atr2 * 1 + 2.5) / 2
    atr4 = (atr3 * 1 + 1.8) / 2
    atr5 = (atr4 * 1 + 1.5) / 2
    manager = oms(OrdersConfig(atr_period=2))
    events = [B0, B1, cmd("e1", ts=close(1), qty=1.0, trail_atr=2.0), *TRAIL_BARS[2:]]
    out = run(manager, events)
    assert stop_path(out) == [
        (2, "accepted", 103.0 - 2.0 * atr2),
        (3, "accepted", 106.0 - 2.0 * atr3),
        (4, "accepted", 106.0 - 2.0 * atr4),
        (5, "accepted", 106.0 - 2.0 * atr5),
        (6, "filled", 106.0 - 2.0 * atr5),
    ]


def test_trail_atr_without_an_atr_is_rejected() -> None:
    out = run(oms(), [B0, cmd("e1", trail_atr=2.0)])
    assert reports(out)[0].status == "rejected"
    assert "trail_atr needs atr" in reports(out)[0].reason


def test_a_standalone_trailing_stop_order_trails_itself() -> None:
    """A sell stop at 100 trailing 2 %: bar 1 (high 104) moves it to 101.92, bar 2 (low
    97) fills it at min(open 103, 101.92)."""
    out = run(
        oms(),
        [
            B0,
            cmd("ts1", side="sell", order_type="stop", stop_price=100.0, trail_pct=2.0),
            B1,
            ohlc_bar(2, 103.0, 103.5, 97.0, 98.0),
        ],
    )
    assert [(r.status, r.stop_price, r.fill_price) for r in reports(out)] == [
        ("accepted", UNSET, 0.0),
        ("accepted", 104.0 - 104.0 * 2.0 / 100.0, 0.0),
        ("filled", 104.0 - 104.0 * 2.0 / 100.0, 104.0 - 104.0 * 2.0 / 100.0),
    ]


# --- amendments -----------------------------------------------------------------------------


def test_amend_changes_quantity_and_price_and_keeps_the_id() -> None:
    manager = oms()
    out = run(
        manager,
        [
            B0,
            cmd("l1", order_type="limit", limit_price=97.0),
            B1,
            cmd("l1", action="amend", ts=close(1), qty=3.0, order_type="limit", limit_price=97.5),
            ohlc_bar(2, 103.0, 103.5, 97.0, 98.0),
        ],
    )
    assert [
        (r.status, r.order_qty, r.limit_price, r.fill_price, r.reason) for r in reports(out)
    ] == [
        ("accepted", 2.0, UNSET, 0.0, ""),
        ("accepted", 3.0, 97.5, 0.0, "amended: qty 2 -> 3, limit 97 -> 97.5"),
        ("filled", 3.0, 97.5, 97.5, ""),
    ]
    assert check_reports(reports(out)) == []


def test_illegal_amendments_are_refused_and_reported() -> None:
    manager = oms()
    out = run(
        manager,
        [
            B0,
            cmd("l1", order_type="limit", limit_price=97.0),
            cmd("nope", action="amend", qty=1.0),
            cmd("l1", action="amend", qty=1.0, side="sell"),
            bracket(),
            B1,
            cmd("e1.sl", action="amend", ts=close(1), side="sell", qty=5.0, stop_price=98.0),
        ],
    )
    assert [d.reason for d in out if isinstance(d, DeadLetter)] == [
        "order manager: amend of an unknown or finished order",
        "order manager: amend must keep strategy, venue, symbol and side",
        "order manager: bracket legs are sized by the order manager: amend price",
    ]
    assert check_reports(reports(out)) == []


def test_amending_a_bracket_stop_moves_it() -> None:
    manager = oms()
    out = run(
        manager,
        [
            B0,
            bracket(),
            B1,
            cmd("e1.sl", action="amend", ts=close(1), side="sell", qty=2.0, stop_price=99.0),
            ohlc_bar(2, 101.0, 102.0, 98.5, 99.5),
        ],
    )
    assert legs(out)[-3:] == [
        ("accepted", "e1.sl", "e1", 99.0, UNSET, "amended: stop 97.5 -> 99"),
        ("filled", "e1.sl", "e1", 99.0, UNSET, ""),
        ("canceled", "e1.tp", "e1", UNSET, 106.0, "OCO: e1.sl filled"),
    ]


# --- the stop validator ---------------------------------------------------------------------


def test_the_stop_validator_places_and_replaces_a_protective_stop() -> None:
    """Strategy s must carry a stop 5 % below its entry: the market buy fills at 102, the
    validator places a sell stop at 96.9 at once; canceled from outside, it is re-placed on
    the next bar; bar 3's low 95 fills it at 96.9."""
    manager = oms(OrdersConfig(require_stop=("s",), stop_pct=5.0))
    protect = f"s-{TOKEN}-protect-{close(1)}"
    out = run(
        manager,
        [
            B0,
            cmd("m1"),
            B1,
            cmd(f"{protect}.sl", action="cancel", side="sell", ts=close(1) + 1),
            ohlc_bar(2, 103.0, 103.5, 100.0, 101.0),
            ohlc_bar(3, 98.0, 99.0, 95.0, 96.0),
            ohlc_bar(4, 96.0, 98.0, 94.0, 95.0),
        ],
    )
    stop = 102.0 - 102.0 * 5.0 / 100.0
    assert [
        (r.status, r.client_order_id, r.stop_price, r.fill_price, r.reason) for r in reports(out)
    ] == [
        ("accepted", "m1", UNSET, 0.0, ""),
        ("filled", "m1", UNSET, 102.0, ""),
        ("accepted", f"{protect}.sl", stop, 0.0, "stop validator: protective stop"),
        ("canceled", f"{protect}.sl", stop, 0.0, ""),
        ("accepted", f"{protect}.sl2", stop, 0.0, "stop validator: protective stop"),
        ("filled", f"{protect}.sl2", stop, stop, ""),
    ]
    assert manager.state.positions[BOOK].qty == 0.0
    assert manager.state.groups == {}


def test_the_stop_validator_adds_a_stop_to_a_bracket_without_one() -> None:
    manager = oms(OrdersConfig(require_stop=("*",), stop_pct=5.0))
    out = run(manager, [B0, cmd("e1", take_profit=110.0), B1])
    assert legs(out) == [
        ("accepted", "e1.tp", "e1", UNSET, 110.0, "bracket take_profit"),
        ("accepted", "e1.sl", "e1", 102.0 - 102.0 * 5.0 / 100.0, UNSET, "bracket stop_loss"),
    ]


def test_the_stop_validator_leaves_other_strategies_alone() -> None:
    manager = oms(OrdersConfig(require_stop=("other",), stop_pct=5.0))
    out = run(manager, [B0, cmd("m1"), B1, ohlc_bar(2, 103.0, 103.5, 97.0, 98.0)])
    assert [r.client_order_id for r in reports(out)] == ["m1", "m1"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"require_stop": ("s",)}, "require_stop needs stop_pct or stop_atr"),
        ({"stop_pct": 0.0}, "Expected `float` > 0.0 - at `$.stop_pct`"),
        ({"stop_pct": 100.0}, "Expected `float` < 100.0 - at `$.stop_pct`"),
        ({"stop_atr": 2.0}, "stop_atr needs atr_period > 0"),
        ({"stop_pct": 1.0, "stop_atr": 2.0, "atr_period": 3}, "not both"),
        ({"atr_period": -1}, "Expected `int` >= 0 - at `$.atr_period`"),
        ({"atr_period": 1.5}, "Expected `int`, got `float` - at `$.atr_period`"),
        ({"keep_done": -1}, "Expected `int` >= 0 - at `$.keep_done`"),
    ],
)
def test_orders_config_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=re.escape(message)):
        msgspec.convert(kwargs, OrdersConfig)


# --- restarts -------------------------------------------------------------------------------


def restart_matches(
    config: OrdersConfig | None, events: list[Event], cut: int, **venue: Any
) -> None:
    """Snapshot after ``cut`` events, restore into a fresh order manager and venue, go on:
    the reports are those of the uninterrupted run, byte for byte."""
    whole = [encode(e) for e in run(oms(config, **venue), events)]
    first = oms(config, **venue)
    before = run(first, events[:cut])
    second = oms(config, **venue)
    second.restore(first.snapshot())
    after = run(second, events[cut:])
    assert [encode(e) for e in before + after] == whole


def test_restart_in_the_middle_of_an_open_bracket() -> None:
    events: list[Event] = [
        B0,
        cmd("e1", qty=1.0, take_profit=120.0, stop_loss=97.0, trail_pct=2.0),
        *TRAIL_BARS[1:],
    ]
    for cut in range(len(events) + 1):
        restart_matches(None, events, cut)


def test_restart_in_the_middle_of_partial_fills_and_validator_stops() -> None:
    events: list[Event] = [
        ohlc_bar(0, 100.0, 101.0, 99.0, 100.5, volume=4.0),
        cmd("e1", qty=2.5, take_profit=110.0, stop_loss=95.0),
        cmd("m1", qty=1.0, strategy="t"),
        ohlc_bar(1, 102.0, 104.0, 101.0, 103.0, volume=4.0),
        ohlc_bar(2, 103.0, 104.0, 102.0, 103.5, volume=4.0),
        ohlc_bar(3, 103.5, 104.0, 103.0, 103.8, volume=4.0),
        ohlc_bar(4, 103.0, 103.0, 94.0, 95.0, volume=4.0),
        ohlc_bar(5, 94.5, 96.0, 93.0, 94.0, volume=4.0),
    ]
    config = OrdersConfig(require_stop=("t",), stop_atr=1.0, atr_period=2)
    for cut in range(len(events) + 1):
        restart_matches(config, events, cut, max_participation=0.25)


def test_restore_refuses_what_is_not_an_order_manager_snapshot() -> None:
    """A snapshot is decoded strictly: the venue's state alone, or corrupt bytes, raise and
    leave the order manager as it was, never read as some other layout."""
    venue = PaperVenue(PaperVenueConfig(fee_bps=0.0))
    for event in [B0, cmd("m1")]:
        venue.decide(event, event.ts)
    manager = oms()
    run(manager, [B0, cmd("m2")])
    before = manager.snapshot()
    for data in (venue.snapshot(), before[:-3], b"\x00not a snapshot"):
        with pytest.raises(msgspec.DecodeError):
            manager.restore(data)
        assert manager.snapshot() == before


# --- properties -----------------------------------------------------------------------------


@st.composite
def sessions(draw: st.DrawFn) -> tuple[dict[str, Any], OrdersConfig, list[Event]]:
    venue = {
        "max_participation": draw(st.sampled_from([None, 0.25, 0.5])),
        "latency_bars": draw(st.sampled_from([0, 0, 1])),
        "fill": draw(st.sampled_from(["next_open", "close"])),
    }
    config = draw(
        st.sampled_from(
            [
                OrdersConfig(),
                OrdersConfig(require_stop=("s",), stop_pct=3.0),
                OrdersConfig(require_stop=("*",), stop_atr=1.5, atr_period=3),
            ]
        )
    )
    events: list[Event] = []
    price = 100.0
    ids: list[str] = []
    minute = 0
    for _ in range(draw(st.integers(min_value=1, max_value=25))):
        step = draw(st.sampled_from(["bar", "bar", "bar", "new", "new", "cancel", "amend", "dup"]))
        now = T0 + minute * MINUTE
        if step == "bar":
            move = draw(st.floats(min_value=-0.05, max_value=0.05))
            open_ = price
            price = max(1.0, price * (1 + move))
            high = max(open_, price) * (1 + draw(st.floats(min_value=0, max_value=0.03)))
            low = min(open_, price) * (1 - draw(st.floats(min_value=0, max_value=0.03)))
            volume = draw(st.sampled_from([0.0, 2.0, 10.0]))
            events.append(ohlc_bar(minute, open_, high, low, price, volume=volume))
            minute += 1
            continue
        ts = now + draw(st.sampled_from([0, 1]))
        if step in ("cancel", "amend", "dup") and ids:
            target = draw(st.sampled_from(ids))
            if step == "cancel":
                events.append(cmd(target, action="cancel", ts=ts))
            elif step == "amend":
                events.append(
                    cmd(
                        target,
                        action="amend",
                        ts=ts,
                        qty=draw(st.sampled_from([0.5, 1.0, 3.0])),
                        limit_price=price * draw(st.sampled_from([0.97, 1.0])),
                        stop_price=price * draw(st.sampled_from([0.95, 1.05])),
                    )
                )
            else:
                events.append(cmd(target, ts=ts))
            continue
        oid = f"o{len(ids)}"
        ids.append(oid)
        side = draw(st.sampled_from(["buy", "sell"]))
        kind = draw(st.sampled_from(["market", "market", "limit", "stop"]))
        sign = 1.0 if side == "buy" else -1.0
        more: dict[str, Any] = {
            "order_type": kind,
            "time_in_force": draw(st.sampled_from(["GTC", "GTC", "IOC", "FOK"])),
        }
        if kind == "limit":
            more["limit_price"] = price * (1 - sign * 0.01)
        if kind == "stop":
            more["stop_price"] = price * (1 + sign * 0.01)
        if draw(st.booleans()):
            more["take_profit"] = price * (1 + sign * 0.04)
        if draw(st.booleans()):
            more["stop_loss"] = price * (1 - sign * 0.03)
        trail = draw(st.sampled_from([None, "pct", "atr"]))
        if trail == "pct":
            more["trail_pct"] = 1.5
        elif trail == "atr":
            more["trail_atr"] = 2.0
            more["atr"] = price * 0.01
        if draw(st.integers(min_value=0, max_value=4)) == 0:
            more["expire_at"] = ts + draw(st.sampled_from([1, MINUTE, 3 * MINUTE]))
        if draw(st.integers(min_value=0, max_value=4)) == 0:
            more["oco_group"] = "g"
        events.append(
            cmd(
                oid,
                ts=ts,
                side=side,
                qty=draw(st.sampled_from([0.5, 1.0, 2.5])),
                strategy=draw(st.sampled_from(["s", "s", "t"])),
                **more,
            )
        )
    return venue, config, events


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sessions(), st.data())
def test_random_sessions_never_reach_an_illegal_state(
    session: tuple[dict[str, Any], OrdersConfig, list[Event]], data: st.DataObject
) -> None:
    """Random orders (brackets, trails, OCO, expiry, IOC/FOK), cancels, amendments, repeated
    ids and bars: every report sequence follows the state machine, nothing is executed
    twice, bracket legs never flip a position, the working set matches the venue's, and a
    restart at any point changes nothing."""
    venue, config, events = session
    manager = oms(config, **venue)
    out = run(manager, events)
    report_list = reports(out)
    assert check_reports(report_list) == []
    for dead in (e for e in out if isinstance(e, DeadLetter)):
        assert dead.reason.startswith(
            ("order manager: duplicate", "order manager: amend", "order manager: bracket legs")
        ), dead.reason
    accepted_new: dict[str, int] = {}
    for r in report_list:
        if r.status == "accepted" and not r.reason.startswith("amended"):
            accepted_new[r.client_order_id] = accepted_new.get(r.client_order_id, 0) + 1
    assert all(n == 1 for n in accepted_new.values())
    # Legs are reduce-only: a leg's fill never takes its position through zero.
    position: dict[str, float] = {}
    for r in report_list:
        if not r.fill_qty:
            continue
        key = r.strategy
        before = position.get(key, 0.0)
        after = before + (r.fill_qty if r.side == "buy" else -r.fill_qty)
        if r.parent_id:
            assert before * after >= -1e-9, (r, before, after)
        position[key] = after
    # The order manager's view of positions is the sum of its fills.
    for key, pos in manager.state.positions.items():
        assert pos.qty == pytest.approx(position.get(key.strategy, 0.0), abs=1e-9)
    # Every working order has exactly one working venue leg, and the venue nothing else.
    venue_ids = sorted(p.order.client_order_id for p in manager.venue.state.pending)  # type: ignore[attr-defined]
    live = sorted(oid for oid, rec in manager.state.orders.items() if rec.leg_live)
    assert venue_ids == live
    assert all(
        rec.status in ("accepted", "partially_filled") for rec in manager.state.orders.values()
    )
    # Restart anywhere: the same reports, byte for byte.
    cut = data.draw(st.integers(min_value=0, max_value=len(events)))
    first = oms(config, **venue)
    before = run(first, events[:cut])
    second = oms(config, **venue)
    second.restore(first.snapshot())
    assert [encode(e) for e in before + run(second, events[cut:])] == [encode(e) for e in out]


@settings(max_examples=100, deadline=None)
@given(sessions())
def test_plain_sessions_are_byte_identical_to_the_bare_venue(
    session: tuple[dict[str, Any], OrdersConfig, list[Event]],
) -> None:
    """Without any order-management field, the order manager adds nothing: the venue's own
    reports, in its own order, for every order type, TIF, fill mode, latency, participation
    and cancel (the run hashes of plain-order runs do not change)."""
    venue, _, events = session
    plain: list[Event] = []
    seen: set[str] = set()
    for e in events:
        if isinstance(e, OrderCommand):
            if e.action == "amend" or (e.action == "new" and e.client_order_id in seen):
                continue
            seen.add(e.client_order_id)
            e = msgspec.structs.replace(
                e,
                take_profit=UNSET,
                stop_loss=UNSET,
                trail_pct=UNSET,
                trail_atr=UNSET,
                atr=UNSET,
                oco_group=UNSET,
                expire_at=UNSET,
            )
        plain.append(e)
    bare = PaperVenue(PaperVenueConfig(fee_bps=0.0, **venue))
    expected = [encode(r) for e in plain for r in bare.decide(e, e.ts)]
    assert [encode(r) for r in run(oms(None, **venue), plain)] == expected


# --- tightening on a soft breach -------------------------------------------------------------


def _tighten(ts: int, symbol: str = BTC) -> RiskAlert:
    return RiskAlert(
        ts=ts, rule="soft_drawdown", action="tighten_stops", venue=VENUE, symbol=symbol
    )


def test_a_tighten_alert_moves_the_stop_halfway_to_the_close() -> None:
    """Stop 97.5, bar 1 closes at 103: the alert moves it to 97.5 + 0.5 x 5.5 = 100.25; bar 2
    dips to 100, which the old stop would have survived, and fills the new one at 100.25."""
    manager = oms()
    out = run(manager, [B0, bracket(), B1])
    tightened = manager.decide(_tighten(close(1)), close(1))
    assert [(r.status, r.client_order_id, r.stop_price) for r in reports(tightened)] == [
        ("accepted", "e1.sl", 100.25)
    ]
    assert reports(tightened)[0].reason == "amended: stop tightened 97.5 -> 100.25 (soft_drawdown)"
    after = run(manager, [ohlc_bar(2, 101.0, 102.0, 100.0, 101.0)])
    assert rows(after) == [
        (2, "filled", "e1.sl", 100.25, 2.0, 2.0, 2.0),
        (2, "canceled", "e1.tp", 0.0, 0.0, 0.0, 2.0),
    ]
    assert check_reports(reports(out + tightened + after)) == []


def test_tightening_never_loosens_and_skips_other_markets() -> None:
    manager = oms()
    run(manager, [B0, bracket(), B1])
    assert manager.decide(_tighten(close(1), symbol="ETH/USDT"), close(1)) == []
    once = manager.decide(_tighten(close(1)), close(1))
    twice = manager.decide(_tighten(close(1)), close(1))
    assert reports(once)[0].stop_price == 100.25
    assert reports(twice)[0].stop_price == pytest.approx(101.625)
    assert (
        manager.decide(RiskAlert(ts=close(1), rule="depeg_guard", action="halt_entries"), close(1))
        == []
    )


def test_tighten_fraction_is_validated() -> None:
    for fraction in (0.0, 1.5):
        with pytest.raises(msgspec.ValidationError, match=re.escape("`$.tighten_fraction`")):
            msgspec.convert({"tighten_fraction": fraction}, OrdersConfig)
