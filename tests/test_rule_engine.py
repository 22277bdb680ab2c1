"""Rule engine: the rule table, regimes, aggregation, position logic, state handling, params,
and an end-to-end backtest on real data."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.events import Bar, Signal
from strategies.indicators import ADX, ATR, EMA, RSI, BollingerBands, Donchian, Stochastic
from strategies.registry import StrategyError, build_strategy
from strategies.rule_engine import (
    RULES,
    Decision,
    Features,
    FeatureTracker,
    FeatureView,
    Holding,
    LiveFeatures,
    RegimeDetector,
    Rule,
    RuleEngine,
    RuleEngineParams,
    RuleEngineState,
    aggregate,
    decide,
    replay_decisions,
    vol_regime,
)
from strategies.rule_engine.regime import BEAR_TREND, BULL_TREND, RANGE, REGIMES, UNKNOWN
from tests.test_backtest_cli import keel, last_json

ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = ROOT.parent / "shared" / "data" / "binanceus-1m-2023-03" / "BTCUSDT.csv"
MINUTE = 60_000_000_000
T0 = 1_700_000_000_000_000_000
PARAMS = RuleEngineParams()

# --- the table --------------------------------------------------------------------------------

B, R, S = BULL_TREND, RANGE, BEAR_TREND
# the AUTOBOT analysis (trading_rules.py), written out by hand: direction, weight, regimes, category
REFERENCE = {
    "TURTLE_20DAY_BREAKOUT_LONG": (1, 0.7, {B, R}, "breakout"),
    "TURTLE_20DAY_BREAKOUT_SHORT": (-1, 0.7, {S, R}, "breakout"),
    "TURTLE_55DAY_BREAKOUT_LONG": (1, 0.9, {B}, "breakout"),
    "TURTLE_55DAY_BREAKOUT_SHORT": (-1, 0.9, {S}, "breakout"),
    "RSI_OVERSOLD_LONG": (1, 0.6, {B, R}, "oscillator"),
    "RSI_OVERBOUGHT_SHORT": (-1, 0.6, {S, R}, "oscillator"),
    "RSI_EXTREME_OVERSOLD": (1, 0.8, {B, R}, "oscillator"),
    "RSI_EXTREME_OVERBOUGHT": (-1, 0.8, {S, R}, "oscillator"),
    "GOLDEN_CROSS": (1, 0.5, {B}, "trend"),
    "DEATH_CROSS": (-1, 0.5, {S}, "trend"),
    "BB_OVERSOLD": (1, 0.6, {B, R}, "oscillator"),
    "BB_OVERBOUGHT": (-1, 0.6, {S, R}, "oscillator"),
    "STOCH_OVERSOLD": (1, 0.5, {B, R}, "oscillator"),
    "STOCH_OVERBOUGHT": (-1, 0.5, {S, R}, "oscillator"),
    "STOCH_BULLISH_CROSS": (1, 0.4, {B, R}, "oscillator"),
    "STRONG_UPTREND": (1, 0.7, {B}, "trend"),
    "STRONG_DOWNTREND": (-1, 0.7, {S}, "trend"),
    "SUPER_BULLISH": (1, 0.9, {B, R}, "combo"),
    "SUPER_BEARISH": (-1, 0.9, {S, R}, "combo"),
}

# a bar on which no rule holds: flat EMAs, mid RSI, moderate ADX, close inside every band
NEUTRAL = Features(
    close=100.0,
    rsi=50.0,
    ema_fast=100.0,
    ema_slow=100.0,
    adx=22.0,
    atr=1.0,
    atr_pct=1.0,
    bb_mid=100.0,
    bb_upper=102.0,
    bb_lower=98.0,
    stoch_k=50.0,
    stoch_d=50.0,
    prev_stoch_k=50.0,
    prev_stoch_d=50.0,
    high_fast=105.0,
    low_fast=95.0,
    high_slow=110.0,
    low_slow=90.0,
)

# per rule: the fields that change NEUTRAL into a bar where that rule holds
FIRE: dict[str, dict[str, float]] = {
    "TURTLE_20DAY_BREAKOUT_LONG": {"close": 105.5, "bb_upper": 106.0},
    "TURTLE_20DAY_BREAKOUT_SHORT": {"close": 94.5, "bb_lower": 94.0},
    "TURTLE_55DAY_BREAKOUT_LONG": {"close": 110.5, "bb_upper": 111.0},
    "TURTLE_55DAY_BREAKOUT_SHORT": {"close": 89.5, "bb_lower": 89.0},
    "RSI_OVERSOLD_LONG": {"rsi": 29.0},
    "RSI_OVERBOUGHT_SHORT": {"rsi": 71.0},
    "RSI_EXTREME_OVERSOLD": {"rsi": 19.0},
    "RSI_EXTREME_OVERBOUGHT": {"rsi": 81.0},
    "GOLDEN_CROSS": {"ema_fast": 101.0, "adx": 26.0},
    "DEATH_CROSS": {"ema_fast": 99.0, "adx": 26.0},
    "BB_OVERSOLD": {"close": 97.5, "rsi": 39.0},
    "BB_OVERBOUGHT": {"close": 102.5, "rsi": 61.0},
    "STOCH_OVERSOLD": {"stoch_k": 15.0, "stoch_d": 18.0},
    "STOCH_OVERBOUGHT": {"stoch_k": 85.0, "stoch_d": 82.0},
    "STOCH_BULLISH_CROSS": {"prev_stoch_k": 40.0, "prev_stoch_d": 45.0, "stoch_d": 48.0},
    "STRONG_UPTREND": {"adx": 26.0, "ema_fast": 101.0, "rsi": 51.0},
    "STRONG_DOWNTREND": {"adx": 26.0, "ema_fast": 99.0, "rsi": 49.0},
    "SUPER_BULLISH": {"rsi": 34.0, "ema_fast": 101.0, "close": 99.0},
    "SUPER_BEARISH": {"rsi": 66.0, "ema_fast": 99.0, "close": 101.0},
}

# per rule: a near miss (one field just on the wrong side of its condition)
MISS: dict[str, dict[str, float]] = {
    "TURTLE_20DAY_BREAKOUT_LONG": {"close": 105.0},
    "TURTLE_20DAY_BREAKOUT_SHORT": {"close": 95.0},
    "TURTLE_55DAY_BREAKOUT_LONG": {"close": 110.0},
    "TURTLE_55DAY_BREAKOUT_SHORT": {"close": 90.0},
    "RSI_OVERSOLD_LONG": {"rsi": 30.0},
    "RSI_OVERBOUGHT_SHORT": {"rsi": 70.0},
    "RSI_EXTREME_OVERSOLD": {"rsi": 20.0},
    "RSI_EXTREME_OVERBOUGHT": {"rsi": 80.0},
    "GOLDEN_CROSS": {"adx": 25.0},
    "DEATH_CROSS": {"adx": 25.0},
    "BB_OVERSOLD": {"rsi": 40.0},
    "BB_OVERBOUGHT": {"rsi": 60.0},
    "STOCH_OVERSOLD": {"stoch_d": 20.0},
    "STOCH_OVERBOUGHT": {"stoch_d": 80.0},
    "STOCH_BULLISH_CROSS": {"prev_stoch_k": 46.0},  # K was already above D: no cross
    "STRONG_UPTREND": {"rsi": 50.0},
    "STRONG_DOWNTREND": {"rsi": 50.0},
    "SUPER_BULLISH": {"adx": 20.0},
    "SUPER_BEARISH": {"close": 100.0},
}

BY_NAME = {rule.name: rule for rule in RULES}
RULE_IDS = [rule.name for rule in RULES]


def features(**changes: float) -> Features:
    return msgspec.structs.replace(NEUTRAL, **changes)


def firing(rule: Rule) -> Features:
    return features(**FIRE[rule.name])


def test_the_table_has_19_rules_with_unique_names_as_in_the_reference() -> None:
    assert len(RULES) == 19
    assert len(BY_NAME) == 19
    assert set(FIRE) == set(MISS) == set(REFERENCE) == set(BY_NAME)
    for rule in RULES:
        direction, weight, regimes, category = REFERENCE[rule.name]
        assert (rule.direction, rule.weight, set(rule.regimes), rule.category) == (
            direction,
            weight,
            regimes,
            category,
        ), rule.name
        assert rule.score == direction * weight
        assert rule.condition
        assert UNKNOWN not in rule.regimes


def test_no_rule_holds_on_the_neutral_bar() -> None:
    assert [rule.name for rule in RULES if rule.predicate(NEUTRAL)] == []


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_rule_fires_on_its_crafted_bar_and_not_on_a_near_miss(rule: Rule) -> None:
    assert rule.predicate(firing(rule)) is True
    assert rule.predicate(features(**{**FIRE[rule.name], **MISS[rule.name]})) is False
    assert rule.predicate(NEUTRAL) is False


@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_rule_counts_only_in_its_regimes(rule: Rule, regime: str) -> None:
    params = RuleEngineParams(sideways_veto=False)
    decision = decide(firing(rule), regime, "NORMAL", params)  # type: ignore[arg-type]
    allowed = regime in REFERENCE[rule.name][2]
    assert (rule.name in decision.fired) is allowed
    assert (rule.name in decision.off_regime) is (not allowed)
    assert decision.vetoed == ()


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_sideways_veto_removes_trend_and_breakout_rules_in_range(rule: Rule) -> None:
    decision = decide(firing(rule), RANGE, "NORMAL", PARAMS)
    trend_or_breakout = rule.category in ("trend", "breakout")
    if trend_or_breakout:
        assert rule.name not in decision.fired
    else:
        assert (rule.name in decision.fired) is (RANGE in rule.regimes)
    # only rules that RANGE would allow reach the veto; the others are off-regime
    assert (rule.name in decision.vetoed) is (trend_or_breakout and RANGE in rule.regimes)
    # outside RANGE the veto changes nothing
    for regime in (BULL_TREND, BEAR_TREND):
        assert decide(firing(rule), regime, "NORMAL", PARAMS) == decide(
            firing(rule), regime, "NORMAL", RuleEngineParams(sideways_veto=False)
        )


def test_turtle_20_breakout_is_vetoed_in_range_and_counts_without_the_veto() -> None:
    bar = firing(BY_NAME["TURTLE_20DAY_BREAKOUT_LONG"])
    vetoed = decide(bar, RANGE, "LOW", PARAMS)
    assert vetoed.fired == () and vetoed.vetoed == ("TURTLE_20DAY_BREAKOUT_LONG",)
    assert vetoed.proposal == 0
    free = decide(bar, RANGE, "LOW", RuleEngineParams(sideways_veto=False))
    assert free.fired == ("TURTLE_20DAY_BREAKOUT_LONG",)
    assert (free.bias, free.proposal) == (pytest.approx(0.7), 1)


def test_nothing_counts_in_unknown() -> None:
    for rule in RULES:
        decision = decide(firing(rule), UNKNOWN, "NORMAL", PARAMS)
        assert decision.fired == () and decision.proposal == 0 and decision.bias == 0.0


# --- regimes ----------------------------------------------------------------------------------


def feed(detector: RegimeDetector, rows: list[tuple[float | None, float, float]]) -> list[str]:
    return [detector.update(adx, fast, slow) for adx, fast, slow in rows]


def test_bull_trend_starts_on_the_third_confirming_bar_and_ends_when_broken() -> None:
    up = (30.0, 101.0, 100.0)
    regimes = feed(RegimeDetector(), [(22.0, 101.0, 100.0), up, up, up, up, (24.0, 101.0, 100.0)])
    assert regimes == [UNKNOWN, UNKNOWN, UNKNOWN, BULL_TREND, BULL_TREND, UNKNOWN]


def test_bear_trend_mirrors_and_a_flip_restarts_the_count() -> None:
    up, down = (30.0, 101.0, 100.0), (30.0, 99.0, 100.0)
    regimes = feed(RegimeDetector(), [up, up, up, down, down, down])
    assert regimes == [UNKNOWN, UNKNOWN, BULL_TREND, UNKNOWN, UNKNOWN, BEAR_TREND]


def test_range_starts_on_the_fifth_bar_of_low_adx() -> None:
    low = (15.0, 100.0, 101.0)
    regimes = feed(RegimeDetector(), [low] * 6 + [(20.0, 100.0, 101.0), low])
    assert regimes == [UNKNOWN] * 4 + [RANGE, RANGE, UNKNOWN, UNKNOWN]


def test_regime_edges_equal_emas_and_warm_up() -> None:
    # ADX exactly 25 is not a trend, equal EMAs are neither side, None breaks every run
    assert feed(RegimeDetector(), [(25.0, 101.0, 100.0)] * 4)[-1] == UNKNOWN
    assert feed(RegimeDetector(), [(30.0, 100.0, 100.0)] * 4)[-1] == UNKNOWN
    d = RegimeDetector()
    feed(d, [(30.0, 101.0, 100.0)] * 2 + [(None, 101.0, 100.0)] + [(30.0, 101.0, 100.0)] * 2)
    assert d.current == UNKNOWN
    assert d.update(30.0, 101.0, 100.0) == BULL_TREND


def test_regime_params_change_the_confirmation() -> None:
    d = RegimeDetector(adx_trend=40.0, trend_bars=1)
    assert feed(d, [(35.0, 101.0, 100.0), (41.0, 101.0, 100.0)]) == [UNKNOWN, BULL_TREND]


@pytest.mark.parametrize(
    ("atr_pct", "band"),
    [
        (0.0, "LOW"),
        (0.49, "LOW"),
        (0.5, "NORMAL"),
        (1.5, "NORMAL"),
        (1.51, "HIGH"),
        (3.0, "HIGH"),
        (3.01, "EXTREME"),
    ],
)
def test_vol_bands(atr_pct: float, band: str) -> None:
    assert vol_regime(atr_pct, 0.5, 1.5, 3.0) == band


# --- aggregation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("long_w", "short_w", "floor", "bias", "confidence"),
    [
        (0.0, 0.0, 1.0, 0.0, 0.0),  # nothing fired
        (1.4, 0.0, 1.0, 1.0, 1.0),  # unanimous above the floor
        (0.7, 0.0, 1.0, 0.7, 1.0),  # a lone 0.7 rule: 0.7 / max(0.7, 1)
        (0.4, 0.0, 1.0, 0.4, 1.0),  # a lone weak rule cannot reach 0.7
        (0.4, 0.0, 0.0, 1.0, 1.0),  # ... unless the floor is 0 (pure consensus ratio)
        (1.6, 0.5, 1.0, 1.1 / 2.1, 1.6 / 2.1),
        (0.6, 1.6, 1.0, -1.0 / 2.2, 1.6 / 2.2),
        (0.5, 0.5, 1.0, 0.0, 0.5),
        (0.3, 0.2, 1.0, 0.1, 0.6),  # below the floor: (0.3 - 0.2) / 1
    ],
)
def test_aggregate(long_w: float, short_w: float, floor: float, bias: float, confidence: float):
    assert aggregate(long_w, short_w, floor) == (pytest.approx(bias), pytest.approx(confidence))


def test_oversold_bar_in_range_hand_computed() -> None:
    # RSI 15 (RSI_OVERSOLD_LONG 0.6 + RSI_EXTREME_OVERSOLD 0.8), close under the lower band
    # with RSI < 40 (BB_OVERSOLD 0.6), K and D under 20 (STOCH_OVERSOLD 0.5): L = 2.5, S = 0
    bar = features(rsi=15.0, close=97.0, stoch_k=10.0, stoch_d=12.0)
    d = decide(bar, RANGE, "LOW", PARAMS)
    assert d.fired == ("RSI_OVERSOLD_LONG", "RSI_EXTREME_OVERSOLD", "BB_OVERSOLD", "STOCH_OVERSOLD")
    assert (d.long_weight, d.short_weight) == (pytest.approx(2.5), 0.0)
    assert (d.bias, d.confidence, d.proposal) == (1.0, 1.0, 1)
    assert (d.regime, d.vol_regime) == (RANGE, "LOW")


def test_conflicting_rules_in_range_hand_computed() -> None:
    # RSI 18 fires RSI_OVERSOLD_LONG 0.6 + RSI_EXTREME_OVERSOLD 0.8 (L = 1.4); K and D above
    # 80 fire STOCH_OVERBOUGHT 0.5 (S = 0.5): bias = 0.9 / 1.9, confidence = 1.4 / 1.9
    bar = features(rsi=18.0, stoch_k=90.0, stoch_d=85.0)
    d = decide(bar, RANGE, "NORMAL", PARAMS)
    assert set(d.fired) == {"RSI_OVERSOLD_LONG", "RSI_EXTREME_OVERSOLD", "STOCH_OVERBOUGHT"}
    assert d.bias == pytest.approx(0.9 / 1.9)
    assert d.confidence == pytest.approx(1.4 / 1.9)
    assert d.proposal == 0


def test_bull_trend_bar_hand_computed() -> None:
    # GOLDEN_CROSS 0.5 + STRONG_UPTREND 0.7 + TURTLE_20 0.7 + TURTLE_55 0.9 = 2.8, unanimous;
    # the same bar in BEAR_TREND: all four are off-regime
    bar = features(ema_fast=101.0, adx=30.0, rsi=60.0, close=111.0, bb_upper=112.0)
    d = decide(bar, BULL_TREND, "NORMAL", PARAMS)
    assert d.fired == (
        "TURTLE_20DAY_BREAKOUT_LONG",
        "TURTLE_55DAY_BREAKOUT_LONG",
        "GOLDEN_CROSS",
        "STRONG_UPTREND",
    )
    assert (d.long_weight, d.bias, d.confidence, d.proposal) == (pytest.approx(2.8), 1.0, 1.0, 1)
    bear = decide(bar, BEAR_TREND, "NORMAL", PARAMS)
    assert bear.fired == () and len(bear.off_regime) == 4 and bear.proposal == 0


def _lone(weight: float, direction: int) -> tuple[Rule, ...]:
    return (
        Rule(
            name="LONE",
            direction=direction,  # type: ignore[arg-type]
            weight=weight,
            regimes=frozenset({RANGE}),
            category="oscillator",
            condition="always",
            predicate=lambda f: True,
        ),
    )


@pytest.mark.parametrize(
    ("weight", "direction", "threshold", "floor", "proposal"),
    [
        (0.7, 1, 0.7, 1.0, 1),  # exactly at the threshold proposes
        (0.69, 1, 0.7, 1.0, 0),
        (0.7, -1, 0.7, 1.0, -1),
        (0.69, -1, 0.7, 1.0, 0),
        (0.6, 1, 0.5, 1.0, 1),  # a lower threshold
        (0.9, 1, 0.95, 1.0, 0),  # a higher one
        (0.4, 1, 0.7, 0.0, 1),  # floor 0: any unanimous rule set has bias 1
        (0.4, -1, 1.0, 0.0, -1),
    ],
)
def test_threshold(weight: float, direction: int, threshold: float, floor: float, proposal: int):
    params = RuleEngineParams(threshold=threshold, weight_floor=floor)
    assert decide(NEUTRAL, RANGE, "LOW", params, _lone(weight, direction)).proposal == proposal


# --- position logic ---------------------------------------------------------------------------


def proposal(side: int, confidence: float = 0.9) -> Decision:
    return Decision(
        regime=BULL_TREND,
        vol_regime="LOW",
        fired=("X",),
        bias=float(side),
        confidence=confidence,
        proposal=side,
    )


NONE = proposal(0, 0.0)


def test_holding_enters_trails_stops_and_waits_for_a_new_proposal() -> None:
    h, p = Holding(), RuleEngineParams(stop_atr=2.5)
    reason, confidence = h.apply(100.0, 2.0, proposal(1, 0.8), p)  # type: ignore[misc]
    assert reason == "LONG bias=+1.00 conf=0.80 BULL_TREND/LOW: X" and confidence == 0.8
    assert (h.side, h.stop) == (1, 95.0)
    assert h.apply(104.0, 2.0, proposal(1), p) is None  # same proposal: hold, stop trails
    assert h.stop == 99.0
    assert h.apply(102.0, 2.0, NONE, p) is None  # trail never loosens
    assert h.stop == 99.0
    reason, confidence = h.apply(99.0, 2.0, NONE, p)  # type: ignore[misc]
    assert reason.startswith("stop 99 hit") and confidence == 1.0
    assert (h.side, h.stop) == (0, None)
    assert h.apply(101.0, 2.0, NONE, p) is None
    assert h.apply(101.0, 2.0, proposal(1), p) is not None  # a new proposal re-enters
    assert h.side == 1


def test_a_held_proposal_after_a_stop_does_not_re_enter() -> None:
    h, p = Holding(), RuleEngineParams(stop_atr=1.0)
    assert h.apply(100.0, 1.0, proposal(1), p) is not None
    assert h.apply(98.0, 1.0, proposal(1), p) is not None  # stop at 99: out
    assert h.side == 0
    for close in (100.0, 101.0, 102.0):
        assert h.apply(close, 1.0, proposal(1), p) is None
    assert h.side == 0


def test_holding_long_only_maps_short_to_flat_and_long_short_flips() -> None:
    h, p = Holding(), RuleEngineParams(stop_atr=0.0)
    assert h.apply(100.0, 1.0, proposal(-1), p) is None  # long_only, already flat
    assert h.apply(100.0, 1.0, proposal(1), p) is not None and h.stop is None
    reason, _ = h.apply(100.0, 1.0, proposal(-1), p)  # type: ignore[misc]
    assert reason.startswith("SHORT (long_only: flat)") and h.side == 0

    h, p = Holding(), RuleEngineParams(mode="long_short", stop_atr=2.0)
    h.apply(100.0, 1.0, proposal(1), p)
    h.apply(100.0, 1.0, proposal(-1), p)
    assert (h.side, h.stop) == (-1, 102.0)
    assert h.apply(97.0, 1.0, NONE, p) is None and h.stop == 99.0  # short stop trails down
    assert h.apply(99.5, 1.0, NONE, p) is not None and h.side == 0


# --- the strategy -----------------------------------------------------------------------------


def synthetic_bars(n: int = 900, seed: int = 7, symbol: str = "BTC/USDT") -> list[Bar]:
    """Trending and ranging stretches of a seeded random walk, with wicks."""
    rng = np.random.default_rng(seed)
    drift = np.repeat(rng.choice([-0.004, 0.0, 0.004], size=n // 60 + 1), 60)[:n]
    closes = 100.0 * np.exp(np.cumsum(drift + rng.normal(0.0, 0.006, n)))
    bars, prev = [], float(closes[0])
    for i, c in enumerate(closes.tolist()):
        wick = abs(rng.normal(0.0, 0.003)) * c
        t = T0 + i * MINUTE
        bars.append(
            Bar(
                ts=t + MINUTE,
                venue="test",
                symbol=symbol,
                interval="1m",
                open_time=t,
                close_time=t + MINUTE,
                open=prev,
                high=max(prev, c) + wick,
                low=min(prev, c) - wick,
                close=c,
                volume=1.0,
            )
        )
        prev = c
    return bars


def run(engine: RuleEngine, bars: list[Bar]) -> list[Signal]:
    return [s for bar in bars for s in engine.on_bar(bar)]


def test_warm_up_and_decision_records() -> None:
    bars = synthetic_bars()
    decisions = replay_decisions(bars)
    assert all(d is None for d in decisions[:55]) and decisions[55] is not None
    assert decisions == replay_decisions(bars)  # pure
    regimes = {d.regime for d in decisions if d is not None}
    assert {BULL_TREND, BEAR_TREND} <= regimes
    # the regime is the detector's, fed by EMA20 / EMA50 / ADX14 of the same bars
    fast, slow, adx, detector = EMA(20), EMA(50), ADX(14), RegimeDetector()
    for bar, d in zip(bars, decisions, strict=True):
        a = adx.update(bar.high, bar.low, bar.close)
        regime = detector.update(
            a.adx if a else None, fast.update(bar.close), slow.update(bar.close)
        )
        assert d is None or d.regime == regime
    engine = RuleEngine("re", PARAMS)
    run(engine, bars)
    assert engine.last_decision("test", "BTC/USDT", "1m") == decisions[-1]
    assert engine.last_decision("test", "ETH/USDT", "1m") is None


@pytest.mark.parametrize("mode", ["long_only", "long_short"])
def test_signals_only_on_changes_with_tag_atr_stop_and_reason(mode: str) -> None:
    engine = RuleEngine("re", RuleEngineParams(mode=mode, qty=2.0))  # type: ignore[arg-type]
    signals = run(engine, synthetic_bars())
    assert len(signals) >= 4
    targets = [s.target_position for s in signals]
    allowed = {0.0, 2.0} if mode == "long_only" else {-2.0, 0.0, 2.0}
    assert set(targets) <= allowed
    assert (-2.0 in targets) is (mode == "long_short")
    assert all(a != b for a, b in zip([0.0, *targets], targets, strict=False))
    for s in signals:
        assert (s.strategy, s.model_tag) == ("re", "rule_engine-r1-t0.7")
        assert s.reason and s.atr is not None and s.atr > 0 and 0.0 <= s.confidence <= 1.0
        assert (s.stop is None) is (s.target_position == 0.0)


def test_snapshot_mid_run_then_restore_continues_identically() -> None:
    bars = synthetic_bars(seed=11) + synthetic_bars(seed=12, symbol="ETH/USDT")
    bars.sort(key=lambda b: (b.ts, b.symbol))
    whole = run(RuleEngine("re", PARAMS), bars)
    assert len(whole) >= 4
    for cut in (30, len(bars) // 2, len(bars) - 10):
        first = RuleEngine("re", PARAMS)
        head = run(first, bars[:cut])
        second = RuleEngine("re", PARAMS)
        second.restore(first.snapshot())
        assert head + run(second, bars[cut:]) == whole


def test_series_are_independent() -> None:
    btc, eth = synthetic_bars(seed=11), synthetic_bars(seed=12, symbol="ETH/USDT")
    alone = run(RuleEngine("re", PARAMS), btc)
    mixed = run(RuleEngine("re", PARAMS), [b for pair in zip(btc, eth, strict=True) for b in pair])
    assert [s for s in mixed if s.symbol == "BTC/USDT"] == alone


def test_last_decision_is_rebuilt_from_the_state_after_a_restore() -> None:
    engine = RuleEngine("re", PARAMS)
    run(engine, synthetic_bars())
    restored = RuleEngine("re", PARAMS)
    restored.restore(engine.snapshot())
    decision = engine.last_decision("test", "BTC/USDT", "1m")
    assert decision is not None
    assert restored.last_decision("test", "BTC/USDT", "1m") == decision


# --- the live features ------------------------------------------------------------------------


def awkward_hlc(n: int = 4_000, seed: int = 5) -> list[tuple[float, float, float]]:
    """(high, low, close) with what the incremental indicators special-case: flat stretches
    (zero ranges, zero variance, no losses), ticks that repeat values and extremes, and more
    bars than the rolling sums' periodic refresh (64 periods)."""
    rng = np.random.default_rng(seed)
    out, price = [], 100.0
    for i in range(n):
        phase = i % 1_000
        if phase < 80:
            out.append((price, price, price))
        elif phase < 300:
            price = round(price + float(rng.choice([-0.5, 0.0, 0.5])), 1)
            out.append((price + float(rng.choice([0.0, 0.5])), price - 0.5, price))
        else:
            price *= 1.0 + float(rng.normal(0.0, 0.003))
            wick = abs(float(rng.normal(0.0, 0.002))) * price
            out.append((price + wick, price - wick, price))
    return out


