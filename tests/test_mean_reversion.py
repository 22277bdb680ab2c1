"""Mean reversion: hand-computed band/RSI entries, mid-band and stop exits, params,
snapshot/restore and a real-data run."""

from __future__ import annotations

from pathlib import Path

import pytest

from contracts.events import Signal
from strategies.mean_reversion import MeanReversion, MeanReversionParams
from strategies.registry import StrategyError, build_strategy
from tests.factories import bars_from_closes
from tests.strategy_checks import (
    assert_real_week_reproducible,
    assert_snapshot_continues,
    random_walk,
    run,
)

SMALL = {"bb_period": 4, "bb_k": 1.0, "rsi_period": 2}
DIP = [10, 10, 10, 10, 10, 8, 9, 10]
POP = [10, 10, 10, 10, 10, 12, 11, 10]


def strategy(**overrides: object) -> MeanReversion:
    return MeanReversion("mr", MeanReversionParams(**{**SMALL, **overrides}))  # type: ignore[arg-type]


def targets(signals: list[tuple[int, Signal]]) -> list[tuple[int, float | None]]:
    return [(n, s.target_position) for n, s in signals]


def test_long_below_lower_band_with_oversold_rsi_exits_at_mid() -> None:
    # bar 5: bands all 10 (a flat window has no width), RSI(2) 50 (no moves) -> nothing.
    # bar 6: window 10, 10, 10, 8: mid 9.5, sd sqrt(0.75) = 0.866, lower 8.634 > close 8;
    #   RSI(2): loss (0 + 2) / 2 = 1, gain 0 -> 0 < 30 -> long; the mid band is the target.
    # bar 7: window 10, 10, 8, 9: mid 9.25 > close 9 -> hold.
    # bar 8: window 10, 8, 9, 10: mid 9.25 <= close 10 -> flat.
    signals = run(strategy(), bars_from_closes(DIP))
    assert targets(signals) == [(6, 1.0), (8, 0.0)]
    (_, entry), (_, exit_) = signals
    assert entry.target == pytest.approx(9.5)
    assert entry.stop is None
    assert entry.model_tag == "mean_reversion-bb4x1-rsi2-30x70"
    assert entry.reason == "close 8 below lower band 8.63397, RSI 0.0 < 30"
    assert exit_.reason == "close 10 back at mid band 9.25"
    assert exit_.target is None
    assert (entry.strategy, entry.venue, entry.symbol) == ("mr", "test", "BTC/USDT")


def test_both_conditions_are_needed() -> None:
    # bar 6 of 10, 10, 10, 11, 10, 8: mid 9.75, sd sqrt(1.1875) = 1.09, lower 8.66 > close 8;
    # RSI(2) gains/losses (0.125, 1.25) -> 9.09: oversold below 30, not below 9
    closes = [10, 10, 10, 11, 10, 8]
    assert targets(run(strategy(), bars_from_closes(closes))) == [(6, 1.0)]
    assert run(strategy(oversold=9), bars_from_closes(closes)) == []
    # RSI 0 on the plain dip, but with k = 3 the lower band 9.5 - 2.6 stays below the close 8
    assert run(strategy(bb_k=3.0), bars_from_closes(DIP)) == []


def test_short_mirrored_in_long_short() -> None:
    # bar 6: close 12 > upper 10.5 + 0.866 and RSI 100 > 70 -> short; bar 8: close 10 <= mid
    # (10 + 12 + 11 + 10) / 4 = 10.75 -> flat
    signals = run(strategy(mode="long_short"), bars_from_closes(POP))
    assert targets(signals) == [(6, -1.0), (8, 0.0)]
    assert signals[0][1].target == pytest.approx(10.5)
    assert run(strategy(), bars_from_closes(POP)) == []  # long_only


