"""Rule engine: regimes, the weighted rule table, bias aggregation and the Strategy class.

Per bar and per (venue, symbol, interval) series:

1. the indicators update (``LiveFeatures``) and, once warm, give the bar's features;
2. the regime detector updates (trend regime) and ATR% gives the volatility regime;
3. :func:`decide` evaluates every rule of the table and aggregates the ones that count into
   a bias, a consensus confidence and a proposal (long, short or none); ``on_bar`` gets the
   same proposal from the rules that count in the regime alone (:func:`counting_rules`);
4. the position logic turns proposals into a target position, with an ATR trailing stop.

Aggregation (``L``/``S`` = summed weights of the long/short rules that fired and count,
``F = L + S``): ``bias = (L - S) / max(F, weight_floor)`` (0 when nothing fired) and
``confidence = max(L, S) / F`` (0 when nothing fired). ``bias >= threshold`` proposes long,
``bias <= -threshold`` short, anything between none. With ``weight_floor = 0`` the bias is
the pure consensus ratio (any unanimous rule set gives +-1); the default floor of 1.0 keeps a
lone weak rule (weight below the threshold) from trading on its own.

Position logic: only a NEW proposal acts (the proposal differs from the previous bar's), so
a position closed by its stop is not re-entered until the rules propose again. Long proposes
``+qty``; short proposes ``-qty``, or flat in ``long_only`` mode; no proposal keeps the
position. An open position carries a stop ``stop_atr`` ATRs from the entry close that
trails the close and never loosens; a close through it goes flat (``stop_atr = 0``: no
stop). A Signal is emitted only when the target position changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Annotated

import msgspec
from msgspec import Meta

from contracts.events import Bar, Signal, TradingMode
from strategies.indicators import ADX, ATR, EMA, RSI, BollingerBands, Donchian, Stochastic
from strategies.rule_engine.features import FeatureTracker, FeatureView, LiveFeatures
from strategies.rule_engine.regime import (
    RANGE,
    REGIMES,
    Regime,
    RegimeDetector,
    VolRegime,
    vol_regime,
)
from strategies.rule_engine.rules import RULES, RULESET_VERSION, VETOED_IN_RANGE, Rule
from strategies.series import Ident, stored_series

_TIE = 1e-12  # threshold tolerance: float rounding of summed table weights never flips a tie

_Tally = tuple[tuple[Callable[[FeatureView], bool], float], ...]  # (predicate, weight) pairs


Period = Annotated[int, Meta(ge=1)]


class RuleEngineParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The strategy's params, decoded by the registry (``msgspec.convert``), which enforces
    the single-field bounds; ``__post_init__`` checks the ones that relate several fields."""

    threshold: Annotated[float, Meta(gt=0.0, le=1.0)] = 0.7
    weight_floor: Annotated[float, Meta(ge=0.0)] = 1.0
    sideways_veto: bool = True
    mode: TradingMode = "long_only"
    qty: Annotated[float, Meta(gt=0.0)] = 1.0
    stop_atr: Annotated[float, Meta(ge=0.0)] = 2.5  # 0 = no stop
    ema_fast: Period = 20
    ema_slow: Period = 50
    adx_period: Period = 14
    atr_period: Period = 14
    rsi_period: Period = 14
    bb_period: Period = 20
    bb_k: Annotated[float, Meta(gt=0.0)] = 2.0
    stoch_k: Period = 14
    stoch_d: Period = 3
    breakout_fast: Period = 20
    breakout_slow: Period = 55
    adx_trend: float = 25.0
    adx_range: float = 20.0
    trend_bars: Period = 3
    range_bars: Period = 5
    vol_low: float = 0.5
    vol_high: float = 1.5
    vol_extreme: float = 3.0

    def __post_init__(self) -> None:
        if self.ema_fast >= self.ema_slow:
            raise ValueError(f"ema_fast ({self.ema_fast}) must be below ema_slow ({self.ema_slow})")
        if self.breakout_fast >= self.breakout_slow:
            raise ValueError(
                f"breakout_fast ({self.breakout_fast}) must be below "
                f"breakout_slow ({self.breakout_slow})"
            )
        if not 0.0 <= self.adx_range <= self.adx_trend:
            raise ValueError(
                f"need 0 <= adx_range <= adx_trend, got {self.adx_range} and {self.adx_trend}"
            )
        if not 0.0 < self.vol_low < self.vol_high < self.vol_extreme:
            raise ValueError(
                "need 0 < vol_low < vol_high < vol_extreme, got "
                f"{self.vol_low}, {self.vol_high}, {self.vol_extreme}"
            )


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """One bar's decision record: what the regimes were, which rules held and what counted."""

    regime: Regime
    vol_regime: VolRegime
    fired: tuple[str, ...]  # held and counted, in table order
    off_regime: tuple[str, ...] = ()  # held, but the regime is not among the rule's regimes
    vetoed: tuple[str, ...] = ()  # held and allowed, but removed by the sideways veto
    long_weight: float = 0.0
    short_weight: float = 0.0
    bias: float = 0.0
    confidence: float = 0.0
    proposal: int = 0  # +1 long, -1 short, 0 none