def indicators(
    params: RuleEngineParams,
) -> tuple[EMA, EMA, ADX, ATR, RSI, BollingerBands, Stochastic, Donchian, Donchian]:
    return (
        EMA(params.ema_fast),
        EMA(params.ema_slow),
        ADX(params.adx_period),
        ATR(params.atr_period),
        RSI(params.rsi_period),
        BollingerBands(params.bb_period, params.bb_k),
        Stochastic(params.stoch_k, params.stoch_d),
        Donchian(params.breakout_fast),
        Donchian(params.breakout_slow),
    )


def view(features: FeatureView) -> bytes:
    """Every value the rules may read, encoded (so -0.0 and 0.0 differ)."""
    return msgspec.msgpack.encode([getattr(features, name) for name in Features.__struct_fields__])


def reference_update(tracker: FeatureTracker, high: float, low: float, close: float) -> bool:
    """One bar on the tracker's own structs, each indicator by its own methods: what
    ``LiveFeatures.update`` must do. True once the bar has features."""
    stoch, dc_fast, dc_slow = tracker.stoch, tracker.dc_fast, tracker.dc_slow
    tracker.close = close
    tracker.prev_stoch_k, tracker.prev_stoch_d = stoch.k, stoch.d
    tracker.high_fast, tracker.low_fast = dc_fast.window.upper, dc_fast.window.lower
    tracker.high_slow, tracker.low_slow = dc_slow.window.upper, dc_slow.window.lower
    ema_fast = tracker.last_ema_fast = tracker.ema_fast.update(close)
    ema_slow = tracker.last_ema_slow = tracker.ema_slow.update(close)
    adx = tracker.last_adx = tracker.adx.advance(high, low, close)
    atr = tracker.atr.update(high, low, close)
    rsi = tracker.last_rsi = tracker.rsi.update(close)
    bb_ready = tracker.bb.advance(close)
    stoch_ready = stoch.advance(high, low, close)
    fast_ready = dc_fast.advance(high, low)
    slow_ready = dc_slow.advance(high, low)
    prev_ready = tracker.prev_ready
    tracker.prev_ready = stoch_ready and fast_ready and slow_ready
    tracker.warm = (
        prev_ready and bb_ready and stoch_ready and None not in (ema_fast, ema_slow, adx, atr, rsi)
    )
    return tracker.warm


