"""The paper venue: fill rules by event time, fees, slippage, order types, cancels, snapshots."""

from __future__ import annotations

import hashlib
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.events import Bar, Event, ExecutionReport, OrderCommand
from services.execution.paper_venue import PaperVenue, PaperVenueConfig, history_bars
from tests.factories import BTC, MINUTE, T0, VENUE, ohlc_bar


def order(
    ts: int,
    side: str = "buy",
    qty: float = 2.0,
    order_type: str = "market",
    limit: float | None = None,
    stop: float | None = None,
    tif: str = "GTC",
    coid: str = "o1",
    action: str = "new",
    symbol: str = BTC,
) -> OrderCommand:
    return OrderCommand(
        ts=ts,
        action=action,  # type: ignore[arg-type]
        client_order_id=coid,
        strategy="s1",
        venue=VENUE,
        symbol=symbol,
        side=side,  # type: ignore[arg-type]
        qty=qty,
        order_type=order_type,  # type: ignore[arg-type]
        limit_price=limit,
        stop_price=stop,
        time_in_force=tif,  # type: ignore[arg-type]
        model_tag="mt",
    )


def venue(
    fill: str = "next_open", fee_bps: float = 0.0, slippage_bps: float = 0.0, **more: Any
) -> PaperVenue:
    config = PaperVenueConfig(fill=fill, fee_bps=fee_bps, slippage_bps=slippage_bps, **more)  # type: ignore[arg-type]
    return PaperVenue(config)


def feed(v: PaperVenue, events: list[Event], now: int = T0) -> list[ExecutionReport]:
    out: list[ExecutionReport] = []
    for event in events:
        for report in v.decide(event, now):
            assert isinstance(report, ExecutionReport)
            out.append(report)
    return out


def fills(reports: list[ExecutionReport]) -> list[ExecutionReport]:
    return [r for r in reports if r.status == "filled"]


def statuses(reports: list[ExecutionReport]) -> list[str]:
    return [r.status for r in reports]


# Bars 0..3; an order at T0 + 30 s lies inside bar 0, so bar 1 is the first to open after it.
BARS = [
    ohlc_bar(0, 100.0, 101.0, 99.0, 100.5),
    ohlc_bar(1, 102.0, 104.0, 101.0, 103.0),
    ohlc_bar(2, 103.0, 103.5, 97.0, 98.0),
    ohlc_bar(3, 98.0, 99.0, 95.0, 96.0),
]
MID_BAR0 = T0 + 30_000_000_000


# --- market, next_open ----------------------------------------------------------------------


def test_next_open_fill_with_bar_after_order() -> None:
    v = venue()
    reports = feed(v, [BARS[0], order(MID_BAR0), BARS[1], BARS[2]])
    assert statuses(reports) == ["accepted", "filled"]
    accepted, filled = reports
    assert accepted.venue_order_id == filled.venue_order_id == "paper-1"
    assert filled.fill_price == 102.0  # open of bar 1
    assert filled.ts == BARS[1].close_time
    assert (filled.fill_qty, filled.cum_qty, filled.order_qty) == (2.0, 2.0, 2.0)
    assert (filled.client_order_id, filled.strategy, filled.model_tag) == ("o1", "s1", "mt")
    assert v.state.pending == []


def test_next_open_fill_is_independent_of_arrival_order() -> None:
    late = feed(venue(), [*BARS, order(MID_BAR0)])  # bars already there when the order comes
    early = feed(venue(), [order(MID_BAR0), *BARS])  # order first, bars later
    assert statuses(late) == statuses(early) == ["accepted", "filled"]
    a, b = fills(late)[0], fills(early)[0]
    assert (
        (a.fill_price, a.ts, a.fill_qty)
        == (b.fill_price, b.ts, b.fill_qty)
        == (
            102.0,
            BARS[1].close_time,
            2.0,
        )
    )


def test_next_open_order_exactly_at_open_time_fills_at_that_open() -> None:
    at_open = BARS[2].open_time
    for events in ([order(at_open), *BARS], [*BARS, order(at_open)]):
        assert fills(feed(venue(), events))[0].fill_price == 103.0


def test_next_open_waits_and_ignores_other_symbols() -> None:
    v = venue()
    feed(v, [order(MID_BAR0)])
    other = ohlc_bar(1, 5.0, 5.0, 5.0, 5.0, symbol="ETH/USDT")
    assert feed(v, [other]) == []
    assert len(v.state.pending) == 1
    assert fills(feed(v, [BARS[1]]))[0].fill_price == 102.0


# --- market, close ----------------------------------------------------------------------------


def test_close_mode_fills_at_close_of_the_bar_the_order_was_decided_on() -> None:
    v = venue(fill="close")
    reports = feed(v, [*BARS[:3], order(BARS[2].close_time)])
    assert statuses(reports) == ["accepted", "filled"]
    filled = reports[1]
    assert filled.fill_price == 98.0  # close of bar 2, not of bar 0 or 1
    assert filled.ts == BARS[2].close_time


def test_close_mode_order_between_bar_closes_fills_like_next_open() -> None:
    v = venue(fill="close")
    order_ts = BARS[2].close_time - 5  # inside bar 2: no bar closes at the order time
    reports = feed(v, [*BARS[:3], order(order_ts), BARS[3]])
    assert statuses(reports) == ["accepted", "filled"]
    assert fills(reports)[0].fill_price == 98.0  # the open of bar 3, the first opening after it
    assert fills(reports)[0].ts == BARS[3].close_time


def test_close_mode_with_no_bar_closing_at_the_order_uses_the_next_open() -> None:
    v = venue(fill="close")
    reports = feed(v, [order(BARS[1].open_time - 1), *BARS])
    assert fills(reports)[0].fill_price == 102.0  # bar 1 is the first opening after it
    assert fills(reports)[0].ts == BARS[1].close_time


@pytest.mark.parametrize(
    ("arrival", "label"),
    [
        ([*BARS[:2], "order", *BARS[2:]], "bars 0-1, order, bars 2-3"),
        (["order", *BARS], "order, bars 0-3"),
    ],
)
def test_close_mode_fill_is_independent_of_arrival_order(arrival: list, label: str) -> None:
    """An order stamped at bar 2's close fills at bar 2's close, 98, at that time, whether
    bar 2 reached the venue before or after the order."""
    order_ts = BARS[2].close_time
    bar_first = fills(feed(venue(fill="close"), [*BARS[:3], order(order_ts), BARS[3]]))
    assert (bar_first[0].fill_price, bar_first[0].ts) == (98.0, order_ts)
    events = [order(order_ts) if e == "order" else e for e in arrival]
    other = fills(feed(venue(fill="close"), events))
    assert (other[0].fill_price, other[0].ts) == (98.0, order_ts), (
        f"close-mode fill depends on arrival order ({label}): "
        f"got {other[0].fill_price} at {other[0].ts}, bar-first gave 98.0 at {order_ts}"
    )


