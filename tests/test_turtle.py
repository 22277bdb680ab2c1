"""Turtle: flat-then-breakout scenarios (exact entry/exit bars and N), systems 1, 2 and both,
long/short, params, snapshot/restore and a real-data run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from contracts.events import Bar, Signal
from strategies.registry import StrategyError, build_strategy
from strategies.turtle import Turtle, TurtleParams
from tests.factories import bars_from_closes
from tests.strategy_checks import (
    assert_real_week_reproducible,
    assert_snapshot_continues,
    random_walk,
    run,
)

FLAT = (100.0, 101.0, 99.0)  # close, high, low: true range 2 on every flat bar -> ATR 2


def make_bars(rows: Sequence[tuple[float, float, float]], symbol: str = "BTC/USDT") -> list[Bar]:
    """Bars from (close, high, low) rows: the turtle's breakouts are about highs and lows."""
    return bars_from_closes(
        [close for close, _, _ in rows],
        highs={n: high for n, (_, high, _) in enumerate(rows, start=1)},
        lows={n: low for n, (_, _, low) in enumerate(rows, start=1)},
        symbol=symbol,
    )


def strategy(**params: object) -> Turtle:
    return Turtle("turtle", TurtleParams(**params))  # type: ignore[arg-type]


def targets(signals: list[tuple[int, Signal]]) -> list[tuple[int, float | None]]:
    return [(n, s.target_position) for n, s in signals]


UP = (105.0, 106.0, 104.0)
DOWN = (95.0, 96.0, 94.0)


def long_scenario(flat: int, hold: int) -> list[tuple[float, float, float]]:
    """``flat`` flat bars, a breakout to 103 (high 104, low 100), ``hold`` bars at 105 (low 104),
    then a close of 103.5 (below the 104 lows)."""
    return [FLAT] * flat + [(103.0, 104.0, 100.0)] + [UP] * hold + [(103.5, 105.0, 103.0)]


# --- system 1 -----------------------------------------------------------------------------------


def test_system1_flat_then_breakout_then_exit() -> None:
    # bars 1-25 flat: ATR(20) = 2; the 20-bar high is 101.
    # bar 26: close 103 > the previous bar's 20-bar high 101 -> long.
    #   true range max(104 - 100, |104 - 100|, |100 - 100|) = 4 -> N = (19 * 2 + 4) / 20 = 2.1,
    #   stop = 103 - 2 * 2.1 = 98.8.
    # bars 27-36 at 105 (lows 104): the 10-bar low under them climbs from 99 to 104.
    # bar 37: close 103.5 < the previous bar's 10-bar low (bars 27-36: 104) -> flat.
    signals = run(strategy(), make_bars(long_scenario(25, 10)))
    assert targets(signals) == [(26, 1.0), (37, 0.0)]
    (_, entry), (_, exit_) = signals
    assert entry.atr == pytest.approx(2.1)
    assert entry.stop == pytest.approx(98.8)
    assert entry.model_tag == "turtle-s1-20x10-atr20-stop2n"
    assert entry.reason == "s1 breakout: close 103 above 20-bar high 101, N 2.1"
    assert exit_.reason == "s1 exit: close 103.5 below 10-bar low 104"
    assert exit_.stop is None


def test_a_close_at_the_channel_is_not_a_breakout() -> None:
    assert run(strategy(), make_bars([FLAT] * 25 + [(101.0, 101.0, 100.0)] * 3)) == []


def test_no_entry_before_the_channel_and_n_are_warm() -> None:
    # 20 flat bars warm the channel and ATR; a breakout on bar 20 itself has no previous channel
    rows = [FLAT] * 19 + [(110.0, 110.0, 100.0)]
    assert run(strategy(), make_bars(rows)) == []
    assert targets(run(strategy(), make_bars([FLAT] * 20 + [(103.0, 104.0, 100.0)]))) == [(21, 1.0)]


def test_stop_2n_exit() -> None:
    # entry 103 with stop 98.8; bar 27 dips to 98.5 but closes at 99.5, above the previous
    # 10-bar low 99: only the stop fires
    rows = [FLAT] * 25 + [(103.0, 104.0, 100.0), (99.5, 103.0, 98.5)]
    signals = run(strategy(), make_bars(rows))
    assert targets(signals) == [(26, 1.0), (27, 0.0)]
    assert signals[1][1].reason == "s1 stop hit: low 98.5 <= 98.8"


def test_short_mirrored_in_long_short() -> None:
    # bar 26: close 97 < 20-bar low 99 -> short, N 2.1 (true range 4), stop 97 + 4.2 = 101.2;
    # bars 27-36 at 95 (highs 96); bar 37 closes 96.5 > the 10-bar high 96 -> flat.
    rows = [FLAT] * 25 + [(97.0, 100.0, 96.0)] + [DOWN] * 10 + [(96.5, 97.0, 95.0)]
    signals = run(strategy(mode="long_short"), make_bars(rows))
    assert targets(signals) == [(26, -1.0), (37, 0.0)]
    assert signals[0][1].stop == pytest.approx(101.2)
    assert signals[0][1].atr == pytest.approx(2.1)
    assert run(strategy(), make_bars(rows)) == []  # long_only ignores the downside breakout