def aggregate(long_weight: float, short_weight: float, weight_floor: float) -> tuple[float, float]:
    """(bias, confidence) from the summed weights of the long and short rules that count."""
    fired = long_weight + short_weight
    if fired <= 0.0:
        return 0.0, 0.0
    # max(a, b) written out (b if b > a else a, the same result): it runs on most bars, and a
    # builtin call costs more than the comparison
    bias = (long_weight - short_weight) / (weight_floor if weight_floor > fired else fired)
    return bias, (short_weight if short_weight > long_weight else long_weight) / fired


def counting_rules(
    regime: Regime, params: RuleEngineParams, rules: Iterable[Rule] = RULES
) -> tuple[tuple[Rule, ...], tuple[Rule, ...]]:
    """The long and the short rules that count in ``regime`` when they hold, in table order:
    the ones :func:`decide` would put in ``fired``."""
    veto = params.sideways_veto and regime == RANGE
    counting = [
        rule
        for rule in rules
        if regime in rule.regimes and not (veto and rule.category in VETOED_IN_RANGE)
    ]
    return (
        tuple(rule for rule in counting if rule.direction > 0),
        tuple(rule for rule in counting if rule.direction < 0),
    )


def decide(
    features: FeatureView,
    regime: Regime,
    vol: VolRegime,
    params: RuleEngineParams,
    rules: Iterable[Rule] = RULES,
) -> Decision:
    """Evaluate the rule table on one bar: pure, the same inputs give the same record."""
    veto = params.sideways_veto and regime == RANGE
    fired: list[str] = []
    off_regime: list[str] = []
    vetoed: list[str] = []
    long_weight = short_weight = 0.0
    for rule in rules:
        if not rule.predicate(features):
            continue
        if regime not in rule.regimes:
            off_regime.append(rule.name)
        elif veto and rule.category in VETOED_IN_RANGE:
            vetoed.append(rule.name)
        else:
            fired.append(rule.name)
            if rule.direction > 0:
                long_weight += rule.weight
            else:
                short_weight += rule.weight
    bias, confidence = aggregate(long_weight, short_weight, params.weight_floor)
    threshold = params.threshold - _TIE
    proposal = 1 if bias >= threshold else -1 if bias <= -threshold else 0
    return Decision(
        regime=regime,
        vol_regime=vol,
        fired=tuple(fired),
        off_regime=tuple(off_regime),
        vetoed=tuple(vetoed),
        long_weight=long_weight,
        short_weight=short_weight,
        bias=bias,
        confidence=confidence,
        proposal=proposal,
    )