# --- fees and slippage -------------------------------------------------------------------------


@pytest.mark.parametrize("fee_bps", [0.0, 7.5, 10.0, 1000.0])
def test_fee_is_bps_of_fill_notional(fee_bps: float) -> None:
    filled = fills(feed(venue(fee_bps=fee_bps), [order(MID_BAR0, qty=3.0), BARS[1]]))[0]
    assert filled.fee == pytest.approx(102.0 * 3.0 * fee_bps / 1e4, rel=1e-12)


@pytest.mark.parametrize(("side", "factor"), [("buy", 1 + 25 / 1e4), ("sell", 1 - 25 / 1e4)])
def test_slippage_moves_against_the_taker(side: str, factor: float) -> None:
    v = venue(fee_bps=10.0, slippage_bps=25.0)
    filled = fills(feed(v, [order(MID_BAR0, side=side), BARS[1]]))[0]
    assert filled.fill_price == pytest.approx(102.0 * factor, rel=1e-12)
    assert filled.fee == pytest.approx(filled.fill_price * 2.0 * 10.0 / 1e4, rel=1e-12)


def test_slippage_does_not_touch_limit_fills() -> None:
    v = venue(slippage_bps=50.0)
    filled = fills(feed(v, [order(MID_BAR0, order_type="limit", limit=101.5), *BARS[1:]]))[0]
    assert filled.fill_price == 101.5


# --- limit and stop ----------------------------------------------------------------------------


def test_limit_buy_fills_at_limit_when_low_reaches_it_not_before() -> None:
    v = venue()
    o = order(MID_BAR0, order_type="limit", limit=97.5)
    assert statuses(feed(v, [BARS[0], o])) == ["accepted"]
    assert feed(v, [BARS[1]]) == []  # low 101 > 97.5
    filled = fills(feed(v, [BARS[2]]))  # low 97 <= 97.5
    assert len(filled) == 1
    assert filled[0].fill_price == 97.5
    assert filled[0].ts == BARS[2].close_time
    assert feed(v, [BARS[3]]) == []  # filled once only


def test_limit_fill_on_touch_exactly() -> None:
    filled = fills(feed(venue(), [order(MID_BAR0, order_type="limit", limit=97.0), *BARS]))
    assert [(f.fill_price, f.ts) for f in filled] == [(97.0, BARS[2].close_time)]


def test_limit_sell_fills_when_high_reaches_it() -> None:
    reports = feed(venue(), [order(MID_BAR0, side="sell", order_type="limit", limit=104.0), *BARS])
    assert [(r.fill_price, r.ts) for r in fills(reports)] == [(104.0, BARS[1].close_time)]


def test_limit_ignores_bars_that_opened_before_the_order() -> None:
    # Bar 0 trades at 99 but opened before the order: it must not fill a buy limit at 99.5.
    reports = feed(venue(), [order(MID_BAR0, order_type="limit", limit=99.5), *BARS])
    assert fills(reports)[0].ts == BARS[2].close_time
    reports = feed(venue(), [BARS[0], order(MID_BAR0, order_type="limit", limit=99.5)])
    assert statuses(reports) == ["accepted"]


def test_stop_buy_triggers_at_stop_inside_the_range() -> None:
    reports = feed(venue(), [order(MID_BAR0, order_type="stop", stop=103.5), *BARS])
    assert [(r.fill_price, r.ts) for r in fills(reports)] == [(103.5, BARS[1].close_time)]


def test_stop_buy_gap_fills_at_the_open() -> None:
    # Bar 1 opens at 102, above a 101.5 stop: the fill is max(open, stop) = 102.
    reports = feed(venue(), [order(MID_BAR0, order_type="stop", stop=101.5), *BARS])
    assert fills(reports)[0].fill_price == 102.0


def test_stop_buy_not_triggered_below() -> None:
    reports = feed(venue(), [order(MID_BAR0, order_type="stop", stop=110.0), *BARS])
    assert statuses(reports) == ["accepted"]


def test_stop_sell_triggers_and_gaps() -> None:
    inside = feed(venue(), [order(MID_BAR0, side="sell", order_type="stop", stop=97.5), *BARS])
    assert [(r.fill_price, r.ts) for r in fills(inside)] == [(97.5, BARS[2].close_time)]
    gap = feed(
        venue(), [order(BARS[2].close_time, side="sell", order_type="stop", stop=99.0), *BARS]
    )
    assert fills(gap)[0].fill_price == 98.0  # bar 3 opens at 98, below the stop


def test_stop_fill_takes_slippage() -> None:
    v = venue(slippage_bps=20.0)
    reports = feed(v, [order(MID_BAR0, order_type="stop", stop=103.5), *BARS])
    assert fills(reports)[0].fill_price == pytest.approx(103.5 * 1.002, rel=1e-12)  # 103.707


def test_stop_fill_slipped_beyond_the_bar_is_clamped_to_its_high() -> None:
    # 103.5 * 1.01 = 104.535 lies above bar 1's high of 104: the fill is 104.
    v = venue(slippage_bps=100.0)
    reports = feed(v, [order(MID_BAR0, order_type="stop", stop=103.5), *BARS])
    assert fills(reports)[0].fill_price == 104.0


# --- time in force -----------------------------------------------------------------------------


@pytest.mark.parametrize("tif", ["IOC", "FOK"])
def test_ioc_not_fillable_on_first_eligible_bar_is_canceled(tif: str) -> None:
    v = venue()
    o = order(MID_BAR0, order_type="limit", limit=97.5, tif=tif)
    reports = feed(v, [o, *BARS])
    assert statuses(reports) == ["accepted", "canceled"]
    assert reports[1].ts == BARS[1].close_time
    assert reports[1].fill_qty == 0.0
    assert v.state.pending == []


@pytest.mark.parametrize("tif", ["IOC", "FOK"])
def test_ioc_same_outcome_when_bars_arrive_first(tif: str) -> None:
    o = order(MID_BAR0, order_type="limit", limit=97.5, tif=tif)
    reports = feed(venue(), [*BARS, o])
    assert statuses(reports) == ["accepted", "canceled"]
    assert reports[1].ts == BARS[1].close_time


def test_ioc_fillable_on_first_eligible_bar_fills() -> None:
    o = order(MID_BAR0, order_type="limit", limit=101.5, tif="IOC")
    reports = feed(venue(), [o, *BARS])
    assert statuses(reports) == ["accepted", "filled"]
    assert reports[1].fill_price == 101.5


# --- cancels and duplicates ----------------------------------------------------------------------


def test_cancel_pending_order() -> None:
    v = venue()
    feed(v, [order(MID_BAR0, order_type="limit", limit=50.0)])
    reports = feed(v, [order(MID_BAR0 + 1, action="cancel")], now=T0 + 99)
    assert statuses(reports) == ["canceled"]
    assert reports[0].venue_order_id == "paper-1"
    assert reports[0].ts == T0 + 99
    assert v.state.pending == []
    assert feed(v, BARS) == []  # nothing fills after the cancel