def live_against_reference(
    hlc: list[tuple[float, float, float]], params: RuleEngineParams, store_every: int
) -> int:
    """Feed the same bars to a tracker on the reference path (each indicator's own methods)
    and to ``LiveFeatures`` over a second tracker: after every warm bar the values the rules
    read, and every ``store_every`` bars the written-back tracker, must be byte for byte the
    reference's. Returns the number of warm bars."""
    reference = FeatureTracker(*indicators(params))
    tracker = FeatureTracker(*indicators(params))
    live = LiveFeatures(tracker)
    warm_bars = 0
    for i, (high, low, close) in enumerate(hlc):
        warm = reference_update(reference, high, low, close)
        assert live.update(high, low, close) is warm
        if warm:
            warm_bars += 1
            assert view(live) == view(reference.features())
        if i % store_every == 0:
            live.store()
            assert msgspec.msgpack.encode(tracker) == msgspec.msgpack.encode(reference)
    live.store()
    assert msgspec.msgpack.encode(tracker) == msgspec.msgpack.encode(reference)
    return warm_bars


@pytest.mark.parametrize("store_every", [1, 997])
@pytest.mark.parametrize(
    "params",
    [
        PARAMS,
        RuleEngineParams(ema_fast=2, ema_slow=3, adx_period=1, atr_period=1, rsi_period=1),
        RuleEngineParams(bb_period=2, stoch_k=1, stoch_d=1, breakout_fast=1, breakout_slow=2),
    ],
    ids=["defaults", "period-1-averages", "period-1-windows"],
)
def test_live_features_advance_every_indicator_as_its_own_methods_do(
    params: RuleEngineParams, store_every: int
) -> None:
    """The live features run the indicators' slotted forms: the values the regime and the
    rules read, and the state written back (each bar, or rarely, so that no step can lean on
    a tracker field it left stale), are the indicators' own."""
    assert live_against_reference(awkward_hlc(), params, store_every) > 3_000


