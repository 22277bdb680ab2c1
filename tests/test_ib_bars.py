"""IB's 5-second real-time bars folded into closed bars of the configured interval: emitted
when complete, gaps counted rather than filled, repeats and late slots dropped, and the fold
equal to a direct OHLCV over the same 5-second bars."""

from __future__ import annotations

import datetime as dt
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ib_async import RealTimeBar

from contracts.events import Bar
from services.venues.ib.bars import SLOT_NS, BarFolder, ClosedBar, Slot, slot_of

MINUTE = 60_000_000_000
T0 = 1_796_653_800 * 1_000_000_000  # 2026-12-07 14:30 UTC, a minute boundary


def slot(i: int, price: float = 100.0, volume: float = 1.0) -> Slot:
    """The i-th 5-second bar from T0, a little range around ``price``."""
    return Slot(T0 + i * SLOT_NS, price, price + 0.5, price - 0.5, price + 0.25, volume)


def fold(folder: BarFolder, symbol: str, slots: list[Slot]) -> list[ClosedBar]:
    return [closed for s in slots for closed in folder.add(symbol, s)]


def test_a_minute_is_emitted_with_its_twelfth_slot() -> None:
    folder = BarFolder("ibkr", "1m", MINUTE)
    slots = [slot(i, 100.0 + i, volume=float(i)) for i in range(12)]
    assert fold(folder, "AAPL", slots[:11]) == []
    (closed,) = folder.add("AAPL", slots[11])
    assert closed.missing == 0
    assert closed.bar == Bar(
        "ibkr", "AAPL", "1m", T0, T0 + MINUTE, 100.0, 111.5, 99.5, 111.25, 66.0, ts=T0 + MINUTE
    )


def test_a_gap_neither_holds_a_bar_back_nor_invents_prices() -> None:
    folder = BarFolder("ibkr", "1m", MINUTE)
    # Slots 0-3 and 9-10 of the first minute arrive; then the second minute starts.
    got = fold(folder, "ES", [slot(i, 100.0 + i) for i in (0, 1, 2, 3, 9, 10)])
    assert got == []
    (closed,) = folder.add("ES", slot(12, 200.0))  # a later interval closes the earlier one
    assert closed.missing == 6
    assert (closed.bar.open, closed.bar.high, closed.bar.close) == (100.0, 110.5, 110.25)
    assert closed.bar.volume == 6.0 and closed.bar.close_time == T0 + MINUTE


def test_an_interval_without_any_slot_gives_no_bar() -> None:
    folder = BarFolder("ibkr", "1m", MINUTE)
    first = fold(folder, "ES", [slot(i) for i in range(12)])
    later = fold(folder, "ES", [slot(i) for i in range(36, 48)])  # minutes 1 and 2: nothing
    assert [c.bar.open_time for c in first + later] == [T0, T0 + 3 * MINUTE]
    assert [c.missing for c in first + later] == [0, 0]


def test_close_due_emits_a_bar_ib_stopped_feeding_after_the_settle_time() -> None:
    folder = BarFolder("ibkr", "1m", MINUTE, settle_ns=2 * SLOT_NS)
    fold(folder, "B", [slot(i) for i in range(5)])
    fold(folder, "A", [slot(i) for i in range(3)])
    assert folder.close_due(T0 + MINUTE + SLOT_NS) == []  # within the settle time
    closed = folder.close_due(T0 + MINUTE + 2 * SLOT_NS)
    assert [(c.bar.symbol, c.missing) for c in closed] == [("A", 9), ("B", 7)]  # symbol order
    assert folder.close_due(T0 + 10 * MINUTE) == []
    # A slot of an emitted bar arriving late is dropped: a published bar is never revised.
    assert folder.add("A", slot(11)) == [] and folder.dropped == 1


def test_repeats_late_and_invalid_slots_are_dropped_and_counted() -> None:
    folder = BarFolder("ibkr", "1m", MINUTE)
    fold(folder, "X", [slot(0), slot(1)])
    assert folder.add("X", slot(1)) == []  # a repeat after a resubscription
    assert folder.add("X", slot(0)) == []  # older than the last one folded
    assert folder.dropped == 2
    bad = [
        Slot(T0 + 2 * SLOT_NS, 0.0, 1.0, 0.0, 1.0, 1.0),
        Slot(T0 + 2 * SLOT_NS, math.nan, 1.0, 1.0, 1.0, 1.0),
        Slot(T0 + 2 * SLOT_NS, 1.0, 1.0, 2.0, 1.0, 1.0),
        Slot(T0 + 2 * SLOT_NS, 1.0, 1.0, 1.0, 1.0, -1.0),
        Slot(T0 + 2 * SLOT_NS + 1, 1.0, 1.0, 1.0, 1.0, 1.0),
    ]
    assert fold(folder, "X", bad) == [] and folder.invalid == 5
    (closed,) = fold(folder, "X", [slot(i) for i in range(2, 12)])
    assert closed.missing == 0 and closed.bar.volume == 12.0