def test_cancel_unknown_order_is_rejected() -> None:
    reports = feed(venue(), [order(MID_BAR0, action="cancel", coid="ghost")])
    assert statuses(reports) == ["rejected"]
    assert reports[0].client_order_id == "ghost"
    assert "unknown" in reports[0].reason


def test_cancel_after_fill_is_rejected() -> None:
    v = venue()
    feed(v, [order(MID_BAR0), *BARS])
    assert statuses(feed(v, [order(MID_BAR0, action="cancel")])) == ["rejected"]


def test_duplicate_client_order_id_while_pending_is_rejected() -> None:
    v = venue()
    feed(v, [order(MID_BAR0, order_type="limit", limit=50.0)])
    reports = feed(v, [order(MID_BAR0, qty=1.0)])
    assert statuses(reports) == ["rejected"]
    assert "duplicate" in reports[0].reason
    assert len(v.state.pending) == 1
    assert v.state.pending[0].order.qty == 2.0  # the original is untouched


def test_venue_order_ids_increase() -> None:
    v = venue()
    a = feed(v, [order(MID_BAR0, coid="a", order_type="limit", limit=1.0)])
    b = feed(v, [order(MID_BAR0, coid="b", order_type="limit", limit=1.0)])
    assert (a[0].venue_order_id, b[0].venue_order_id) == ("paper-1", "paper-2")


def test_several_pending_orders_fill_on_one_bar() -> None:
    v = venue()
    feed(v, [order(MID_BAR0, coid="a"), order(MID_BAR0, coid="b", side="sell", qty=1.0)])
    filled = fills(feed(v, [BARS[1]]))
    assert sorted((f.client_order_id, f.side, f.fill_price) for f in filled) == [
        ("a", "buy", 102.0),
        ("b", "sell", 102.0),
    ]


# --- config ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [{"fee_bps": -0.01}, {"fee_bps": 1000.5}, {"slippage_bps": -1.0}, {"slippage_bps": 2000.0}],
)
def test_config_validation(kwargs: dict[str, float]) -> None:
    import msgspec

    with pytest.raises(msgspec.ValidationError, match="bps"):
        msgspec.convert(kwargs, PaperVenueConfig)


def test_config_rejects_unknown_fill_mode_when_decoded() -> None:
    import msgspec

    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"fill": "vwap"}, PaperVenueConfig)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"fee": 1}, PaperVenueConfig)


# --- snapshot ----------------------------------------------------------------------------------


def test_snapshot_restore_with_pending_order_then_bar_fills() -> None:
    v = venue(fee_bps=10.0)
    assert statuses(feed(v, [BARS[0], order(MID_BAR0)])) == ["accepted"]
    blob = v.snapshot()

    restored = venue(fee_bps=10.0)
    restored.restore(blob)
    assert restored.snapshot() == blob  # bars come back as their prices alone
    assert restored.state.pending == v.state.pending
    after = feed(restored, [BARS[1]])
    assert statuses(after) == ["filled"]
    assert after[0].fill_price == 102.0
    assert after[0].venue_order_id == "paper-1"
    assert after[0].fee == pytest.approx(102.0 * 2.0 * 10.0 / 1e4)
    # Identical to the venue that never restarted, and the id counter carries on.
    assert feed(v, [BARS[1]]) == after
    nxt = feed(restored, [order(MID_BAR0, coid="o2", order_type="limit", limit=1.0)])
    assert nxt[0].venue_order_id == "paper-2"


def test_snapshot_restore_keeps_bar_history() -> None:
    v = venue(fill="close")
    feed(v, BARS[:3])
    restored = venue(fill="close")
    restored.restore(v.snapshot())
    order_ts = BARS[2].close_time
    assert fills(feed(restored, [order(order_ts)]))[0].fill_price == 98.0


# --- property: next_open fills depend on event times only ----------------------------------------


@st.composite
def bar_series(draw: st.DrawFn) -> list[Bar]:
    n = draw(st.integers(min_value=1, max_value=20))
    bars = []
    price = 100.0
    for i in range(n):
        o = draw(st.floats(min_value=0.9, max_value=1.1)) * price
        c = draw(st.floats(min_value=0.9, max_value=1.1)) * o
        hi = max(o, c) * draw(st.floats(min_value=1.0, max_value=1.05))
        lo = min(o, c) * draw(st.floats(min_value=0.95, max_value=1.0))
        bars.append(ohlc_bar(i, o, hi, lo, c))
        price = c
    return bars


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(
    bars=bar_series(),
    offset=st.integers(min_value=-MINUTE, max_value=25 * MINUTE),
    side=st.sampled_from(["buy", "sell"]),
    kind=st.sampled_from(["market", "limit", "stop"]),
    level=st.floats(min_value=80.0, max_value=120.0),
    tif=st.sampled_from(["GTC", "IOC"]),
    data=st.data(),
)
def test_next_open_outcome_is_independent_of_arrival_point(
    bars: list[Bar], offset: int, side: str, kind: str, level: float, tif: str, data: st.DataObject
) -> None:
    o = order(
        T0 + offset,
        side=side,
        order_type=kind,
        limit=level if kind == "limit" else None,
        stop=level if kind == "stop" else None,
        tif=tif,
    )
    config = {"fee_bps": 10.0, "slippage_bps": 5.0}
    k = data.draw(st.integers(min_value=0, max_value=len(bars)), label="bars before the order")
    reference = feed(venue(**config), [o, *bars])  # type: ignore[arg-type]
    other = feed(venue(**config), [*bars[:k], o, *bars[k:]])  # type: ignore[arg-type]
    assert reference[0].status == other[0].status == "accepted"
    assert reference[1:] == other[1:]
    assert len(reference) <= 2
    if len(reference) == 2:
        outcome = reference[1]
        first = next(b for b in bars if b.open_time >= o.ts)
        if outcome.status == "canceled":
            assert tif == "IOC" and outcome.ts == first.close_time
        else:
            eligible = [b for b in bars if b.open_time >= o.ts]
            assert outcome.ts in {b.close_time for b in eligible}
            assert outcome.fee == pytest.approx(outcome.fill_price * o.qty * 10.0 / 1e4)


def test_order_older_than_the_kept_history_is_rejected_as_stale() -> None:
    v = venue()
    history = [
        ohlc_bar(i, 100.0, 101.0, 99.0, 100.0) for i in range(history_bars(PaperVenueConfig()) + 5)
    ]
    reports = feed(v, [*history, order(T0 + MINUTE)])
    assert statuses(reports) == ["accepted", "rejected"]
    assert "stale" in reports[1].reason


# === fill models: fees, slippage, clamping, latency, participation, stop-limit ===============

