"""Listing sniper: hand-built bars and announcements, exact signals, snapshot and restore."""

from __future__ import annotations

import pytest

from contracts.events import ListingAnnouncement
from services.strategy.host import strategy_role
from strategies.registry import StrategyError, build_strategy
from tests.external_scenario import T0, assert_restore_equals_uninterrupted, bar, run
from tests.factories import MINUTE

PARAMS = {
    "notional": 100,
    "delay_s": 120,
    "max_range_pct": 20,
    "max_chase_pct": 10,
    "stop_pct": 10,
    "take_profits": "10,20,30",
}
TAG = "listing_sniper-d120-stop10-tp10/20/30"


def listing(ts: int = T0 + 30 * 10**9, listing_time: int = T0 + 2 * MINUTE, **kw):
    fields = {"source": "news", "venue": "binance", "symbol": "NEW/USDT", **kw}
    return ListingAnnouncement(ts=ts, listing_time=listing_time, **fields)


def scenario() -> list:
    """Reference T0+2m, entry time T0+4m (delay 2 minutes)."""
    return [
        bar(9.0, index=0),  # before the announcement: unknown to the shot
        listing(),
        bar(9.5, index=1),  # closes at the reference time exactly: not used
        bar(10.0, index=2),  # the anchor, before the entry time
        bar(10.5, index=3, high=13.0, low=9.5),  # range 33% > 20%: skipped
        bar(11.5, index=4, high=11.6, low=11.4),  # up 15% since the anchor > 10%: skipped
        bar(10.8, index=5, high=11.0, low=10.6),  # enters: stop 9.72, levels 11.88 12.96 14.04
        bar(11.5, index=6, high=12.0, low=10.9),  # first level
        bar(12.0, index=7, high=11.9, low=11.0),  # nothing
        listing(ts=T0 + 8 * MINUTE, title="again"),  # one shot per symbol: ignored
        bar(14.0, index=8, high=14.5, low=12.5),  # second and third levels: flat
        bar(20.0, index=9, high=20.0, low=19.0),  # done
    ]


def test_entry_after_delay_and_checks_then_staggered_take_profits() -> None:
    signals = run("listing_sniper", PARAMS, scenario())
    qty = 100 / 10.8
    assert [(s.ts, s.target_position, s.stop, s.target) for s in signals] == [
        (T0 + 6 * MINUTE, qty, pytest.approx(9.72), pytest.approx(11.88)),
        (T0 + 7 * MINUTE, qty * 2 / 3, pytest.approx(9.72), pytest.approx(12.96)),
        (T0 + 9 * MINUTE, 0.0, None, None),
    ]
    assert all(s.model_tag == TAG and s.strategy == "listing_sniper" for s in signals)
    assert all(s.venue == "test" and s.symbol == "NEW/USDT" for s in signals)
    assert signals[0].reason.startswith("listing of NEW/USDT (news, binance): enter at 10.8")
    assert signals[1].reason == "take-profit 1/3: high 12 reached 11.88"
    assert signals[2].reason == "take-profit 3/3: high 14.5 reached 12.96, 14.04"


def test_the_stop_exits_everything_and_wins_a_bar_that_spans_both() -> None:
    items = [
        listing(),
        bar(10.0, index=2),
        bar(10.0, index=3),
        bar(9.0, index=4, high=12.0, low=8.9),
        bar(12, index=5),
    ]
    signals = run("listing_sniper", {**PARAMS, "delay_s": 0}, items)
    assert [(s.ts, s.target_position) for s in signals] == [
        (T0 + 3 * MINUTE, 10.0),
        (T0 + 5 * MINUTE, 0.0),
    ]
    assert signals[1].reason == "stop hit: low 8.9 <= 9"


def test_gives_up_after_max_wait_and_never_enters_later() -> None:
    params = {**PARAMS, "delay_s": 0, "max_wait_s": 120, "max_chase_pct": 1}
    items = [
        listing(),
        bar(10.0, index=2),
        bar(10.5, index=3),
        bar(10.5, index=4),
        bar(10.0, index=5),
        bar(10.0, index=6),
    ]
    # without a delay the anchor bar (chase 0) is the first candidate, and it passes
    assert [s.ts for s in run("listing_sniper", params, items)] == [T0 + 3 * MINUTE]
    late = [
        listing(),
        bar(10.0, index=2, high=13.0),
        bar(10.5, index=3),
        bar(10.5, index=4),
        bar(10.0, index=5),
    ]
    # anchor 10 fails the range check; 10.5 chases 5% > 1%; past T0+4m the shot is given up
    assert run("listing_sniper", params, late) == []


def test_other_series_and_symbols_are_ignored_and_prices_bounded() -> None:
    items = [
        listing(),
        bar(10.0, index=2),
        bar(10.0, index=4, interval="5m"),  # another series of the symbol
        bar(10.0, index=4, symbol="OLD/USDT"),  # another symbol
        bar(10.0, index=4),
    ]
    assert [s.interval for s in items[2:4]] == ["5m", "1m"]
    signals = run("listing_sniper", {**PARAMS, "max_price": 5.0}, items)
    assert signals == []
    signals = run("listing_sniper", PARAMS, items)
    assert [(s.ts, s.symbol) for s in signals] == [(T0 + 5 * MINUTE, "NEW/USDT")]


def test_listing_time_defaults_to_the_announcement_time() -> None:
    items = [listing(ts=T0 + MINUTE, listing_time=0), bar(10.0, index=1), bar(10.0, index=2)]
    signals = run("listing_sniper", {**PARAMS, "delay_s": 0}, items)
    assert [s.ts for s in signals] == [T0 + 2 * MINUTE]


def test_snapshot_mid_run_and_restore_equals_the_uninterrupted_run() -> None:
    assert_restore_equals_uninterrupted("listing_sniper", PARAMS, scenario())


def test_role_consumes_listings_partitioned_like_the_bars() -> None:
    strategy = build_strategy("listing_sniper", {})
    assert [(i.stream, i.subjects) for i in strategy_role(strategy, []).inputs] == [
        ("MARKET", ("md.bar.>",)),
        ("EXTERNAL", ("ext.listing.>",)),
    ]
    inputs = strategy_role(strategy, ["NEW/USDT"]).inputs
    assert inputs[1].subjects == ("ext.listing.*.NEW-USDT",)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"take_profits": "10,x"}, "comma-separated"),
        ({"take_profits": "20,10"}, "strictly increasing"),
        ({"take_profits": "0"}, "> 0"),
        ({"stop_pct": 100}, "stop_pct"),
        ({"notional": 0}, "notional"),
        ({"max_price": 1, "min_price": 2}, "max_price"),
        ({"delay": 1}, "unknown field"),
    ],
)
def test_bad_params_are_refused(params: dict, message: str) -> None:
    with pytest.raises(StrategyError, match=message):
        build_strategy("listing_sniper", params)