@st.composite
def grid_bars(draw: st.DrawFn) -> tuple[RuleEngineParams, list[tuple[float, float, float]]]:
    """Small random periods, and bars on a 0.5 grid: ties, flat stretches, repeated extremes."""
    periods = st.integers(min_value=1, max_value=6)
    ema_fast, breakout_fast = draw(periods), draw(periods)
    params = RuleEngineParams(
        ema_fast=ema_fast,
        ema_slow=ema_fast + draw(periods),
        adx_period=draw(periods),
        atr_period=draw(periods),
        rsi_period=draw(periods),
        bb_period=draw(periods),
        bb_k=draw(st.sampled_from([0.5, 2.0, 3.0])),
        stoch_k=draw(periods),
        stoch_d=draw(periods),
        breakout_fast=breakout_fast,
        breakout_slow=breakout_fast + draw(periods),
    )
    steps = st.tuples(
        st.integers(min_value=-3, max_value=3),
        st.integers(min_value=0, max_value=2),
        st.integers(min_value=0, max_value=2),
    )
    close, hlc = 1_000.0, []
    for move, up, down in draw(st.lists(steps, min_size=20, max_size=500)):
        close += 0.5 * move
        hlc.append((close + 0.5 * up, close - 0.5 * down, close))
    return params, hlc


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(case=grid_bars(), store_every=st.sampled_from([1, 7, 10_000]))
def test_live_features_equal_the_reference_path_on_random_bars(
    case: tuple[RuleEngineParams, list[tuple[float, float, float]]], store_every: int
) -> None:
    params, hlc = case
    live_against_reference(hlc, params, store_every)