BAR4 = ohlc_bar(4, 96.0, 98.0, 94.0, 95.0)
BARS5 = [*BARS, BAR4]


def by_coid(reports: list[ExecutionReport]) -> dict[str, list[tuple[str, float, float, int]]]:
    out: dict[str, list[tuple[str, float, float, int]]] = {}
    for r in reports:
        if r.status != "accepted":
            out.setdefault(r.client_order_id, []).append((r.status, r.fill_price, r.fill_qty, r.ts))
    return out


# --- contracts: stop_limit -----------------------------------------------------------------------


@pytest.mark.parametrize(("limit", "stop"), [(None, 100.0), (100.0, None), (None, None)])
def test_stop_limit_needs_both_prices(limit: float | None, stop: float | None) -> None:
    with pytest.raises(ValueError, match="stop_limit needs both stop_price and limit_price"):
        order(MID_BAR0, order_type="stop_limit", limit=limit, stop=stop)


def test_stop_limit_order_round_trips_through_json() -> None:
    import msgspec

    from contracts.events import AnyEvent

    o = order(MID_BAR0, order_type="stop_limit", limit=101.0, stop=100.0)
    assert msgspec.json.decode(msgspec.json.encode(o), type=AnyEvent) == o


# --- fees: taker vs maker -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "price", "bps"),
    [
        ({}, 102.0, 10.0),  # market: taker
        ({"order_type": "stop", "stop": 103.5}, 103.5, 10.0),  # stop: taker
        ({"order_type": "limit", "limit": 101.5}, 101.5, 2.0),  # limit: maker
        ({"order_type": "stop_limit", "stop": 103.5, "limit": 103.8}, 103.5, 2.0),  # maker
    ],
)
def test_taker_fee_on_market_and_stop_maker_fee_on_limit_and_stop_limit(
    kwargs: dict[str, Any], price: float, bps: float
) -> None:
    v = venue(fee_bps=10.0, maker_fee_bps=2.0)
    filled = fills(feed(v, [order(MID_BAR0, **kwargs), *BARS]))
    assert [(f.fill_price, f.ts) for f in filled] == [(price, BARS[1].close_time)]
    # e.g. market 102 * 2 * 10 / 1e4 = 0.204; limit 101.5 * 2 * 2 / 1e4 = 0.0406
    assert filled[0].fee == pytest.approx(price * 2.0 * bps / 1e4, rel=1e-12)


def test_maker_fee_defaults_to_fee_bps_and_may_be_a_rebate() -> None:
    lim = order(MID_BAR0, order_type="limit", limit=101.5)
    same = fills(feed(venue(fee_bps=10.0), [lim, *BARS]))[0]
    assert same.fee == pytest.approx(101.5 * 2.0 * 10.0 / 1e4, rel=1e-12)  # 0.203
    rebate = fills(feed(venue(fee_bps=10.0, maker_fee_bps=-2.5), [lim, *BARS]))[0]
    assert rebate.fee == pytest.approx(-0.05075, rel=1e-12)  # 101.5 * 2 * -2.5 / 1e4


# --- slippage proportional to the bar's range; clamping ------------------------------------------


@pytest.mark.parametrize(
    ("side", "more", "expected"),
    [
        ("buy", {"slippage_range_frac": 0.1}, 102.3),  # 102 + 0.1 * (104 - 101)
        ("sell", {"slippage_range_frac": 0.1}, 101.7),  # 102 - 0.3
        ("buy", {"slippage_range_frac": 0.1, "slippage_bps": 25.0}, 102.555),  # 102.255 + 0.3
        ("buy", {"slippage_range_frac": 1.0}, 104.0),  # 105 clamped to the high
        ("sell", {"slippage_range_frac": 1.0}, 101.0),  # 99 clamped to the low
        ("buy", {"slippage_bps": 1000.0}, 104.0),  # 112.2 clamped to the high
    ],
)
def test_range_slippage_on_market_fills_and_clamp(
    side: str, more: dict[str, float], expected: float
) -> None:
    v = venue(**more)
    filled = fills(feed(v, [order(MID_BAR0, side=side), *BARS]))[0]
    assert filled.fill_price == pytest.approx(expected, rel=1e-12)


def test_range_slippage_on_stop_fills() -> None:
    buy = order(MID_BAR0, order_type="stop", stop=103.5)
    filled = fills(feed(venue(slippage_range_frac=0.1), [buy, *BARS]))[0]
    assert filled.fill_price == pytest.approx(103.8, rel=1e-12)  # 103.5 + 0.1 * 3
    # Bar 2's range is 6.5: 97.5 - 0.05 * 6.5 = 97.175; with 0.1 it would be 96.85 < low 97.
    sell = order(MID_BAR0, side="sell", order_type="stop", stop=97.5)
    filled = fills(feed(venue(slippage_range_frac=0.05), [sell, *BARS]))[0]
    assert filled.fill_price == pytest.approx(97.175, rel=1e-12)
    filled = fills(feed(venue(slippage_range_frac=0.1), [sell, *BARS]))[0]
    assert filled.fill_price == 97.0


def test_no_slippage_of_any_kind_on_limit_or_stop_limit_fills() -> None:
    v_kwargs = {"slippage_bps": 50.0, "slippage_range_frac": 0.5}
    lim = order(MID_BAR0, order_type="limit", limit=101.5)
    assert fills(feed(venue(**v_kwargs), [lim, *BARS]))[0].fill_price == 101.5
    sl = order(MID_BAR0, order_type="stop_limit", stop=103.5, limit=103.8)
    assert fills(feed(venue(**v_kwargs), [sl, *BARS]))[0].fill_price == 103.5


@pytest.mark.parametrize(
    ("side", "frac", "expected"),
    [("buy", 0.1, 98.65), ("sell", 0.1, 97.35), ("sell", 0.2, 97.0)],
)
def test_close_mode_fill_is_the_close_plus_slippage_clamped(
    side: str, frac: float, expected: float
) -> None:
    # Bar 2 closes at 98 with range 103.5 - 97 = 6.5; 98 - 0.2 * 6.5 = 96.7 is below the low.
    v = venue(fill="close", slippage_range_frac=frac)
    filled = fills(feed(v, [*BARS[:3], order(BARS[2].close_time, side=side)]))[0]
    assert filled.fill_price == pytest.approx(expected, rel=1e-12)
    assert filled.ts == BARS[2].close_time


def test_marketable_limit_fills_at_the_open() -> None:
    # A buy limit at 110 is already marketable when bar 1 opens at 102: it fills there.
    buy = fills(feed(venue(), [order(MID_BAR0, order_type="limit", limit=110.0), *BARS]))
    assert [(f.fill_price, f.ts) for f in buy] == [(102.0, BARS[1].close_time)]
    sell = order(MID_BAR0, side="sell", order_type="limit", limit=90.0)
    assert [f.fill_price for f in fills(feed(venue(), [sell, *BARS]))] == [102.0]


