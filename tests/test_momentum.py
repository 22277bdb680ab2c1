"""Momentum breakout: hand-computed moves, volume spikes, stop and trailing exits, params,
snapshot/restore and a real-data run."""

from __future__ import annotations

from pathlib import Path

import pytest

from contracts.events import Signal
from strategies.momentum import Momentum, MomentumParams
from strategies.registry import StrategyError, build_strategy
from tests.factories import bars_from_closes
from tests.strategy_checks import (
    assert_real_week_reproducible,
    assert_snapshot_continues,
    random_walk,
    run,
)

SMALL = {
    "lookback": 3,
    "move_pct": 5,
    "volume_period": 3,
    "spike_mult": 2,
    "stop_pct": 2,
    "trail_pct": 3,
}
UP = [100, 100, 100, 100, 106, 110, 112, 109, 108]
UP_VOLUME = {5: 3.0}
DOWN = [100, 100, 100, 100, 94, 90, 88, 90, 91]


def strategy(**overrides: object) -> Momentum:
    return Momentum("mom", MomentumParams(**{**SMALL, **overrides}))  # type: ignore[arg-type]


def targets(signals: list[tuple[int, Signal]]) -> list[tuple[int, float | None]]:
    return [(n, s.target_position) for n, s in signals]


# --- long ---------------------------------------------------------------------------------------


def test_move_with_volume_spike_enters_and_the_trail_exits() -> None:
    # bar 5: close 106 vs 100 three bars ago = +6% >= 5%; volume 3 >= 2 * avg(bars 2-4) = 2
    #   -> long at 106, stop max(106 * 0.98, 106 * 0.97) = 103.88.
    # highest close 106 -> 110 -> 112; the level after bar 7 is max(103.88, 112 * 0.97 =
    #   108.64). bar 8: low 109 > 108.64 holds; bar 9: low 108 <= 108.64 -> flat.
    signals = run(strategy(), bars_from_closes(UP, volumes=UP_VOLUME))
    assert targets(signals) == [(5, 1.0), (9, 0.0)]
    (_, entry), (_, exit_) = signals
    assert entry.stop == pytest.approx(103.88)
    assert entry.model_tag == "momentum-5pct3-vol2x3-stop2-trail3"
    assert entry.reason == "+6.00% in 3 bars with volume 3 >= 2 x avg 1"
    assert exit_.reason == "stop/trail hit: low 108 <= 108.64"
    assert exit_.stop is None
    assert (entry.strategy, entry.venue, entry.symbol) == ("mom", "test", "BTC/USDT")


def test_no_volume_spike_no_entry() -> None:
    assert run(strategy(), bars_from_closes(UP, volumes={5: 1.9})) == []


def test_small_move_no_entry() -> None:
    # +4.9% with a spike
    assert run(strategy(), bars_from_closes([100, 100, 100, 100, 104.9], volumes={5: 5.0})) == []


def test_the_average_volume_excludes_the_current_bar() -> None:
    # volume 2 against the previous three bars' average 1: a spike of exactly 2x. Counting
    # the bar itself the average would be 4/3 and 2 < 2.67 would not be a spike.
    assert targets(run(strategy(), bars_from_closes(UP, volumes={5: 2.0}))) == [(5, 1.0), (9, 0.0)]


def test_initial_stop_exit() -> None:
    # bar 6 dips to 103.5 <= 103.88 and closes at 105
    bars = bars_from_closes([*UP[:5], 105], volumes=UP_VOLUME, lows={6: 103.5})
    signals = run(strategy(), bars)
    assert targets(signals) == [(5, 1.0), (6, 0.0)]
    assert signals[1][1].reason == "stop/trail hit: low 103.5 <= 103.88"


def test_no_same_side_reentry_on_the_exit_bar() -> None:
    # long at 106 (bar 5), highest close 110 (bar 6): level max(103.88, 110 * 0.97 = 106.7).
    # bar 7 dips to 106 (exit) and closes at 108, +8% over 3 bars with volume 10 against an
    # average of 5/3: an up move that would enter, but not on the bar that just left the long.
    bars = bars_from_closes([*UP[:5], 110, 108], volumes={5: 3.0, 7: 10.0}, lows={7: 106.0})
    assert targets(run(strategy(), bars)) == [(5, 1.0), (7, 0.0)]


