"""The 19 weighted rules, as data (after the AUTOBOT analysis, ``trading_rules.py``).

Each rule has a direction (+1 long, -1 short), a weight (the reference's absolute bias
score), the regimes it may fire in, a category (``trend``, ``breakout``, ``oscillator`` for
the reference's mean-reversion rules, ``combo``), a human-readable condition, and a predicate
over one bar's features (a ``FeatureView``). The engine evaluates the table generically;
adding a rule means adding a row here. ``docs/strategies/rule_engine.md`` lists the same table.

Deviations from the reference, each on purpose:

- ``STOCH_BULLISH_CROSS`` is a real cross (K crosses above D on this bar, K < 80); the
  reference's ``K > D, K < 80`` is a state that holds on about half of all bars.
- Breakouts compare the close with the PREVIOUS bar's channel (see ``features``).
- ``TURTLE_20DAY_BREAKOUT_*`` list RANGE among their regimes as in the reference, but the
  sideways veto removes every breakout and trend rule in RANGE, so with the veto on (the
  default) they only count in their trend regime.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import msgspec

from strategies.rule_engine.features import FeatureView
from strategies.rule_engine.regime import BEAR_TREND, BULL_TREND, RANGE, Regime

Category = Literal["trend", "breakout", "oscillator", "combo"]

RULESET_VERSION = 1  # bump when a rule, weight or regime changes (it is in the model tag)

# categories the sideways veto removes in RANGE
VETOED_IN_RANGE: frozenset[Category] = frozenset({"trend", "breakout"})


class Rule(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    direction: Literal[1, -1]
    weight: float
    regimes: frozenset[Regime]
    category: Category
    condition: str
    predicate: Callable[[FeatureView], bool]

    @property
    def score(self) -> float:
        """The signed bias score (+weight for long rules, -weight for short rules)."""
        return self.direction * self.weight


_BULL = frozenset({BULL_TREND})
_BEAR = frozenset({BEAR_TREND})
_BULL_RANGE = frozenset({BULL_TREND, RANGE})
_BEAR_RANGE = frozenset({BEAR_TREND, RANGE})

RULES: tuple[Rule, ...] = (
    Rule(
        name="TURTLE_20DAY_BREAKOUT_LONG",
        direction=1,
        weight=0.7,
        regimes=_BULL_RANGE,
        category="breakout",
        condition="close > previous 20-bar high",
        predicate=lambda f: f.close > f.high_fast,
    ),
    Rule(
        name="TURTLE_20DAY_BREAKOUT_SHORT",
        direction=-1,
        weight=0.7,
        regimes=_BEAR_RANGE,
        category="breakout",
        condition="close < previous 20-bar low",
        predicate=lambda f: f.close < f.low_fast,
    ),
    Rule(
        name="TURTLE_55DAY_BREAKOUT_LONG",
        direction=1,
        weight=0.9,
        regimes=_BULL,
        category="breakout",
        condition="close > previous 55-bar high",
        predicate=lambda f: f.close > f.high_slow,
    ),
    Rule(
        name="TURTLE_55DAY_BREAKOUT_SHORT",
        direction=-1,
        weight=0.9,
        regimes=_BEAR,
        category="breakout",
        condition="close < previous 55-bar low",
        predicate=lambda f: f.close < f.low_slow,
    ),
    Rule(
        name="RSI_OVERSOLD_LONG",
        direction=1,
        weight=0.6,
        regimes=_BULL_RANGE,
        category="oscillator",
        condition="RSI < 30",
        predicate=lambda f: f.rsi < 30.0,
    ),
    Rule(
        name="RSI_OVERBOUGHT_SHORT",
        direction=-1,
        weight=0.6,
        regimes=_BEAR_RANGE,
        category="oscillator",
        condition="RSI > 70",
        predicate=lambda f: f.rsi > 70.0,
    ),
    Rule(
        name="RSI_EXTREME_OVERSOLD",
        direction=1,
        weight=0.8,
        regimes=_BULL_RANGE,
        category="oscillator",
        condition="RSI < 20",
        predicate=lambda f: f.rsi < 20.0,
    ),
    Rule(
        name="RSI_EXTREME_OVERBOUGHT",
        direction=-1,
        weight=0.8,
        regimes=_BEAR_RANGE,
        category="oscillator",
        condition="RSI > 80",
        predicate=lambda f: f.rsi > 80.0,
    ),
    Rule(
        name="GOLDEN_CROSS",
        direction=1,
        weight=0.5,
        regimes=_BULL,
        category="trend",
        condition="EMA20 > EMA50 and ADX > 25",
        predicate=lambda f: f.ema_fast > f.ema_slow and f.adx > 25.0,
    ),
    Rule(
        name="DEATH_CROSS",
        direction=-1,
        weight=0.5,
        regimes=_BEAR,
        category="trend",
        condition="EMA20 < EMA50 and ADX > 25",
        predicate=lambda f: f.ema_fast < f.ema_slow and f.adx > 25.0,
    ),
    Rule(
        name="BB_OVERSOLD",
        direction=1,
        weight=0.6,
        regimes=_BULL_RANGE,
        category="oscillator",
        condition="close < lower Bollinger band and RSI < 40",
        predicate=lambda f: f.close < f.bb_lower and f.rsi < 40.0,
    ),
    Rule(
        name="BB_OVERBOUGHT",
        direction=-1,
        weight=0.6,
        regimes=_BEAR_RANGE,
        category="oscillator",
        condition="close > upper Bollinger band and RSI > 60",
        predicate=lambda f: f.close > f.bb_upper and f.rsi > 60.0,
    ),
    Rule(
        name="STOCH_OVERSOLD",
        direction=1,
        weight=0.5,
        regimes=_BULL_RANGE,
        category="oscillator",
        condition="Stochastic K < 20 and D < 20",
        predicate=lambda f: f.stoch_k < 20.0 and f.stoch_d < 20.0,
    ),
    Rule(
        name="STOCH_OVERBOUGHT",
        direction=-1,
        weight=0.5,
        regimes=_BEAR_RANGE,
        category="oscillator",
        condition="Stochastic K > 80 and D > 80",
        predicate=lambda f: f.stoch_k > 80.0 and f.stoch_d > 80.0,
    ),
    Rule(
        name="STOCH_BULLISH_CROSS",
        direction=1,
        weight=0.4,
        regimes=_BULL_RANGE,
        category="oscillator",
        condition="K crosses above D (previous K <= previous D, K > D) and K < 80",
        predicate=lambda f: (
            f.prev_stoch_k <= f.prev_stoch_d and f.stoch_k > f.stoch_d and f.stoch_k < 80.0
        ),
    ),
    Rule(
        name="STRONG_UPTREND",
        direction=1,
        weight=0.7,
        regimes=_BULL,
        category="trend",
        condition="ADX > 25 and EMA20 > EMA50 and RSI > 50",
        predicate=lambda f: f.adx > 25.0 and f.ema_fast > f.ema_slow and f.rsi > 50.0,
    ),
    Rule(
        name="STRONG_DOWNTREND",
        direction=-1,
        weight=0.7,
        regimes=_BEAR,
        category="trend",
        condition="ADX > 25 and EMA20 < EMA50 and RSI < 50",
        predicate=lambda f: f.adx > 25.0 and f.ema_fast < f.ema_slow and f.rsi < 50.0,
    ),
    Rule(
        name="SUPER_BULLISH",
        direction=1,
        weight=0.9,
        regimes=_BULL_RANGE,
        category="combo",
        condition="RSI < 35 and EMA20 > EMA50 and close < Bollinger mid and ADX > 20",
        predicate=lambda f: (
            f.rsi < 35.0 and f.ema_fast > f.ema_slow and f.close < f.bb_mid and f.adx > 20.0
        ),
    ),
    Rule(
        name="SUPER_BEARISH",
        direction=-1,
        weight=0.9,
        regimes=_BEAR_RANGE,
        category="combo",
        condition="RSI > 65 and EMA20 < EMA50 and close > Bollinger mid and ADX > 20",
        predicate=lambda f: (
            f.rsi > 65.0 and f.ema_fast < f.ema_slow and f.close > f.bb_mid and f.adx > 20.0
        ),
    ),
)