# --- latency -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("latency", "expected"),
    [
        (0, (102.0, BARS[1].close_time)),
        (1, (103.0, BARS[2].close_time)),
        (2, (98.0, BARS[3].close_time)),
    ],
)
def test_latency_moves_a_next_open_fill_by_whole_bars(
    latency: int, expected: tuple[float, int]
) -> None:
    for events in ([order(MID_BAR0), *BARS], [*BARS, order(MID_BAR0)]):
        filled = fills(feed(venue(latency_bars=latency), events))
        assert [(f.fill_price, f.ts) for f in filled] == [expected]


def test_latency_longer_than_the_bars_keeps_the_order_working() -> None:
    v = venue(latency_bars=3)
    assert statuses(feed(v, [order(MID_BAR0), *BARS])) == ["accepted"]
    assert v.state.pending[0].wait == 0  # bars 1, 2 and 3 were skipped
    assert fills(feed(v, [BAR4]))[0].fill_price == 96.0


@pytest.mark.parametrize(
    ("latency", "expected"),
    [
        (0, (100.5, BARS[0].close_time)),  # bar 0's close
        (1, (102.0, BARS[1].close_time)),  # bar 1's open
        (2, (103.0, BARS[2].close_time)),  # bar 2's open
    ],
)
def test_latency_moves_a_close_fill_to_a_later_open(
    latency: int, expected: tuple[float, int]
) -> None:
    o = order(BARS[0].close_time)
    for events in ([o, *BARS], [*BARS, o], [BARS[0], o, *BARS[1:]]):
        filled = fills(feed(venue(fill="close", latency_bars=latency), events))
        assert [(f.fill_price, f.ts) for f in filled] == [expected]


def test_latency_counts_every_bar_including_zero_volume_ones() -> None:
    quiet = ohlc_bar(1, 102.0, 104.0, 101.0, 103.0, volume=0.0)
    events = [order(MID_BAR0), BARS[0], quiet, *BARS[2:]]
    filled = fills(feed(venue(latency_bars=1, **PART), events))
    assert [(f.fill_price, f.ts) for f in filled] == [(103.0, BARS[2].close_time)]


def test_latency_applies_to_limits_and_stops() -> None:
    # Without latency a sell limit at 104 fills on bar 1 (high 104); with one bar of latency
    # bar 1 is skipped and bars 2 and 3 (highs 103.5, 99) never reach it.
    sell = order(MID_BAR0, side="sell", order_type="limit", limit=104.0)
    assert [f.ts for f in fills(feed(venue(), [sell, *BARS]))] == [BARS[1].close_time]
    assert statuses(feed(venue(latency_bars=1), [sell, *BARS])) == ["accepted"]
    # A buy stop at 103.5 would trigger on bar 1; with latency it triggers on bar 2 (high 103.5).
    stop = order(MID_BAR0, order_type="stop", stop=103.5)
    filled = fills(feed(venue(latency_bars=1), [stop, *BARS]))
    assert [(f.fill_price, f.ts) for f in filled] == [(103.5, BARS[2].close_time)]


def test_ioc_acts_on_its_first_bar_after_latency() -> None:
    ioc = order(MID_BAR0, order_type="limit", limit=97.5, tif="IOC")
    assert statuses(feed(venue(), [ioc, *BARS])) == ["accepted", "canceled"]
    filled = fills(feed(venue(latency_bars=1), [ioc, *BARS]))
    assert [(f.fill_price, f.ts) for f in filled] == [(97.5, BARS[2].close_time)]


def _jitter(seed: int, coid: str, span: int) -> int:
    digest = hashlib.sha256(f"{seed}:{coid}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % (span + 1)


def test_jitter_is_the_documented_hash_of_seed_and_order_id() -> None:
    # Computed by hand from the documented formula: seed 0 -> a: 0, o1: 1, o2: 2;
    # seed 7 -> o1: 2.
    v = PaperVenue(PaperVenueConfig(latency_bars=1, latency_jitter_bars=2))
    assert [v.delay(order(MID_BAR0, coid=c)) for c in ("a", "o1", "o2")] == [1, 2, 3]
    seeded = PaperVenue(PaperVenueConfig(latency_jitter_bars=2, seed=7))
    assert seeded.delay(order(MID_BAR0, coid="o1")) == 2
    for seed in (0, 7, 42):
        for coid in ("a", "b", "o1", "o2"):
            cfg = PaperVenueConfig(latency_bars=3, latency_jitter_bars=4, seed=seed)
            assert PaperVenue(cfg).delay(order(0, coid=coid)) == 3 + _jitter(seed, coid, 4)


def test_jittered_fills_do_not_depend_on_arrival_order() -> None:
    a, o1, o2 = (order(MID_BAR0, coid=c) for c in ("a", "o1", "o2"))  # jitter 0, 1, 2
    expected = {
        "a": [("filled", 102.0, 2.0, BARS[1].close_time)],
        "o1": [("filled", 103.0, 2.0, BARS[2].close_time)],
        "o2": [("filled", 98.0, 2.0, BARS[3].close_time)],
    }
    for events in (
        [a, o1, o2, *BARS],
        [*BARS, o2, o1, a],
        [BARS[0], o2, BARS[1], a, BARS[2], o1, BARS[3]],
    ):
        assert by_coid(feed(venue(latency_jitter_bars=2), events)) == expected


def test_jitter_is_the_same_in_another_python_process() -> None:
    code = (
        "from contracts.events import OrderCommand as O\n"
        "from services.execution.paper_venue import PaperVenue, PaperVenueConfig as C\n"
        "v = PaperVenue(C(latency_jitter_bars=50, seed=3))\n"
        "print([v.delay(O(ts=0, action='new', client_order_id=c, strategy='s', venue='v',"
        " symbol='x', side='buy', qty=1.0)) for c in 'abcdefgh'])\n"
    )
    expected = str([_jitter(3, c, 50) for c in "abcdefgh"])
    root = Path(__file__).resolve().parents[1]
    for hash_seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(root)}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == expected


# --- partial fills by volume participation -------------------------------------------------------

# max_participation 0.25 of a 10-unit bar: at most 2.5 per bar.
PART = {"max_participation": 0.25}


def test_partial_fills_over_several_bars_with_cum_qty() -> None:
    o = order(MID_BAR0, qty=6.0)
    for events in ([o, *BARS], [*BARS, o], [BARS[0], BARS[1], o, *BARS[2:]]):
        reports = feed(venue(fee_bps=10.0, **PART), events)
        assert statuses(reports) == ["accepted", "partially_filled", "partially_filled", "filled"]
        got = [(r.fill_price, r.fill_qty, r.cum_qty, r.ts) for r in reports[1:]]
        assert got == [
            (102.0, 2.5, 2.5, BARS[1].close_time),
            (103.0, 2.5, 5.0, BARS[2].close_time),
            (98.0, 1.0, 6.0, BARS[3].close_time),
        ]
        fees = [r.fee for r in reports[1:]]
        assert fees == pytest.approx([0.255, 0.2575, 0.098], rel=1e-12)  # price*qty*10bps
        assert {r.venue_order_id for r in reports} == {"paper-1"}
        assert all(r.order_qty == 6.0 for r in reports)