def test_long_flips_short_on_an_opposite_breakout() -> None:
    # long at 26 (stop 98.8); bar 27 falls to a low of 96 (the stop fires) and closes at 97,
    # below the previous 20-bar low 99 (a short breakout) -> one signal, straight to -1.
    rows = [FLAT] * 25 + [(103.0, 104.0, 100.0), (97.0, 99.5, 96.0)]
    signals = run(strategy(mode="long_short"), make_bars(rows))
    assert targets(signals) == [(26, 1.0), (27, -1.0)]
    assert "stop hit" in signals[1][1].reason and "below 20-bar low 99" in signals[1][1].reason


def test_units_and_qty_scale_the_target() -> None:
    signals = run(strategy(units=3, qty=0.5), make_bars(long_scenario(25, 10)))
    assert targets(signals) == [(26, 1.5), (37, 0.0)]


# --- system 2 and both --------------------------------------------------------------------------


def test_system2_55_20() -> None:
    # 60 flat bars, breakout on 61 (N 2.1 again), 20 bars at 105, exit on bar 82
    signals = run(strategy(system=2), make_bars(long_scenario(60, 20)))
    assert targets(signals) == [(61, 1.0), (82, 0.0)]
    assert signals[0][1].atr == pytest.approx(2.1)
    assert signals[0][1].model_tag == "turtle-s2-55x20-atr20-stop2n"
    # after 10 bars at 105 a close of 103.5 breaks the 10-bar low (system 1 exits) but not the
    # 20-bar low, which still holds the flat bars' 99 (system 2 stays in)
    rows = long_scenario(60, 10)
    assert targets(run(strategy(system=1), make_bars(rows))) == [(61, 1.0), (72, 0.0)]
    assert targets(run(strategy(system=2), make_bars(rows))) == [(61, 1.0)]


def test_both_systems_sum_their_legs() -> None:
    # bar 61 breaks both channels: 2 units. Bar 72 (103.5) breaks system 1's 10-bar low:
    # 1 unit left. Bars 73-92 at 105; bar 93 (103.5) breaks system 2's 20-bar low (104): flat.
    rows = long_scenario(60, 10) + [UP] * 20 + [(103.5, 105.0, 103.0)]
    signals = run(strategy(system="both"), make_bars(rows))
    assert targets(signals) == [(61, 2.0), (72, 1.0), (93, 0.0)]
    assert signals[0][1].model_tag == "turtle-s1-20x10+s2-55x20-atr20-stop2n"
    assert signals[1][1].stop == pytest.approx(98.8)  # the open system 2 leg's stop
    assert signals[1][1].reason.startswith("s1 exit")
    assert signals[2][1].reason.startswith("s2 exit")


def test_custom_periods() -> None:
    rows = [FLAT] * 8 + [(103.0, 104.0, 100.0)] + [UP] * 3 + [(103.5, 105.0, 103.0)]
    signals = run(strategy(entry1=5, exit1=3, atr_period=4), make_bars(rows))
    # ATR(4): 2 while flat; bar 9: (3 * 2 + 4) / 4 = 2.5
    assert targets(signals) == [(9, 1.0), (13, 0.0)]
    assert signals[0][1].atr == pytest.approx(2.5)


def test_symbols_keep_separate_state() -> None:
    strat = strategy()
    a = make_bars(long_scenario(25, 10), symbol="A/X")
    b = make_bars([FLAT] * 37, symbol="B/X")
    got: list[tuple[str, float | None]] = []
    for bars in zip(a, b, strict=True):
        for bar in bars:
            got.extend((s.symbol, s.target_position) for s in strat.on_bar(bar))
    assert got == [("A/X", 1.0), ("A/X", 0.0)]


# --- params -------------------------------------------------------------------------------------


@pytest.mark.parametrize("system", [1, 2, "both"])
def test_snapshot_restore_mid_stream_continues_identically(system: object) -> None:
    bars = random_walk(2000, seed=11, wick=0.004)
    params = {"system": system, "mode": "long_short"}
    straight = assert_snapshot_continues(lambda: strategy(**params), bars, (30, 500, 1111, 1900))
    assert len(straight) >= 6


# --- real data through the command line ---------------------------------------------------------


def test_backtest_on_real_data_is_reproducible(tmp_path: Path) -> None:
    assert_real_week_reproducible(tmp_path, "turtle", "system=both", "mode=long_short")


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"exit1": "0"}, ">= 1 - at `$.exit1`"),
        ({"entry2": "20", "exit2": "20"}, "entry2 (20) must be above exit2 (20)"),
        ({"atr_period": "0"}, ">= 1 - at `$.atr_period`"),
        ({"stop_n": "21"}, "<= 20.0 - at `$.stop_n`"),
        ({"units": "0"}, ">= 1 - at `$.units`"),
        ({"qty": "inf"}, "qty must be a finite number"),
        ({"system": "3"}, "system"),
    ],
)
def test_bad_params_are_one_line(params: dict[str, object], needle: str) -> None:
    with pytest.raises(StrategyError) as info:
        build_strategy("turtle", params)
    assert needle in str(info.value) and "\n" not in str(info.value)