def test_live_path_gives_the_reference_paths_signals_records_and_snapshots() -> None:
    """A restore drops the live features, so an engine restored before every bar takes its
    trackers over afresh and writes them back on every bar; the uninterrupted engine keeps
    its live features. Both give the same signals, records and snapshots."""
    bars = synthetic_bars(seed=11) + synthetic_bars(seed=12, symbol="ETH/USDT")
    bars.sort(key=lambda b: (b.ts, b.symbol))
    params = RuleEngineParams(mode="long_short", threshold=0.5)
    live, snapshot = RuleEngine("re", params), RuleEngine("re", params).snapshot()
    signals = 0
    for i, bar in enumerate(bars):
        reference = RuleEngine("re", params)
        reference.restore(snapshot)
        out = live.on_bar(bar)
        assert out == reference.on_bar(bar)
        signals += len(out)
        ident = (bar.venue, bar.symbol, bar.interval)
        assert live.last_decision(*ident) == reference.last_decision(*ident)
        snapshot = reference.snapshot()
        if i % 50 == 0:
            assert live.snapshot() == snapshot
    assert live.snapshot() == snapshot
    assert signals >= 8


def test_snapshot_round_trips_byte_for_byte() -> None:
    engine = RuleEngine("re", PARAMS)
    run(engine, synthetic_bars())
    snapshot = engine.snapshot()
    assert msgspec.msgpack.encode(engine.state) == snapshot
    assert msgspec.msgpack.encode(msgspec.msgpack.decode(snapshot, type=RuleEngineState)) == (
        snapshot
    )