def test_partial_fills_feed_the_ledger_incrementally() -> None:
    from services.portfolio.accounts import Portfolio
    from services.portfolio.config import PortfolioConfig

    ledger = Portfolio(PortfolioConfig())
    for report in feed(venue(**PART), [order(MID_BAR0, qty=6.0), *BARS]):
        ledger.decide(report, report.ts)
    from contracts.keys import InstrumentId

    position = ledger.state.positions[InstrumentId(VENUE, BTC)]
    assert position.qty == 6.0
    assert position.avg_price == pytest.approx((102 * 2.5 + 103 * 2.5 + 98 * 1.0) / 6, rel=1e-12)


def test_zero_volume_bar_fills_nothing() -> None:
    quiet = ohlc_bar(1, 102.0, 104.0, 101.0, 103.0, volume=0.0)
    reports = feed(venue(**PART), [order(MID_BAR0, qty=6.0), BARS[0], quiet, *BARS[2:], BAR4])
    got = [(r.status, r.fill_price, r.cum_qty, r.ts) for r in reports[1:]]
    assert got == [
        ("partially_filled", 103.0, 2.5, BARS[2].close_time),
        ("partially_filled", 98.0, 5.0, BARS[3].close_time),
        ("filled", 96.0, 6.0, BAR4.close_time),
    ]
    # Without max_participation volume plays no part (the original behaviour).
    plain = fills(feed(venue(), [order(MID_BAR0, qty=6.0), BARS[0], quiet]))
    assert [(f.fill_price, f.fill_qty) for f in plain] == [(102.0, 6.0)]


def test_ioc_with_participation_fills_what_the_bar_allows_and_cancels_the_rest() -> None:
    v = venue(**PART)
    reports = feed(v, [order(MID_BAR0, qty=6.0, tif="IOC"), *BARS])
    got = [(r.status, r.fill_qty, r.cum_qty, r.ts) for r in reports[1:]]
    assert got == [
        ("partially_filled", 2.5, 2.5, BARS[1].close_time),
        ("canceled", 0.0, 2.5, BARS[1].close_time),
    ]
    assert v.state.pending == []
    quiet = ohlc_bar(1, 102.0, 104.0, 101.0, 103.0, volume=0.0)
    reports = feed(venue(**PART), [order(MID_BAR0, qty=6.0, tif="IOC"), quiet, *BARS[2:]])
    assert [(r.status, r.cum_qty, r.reason) for r in reports[1:]] == [
        ("canceled", 0.0, "no volume on the bar")
    ]


@pytest.mark.parametrize(
    ("qty", "expected"),
    [(6.0, [("canceled", 0.0, 0.0)]), (2.5, [("filled", 2.5, 2.5)]), (2.0, [("filled", 2.0, 2.0)])],
)
def test_fok_with_participation_fills_all_on_its_first_bar_or_nothing(
    qty: float, expected: list[tuple[str, float, float]]
) -> None:
    v = venue(**PART)
    reports = feed(v, [order(MID_BAR0, qty=qty, tif="FOK"), *BARS])
    assert [(r.status, r.fill_qty, r.cum_qty) for r in reports[1:]] == expected
    assert all(r.ts == BARS[1].close_time for r in reports[1:])
    assert v.state.pending == []


def test_limit_partial_fills_at_the_limit() -> None:
    reports = feed(
        venue(**PART), [order(MID_BAR0, qty=6.0, order_type="limit", limit=97.5), *BARS5]
    )
    got = [(r.status, r.fill_price, r.cum_qty, r.ts) for r in reports[1:]]
    assert got == [
        ("partially_filled", 97.5, 2.5, BARS[2].close_time),
        ("partially_filled", 97.5, 5.0, BARS[3].close_time),
        ("filled", 96.0, 6.0, BAR4.close_time),  # bar 4 opens at 96, below the limit
    ]


def test_triggered_stop_remainder_fills_as_market_at_later_opens() -> None:
    reports = feed(
        venue(fee_bps=10.0, **PART),
        [order(MID_BAR0, qty=6.0, order_type="stop", stop=103.5), *BARS],
    )
    got = [(r.status, r.fill_price, r.cum_qty, r.ts) for r in reports[1:]]
    assert got == [
        ("partially_filled", 103.5, 2.5, BARS[1].close_time),  # triggered inside bar 1
        ("partially_filled", 103.0, 5.0, BARS[2].close_time),  # bar 2's open
        ("filled", 98.0, 6.0, BARS[3].close_time),  # bar 3's open
    ]
    assert reports[2].fee == pytest.approx(103.0 * 2.5 * 10.0 / 1e4, rel=1e-12)  # taker


def test_cancel_of_a_partially_filled_order_reports_cum_qty() -> None:
    v = venue(**PART)
    feed(v, [order(MID_BAR0, qty=6.0), BARS[0], BARS[1]])
    reports = feed(v, [order(MID_BAR0, action="cancel")], now=T0 + 99)
    assert [(r.status, r.fill_qty, r.cum_qty, r.ts) for r in reports] == [
        ("canceled", 0.0, 2.5, T0 + 99)
    ]
    assert feed(v, BARS[2:]) == []


def test_float_dust_is_never_left_working() -> None:
    # 0.1 per bar accumulates to 0.8999999999999999 after nine bars: the tenth fills the rest.
    many = [ohlc_bar(i, 100.0, 101.0, 99.0, 100.0, volume=1.0) for i in range(12)]
    reports = feed(venue(max_participation=0.1), [order(MID_BAR0, qty=1.0), *many])
    done = reports[1:]
    assert statuses(done) == ["partially_filled"] * 9 + ["filled"]
    assert done[-1].cum_qty == 1.0
    assert sum(r.fill_qty for r in done) <= 1.0
    assert [r.cum_qty for r in done] == sorted(r.cum_qty for r in done)


def test_snapshot_restore_in_the_middle_of_a_partial_fill() -> None:
    v = venue(fee_bps=10.0, latency_bars=1, **PART)
    feed(v, [order(MID_BAR0, qty=6.0, order_type="stop", stop=103.5), BARS[0], BARS[1]])
    assert v.state.pending[0].wait == 0  # bar 1 was the latency bar
    feed(v, [BARS[2]])  # triggers at 103.5, fills 2.5
    assert (v.state.pending[0].filled, v.state.pending[0].triggered) == (2.5, True)
    restored = venue(fee_bps=10.0, latency_bars=1, **PART)
    restored.restore(v.snapshot())
    assert restored.snapshot() == v.snapshot()
    after = feed(restored, [BARS[3], BAR4])
    assert after == feed(v, [BARS[3], BAR4])
    assert [(r.status, r.fill_price, r.cum_qty) for r in after] == [
        ("partially_filled", 98.0, 5.0),  # the triggered stop's remainder, at bar 3's open
        ("filled", 96.0, 6.0),
    ]