class Holding(msgspec.Struct):
    """The position logic of one series (see the module docstring)."""

    side: int = 0  # -1, 0, +1: the side of the last target emitted
    stop: float | None = None
    last_proposal: int = 0

    def apply(
        self, close: float, atr: float, decision: Decision, params: RuleEngineParams
    ) -> tuple[str, float] | None:
        """Advance one bar; (reason, confidence) when the side changed, else None."""
        proposal = decision.proposal
        if not proposal or proposal == self.last_proposal:
            return self.trail(close, atr, proposal, params)
        before = self.side
        stopped = self.trail(close, atr, proposal, params)
        long_only_flat = proposal < 0 and params.mode == "long_only"
        wanted = 0 if long_only_flat else proposal
        if wanted == self.side:
            return stopped
        k = params.stop_atr
        self.side = wanted
        self.stop = close - wanted * k * atr if wanted and k > 0 else None
        if wanted == before:  # stopped out and re-entered on the same bar: only the stop is new
            return None
        return _describe(decision, long_only_flat), decision.confidence

    def trail(
        self, close: float, atr: float, proposal: int, params: RuleEngineParams
    ) -> tuple[str, float] | None:
        """``apply`` for a bar whose proposal is not new (none, or the previous bar's), which
        needs no decision record: the stop trails, or is hit (then (reason, 1.0))."""
        if proposal != self.last_proposal:  # a struct field store costs more than the test
            self.last_proposal = proposal
        side, stop = self.side, self.stop
        if not side or stop is None:
            return None
        k = params.stop_atr
        if side * (close - stop) <= 0:
            self.side, self.stop = 0, None
            return f"stop {stop:.10g} hit ({k:g} ATR trailing)", 1.0
        trail = close - side * k * atr
        # the stop never loosens: max(stop, trail) for a long, min for a short, written out
        # (the same result) and stored only when it moves, since this runs on most bars and a
        # builtin call or a struct field store costs more than the test
        if (trail > stop) if side > 0 else (trail < stop):
            self.stop = trail
        return None


class _Series(msgspec.Struct):
    features: FeatureTracker
    regime: RegimeDetector
    holding: Holding = msgspec.field(default_factory=Holding)


class RuleEngineState(msgspec.Struct):
    series: dict[str, _Series] = msgspec.field(default_factory=dict)


class _Live:
    """A series as ``on_bar`` runs it: its stored record's parts, the tracker run by its live
    features."""

    __slots__ = ("features", "holding", "regime")

    def __init__(self, series: _Series) -> None:
        self.features = LiveFeatures(series.features)
        self.regime = series.regime
        self.holding = series.holding