def test_intervals_must_be_whole_five_second_bars() -> None:
    with pytest.raises(ValueError, match="whole number of 5-second bars"):
        BarFolder("ibkr", "7s", 7_000_000_000)
    with pytest.raises(ValueError, match="settle_ns"):
        BarFolder("ibkr", "1m", MINUTE, settle_ns=-1)
    five = BarFolder("ibkr", "5s", SLOT_NS)
    (closed,) = five.add("X", slot(3))
    assert closed.bar.open_time == T0 + 3 * SLOT_NS and closed.missing == 0


def test_a_slot_is_read_from_ib_asyncs_realtime_bar() -> None:
    start = dt.datetime.fromtimestamp(T0 // 1_000_000_000, dt.UTC)
    bar = RealTimeBar(start, -1, 1.1, 1.2, 1.0, 1.15, -1.0, -1.0, -1)  # midpoint: no volume
    assert slot_of(bar) == Slot(T0, 1.1, 1.2, 1.0, 1.15, 0.0)
    eastern = start.astimezone(dt.timezone(dt.timedelta(hours=-5)))  # ib_async's own zone
    assert slot_of(RealTimeBar(eastern, -1, 1.1, 1.2, 1.0, 1.15, 3.0, 1.1, 2)).open_ns == T0


def direct(
    slots: list[Slot], interval_ns: int
) -> list[tuple[int, float, float, float, float, float]]:
    """OHLCV of each interval computed straight from its 5-second bars."""
    groups: dict[int, list[Slot]] = {}
    for s in slots:
        groups.setdefault(s.open_ns - s.open_ns % interval_ns, []).append(s)
    return [
        (
            start,
            group[0].open,
            max(s.high for s in group),
            min(s.low for s in group),
            group[-1].close,
            math.fsum(s.volume for s in group),
        )
        for start, group in sorted(groups.items())
    ]


prices = st.floats(1.0, 1000.0, allow_nan=False)


@st.composite
def slot_runs(draw: st.DrawFn) -> list[Slot]:
    indices = sorted(draw(st.sets(st.integers(0, 400), min_size=1, max_size=120)))
    out = []
    for i in indices:
        a, b = draw(prices), draw(prices)
        high = max(a, b) + draw(st.floats(0, 5))
        low = max(min(a, b) - draw(st.floats(0, 5)), 0.5)
        volume = float(draw(st.integers(0, 10_000)))
        out.append(Slot(T0 + i * SLOT_NS, a, high, low, b, volume))
    return out


@settings(max_examples=150, deadline=None)
@given(slots=slot_runs(), seconds=st.sampled_from([5, 15, 60, 300]))
def test_the_fold_equals_a_direct_ohlcv_over_the_same_five_second_bars(
    slots: list[Slot], seconds: int
) -> None:
    interval_ns = seconds * 1_000_000_000
    folder = BarFolder("ibkr", f"{seconds}s", interval_ns)
    closed = fold(folder, "X", slots) + folder.close_due(slots[-1].open_ns + interval_ns)
    got = [
        (c.bar.open_time, c.bar.open, c.bar.high, c.bar.low, c.bar.close, c.bar.volume)
        for c in closed
    ]
    want = direct(slots, interval_ns)
    assert [g[:5] for g in got] == [w[:5] for w in want]
    assert all(math.isclose(g[5], w[5]) for g, w in zip(got, want, strict=True))
    per_bar = interval_ns // SLOT_NS
    assert sum(per_bar - c.missing for c in closed) == len(slots)
    assert all(c.bar.close_time == c.bar.open_time + interval_ns == c.bar.ts for c in closed)
    # Deterministic: the same slots give the same bars.
    again = BarFolder("ibkr", f"{seconds}s", interval_ns)
    assert fold(again, "X", slots) + again.close_due(slots[-1].open_ns + interval_ns) == closed