def test_restore_refuses_a_snapshot_of_another_layout() -> None:
    """A snapshot is decoded strictly: bars without their volume, or markets keyed by a
    string, raise and leave the venue as it was."""
    import msgspec

    v = venue(**PART)
    feed(v, [BARS[0], order(MID_BAR0 + MINUTE, qty=6.0)])
    before = v.snapshot()
    six_fields = [BARS[1].open_time, BARS[1].close_time, 102.0, 104.0, 101.0, 103.0]
    pending = [{"order": order(MID_BAR0 + MINUTE, qty=6.0), "venue_order_id": "paper-1"}]
    for bars in ({(VENUE, BTC): [six_fields]}, {f"{VENUE}|{BTC}": [[*six_fields, 10.0]]}):
        data = msgspec.msgpack.encode({"bars": bars, "pending": pending, "next_id": 2})
        with pytest.raises(msgspec.ValidationError):
            v.restore(data)
        assert v.snapshot() == before


# --- stop-limit ----------------------------------------------------------------------------------


def test_stop_limit_buy_triggered_inside_the_bar_fills_when_the_stop_meets_the_limit() -> None:
    # Bar 1 opens at 102 below the 103.5 stop and reaches it; 103.5 <= limit 103.8: the
    # limit is marketable at the trigger, so it fills at the stop price.
    o = order(MID_BAR0, order_type="stop_limit", stop=103.5, limit=103.8)
    filled = fills(feed(venue(), [o, *BARS]))
    assert [(f.fill_price, f.ts) for f in filled] == [(103.5, BARS[1].close_time)]


def test_stop_limit_buy_with_limit_below_the_stop_waits_for_the_next_bar() -> None:
    # Bar 1 reaches the 103.5 stop and its low of 101 is below the 101.5 limit, but the low may
    # have come before the trigger: no fill on bar 1. Bar 2 (low 97) fills at the limit.
    o = order(MID_BAR0, order_type="stop_limit", stop=103.5, limit=101.5)
    v = venue()
    assert statuses(feed(v, [o, BARS[0], BARS[1]])) == ["accepted"]
    assert v.state.pending[0].triggered
    filled = fills(feed(v, BARS[2:]))
    assert [(f.fill_price, f.ts) for f in filled] == [(101.5, BARS[2].close_time)]


def test_stop_limit_buy_gapping_through_the_stop_uses_the_whole_bar() -> None:
    # Bar 1 opens at 102, above the 101.5 stop: triggered at the open, then low 101 <= 101.2.
    o = order(MID_BAR0, order_type="stop_limit", stop=101.5, limit=101.2)
    filled = fills(feed(venue(), [o, *BARS]))
    assert [(f.fill_price, f.ts) for f in filled] == [(101.2, BARS[1].close_time)]
    # A limit at 100.5 is below bar 1's low: it rests and bar 2 (low 97) fills it.
    o = order(MID_BAR0, order_type="stop_limit", stop=101.5, limit=100.5)
    filled = fills(feed(venue(), [o, *BARS]))
    assert [(f.fill_price, f.ts) for f in filled] == [(100.5, BARS[2].close_time)]


def test_stop_limit_sell() -> None:
    # Bar 2 (open 103) falls through the 97.5 stop inside the bar; 97.5 >= limit 97.2: the
    # limit is marketable at the trigger, so it fills at the stop price.
    o = order(MID_BAR0, side="sell", order_type="stop_limit", stop=97.5, limit=97.2)
    filled = fills(feed(venue(), [o, *BARS]))
    assert [(f.fill_price, f.ts) for f in filled] == [(97.5, BARS[2].close_time)]
    # Limit 99 above the stop: not on the trigger bar; bar 3 (high 99) touches it.
    o = order(MID_BAR0, side="sell", order_type="stop_limit", stop=97.5, limit=99.0)
    filled = fills(feed(venue(), [o, *BARS]))
    assert [(f.fill_price, f.ts) for f in filled] == [(99.0, BARS[3].close_time)]


def test_stop_limit_not_triggered() -> None:
    o = order(MID_BAR0, order_type="stop_limit", stop=110.0, limit=111.0)
    v = venue()
    assert statuses(feed(v, [o, *BARS])) == ["accepted"]
    assert not v.state.pending[0].triggered
    ioc = order(MID_BAR0, order_type="stop_limit", stop=110.0, limit=111.0, tif="IOC")
    reports = feed(venue(), [ioc, *BARS])
    assert [(r.status, r.ts) for r in reports[1:]] == [("canceled", BARS[1].close_time)]


def test_stop_limit_triggered_but_limit_not_reached_ioc_is_canceled() -> None:
    ioc = order(MID_BAR0, order_type="stop_limit", stop=103.5, limit=101.5, tif="IOC")
    reports = feed(venue(), [ioc, *BARS])
    assert [(r.status, r.ts, r.cum_qty) for r in reports[1:]] == [
        ("canceled", BARS[1].close_time, 0.0)
    ]


def test_stop_limit_with_a_far_limit_fills_at_the_trigger() -> None:
    o = order(MID_BAR0, order_type="stop_limit", stop=103.5, limit=110.0)
    assert [f.fill_price for f in fills(feed(venue(), [o, *BARS]))] == [103.5]


def test_stop_limit_partial_fills_rest_as_a_limit() -> None:
    o = order(MID_BAR0, qty=5.0, order_type="stop_limit", stop=103.5, limit=98.5)
    reports = feed(venue(**PART), [o, *BARS])
    got = [(r.status, r.fill_price, r.cum_qty, r.ts) for r in reports[1:]]
    assert got == [
        ("partially_filled", 98.5, 2.5, BARS[2].close_time),
        ("filled", 98.0, 5.0, BARS[3].close_time),  # bar 3 opens at 98, below the limit
    ]