def test_stop_pct_exit() -> None:
    # long at 8 with stop 8 * 0.95 = 7.6; bar 7 dips to 7.5 and closes at 8.5 (below mid
    # 9.125): the stop fires; bar 8 (9.5, mid 9.0) is inside the band: no new entry.
    bars = bars_from_closes([10, 10, 10, 10, 10, 8, 8.5, 9.5], lows={7: 7.5})
    signals = run(strategy(stop_pct=5), bars)
    assert targets(signals) == [(6, 1.0), (7, 0.0)]
    assert signals[0][1].stop == pytest.approx(7.6)
    assert signals[1][1].reason == "stop hit: low 7.5 <= stop 7.6"
    assert signals[0][1].model_tag.endswith("-stop5")


def test_no_same_side_reentry_on_the_stop_bar() -> None:
    # bar 7 stops out (low 7.5) and closes at 7.7, still below the lower band with RSI ~0:
    # no re-entry on that bar; bar 8 (6.9 < lower band 7.01) enters again.
    bars = bars_from_closes([10, 10, 10, 10, 10, 8, 7.7, 6.9], lows={7: 7.5})
    signals = run(strategy(stop_pct=5), bars)
    assert targets(signals) == [(6, 1.0), (7, 0.0), (8, 1.0)]


def test_long_flips_short_on_a_jump_above_the_upper_band() -> None:
    # long at 8 (bar 6); bar 7 jumps to 14: above mid 10.5 (exit) and above the upper band
    # 10.5 + sqrt(4.75) = 12.68 with RSI(2) 85.7 > 70 -> straight to -1
    signals = run(strategy(mode="long_short"), bars_from_closes([10, 10, 10, 10, 10, 8, 14]))
    assert targets(signals) == [(6, 1.0), (7, -1.0)]
    assert "mid band" in signals[1][1].reason and "upper band" in signals[1][1].reason


def test_qty_scales_the_target() -> None:
    assert targets(run(strategy(qty=3), bars_from_closes(DIP))) == [(6, 3.0), (8, 0.0)]


def test_symbols_keep_separate_state() -> None:
    strat = strategy()
    a = bars_from_closes(DIP, symbol="A/X")
    b = bars_from_closes(POP, symbol="B/X")
    got: list[tuple[str, float | None]] = []
    for bars in zip(b, a, strict=True):
        for bar in bars:
            got.extend((s.symbol, s.target_position) for s in strat.on_bar(bar))
    assert got == [("A/X", 1.0), ("A/X", 0.0)]
    assert set(strat.state.series) == {"test|A/X|1m", "test|B/X|1m"}


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"bb_period": "1"}, ">= 2 - at `$.bb_period`"),
        ({"bb_k": "0"}, "> 0.0 - at `$.bb_k`"),
        ({"bb_k": "11"}, "<= 10.0 - at `$.bb_k`"),
        ({"rsi_period": "0"}, ">= 1 - at `$.rsi_period`"),
        ({"oversold": "70", "overbought": "30"}, "oversold (70) < overbought (30)"),
        ({"overbought": "100"}, "< 100.0 - at `$.overbought`"),
        ({"stop_pct": "-1"}, ">= 0.0 - at `$.stop_pct`"),
        ({"qty": "0"}, "> 0.0 - at `$.qty`"),
        ({"bb_k": "inf"}, "<= 10.0 - at `$.bb_k`"),
        ({"qty": "inf"}, "qty must be a finite number"),
        ({"mode": "short"}, "mode"),
        ({"band": "2"}, "band"),
    ],
)
def test_bad_params_are_one_line(params: dict[str, object], needle: str) -> None:
    with pytest.raises(StrategyError) as info:
        build_strategy("mean_reversion", params)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_snapshot_restore_mid_stream_continues_identically() -> None:
    bars = random_walk(2000, seed=3)
    params = {"bb_period": 10, "rsi_period": 5, "mode": "long_short", "stop_pct": 1.5}
    straight = assert_snapshot_continues(lambda: strategy(**params), bars, (5, 400, 1001, 1990))
    assert len(straight) >= 10


def test_backtest_on_real_data_is_reproducible(tmp_path: Path) -> None:
    assert_real_week_reproducible(tmp_path, "mean_reversion", "mode=long_short", "stop_pct=1")
