"""Trend follower: hand-computed scenarios, auto-tune, params, snapshot/restore, real data."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from contracts.events import Bar, Event, ParamsTuned, Signal
from strategies.indicators import RSI
from strategies.registry import StrategyError, build_strategy
from strategies.trend_follower import TrendFollower, TrendFollowerParams
from tests.factories import bars_from_closes
from tests.strategy_checks import DATA, WEEK, random_walk
from tests.test_backtest_cli import keel, last_json

# Up, up, dip, up: the dip makes RSI(2) moderate, so the trend conditions line up on bar 4.
CLOSES = [10, 11, 12, 11.5, 12.5, 13, 12.5, 13.5, 13, 14, 15, 14.5, 15.5, 16]
SMALL = {
    "fast": 2,
    "slow": 3,
    "htf_factor": 2,
    "htf_period": 2,
    "rsi_period": 2,
    "rsi_min": 50,
    "rsi_max": 90,
    "rsi_exit": 95,
    "atr_period": 2,
    "atr_stop_mult": 1,
    "atr_target_mult": 2,
    "cooldown_bars": 2,
}


def strategy(**overrides: object) -> TrendFollower:
    return TrendFollower("tf", TrendFollowerParams(**{**SMALL, **overrides}))  # type: ignore[arg-type]


def run(strat: TrendFollower, bars: Sequence[Bar]) -> list[tuple[int, Event]]:
    out: list[tuple[int, Event]] = []
    for n, bar in enumerate(bars, start=1):
        out.extend((n, e) for e in strat.on_bar(bar))
    return out


def targets(events: list[tuple[int, Event]]) -> list[tuple[int, float | None]]:
    return [(n, e.target_position) for n, e in events if isinstance(e, Signal)]


def tunes(events: list[tuple[int, Event]]) -> list[tuple[int, str, float, float]]:
    return [(n, e.param, e.old, e.new) for n, e in events if isinstance(e, ParamsTuned)]


# --- the scenario -------------------------------------------------------------------------------


def test_entry_target_exit_cooldown_and_filters() -> None:
    # ATR(2) (Wilder): TRs 0, 1, 1, 0.5 -> 0.5 at bar 2, 0.75 at bar 3, 0.625 at bar 4.
    # RSI(2): changes +1, +1 seed gain 1, loss 0; bar 4 (-0.5): gain 0.5, loss 0.25 -> 66.67.
    # bar 4: fast (12+11.5)/2 = 11.75 > slow (11+12+11.5)/3 = 11.5; the higher timeframe
    #   (every 2nd close: 11 and 11.5) averages 11.25 < close 11.5; RSI 66.67 in [50, 90]
    #   -> long, stop 11.5 - 1 * 0.625 = 10.875, target 11.5 + 2 * 0.625 = 12.75.
    # bar 5: high 12.5 < target, low 11.5 > stop, RSI 85.7 < 95, fast 12 == slow 12 -> hold.
    # bar 6: high 13 >= 12.75 -> exit; cooldown covers bars 7 and 8 (bar 7 would enter).
    # bar 9: close 13 < htf 13.25; bar 10: fast 13.5 == slow; bar 11: RSI 91.2 > 90.
    # bar 12: fast 14.75 > slow 14.5, close 14.5 > htf 14.25, RSI 58.9 -> long.
    # bar 14: high 16 >= target 14.5 + 2 * ATR -> exit.
    events = run(strategy(), bars_from_closes(CLOSES))
    assert targets(events) == [(4, 1.0), (6, 0.0), (12, 1.0), (14, 0.0)]
    entry, exit_ = events[0][1], events[1][1]
    assert isinstance(entry, Signal) and isinstance(exit_, Signal)
    assert entry.atr == pytest.approx(0.625)
    assert entry.stop == pytest.approx(10.875)
    assert entry.target == pytest.approx(12.75)
    assert entry.model_tag == "trend_follower-sma2x3-htf2x2-rsi2-atr2x1x2"
    assert entry.strategy == "tf" and entry.symbol == "BTC/USDT" and entry.venue == "test"
    assert "RSI 66.7" in entry.reason and "htf sma 11.25" in entry.reason
    assert exit_.stop is None and exit_.target is None
    assert exit_.reason.startswith("target hit")
    assert all(isinstance(e, Signal) for _, e in events)


def test_without_cooldown_the_next_bar_can_enter() -> None:
    # bar 7: fast 12.75 > slow 12.67, close 12.5 > htf 12.25, RSI 52.6 -> long again.
    events = run(strategy(cooldown_bars=0), bars_from_closes(CLOSES))
    assert targets(events) == [(4, 1.0), (6, 0.0), (7, 1.0), (10, 0.0), (12, 1.0), (14, 0.0)]


def test_rsi_band_filters_the_entry() -> None:
    # bar 11's RSI 91.2 is above rsi_max 90; with rsi_max 92 bar 11 enters
    events = run(strategy(rsi_max=92), bars_from_closes(CLOSES))
    assert targets(events)[2] == (11, 1.0)
    # RSI 66.7 on bar 4 is above rsi_max 60: no entry there
    assert targets(run(strategy(rsi_max=60), bars_from_closes(CLOSES[:6]))) == []


def test_higher_timeframe_filters_the_entry() -> None:
    # every 3rd close, averaged over 1: the higher timeframe closed at 12 on bar 3, and bar 4's
    # close 11.5 is below it, so the bar-4 entry that htf_factor=2 allows does not happen
    assert targets(run(strategy(htf_factor=3, htf_period=1), bars_from_closes(CLOSES[:6]))) == []
    strat = strategy(htf_factor=3, htf_period=2)
    run(strat, bars_from_closes(CLOSES[:9]))
    assert strat.state.series["test|BTC/USDT|1m"].htf_value == pytest.approx((13 + 13) / 2)


def test_stop_exit() -> None:
    # bar 5 dips to 10.8 <= stop 10.875 (close 11.6 keeps the trend): stop exit
    events = run(strategy(), bars_from_closes([10, 11, 12, 11.5, 11.6], lows={5: 10.8}))
    assert targets(events) == [(4, 1.0), (5, 0.0)]
    assert events[1][1].reason == "stop hit: low 10.8 <= stop 10.875"  # type: ignore[union-attr]


def test_stop_wins_when_stop_and_target_both_hit() -> None:
    bars = bars_from_closes([10, 11, 12, 11.5, 13], lows={5: 10.0})
    assert run(strategy(), bars)[1][1].reason.startswith("stop hit")  # type: ignore[union-attr]


def test_rsi_exit() -> None:
    # bar 5: RSI 85.7 > rsi_exit 80 (high 12.5 < target 12.75)
    events = run(strategy(rsi_max=70, rsi_exit=80), bars_from_closes([10, 11, 12, 11.5, 12.5]))
    assert targets(events) == [(4, 1.0), (5, 0.0)]
    assert events[1][1].reason == "RSI 85.7 > exit 80"  # type: ignore[union-attr]


def test_trend_reversal_exit() -> None:
    # bar 5 close 11: fast (11.5+11)/2 = 11.25 < slow (12+11.5+11)/3 = 11.5; low 11 > stop
    events = run(strategy(), bars_from_closes([10, 11, 12, 11.5, 11]))
    assert targets(events) == [(4, 1.0), (5, 0.0)]
    assert events[1][1].reason.startswith("trend reversal")  # type: ignore[union-attr]


def test_states_flat_long_cooldown() -> None:
    strat = strategy()
    phases = []
    for bar in bars_from_closes(CLOSES[:9]):
        strat.on_bar(bar)
        phases.append(strat.state.series["test|BTC/USDT|1m"].phase)
    assert phases == ["flat"] * 3 + ["long"] * 2 + ["cooldown"] * 2 + ["flat"] * 2


def test_symbols_keep_separate_state() -> None:
    strat = strategy()
    btc = bars_from_closes(CLOSES, symbol="BTC/USDT")
    eth = bars_from_closes(CLOSES[:6], symbol="ETH/USDT")
    got = []
    for n, bar in enumerate(btc, start=1):
        got.extend((n, bar.symbol, s.target_position) for s in strat.on_bar(bar))  # type: ignore[attr-defined]
        if n <= len(eth):
            got.extend((n, "ETH/USDT", s.target_position) for s in strat.on_bar(eth[n - 1]))  # type: ignore[attr-defined]
    assert [g for g in got if g[1] == "ETH/USDT"] == [(4, "ETH/USDT", 1.0), (6, "ETH/USDT", 0.0)]
    assert len([g for g in got if g[1] == "BTC/USDT"]) == 4


# --- auto-tune ----------------------------------------------------------------------------------

TUNE = {"auto_tune": True, "cooldown_bars": 0, "stop_mult_min": 0.5, "rsi_period_min": 2}


def test_auto_tune_tightens_after_a_winning_window() -> None:
    # Trades 4 -> 6 and 7 -> 10 both exit at their targets (wins): win rate 1.0 > 0.6 after
    # 2 trades -> stop 1 - 0.25 = 0.75, target 2 + 0.25 = 2.25; the RSI window is already at
    # its minimum 2, so it does not move and no event says it did.
    strat = strategy(**TUNE, tune_window=2)
    events = run(strat, bars_from_closes(CLOSES))
    assert tunes(events) == [(10, "atr_stop_mult", 1.0, 0.75), (10, "atr_target_mult", 2.0, 2.25)]
    tuned = [e for _, e in events if isinstance(e, ParamsTuned)]
    for e in tuned:
        assert (e.strategy, e.symbol) == ("tf", "BTC/USDT")
        assert e.reason == "win rate 1.00 (2/2) > 0.6: tighten"
        assert e.ts == bars_from_closes(CLOSES)[9].close_time
    # the exit signal comes first on bar 10, then the tuning events
    assert [type(e).__name__ for n, e in events if n == 10] == [
        "Signal",
        "ParamsTuned",
        "ParamsTuned",
    ]
    # the next entry (bar 12) uses the tuned multipliers
    entry = next(e for n, e in events if n == 12)
    assert isinstance(entry, Signal) and entry.atr is not None
    assert entry.stop == pytest.approx(14.5 - 0.75 * entry.atr)
    assert entry.target == pytest.approx(14.5 + 2.25 * entry.atr)
    series = strat.state.series["test|BTC/USDT|1m"]
    assert (series.stop_mult, series.target_mult, series.rsi_period) == (0.75, 2.25, 2)


def test_auto_tune_loosens_within_bounds() -> None:
    # Every cycle enters on 11.5 and is stopped out on 10.5 (a loss); one trade per window.
    # stop 1 -> 1.25 -> 1.5 (max), target 2 -> 1.75 -> 1.5 (min), then nothing moves.
    bars = bars_from_closes([10, 11, 12, 11.5, 10.5] * 4)
    strat = strategy(
        **TUNE, tune_window=1, stop_mult_max=1.5, target_mult_min=1.5, rsi_period_max=2
    )
    events = run(strat, bars)
    assert targets(events) == [
        (4, 1.0),
        (5, 0.0),
        (8, 1.0),
        (10, 0.0),
        (13, 1.0),
        (15, 0.0),
        (18, 1.0),
        (20, 0.0),
    ]
    assert tunes(events) == [
        (5, "atr_stop_mult", 1.0, 1.25),
        (5, "atr_target_mult", 2.0, 1.75),
        (10, "atr_stop_mult", 1.25, 1.5),
        (10, "atr_target_mult", 1.75, 1.5),
    ]
    assert all("< 0.4: loosen" in e.reason for _, e in events if isinstance(e, ParamsTuned))


def test_auto_tune_lengthens_the_rsi_window_and_rebuilds_it() -> None:
    closes = [10, 11, 12, 11.5, 10.5]
    strat = strategy(**TUNE, tune_window=1, rsi_period_step=1, rsi_period_max=5)
    events = run(strat, bars_from_closes(closes))
    assert (5, "rsi_period", 2.0, 3.0) in tunes(events)
    rsi = strat.state.series["test|BTC/USDT|1m"].rsi
    fresh = RSI(3)
    for c in closes:
        fresh.update(c)
    assert rsi == fresh


def test_mid_window_the_rate_is_not_judged() -> None:
    # Two wins (bars 6 and 10) but a window of 3: no tuning yet; the third trade (exit on
    # bar 14) completes the window
    events = run(strategy(**TUNE, tune_window=3), bars_from_closes(CLOSES))
    assert [n for n, *_ in tunes(events)] == [14, 14]


def test_without_auto_tune_nothing_is_tuned_and_bounds_are_not_checked() -> None:
    strat = strategy(atr_stop_mult=9)  # above the default stop_mult_max, fine when not tuning
    assert tunes(run(strat, bars_from_closes([10, 11, 12, 11.5, 10.5] * 4))) == []


# --- params -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"fast": "5", "slow": "5"}, "fast (5) must be below slow (5)"),
        ({"fast": "0"}, ">= 1 - at `$.fast`"),
        ({"htf_factor": "0"}, ">= 1 - at `$.htf_factor`"),
        ({"rsi_min": "60", "rsi_max": "50"}, "rsi_min (60) <= rsi_max (50)"),
        ({"rsi_max": "85", "rsi_exit": "80"}, "rsi_max (85) < rsi_exit (80)"),
        ({"rsi_exit": "101"}, "<= 100.0 - at `$.rsi_exit`"),
        ({"atr_stop_mult": "0"}, "> 0.0 - at `$.atr_stop_mult`"),
        ({"cooldown_bars": "-1"}, ">= 0 - at `$.cooldown_bars`"),
        ({"qty": "0"}, "> 0.0 - at `$.qty`"),
        ({"mode": "long_short"}, "mode"),
        ({"auto_tune": "maybe"}, "auto_tune"),
        ({"auto_tune": "true", "tune_window": "0"}, ">= 1 - at `$.tune_window`"),
        ({"auto_tune": "true", "win_low": "0.7"}, "win_low (0.7) < win_high (0.6)"),
        ({"auto_tune": "true", "atr_stop_mult": "5"}, "atr_stop_mult (5) <= stop_mult_max (4)"),
        ({"auto_tune": "true", "rsi_period": "3"}, "rsi_period_min (7) <= rsi_period (3)"),
        ({"auto_tune": "true", "target_mult_step": "0"}, "> 0.0 - at `$.target_mult_step`"),
    ],
)
def test_bad_params_are_one_line(params: dict[str, object], needle: str) -> None:
    with pytest.raises(StrategyError) as info:
        build_strategy("trend_follower", params)
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_registry_builds_it() -> None:
    strat = build_strategy("trend_follower", {"auto_tune": "true"}, instance="t1")
    assert isinstance(strat, TrendFollower) and strat.name == "t1"
    assert strat.params.auto_tune is True
    assert strat.model_tag.endswith("-autotune")


# --- snapshot / restore -------------------------------------------------------------------------


WALK_PARAMS = {
    "fast": 5,
    "slow": 12,
    "htf_factor": 3,
    "htf_period": 5,
    "rsi_period": 7,
    "rsi_min": 40,
    "rsi_max": 75,
    "rsi_exit": 80,
    "atr_period": 7,
    "cooldown_bars": 3,
    "auto_tune": True,
    "tune_window": 3,
    "rsi_period_min": 3,
    "rsi_period_max": 14,
}


def test_snapshot_restore_mid_stream_continues_identically() -> None:
    bars = random_walk(
        1500, seed=7, drift=0.0003, wick=0.004, volume=lambda rng: 1.0 + rng.random()
    )
    straight = run(TrendFollower("tf", TrendFollowerParams(**WALK_PARAMS)), bars)  # type: ignore[arg-type]
    assert len(targets(straight)) >= 10
    assert tunes(straight)  # the tuned state is part of what must survive
    for cut in (17, 400, 777, 1234):
        first = TrendFollower("tf", TrendFollowerParams(**WALK_PARAMS))  # type: ignore[arg-type]
        head = run(first, bars[:cut])
        second = TrendFollower("tf", TrendFollowerParams(**WALK_PARAMS))  # type: ignore[arg-type]
        second.restore(first.snapshot())
        tail = [(n + cut, e) for n, e in run(second, bars[cut:])]
        assert head + tail == straight, cut


# --- real data through the command line ---------------------------------------------------------


def test_backtest_on_real_data_is_reproducible(tmp_path: Path) -> None:
    if not DATA.is_file():
        pytest.skip(f"real data not available at {DATA}")
    args = ["backtest", "--data", str(DATA), "--strategy", "trend_follower", *WEEK]
    args += ["--param", "auto_tune=true", "--param", "tune_window=5", "--json"]
    first = last_json(keel(tmp_path, *args))
    second = last_json(keel(tmp_path, *args))
    assert first["bars"] == 7 * 24 * 60
    assert first["signals"] > 0
    assert len(first["result_hash"]) == 64
    assert first["result_hash"] == second["result_hash"]
