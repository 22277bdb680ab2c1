"""The paper venue: fill rules by event time, fees, slippage, order types, cancels, snapshots."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.events import Bar, Event, ExecutionReport, OrderCommand
from services.execution.paper_venue import HISTORY, PaperVenue, PaperVenueConfig

MINUTE = 60_000_000_000
T0 = 1_700_000_000_000_000_000
VENUE = "test"
BTC = "BTC/USDT"


def bar(
    index: int,
    open_: float,
    high: float,
    low: float,
    close: float,
    symbol: str = BTC,
) -> Bar:
    """Bar number ``index``: opens at T0 + index minutes, closes a minute later."""
    open_time = T0 + index * MINUTE
    return Bar(
        ts=open_time + MINUTE,
        venue=VENUE,
        symbol=symbol,
        interval="1m",
        open_time=open_time,
        close_time=open_time + MINUTE,
        open=open_,
        high=high,
        low=low,
        close=close,
        volume=10.0,
    )


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


def venue(fill: str = "next_open", fee_bps: float = 0.0, slippage_bps: float = 0.0) -> PaperVenue:
    return PaperVenue(PaperVenueConfig(fill=fill, fee_bps=fee_bps, slippage_bps=slippage_bps))  # type: ignore[arg-type]


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
    bar(0, 100.0, 101.0, 99.0, 100.5),
    bar(1, 102.0, 104.0, 101.0, 103.0),
    bar(2, 103.0, 103.5, 97.0, 98.0),
    bar(3, 98.0, 99.0, 95.0, 96.0),
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
    other = bar(1, 5.0, 5.0, 5.0, 5.0, symbol="ETH/USDT")
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
    v = venue(slippage_bps=100.0)
    reports = feed(v, [order(MID_BAR0, order_type="stop", stop=103.5), *BARS])
    assert fills(reports)[0].fill_price == pytest.approx(103.5 * 1.01, rel=1e-12)


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
    with pytest.raises(ValueError, match="bps"):
        PaperVenueConfig(**kwargs)  # type: ignore[arg-type]


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
    assert restored.state == v.state
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
        bars.append(bar(i, o, hi, lo, c))
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
    history = [bar(i, 100.0, 101.0, 99.0, 100.0) for i in range(HISTORY + 5)]
    reports = feed(v, [*history, order(T0 + MINUTE)])
    assert statuses(reports) == ["accepted", "rejected"]
    assert "stale" in reports[1].reason