# --- params and registry ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"threshold": 0.0}, "`float` > 0.0 - at `$.threshold`"),
        ({"threshold": 1.5}, "`float` <= 1.0 - at `$.threshold`"),
        ({"weight_floor": -1.0}, "`float` >= 0.0 - at `$.weight_floor`"),
        ({"qty": 0.0}, "`float` > 0.0 - at `$.qty`"),
        ({"stop_atr": -0.5}, "`float` >= 0.0 - at `$.stop_atr`"),
        ({"rsi_period": 0}, "`int` >= 1 - at `$.rsi_period`"),
        ({"trend_bars": 0}, "`int` >= 1 - at `$.trend_bars`"),
        ({"ema_fast": 50, "ema_slow": 20}, "ema_fast (50) must be below ema_slow (20)"),
        ({"breakout_fast": 55, "breakout_slow": 55}, "breakout_fast (55) must be below"),
        ({"bb_k": 0.0}, "`float` > 0.0 - at `$.bb_k`"),
        ({"adx_range": 30.0}, "need 0 <= adx_range <= adx_trend"),
        ({"vol_low": 2.0}, "need 0 < vol_low < vol_high < vol_extreme"),
    ],
)
def test_param_validation(changes: dict[str, float], message: str) -> None:
    """Params arrive decoded (the registry converts them), which enforces the bounds."""
    with pytest.raises(msgspec.ValidationError, match=re.escape(message)):
        msgspec.convert(changes, RuleEngineParams)