# --- config --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"maker_fee_bps": 1000.5}, "Expected `float` <= 1000.0 - at `$.maker_fee_bps`"),
        ({"maker_fee_bps": -1001.0}, "Expected `float` >= -1000.0 - at `$.maker_fee_bps`"),
        ({"maker_fee_bps": math.nan}, "`$.maker_fee_bps`"),
        ({"slippage_range_frac": -0.1}, "Expected `float` >= 0.0 - at `$.slippage_range_frac`"),
        ({"slippage_range_frac": 1.5}, "Expected `float` <= 1.0 - at `$.slippage_range_frac`"),
        ({"latency_bars": -1}, "Expected `int` >= 0 - at `$.latency_bars`"),
        ({"latency_bars": 1001}, "Expected `int` <= 1000 - at `$.latency_bars`"),
        ({"latency_bars": 1.5}, "Expected `int`, got `float` - at `$.latency_bars`"),
        ({"latency_jitter_bars": -1}, "Expected `int` >= 0 - at `$.latency_jitter_bars`"),
        ({"seed": "x"}, "Expected `int`, got `str` - at `$.seed`"),
        ({"max_participation": 0.0}, "Expected `float` > 0.0 - at `$.max_participation`"),
        ({"max_participation": 1.01}, "Expected `float` <= 1.0 - at `$.max_participation`"),
        ({"max_participation": math.nan}, "`$.max_participation`"),
        ({"fee_bps": math.nan}, "`$.fee_bps`"),
        ({"fill": "vwap"}, "Invalid enum value 'vwap' - at `$.fill`"),
    ],
)
def test_config_validation_of_the_fill_model_keys(kwargs: dict[str, Any], message: str) -> None:
    import msgspec

    with pytest.raises(msgspec.ValidationError, match=re.escape(message)):
        msgspec.convert(kwargs, PaperVenueConfig)


def test_config_defaults_reproduce_the_original_venue() -> None:
    assert PaperVenueConfig() == PaperVenueConfig(
        fill="next_open",
        fee_bps=10.0,
        maker_fee_bps=None,
        slippage_bps=0.0,
        slippage_range_frac=0.0,
        latency_bars=0,
        latency_jitter_bars=0,
        seed=0,
        max_participation=None,
    )


def test_fleet_toml_execution_section_carries_every_key(tmp_path: Path) -> None:
    from eventstore.errors import KeelError
    from services.config import load_config

    path = tmp_path / "keel.toml"
    path.write_text(
        "[execution]\n"
        'fill = "close"\n'
        "fee_bps = 10\n"
        "maker_fee_bps = 2.0\n"
        "slippage_bps = 1.5\n"
        "slippage_range_frac = 0.05\n"
        "latency_bars = 1\n"
        "latency_jitter_bars = 2\n"
        "seed = 42\n"
        "max_participation = 0.1\n"
    )
    assert load_config(path).execution == PaperVenueConfig(
        fill="close",
        fee_bps=10.0,
        maker_fee_bps=2.0,
        slippage_bps=1.5,
        slippage_range_frac=0.05,
        latency_bars=1,
        latency_jitter_bars=2,
        seed=42,
        max_participation=0.1,
    )
    path.write_text("[execution]\nmax_participation = 2.0\n")
    with pytest.raises(KeelError, match=re.escape("<= 1.0 - at `$.execution.max_participation`")):
        load_config(path)
    path.write_text("[execution]\nlatency_bars = 1.5\n")
    with pytest.raises(KeelError, match="latency_bars"):
        load_config(path)


# --- property: arrival order, latency, partial fills ---------------------------------------------


@st.composite
def bar_series_with_volume(draw: st.DrawFn) -> list[Bar]:
    bars = draw(bar_series())
    volumes = st.sampled_from([0.0, 1.0, 3.7, 10.0, 1e6])
    return [
        ohlc_bar(i, b.open, b.high, b.low, b.close, volume=draw(volumes))
        for i, b in enumerate(bars)
    ]


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(
    bars=bar_series_with_volume(),
    fill=st.sampled_from(["next_open", "close"]),
    minutes=st.integers(min_value=-1, max_value=22),
    inside=st.booleans(),
    side=st.sampled_from(["buy", "sell"]),
    kind=st.sampled_from(["market", "limit", "stop", "stop_limit"]),
    level=st.floats(min_value=80.0, max_value=120.0),
    limit_offset=st.floats(min_value=-5.0, max_value=5.0),
    tif=st.sampled_from(["GTC", "IOC", "FOK"]),
    qty=st.sampled_from([0.3, 1.0, 2.0, 7.0]),
    latency=st.integers(min_value=0, max_value=2),
    jitter=st.integers(min_value=0, max_value=2),
    participation=st.sampled_from([None, 0.05, 0.25, 1.0]),
    data=st.data(),
)
def test_fills_are_independent_of_arrival_point_with_latency_and_partials(
    bars: list[Bar],
    fill: str,
    minutes: int,
    inside: bool,
    side: str,
    kind: str,
    level: float,
    limit_offset: float,
    tif: str,
    qty: float,
    latency: int,
    jitter: int,
    participation: float | None,
    data: st.DataObject,
) -> None:
    ts = T0 + minutes * MINUTE + (17_000_000_000 if inside else 0)  # on a boundary or inside
    o = order(
        ts,
        side=side,
        qty=qty,
        order_type=kind,
        limit=level + limit_offset if kind in ("limit", "stop_limit") else None,
        stop=level if kind in ("stop", "stop_limit") else None,
        tif=tif,
        coid=data.draw(st.sampled_from(["a", "o1", "o2", "zz"]), label="client order id"),
    )
    config: dict[str, Any] = {
        "fill": fill,
        "fee_bps": 10.0,
        "maker_fee_bps": 2.0,
        "slippage_bps": 5.0,
        "slippage_range_frac": 0.1,
        "latency_bars": latency,
        "latency_jitter_bars": jitter,
        "seed": 9,
        "max_participation": participation,
    }
    k = data.draw(st.integers(min_value=0, max_value=len(bars)), label="bars before the order")
    reference = feed(venue(**config), [o, *bars])
    other = feed(venue(**config), [*bars[:k], o, *bars[k:]])
    assert reference[0].status == other[0].status == "accepted"
    assert reference[1:] == other[1:]

    outcome = reference[1:]
    total = 0.0
    cum = 0.0
    for i, r in enumerate(outcome):
        assert r.status in ("partially_filled", "filled", "canceled")
        assert r.cum_qty >= cum  # monotone
        total += r.fill_qty
        cum = r.cum_qty
        assert total <= qty  # the fills never add up to more than the order
        assert r.cum_qty <= qty
        if r.status == "partially_filled":
            assert r.cum_qty == pytest.approx(total, rel=1e-12) and r.cum_qty < qty
        if r.fill_qty:
            fill_bar = next(b for b in bars if b.close_time == r.ts)
            assert fill_bar.low <= r.fill_price <= fill_bar.high
            bps = 10.0 if kind in ("market", "stop") else 2.0
            assert r.fee == pytest.approx(r.fill_price * r.fill_qty * bps / 1e4, rel=1e-9)
            if participation is not None:
                assert r.fill_qty <= participation * fill_bar.volume + 1e-9 * qty
        if r.status in ("filled", "canceled"):
            assert i == len(outcome) - 1  # nothing after the end
        if r.status == "filled":
            assert r.cum_qty == qty
    if tif == "FOK":
        assert [r.status for r in outcome] in ([], ["filled"], ["canceled"])
        assert all(r.fill_qty in (0.0, qty) for r in outcome)
    if tif in ("IOC", "FOK") and outcome:
        assert len({r.ts for r in outcome}) == 1  # all on the first eligible bar
