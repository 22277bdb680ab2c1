"""The paper venue's quote rule (``fill = "quote"``, docs/fill-models.md section 9): each
order type and time in force on quotes, the quote buffer and stale orders, fills independent
of the order/quote arrival order, snapshots, the order manager and the replay engine."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.codec import encode
from contracts.envelope import Envelope, market_envelope
from contracts.events import Event, ExecutionReport, OrderCommand, Quote
from contracts.subjects import subject_for
from eventstore.bus import Bus, Stored
from eventstore.lag import wait_drained
from eventstore.server import EmbeddedServer
from replay.engine import ReplayEngine
from services.config import load_config
from services.execution.oms import OrderManager
from services.execution.paper_venue import PaperVenue, PaperVenueConfig
from services.execution.quote_fills import _QUOTE_TRIM as TRIM
from services.execution.quote_fills import QUOTE_AGE_NS, QUOTE_CAP, QUOTES_KEPT
from services.execution.role import execution_role
from services.fleet import fleet_roles
from services.runtime.worker import Worker, WorkerOptions
from tests.factories import BTC, MINUTE, T0, VENUE, ohlc_bar

S = 1_000_000_000
ORDER_TS = T0 + 30 * S


def quote(
    ts: int,
    bid: float,
    ask: float,
    bid_size: float = 0.0,
    ask_size: float = 0.0,
    symbol: str = BTC,
) -> Quote:
    return Quote(
        ts=ts,
        venue=VENUE,
        symbol=symbol,
        bid=bid,
        ask=ask,
        bid_size=bid_size,
        ask_size=ask_size,
    )


# The worked example of docs/fill-models.md section 9: q0 is stamped at the order time, so it
# is not after the order; q1 is the first quote an order at T0 + 30 s can fill at.
QUOTES = [
    quote(T0 + 30 * S, 99.9, 100.1, 5.0, 4.0),
    quote(T0 + 31 * S, 100.0, 100.2, 3.0, 1.0),
    quote(T0 + 32 * S, 100.4, 100.6, 2.0, 2.0),
    quote(T0 + 33 * S, 99.5, 99.7, 4.0, 6.0),
    quote(T0 + 34 * S, 98.8, 99.0, 10.0, 10.0),
]


def order(
    ts: int = ORDER_TS,
    side: str = "buy",
    qty: float = 2.0,
    order_type: str = "market",
    limit: float | None = None,
    stop: float | None = None,
    tif: str = "GTC",
    coid: str = "o1",
    action: str = "new",
    **more: Any,
) -> OrderCommand:
    return OrderCommand(
        ts=ts,
        action=action,  # type: ignore[arg-type]
        client_order_id=coid,
        strategy="s1",
        venue=VENUE,
        symbol=BTC,
        side=side,  # type: ignore[arg-type]
        qty=qty,
        order_type=order_type,  # type: ignore[arg-type]
        limit_price=limit,
        stop_price=stop,
        time_in_force=tif,  # type: ignore[arg-type]
        model_tag="mt",
        **more,
    )


def venue(fee_bps: float = 0.0, **more: Any) -> PaperVenue:
    return PaperVenue(PaperVenueConfig(fill="quote", fee_bps=fee_bps, **more))


def feed(v: PaperVenue | OrderManager, events: list[Event]) -> list[Event]:
    """Each event at its own time, as the replay engine gives it."""
    out: list[Event] = []
    for event in events:
        out.extend(v.decide(event, event.ts))
    return out


def reports(events: list[Event]) -> list[ExecutionReport]:
    out = [e for e in events if isinstance(e, ExecutionReport)]
    assert len(out) == len(events), events  # nothing else (no dead letter) came out
    return out


def fills(v: PaperVenue, *orders: OrderCommand) -> list[tuple[str, float, float, float, int]]:
    """(status, fill price, fill qty, fee, time) of every fill or cancel, orders first."""
    rs = reports(feed(v, [*orders, *QUOTES]))
    return [
        (r.status, r.fill_price, r.fill_qty, r.fee, r.ts - T0) for r in rs if r.status != "accepted"
    ]


# --- market orders -----------------------------------------------------------------------------


def test_market_buy_fills_at_the_ask_of_the_first_quote_after_it() -> None:
    # q0 is stamped at the order time: not after it.
    assert fills(venue(), order()) == [("filled", 100.2, 2.0, 0.0, 31 * S)]
    assert fills(venue(), order(side="sell")) == [("filled", 100.0, 2.0, 0.0, 31 * S)]


def test_market_fill_is_the_same_when_the_quotes_arrived_first() -> None:
    v = venue(fee_bps=10.0)
    assert reports(feed(v, QUOTES)) == []
    late = reports(feed(v, [order()]))
    early = reports(feed(venue(fee_bps=10.0), [order(), *QUOTES]))
    assert late == early
    assert [r.status for r in late] == ["accepted", "filled"]
    assert late[1].fill_price == 100.2 and late[1].ts == T0 + 31 * S
    assert late[1].fee == pytest.approx(100.2 * 2 * 10 / 1e4)


def test_market_slippage_is_bps_of_the_touch_plus_a_fraction_of_the_spread() -> None:
    [(_, price, *_)] = fills(venue(slippage_bps=10.0), order())
    assert price == pytest.approx(100.2 * 1.001)
    [(_, price, *_)] = fills(venue(slippage_range_frac=0.5), order())
    assert price == pytest.approx(100.3)  # 100.2 + 0.5 x 0.2
    [(_, price, *_)] = fills(venue(slippage_range_frac=0.5), order(side="sell"))
    assert price == pytest.approx(99.9)


def test_participation_caps_each_quote_at_a_fraction_of_its_size() -> None:
    # ask sizes 1, 2, 6: at most 0.5, 1.0, 3.0 of them
    got = fills(venue(fee_bps=10.0, max_participation=0.5), order())
    assert [g[:3] for g in got] == [
        ("partially_filled", 100.2, 0.5),
        ("partially_filled", 100.6, 1.0),
        ("filled", 99.7, 0.5),
    ]
    assert [g[4] for g in got] == [31 * S, 32 * S, 33 * S]
    assert got[1][3] == pytest.approx(100.6 * 1.0 * 10 / 1e4)
    rs = reports(feed(venue(max_participation=0.5), [order(), *QUOTES]))
    assert [r.cum_qty for r in rs[1:]] == [0.5, 1.5, 2.0]


def test_a_quote_without_sizes_sets_no_cap() -> None:
    v = venue(max_participation=0.1)
    got = reports(feed(v, [order(), quote(T0 + 31 * S, 100.0, 100.2)]))
    assert [(r.status, r.fill_qty) for r in got] == [("accepted", 0.0), ("filled", 2.0)]


# --- limit orders ------------------------------------------------------------------------------


def test_marketable_limit_fills_at_the_touch_as_a_taker() -> None:
    got = fills(venue(fee_bps=10.0, maker_fee_bps=2.0), order(order_type="limit", limit=100.3))
    assert got == [("filled", 100.2, 2.0, pytest.approx(100.2 * 2 * 10 / 1e4), 31 * S)]


def test_resting_limit_fills_at_its_limit_as_a_maker_when_crossed() -> None:
    v = venue(fee_bps=10.0, maker_fee_bps=2.0)
    got = fills(v, order(order_type="limit", limit=99.8))  # ask 99.7 at q3
    assert got == [("filled", 99.8, 2.0, pytest.approx(99.8 * 2 * 2 / 1e4), 33 * S)]
    sell = fills(venue(), order(side="sell", order_type="limit", limit=100.3))  # bid 100.4 at q2
    assert sell == [("filled", 100.3, 2.0, 0.0, 32 * S)]


def test_limit_touch_fills() -> None:
    assert fills(venue(), order(order_type="limit", limit=99.7))[0][:2] == ("filled", 99.7)


def test_marketable_limit_partly_filled_rests_for_the_rest_as_a_maker() -> None:
    v = venue(fee_bps=10.0, maker_fee_bps=2.0, max_participation=0.5)
    got = fills(v, order(order_type="limit", limit=100.3))
    assert got == [
        ("partially_filled", 100.2, 0.5, pytest.approx(100.2 * 0.5 * 10 / 1e4), 31 * S),
        ("filled", 100.3, 1.5, pytest.approx(100.3 * 1.5 * 2 / 1e4), 33 * S),
    ]


def test_limit_takes_no_slippage() -> None:
    v = venue(slippage_bps=50.0, slippage_range_frac=1.0)
    assert fills(v, order(order_type="limit", limit=100.3))[0][1] == 100.2
    assert fills(venue(slippage_bps=50.0), order(order_type="limit", limit=99.8))[0][1] == 99.8


# --- stops -------------------------------------------------------------------------------------


def test_stop_triggers_on_the_side_that_would_trade_and_fills_there() -> None:
    v = venue(fee_bps=10.0)
    got = fills(v, order(order_type="stop", stop=100.5))  # ask 100.6 at q2
    assert got == [("filled", 100.6, 2.0, pytest.approx(100.6 * 2 * 10 / 1e4), 32 * S)]
    # a sell stop at 99.6: bid 99.5 at q3 (the ask 99.7 would not have triggered it)
    assert fills(venue(), order(side="sell", order_type="stop", stop=99.6))[0][1:2] == (99.5,)
    assert fills(venue(), order(order_type="stop", stop=101.0)) == []  # never reached


def test_stop_takes_slippage() -> None:
    [(_, price, *_)] = fills(venue(slippage_bps=100.0), order(order_type="stop", stop=100.5))
    assert price == pytest.approx(100.6 * 1.01)


def test_stop_limit_marketable_on_its_trigger_quote_is_a_taker() -> None:
    v = venue(fee_bps=10.0, maker_fee_bps=2.0)
    got = fills(v, order(order_type="stop_limit", stop=100.5, limit=100.7))
    assert got == [("filled", 100.6, 2.0, pytest.approx(100.6 * 2 * 10 / 1e4), 32 * S)]


def test_stop_limit_not_marketable_on_its_trigger_rests_and_fills_at_its_limit() -> None:
    v = venue(fee_bps=10.0, maker_fee_bps=2.0)
    got = fills(v, order(order_type="stop_limit", stop=100.5, limit=100.0))
    assert got == [("filled", 100.0, 2.0, pytest.approx(100.0 * 2 * 2 / 1e4), 33 * S)]


def test_stop_limit_below_its_trigger_is_not_filled_before_the_trigger() -> None:
    # ask 99.7 at q3 would cross the limit, but the stop (ask >= 100.65) never triggers
    assert fills(venue(), order(order_type="stop_limit", stop=100.65, limit=100.0)) == []


# --- time in force -----------------------------------------------------------------------------


@pytest.mark.parametrize("tif", ["IOC", "FOK"])
def test_ioc_fok_not_fillable_on_the_first_quote_is_canceled(tif: str) -> None:
    got = reports(feed(venue(), [order(order_type="limit", limit=99.8, tif=tif), *QUOTES]))
    assert [(r.status, r.reason, r.cum_qty, r.ts) for r in got[1:]] == [
        ("canceled", "not fillable", 0.0, T0 + 31 * S)
    ]
    stop = reports(feed(venue(), [order(order_type="stop", stop=100.5, tif=tif), *QUOTES]))
    assert [(r.status, r.reason) for r in stop[1:]] == [("canceled", "not fillable")]


@pytest.mark.parametrize("tif", ["IOC", "FOK"])
def test_ioc_fok_fillable_on_the_first_quote_fill(tif: str) -> None:
    got = fills(venue(), order(order_type="limit", limit=100.3, tif=tif))
    assert got == [("filled", 100.2, 2.0, 0.0, 31 * S)]


def test_ioc_fills_what_the_first_quote_allows_and_cancels_the_rest() -> None:
    got = reports(feed(venue(max_participation=0.5), [order(tif="IOC"), *QUOTES]))
    assert [(r.status, r.fill_qty, r.cum_qty, r.reason, r.ts) for r in got[1:]] == [
        ("partially_filled", 0.5, 0.5, "", T0 + 31 * S),
        ("canceled", 0.0, 0.5, "IOC: unfilled remainder canceled", T0 + 31 * S),
    ]


def test_fok_larger_than_the_quote_allows_is_canceled_whole() -> None:
    got = reports(feed(venue(max_participation=0.5), [order(tif="FOK"), *QUOTES]))
    assert [(r.status, r.cum_qty, r.reason) for r in got[1:]] == [
        ("canceled", 0.0, "FOK: the quote's size cannot fill it all")
    ]
    small = fills(venue(max_participation=0.5), order(tif="FOK", qty=0.5))
    assert small == [("filled", 100.2, 0.5, 0.0, 31 * S)]


# --- latency, expiry, no quote, other markets, bars ----------------------------------------------


def test_latency_skips_whole_quotes() -> None:
    assert fills(venue(latency_bars=1), order())[0][1] == 100.6  # q1 skipped: q2's ask
    assert fills(venue(latency_bars=2), order())[0][1] == 99.7


def test_a_quote_after_the_good_till_date_does_not_reach_the_order() -> None:
    gtd = order(order_type="limit", limit=99.8, expire_at=T0 + 32 * S + 1)
    assert fills(venue(), gtd) == []  # q3 crosses the limit, but after expire_at
    assert fills(venue(), order(order_type="limit", limit=99.8, expire_at=T0 + 33 * S)) != []


def test_without_a_quote_after_it_an_order_keeps_working() -> None:
    v = venue()
    got = reports(feed(v, [*QUOTES, order(ts=T0 + 35 * S)]))
    assert [r.status for r in got] == ["accepted"]
    assert len(v.state.pending) == 1
    # hours of exchange time later, the next quote fills it
    later = reports(feed(v, [quote(T0 + 3 * 3600 * S, 101.0, 101.5)]))
    assert [(r.status, r.fill_price) for r in later] == [("filled", 101.5)]


def test_quotes_of_other_markets_do_not_fill() -> None:
    v = venue()
    other = quote(T0 + 31 * S, 10.0, 10.1, symbol="ETH/USDT")
    assert [r.status for r in reports(feed(v, [order(), other]))] == ["accepted"]


def test_bars_do_not_fill_in_quote_mode_and_quotes_not_in_bar_mode() -> None:
    bars = [ohlc_bar(0, 100.0, 101.0, 99.0, 100.5), ohlc_bar(1, 102.0, 104.0, 101.0, 103.0)]
    v = venue()
    assert [r.status for r in reports(feed(v, [order(), *bars]))] == ["accepted"]
    assert v.state.bars == {}
    bar_venue = PaperVenue(PaperVenueConfig(fee_bps=0.0))
    got = reports(feed(bar_venue, [order(), *QUOTES]))
    assert [r.status for r in got] == ["accepted"]
    assert bar_venue.state.quotes == {}


def test_a_quote_not_after_the_newest_kept_is_ignored() -> None:
    v = venue()
    feed(v, QUOTES[:3])
    assert feed(v, [QUOTES[1], quote(T0 + 32 * S, 90.0, 90.1)]) == []
    assert len(v.state.quotes[next(iter(v.state.quotes))]) == 3


def test_cancel_acts_when_it_arrives() -> None:
    v = venue()
    got = reports(feed(v, [order(order_type="limit", limit=99.8), *QUOTES[:3]]))
    assert [r.status for r in got] == ["accepted"]
    cancel = order(ts=T0 + 32 * S + 1, action="cancel")
    assert [r.status for r in reports(feed(v, [cancel, *QUOTES[3:]]))] == ["canceled"]


# --- the buffer and stale orders ---------------------------------------------------------------


def steady(n: int, every_ns: int, start: int = T0) -> list[Quote]:
    return [quote(start + i * every_ns, 100.0, 100.2 + (i % 7) * 0.01) for i in range(n)]


def test_buffer_keeps_the_last_quotes_by_count_at_a_slow_pace() -> None:
    v = venue()
    feed(v, steady(QUOTES_KEPT + TRIM - 1, S))  # one a second: the count covers more than the age
    (history,) = v.state.quotes.values()
    assert len(history) == QUOTES_KEPT + TRIM - 1  # trimmed in batches
    feed(v, [quote(T0 + (QUOTES_KEPT + TRIM - 1) * S, 100.0, 100.5)])
    assert len(history) == QUOTES_KEPT
    assert history[0].ts == T0 + TRIM * S
    (dropped,) = v.state.dropped.values()
    assert dropped == T0 + (TRIM - 1) * S


def test_buffer_keeps_every_quote_of_the_last_minute_at_a_fast_pace() -> None:
    v = venue()
    quotes = steady(2000, S // 10)  # ten a second: 200 s
    feed(v, quotes)
    (history,) = v.state.quotes.values()
    newest = quotes[-1].ts
    assert history[-1].ts == newest
    assert history[0].ts <= newest - QUOTE_AGE_NS  # all of the kept age, and a batch more
    assert len(history) < QUOTE_AGE_NS // (S // 10) + TRIM + 1


def test_buffer_never_exceeds_its_cap() -> None:
    v = venue()
    feed(v, steady(QUOTE_CAP + 200, 1_000_000))  # a thousand a second
    (history,) = v.state.quotes.values()
    assert QUOTE_CAP <= len(history) < QUOTE_CAP + 64


def test_order_older_than_a_dropped_quote_is_rejected_as_stale() -> None:
    v = venue()
    feed(v, steady(QUOTES_KEPT + TRIM, S))
    got = reports(feed(v, [order(ts=T0 + 1 * S)]))
    assert [r.status for r in got] == ["accepted", "rejected"]
    assert got[1].reason == (
        "stale order: a quote after it has left the venue's buffer "
        f"(the last {QUOTES_KEPT} quotes or {QUOTE_AGE_NS // 10**9} s are kept)"
    )
    assert v.state.pending == []


def test_order_older_than_every_quote_kept_fills_when_none_after_it_was_dropped() -> None:
    v = venue()
    feed(v, steady(QUOTES_KEPT + TRIM, S))
    (dropped,) = v.state.dropped.values()
    got = reports(feed(v, [order(ts=dropped)]))  # the dropped quote is not after the order
    assert [(r.status, r.ts) for r in got] == [("accepted", dropped), ("filled", dropped + S)]


# --- property: fills do not depend on how orders and quotes interleave ---------------------------


@st.composite
def sessions(draw: st.DrawFn) -> tuple[PaperVenueConfig, list[Quote], list[OrderCommand]]:
    n = draw(st.integers(min_value=1, max_value=25))
    gaps = draw(st.lists(st.integers(1, 3 * S), min_size=n, max_size=n))
    quotes: list[Quote] = []
    ts, mid = T0, 100.0
    for gap in gaps:
        ts += gap
        mid *= draw(st.floats(0.995, 1.005))
        half = draw(st.floats(0.001, 0.2))
        sizes = draw(st.sampled_from([(0.0, 0.0), (1.0, 3.0), (0.5, 0.2), (4.0, 4.0)]))
        quotes.append(quote(ts, round(mid - half, 4), round(mid + half, 4), *sizes))
    m = draw(st.integers(min_value=1, max_value=6))
    orders = []
    for i in range(m):
        kind = draw(st.sampled_from(["market", "limit", "stop", "stop_limit"]))
        side = draw(st.sampled_from(["buy", "sell"]))
        near = [round(100.0 * draw(st.floats(0.99, 1.01)), 3) for _ in range(2)]
        orders.append(
            order(
                ts=T0 + draw(st.integers(-S, ts - T0 + S)),
                side=side,
                qty=draw(st.sampled_from([0.3, 1.0, 2.5])),
                order_type=kind,
                limit=near[0] if kind in ("limit", "stop_limit") else None,
                stop=near[1] if kind in ("stop", "stop_limit") else None,
                tif=draw(st.sampled_from(["GTC", "GTC", "IOC", "FOK"])),
                coid=f"o{i}",
            )
        )
    orders.sort(key=lambda o: o.ts)
    config = PaperVenueConfig(
        fill="quote",
        fee_bps=draw(st.sampled_from([0.0, 10.0])),
        maker_fee_bps=draw(st.sampled_from([None, -1.0])),
        slippage_bps=draw(st.sampled_from([0.0, 5.0])),
        slippage_range_frac=draw(st.sampled_from([0.0, 0.25])),
        latency_bars=draw(st.integers(0, 1)),
        latency_jitter_bars=draw(st.integers(0, 1)),
        max_participation=draw(st.sampled_from([None, 0.5, 1.0])),
    )
    return config, quotes, orders


def event_time_order(quotes: list[Quote], orders: list[OrderCommand]) -> list[Event]:
    """A replay: every event in event-time order (an order before a quote of its time)."""
    merged: list[tuple[int, int, Event]] = [(q.ts, 1, q) for q in quotes]
    merged += [(o.ts, 0, o) for o in orders]
    return [e for _, _, e in sorted(merged, key=lambda x: (x[0], x[1]))]


def by_order(events: list[Event]) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = {}
    for r in reports(events):
        out.setdefault(r.client_order_id, []).append(encode(r))
    return out


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(sessions(), st.data())
def test_fills_do_not_depend_on_the_arrival_of_orders_and_quotes(
    session: tuple[PaperVenueConfig, list[Quote], list[OrderCommand]], data: st.DataObject
) -> None:
    config, quotes, orders = session
    # Live: the two streams interleave arbitrarily, each in its own order.
    picks = data.draw(st.permutations([0] * len(orders) + [1] * len(quotes)))
    queues: tuple[list[Event], list[Event]] = (list(orders), list(quotes))
    live_order = [queues[pick].pop(0) for pick in picks]
    replay, live = PaperVenue(config), PaperVenue(config)
    expected = by_order(feed(replay, event_time_order(quotes, orders)))
    assert by_order(feed(live, live_order)) == expected
    assert live.snapshot() == replay.snapshot()


def test_the_property_covers_late_orders() -> None:
    """A hand-picked case of the property: every quote before the order."""
    for late in (order(order_type="stop_limit", stop=100.5, limit=100.0), order(tif="IOC")):
        config = PaperVenueConfig(fill="quote", fee_bps=5.0, max_participation=0.5)
        replay, live = PaperVenue(config), PaperVenue(config)
        expected = by_order(feed(replay, event_time_order(QUOTES, [late])))
        assert by_order(feed(live, [*QUOTES, late])) == expected
        assert len(expected["o1"]) >= 2


# --- snapshots ---------------------------------------------------------------------------------


def test_snapshot_round_trip_keeps_buffers_working_orders_and_drops() -> None:
    config: dict[str, Any] = {"fee_bps": 10.0, "max_participation": 0.5}
    v = venue(**config)
    feed(v, steady(QUOTES_KEPT + 64, S))
    stamp = T0 + (QUOTES_KEPT + 70) * S
    feed(v, [order(order_type="limit", limit=99.8, ts=stamp)])
    feed(v, [quote(stamp + S, 100.0, 100.2, 1.0, 1.0)])
    blob = v.snapshot()
    restored = venue(**config)
    restored.restore(blob)
    assert restored.snapshot() == blob  # quotes come back as their prices alone
    assert restored.state.pending == v.state.pending
    assert restored.state.dropped == v.state.dropped
    more = [quote(stamp + 2 * S, 99.5, 99.7, 3.0, 3.0), quote(stamp + 3 * S, 99.5, 99.6, 9.0, 9.0)]
    after = reports(feed(restored, more))
    assert after == reports(feed(v, more))
    assert [(r.status, r.fill_price, r.fill_qty) for r in after] == [
        ("partially_filled", 99.8, 1.5),
        ("filled", 99.8, 0.5),
    ]
    # a late order is still matched against the restored buffer, and stale ones still refused
    late = order(ts=stamp + 2 * S + 1, coid="o2")
    assert reports(feed(restored, [late])) == reports(feed(v, [late]))
    stale = reports(feed(restored, [order(ts=T0, coid="o3")]))
    assert stale[-1].status == "rejected"


def test_restore_is_strict() -> None:
    v = venue()
    feed(v, QUOTES[:2])
    with pytest.raises(msgspec.ValidationError):
        v.restore(msgspec.msgpack.encode({"quotes": {"x": 1}}))
    assert len(next(iter(v.state.quotes.values()))) == 2


# --- the order manager in front of the venue -----------------------------------------------------


def bracket() -> OrderCommand:
    return order(take_profit=100.5, stop_loss=99.0)


def test_order_manager_brackets_fill_from_quotes_in_any_arrival_order() -> None:
    config = PaperVenueConfig(fill="quote", fee_bps=10.0)
    in_order = OrderManager(PaperVenue(config))
    early = feed(in_order, [bracket(), *QUOTES])
    late_manager = OrderManager(PaperVenue(config))
    assert feed(late_manager, QUOTES) == []
    late = feed(late_manager, [bracket()])
    assert sorted(encode(e) for e in late) == sorted(encode(e) for e in early)
    done = [r for r in reports(early) if r.status == "filled"]
    # the entry at q1's ask; the stop leg (sell stop 99) at q4's bid 98.8
    assert [(r.client_order_id, r.fill_price, r.ts - T0) for r in done] == [
        ("o1", 100.2, 31 * S),
        (done[1].client_order_id, 98.8, 34 * S),
    ]
    assert done[1].parent_id == "o1"
    assert in_order.snapshot() == late_manager.snapshot()


def test_order_manager_snapshot_version_and_round_trip() -> None:
    assert OrderManager.snapshot_version == 2
    config = PaperVenueConfig(fill="quote")
    manager = OrderManager(PaperVenue(config))
    feed(manager, [bracket(), *QUOTES[:2]])
    restored = OrderManager(PaperVenue(config))
    restored.restore(manager.snapshot())
    assert restored.snapshot() == manager.snapshot()
    assert feed(restored, QUOTES[2:]) == feed(manager, QUOTES[2:])


def test_plain_orders_pass_the_order_manager_untouched() -> None:
    config = PaperVenueConfig(fill="quote", max_participation=0.5)
    bare = reports(feed(PaperVenue(config), [order(), *QUOTES]))
    managed = reports(feed(OrderManager(PaperVenue(config)), [order(), *QUOTES]))
    assert managed == bare


# --- config, role inputs and the in-process replay engine ----------------------------------------


def test_quote_mode_reads_quotes_and_bar_mode_does_not() -> None:
    quote_role = execution_role(PaperVenueConfig(fill="quote"))
    bar_role = execution_role(PaperVenueConfig())
    assert [i.subjects for i in quote_role.inputs if i.stream == "MARKET"] == [
        ("md.bar.>", "md.quote.>")
    ]
    assert [i.subjects for i in bar_role.inputs if i.stream == "MARKET"] == [("md.bar.>",)]
    subject = subject_for(QUOTES[0])
    assert ReplayEngine([quote_role], lambda *a: None).subscribers(subject) == ("execution",)
    assert ReplayEngine([bar_role], lambda *a: None).subscribers(subject) == ()


def test_config_example_through_the_replay_engine(tmp_path: Path) -> None:
    path = tmp_path / "paper.toml"
    path.write_text(
        '[execution]\nfill = "quote"\nfee_bps = 10.0\nmaker_fee_bps = 2.0\n'
        "slippage_bps = 1.0\nmax_participation = 0.5\n"
    )
    config = load_config(path)
    assert config.execution.fill == "quote"
    (execution,) = [r for r in fleet_roles(config) if r.name == "execution"]
    recorded: list[tuple[str, Event]] = []
    engine = ReplayEngine([execution], lambda subject, event, *_: recorded.append((subject, event)))
    bars = [ohlc_bar(0, 100.0, 101.0, 99.0, 100.5), ohlc_bar(1, 99.0, 99.5, 97.0, 98.0)]
    events: list[Event] = [bars[0], order(), *QUOTES, bars[1]]
    engine.run(sorted(events, key=lambda e: e.ts))
    got = [(e.status, e.fill_price, e.fill_qty) for _, e in recorded]  # type: ignore[union-attr]
    assert got == [
        ("accepted", 0.0, 0.0),
        ("partially_filled", pytest.approx(100.2 * 1.0001), 0.5),
        ("partially_filled", pytest.approx(100.6 * 1.0001), 1.0),
        ("filled", pytest.approx(99.7 * 1.0001), 0.5),
    ]
    assert all(subject.startswith("exec.") for subject, _ in recorded)
    assert bars[1].close_time == T0 + 2 * MINUTE  # the bar after the quotes filled nothing


@st.composite
def managed_sessions(draw: st.DrawFn) -> tuple[PaperVenueConfig, list[Quote], list[OrderCommand]]:
    """Sessions whose orders may be bracket entries (a take-profit and a stop leg), each
    order of its own strategy (so its own book: see the test below)."""
    config, quotes, orders = draw(sessions())
    out = []
    for i, o in enumerate(orders):
        o = msgspec.structs.replace(o, strategy=f"s{i}")
        if draw(st.booleans()):
            up, down = draw(st.floats(1.001, 1.01)), draw(st.floats(0.99, 0.999))
            tp, sl = (100.0 * up, 100.0 * down) if o.side == "buy" else (100.0 * down, 100.0 * up)
            o = msgspec.structs.replace(o, take_profit=round(tp, 3), stop_loss=round(sl, 3))
        out.append(o)
    return config, quotes, out


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(managed_sessions(), st.data())
def test_order_manager_outputs_do_not_depend_on_arrival(
    session: tuple[PaperVenueConfig, list[Quote], list[OrderCommand]], data: st.DataObject
) -> None:
    """Through the order manager, bracket legs included: the same reports, whatever the
    interleaving, venue order ids aside (``unnumbered``). Each order is of its own book:
    within one book the order manager sizes legs to the orders working at a fill, and a
    late order was not working yet (docs/fill-models.md section 9, "Arrival order")."""
    config, quotes, orders = session
    picks = data.draw(st.permutations([0] * len(orders) + [1] * len(quotes)))
    queues: tuple[list[Event], list[Event]] = (list(orders), list(quotes))
    live_order = [queues[pick].pop(0) for pick in picks]
    replay, live = OrderManager(PaperVenue(config)), OrderManager(PaperVenue(config))
    expected = unnumbered(feed(replay, event_time_order(quotes, orders)))
    assert unnumbered(feed(live, live_order)) == expected


def unnumbered(events: list[Event]) -> list[bytes]:
    """The outputs as a sorted multiset of bytes, venue order ids aside: ``paper-N`` counts
    venue orders in the order they reached the venue, bracket legs (placed on fills)
    included, so an order that arrives later than a fill before it takes another number."""
    return sorted(encode(msgspec.structs.replace(r, venue_order_id="")) for r in reports(events))


def test_a_leg_that_fills_from_the_buffer_is_acted_on_at_its_quote() -> None:
    """A late bracket entry: the take-profit leg fills at q2 from the buffer; the stop leg
    is placed at the entry fill (q1) and canceled at q2, exactly as when quotes come later."""
    config = PaperVenueConfig(fill="quote")
    entry = order(take_profit=100.3, stop_loss=99.0)
    early = feed(OrderManager(PaperVenue(config)), [entry, *QUOTES])
    late_manager = OrderManager(PaperVenue(config))
    feed(late_manager, QUOTES)
    late = feed(late_manager, [entry])
    assert late == early  # one order: the same reports in the same order
    got = [(r.status, r.client_order_id, r.fill_price, r.ts - T0) for r in reports(late)]
    assert got == [
        ("accepted", "o1", 0.0, 30 * S),
        ("filled", "o1", 100.2, 31 * S),
        ("accepted", "o1.tp", 0.0, 31 * S),
        ("accepted", "o1.sl", 0.0, 31 * S),
        ("filled", "o1.tp", 100.4, 32 * S),  # marketable when it reached the venue: the bid
        ("canceled", "o1.sl", 0.0, 32 * S),
    ]


async def test_a_live_execution_worker_fills_a_late_order_from_stored_quotes(
    nats_server: EmbeddedServer,
) -> None:
    """Through JetStream: the quotes are in the MARKET stream before the order reaches the
    worker (as in a live fleet); the reports equal the replay's (order first)."""
    config = PaperVenueConfig(fill="quote", fee_bps=10.0, max_participation=0.5)
    worker = Worker(execution_role(config), WorkerOptions(metrics_port=None, heartbeat_s=0.5))
    names = {f"execution-{i.stream.lower()}" for i in worker.inputs}
    worker_bus = await Bus.connect(nats_server.url, name="execution")
    task = asyncio.create_task(worker.run(worker_bus))
    bus = await Bus.connect(nats_server.url, name="test-driver")
    try:
        assert await wait_drained(bus, names, timeout=20)
        for q in QUOTES:
            await bus.publish(q, market_envelope(q))
        assert await wait_drained(bus, names, timeout=20)
        await bus.publish(order(), Envelope.root("order-o1", ORDER_TS))
        assert await wait_drained(bus, names, timeout=20)
        got = [
            item.event async for item in bus.read("exec.>", "EXECUTION") if isinstance(item, Stored)
        ]
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)
        await bus.close()
        await worker_bus.close()
    expected = feed(OrderManager(PaperVenue(config)), [order(), *QUOTES])
    assert got == expected
    assert [r.status for r in reports(got)] == [
        "accepted",
        "partially_filled",
        "partially_filled",
        "filled",
    ]