def test_registry_builds_and_reports_bad_params_in_one_line() -> None:
    strat = build_strategy("rule_engine", {"threshold": "0.8", "mode": "long_short"}, "re-1")
    assert isinstance(strat, RuleEngine) and strat.name == "re-1"
    assert strat.params.threshold == 0.8 and strat.model_tag == "rule_engine-r1-t0.8"
    with pytest.raises(StrategyError, match=re.escape("<= 1.0 - at `$.threshold`")):
        build_strategy("rule_engine", {"threshold": "2"})
    with pytest.raises(StrategyError, match="unknown field"):
        build_strategy("rule_engine", {"treshold": "0.8"})


# --- end to end on real data ------------------------------------------------------------------


def test_backtest_cli_on_real_data_is_deterministic(tmp_path: Path) -> None:
    if not REAL_DATA.exists():
        pytest.skip(f"real data not found at {REAL_DATA} (../shared/data is outside the project)")
    args = ["backtest", "--strategy", "rule_engine", "--data", str(REAL_DATA), "--json"]
    first, second = (last_json(keel(tmp_path, *args)) for _ in range(2))
    assert first["bars"] == 30240
    assert first["signals"] > 0 and first["fills"] > 0
    assert first["result_hash"] == second["result_hash"]
    assert len(first["result_hash"]) == 64