# --- short and flips ----------------------------------------------------------------------------


def test_short_mirrored_in_long_short() -> None:
    # bar 5: -6% with volume 3 -> short at 94, stop min(94 * 1.02, 94 * 1.03) = 95.88.
    # lowest close 94 -> 90 -> 88; level min(95.88, 88 * 1.03 = 90.64). bar 8: high 90 holds;
    # bar 9: high 91 >= 90.64 -> flat.
    signals = run(strategy(mode="long_short"), bars_from_closes(DOWN, volumes={5: 3.0}))
    assert targets(signals) == [(5, -1.0), (9, 0.0)]
    assert signals[0][1].stop == pytest.approx(95.88)
    assert signals[1][1].reason == "stop/trail hit: high 91 >= 90.64"


def test_long_only_ignores_down_moves() -> None:
    assert run(strategy(), bars_from_closes(DOWN, volumes={5: 3.0})) == []


def test_stopped_long_flips_short_on_a_qualified_down_move() -> None:
    # long at 106 (bar 5); bar 6 closes at 94: low 94 <= 103.88 (exit) and 94 vs 100 three
    # bars ago is -6% with volume 4 >= 2 * avg(1, 1, 3) = 3.33 -> straight to -1
    bars = bars_from_closes([*UP[:5], 94], volumes={5: 3.0, 6: 4.0})
    signals = run(strategy(mode="long_short"), bars)
    assert targets(signals) == [(5, 1.0), (6, -1.0)]
    assert signals[1][1].stop == pytest.approx(94 * 1.02)
    assert "stop/trail hit" in signals[1][1].reason and "-6.00%" in signals[1][1].reason


def test_qty_scales_the_target() -> None:
    assert targets(run(strategy(qty=0.25), bars_from_closes(UP, volumes=UP_VOLUME))) == [
        (5, 0.25),
        (9, 0.0),
    ]


def test_symbols_keep_separate_state() -> None:
    strat = strategy()
    a = bars_from_closes(UP, volumes=UP_VOLUME, symbol="A/X")
    b = bars_from_closes([100] * len(UP), symbol="B/X")
    got: list[tuple[str, float | None]] = []
    for bars in zip(b, a, strict=True):
        for bar in bars:
            got.extend((s.symbol, s.target_position) for s in strat.on_bar(bar))
    assert got == [("A/X", 1.0), ("A/X", 0.0)]


# --- params -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"lookback": "0"}, ">= 1 - at `$.lookback`"),
        ({"move_pct": "0"}, "> 0.0 - at `$.move_pct`"),
        ({"volume_period": "0"}, ">= 1 - at `$.volume_period`"),
        ({"spike_mult": "-1"}, "> 0.0 - at `$.spike_mult`"),
        ({"stop_pct": "100"}, "< 100.0 - at `$.stop_pct`"),
        ({"trail_pct": "0"}, "> 0.0 - at `$.trail_pct`"),
        ({"qty": "0"}, "> 0.0 - at `$.qty`"),
        ({"qty": "nan"}, "> 0.0 - at `$.qty`"),
        ({"spike_mult": "inf"}, "spike_mult must be a finite number"),
        ({"mode": "both"}, "mode"),
        ({"lookback": "ten"}, "lookback"),
    ],
)
def test_bad_params_are_one_line(params: dict[str, object], needle: str) -> None:
    with pytest.raises(StrategyError) as info:
        build_strategy("momentum", params)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


# --- snapshot / restore -------------------------------------------------------------------------


def test_snapshot_restore_mid_stream_continues_identically() -> None:
    bars = random_walk(2000, seed=5, volume=lambda rng: rng.choice((1.0, 1.0, 1.0, 1.5, 4.0)))
    params = {**SMALL, "move_pct": 2, "mode": "long_short"}
    straight = assert_snapshot_continues(lambda: strategy(**params), bars, (2, 333, 1000, 1999))
    assert len(straight) >= 10


# --- real data through the command line ---------------------------------------------------------


def test_backtest_on_real_data_is_reproducible(tmp_path: Path) -> None:
    assert_real_week_reproducible(tmp_path, "momentum", "move_pct=0.5", "mode=long_short")