class RuleEngine:
    """The strategy. ``on_bar`` evaluates only the rules that count in the bar's regime (none
    in UNKNOWN) and builds the full decision record only for a signal's reason or on demand
    (``last_decision``, ``step``): a record is pure, so building it later gives the same one.

    A series runs on its ``LiveFeatures``, whose values reach the stored tracker when the state
    is read (``state``, ``snapshot``)."""

    def __init__(self, name: str, params: RuleEngineParams) -> None:
        self.name = name
        self.params = params
        self._state = RuleEngineState()
        self.model_tag = f"rule_engine-r{RULESET_VERSION}-t{params.threshold:g}"
        self._threshold = params.threshold - _TIE
        # per regime: (predicate, weight) of the long and of the short rules that count
        self._counting: dict[Regime, tuple[_Tally, _Tally]] = {}
        for regime in REGIMES:
            longs, shorts = counting_rules(regime, params)
            self._counting[regime] = (
                tuple((rule.predicate, rule.weight) for rule in longs),
                tuple((rule.predicate, rule.weight) for rule in shorts),
            )
        self._live: dict[Ident, _Live] = {}  # by (venue, symbol, interval)

    @property
    def state(self) -> RuleEngineState:
        """The strategy's state, current: the live features are written back first."""
        for live in self._live.values():
            live.features.store()
        return self._state

    def _new_series(self) -> _Series:
        p = self.params
        tracker = FeatureTracker(
            ema_fast=EMA(p.ema_fast),
            ema_slow=EMA(p.ema_slow),
            adx=ADX(p.adx_period),
            atr=ATR(p.atr_period),
            rsi=RSI(p.rsi_period),
            bb=BollingerBands(p.bb_period, p.bb_k),
            stoch=Stochastic(p.stoch_k, p.stoch_d),
            dc_fast=Donchian(p.breakout_fast),
            dc_slow=Donchian(p.breakout_slow),
        )
        detector = RegimeDetector(
            adx_trend=p.adx_trend,
            adx_range=p.adx_range,
            trend_bars=p.trend_bars,
            range_bars=p.range_bars,
        )
        return _Series(tracker, detector)

    def _open(self, ident: Ident) -> _Live:
        """The runner of a series new to ``on_bar``, over its stored record (the cache holds
        runners, not records, hence not ``series_for``)."""
        series = stored_series(self._state.series, ident, self._new_series)
        live = self._live[ident] = _Live(series)
        return live

    def _decision(self, features: FeatureView, regime: Regime) -> Decision:
        p = self.params
        vol = vol_regime(features.atr_pct, p.vol_low, p.vol_high, p.vol_extreme)
        return decide(features, regime, vol, p)

    def last_decision(self, venue: str, symbol: str, interval: str) -> Decision | None:
        """The decision record of the series' last bar (None during warm-up), rebuilt from the
        series' state: the same record, also right after a restore."""
        ident = (venue, symbol, interval)
        live = self._live.get(ident)
        if live is not None:
            features = live.features
            return self._decision(features, live.regime.current) if features.warm else None
        s = self._state.series.get("|".join(ident))
        if s is None or not s.features.warm:
            return None
        return self._decision(s.features.features(), s.regime.current)

    def on_bar(self, bar: Bar) -> list[Signal]:
        ident = (bar.venue, bar.symbol, bar.interval)
        live = self._live.get(ident)
        if live is None:
            live = self._open(ident)
        close = bar.close
        features = live.features
        warm = features.update(bar.high, bar.low, close)
        regime = live.regime.update(features.adx, features.ema_fast, features.ema_slow)
        if not warm:
            return []
        p = self.params
        proposal = 0
        longs, shorts = self._counting[regime]
        if longs or shorts:
            long_weight = short_weight = 0.0  # summed in table order, exactly as decide() does
            for predicate, weight in longs:
                if predicate(features):
                    long_weight += weight
            for predicate, weight in shorts:
                if predicate(features):
                    short_weight += weight
            if long_weight or short_weight:  # else the bias is 0: no proposal
                bias, _ = aggregate(long_weight, short_weight, p.weight_floor)
                t = self._threshold
                proposal = 1 if bias >= t else -1 if bias <= -t else 0
        holding = live.holding
        atr = features.atr
        if proposal and proposal != holding.last_proposal:
            change = holding.apply(close, atr, self._decision(features, regime), p)
        else:
            change = holding.trail(close, atr, proposal, p)
        if change is None:
            return []
        reason, confidence = change
        signal = Signal(
            ts=bar.close_time,
            strategy=self.name,
            venue=bar.venue,
            symbol=bar.symbol,
            model_tag=self.model_tag,
            target_position=p.qty * holding.side,
            confidence=confidence,
            atr=atr,
            stop=holding.stop,
            reason=reason,
        )
        return [signal]

    def step(self, bar: Bar) -> tuple[Decision | None, list[Signal]]:
        """One bar in: its decision record (None while warming up) and the signals out."""
        signals = self.on_bar(bar)
        return self.last_decision(bar.venue, bar.symbol, bar.interval), signals

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(self.state)

    def restore(self, data: bytes) -> None:
        self._state = msgspec.msgpack.decode(data, type=RuleEngineState)
        self._live.clear()


def _describe(decision: Decision, long_only_flat: bool) -> str:
    side = "LONG" if decision.proposal > 0 else "SHORT"
    tail = " (long_only: flat)" if long_only_flat else ""
    return (
        f"{side}{tail} bias={decision.bias:+.2f} conf={decision.confidence:.2f} "
        f"{decision.regime}/{decision.vol_regime}: {', '.join(decision.fired)}"
    )


def replay_decisions(
    bars: Sequence[Bar], params: RuleEngineParams | None = None
) -> list[Decision | None]:
    """The decision record of every bar, from a fresh engine (pure: for tests and debugging)."""
    engine = RuleEngine("rule_engine", params or RuleEngineParams())
    return [engine.step(bar)[0] for bar in bars]
