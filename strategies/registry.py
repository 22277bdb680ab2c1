"""Strategies by name, with params parsed and validated from ``key=value`` strings.

Building is pure: what params refer to outside the strategy (a regime model, a calibration
file) arrives loaded, as ``Resolved``; ``services/strategy/compose.py`` loads it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, runtime_checkable

import msgspec

from contracts.events import Bar, Event
from strategies.listing_sniper import ListingSniper, ListingSniperParams
from strategies.ma_cross import MaCross, MaCrossParams
from strategies.ma_hmm import Calibrations, MaHmm, MaHmmParams, build_ma_hmm
from strategies.mean_reversion import MeanReversion, MeanReversionParams
from strategies.meme_sentiment import MemeSentiment, MemeSentimentParams
from strategies.momentum import Momentum, MomentumParams
from strategies.params import StrategyError
from strategies.promo_watcher import PromoWatcher, PromoWatcherParams
from strategies.regime.model import RegimeModel
from strategies.rule_engine import RuleEngine, RuleEngineParams
from strategies.trend_follower import TrendFollower, TrendFollowerParams
from strategies.turtle import Turtle, TurtleParams


class Strategy(Protocol):
    name: str

    def on_bar(self, bar: Bar) -> Sequence[Event]: ...

    def snapshot(self) -> bytes: ...

    def restore(self, data: bytes) -> None: ...


@runtime_checkable
class EventStrategy(Strategy, Protocol):
    """A strategy that also takes events other than bars, each handed to ``on_event``.
    ``external`` names the external kinds it wants (``listing``, ``sentiment``, ``promo``;
    ``contracts/subjects.py``): the host consumes those ``ext.>`` subjects too. A
    ``tunable`` strategy also gets the ``ParamsTuned`` events addressed to its instance
    (``gov.tune.<instance>.>``). A plain ``Strategy`` gets bars only."""

    external: tuple[str, ...]
    tunable: bool

    def on_event(self, event: Event) -> Sequence[Event]: ...


class Resolved(msgspec.Struct, frozen=True):
    """What a strategy's params name outside the strategy, loaded by the composition root:
    the regime model (``model``/``model_file``) and the starting calibrations
    (``calibration``)."""

    model: RegimeModel | None = None
    calibrations: Calibrations = Calibrations()


def _ma_hmm(name: str, params: MaHmmParams, resolved: Resolved) -> MaHmm:
    return build_ma_hmm(name, params, resolved.model, resolved.calibrations)


class _Entry(msgspec.Struct, frozen=True):
    params: type[msgspec.Struct]
    build: Callable[..., Strategy]
    """Called with (instance, params), and the ``Resolved`` values when ``loads`` is set."""
    loads: bool = False


REGISTRY: dict[str, _Entry] = {
    "ma_cross": _Entry(MaCrossParams, MaCross),
    "ma_hmm": _Entry(MaHmmParams, _ma_hmm, loads=True),
    "trend_follower": _Entry(TrendFollowerParams, TrendFollower),
    "momentum": _Entry(MomentumParams, Momentum),
    "turtle": _Entry(TurtleParams, Turtle),
    "mean_reversion": _Entry(MeanReversionParams, MeanReversion),
    "rule_engine": _Entry(RuleEngineParams, RuleEngine),
    "listing_sniper": _Entry(ListingSniperParams, ListingSniper),
    "meme_sentiment": _Entry(MemeSentimentParams, MemeSentiment),
    "promo_watcher": _Entry(PromoWatcherParams, PromoWatcher),
}


def parse_params(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise StrategyError(f"param {pair!r} must look like key=value")
        out[key.strip()] = value.strip()
    return out


def _entry(name: str) -> _Entry:
    entry = REGISTRY.get(name)
    if entry is None:
        raise StrategyError(f"unknown strategy {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return entry


def strategy_params(name: str, params: Mapping[str, object]) -> msgspec.Struct:
    """The strategy's params struct, validated (``key=value`` strings are converted)."""
    try:
        return msgspec.convert(dict(params), _entry(name).params, strict=False)
    except msgspec.ValidationError as exc:
        raise StrategyError(f"strategy {name}: bad params: {exc}") from exc


def build_strategy(
    name: str,
    params: Mapping[str, object] | msgspec.Struct,
    instance: str | None = None,
    resolved: Resolved | None = None,
) -> Strategy:
    """A strategy instance from raw or parsed params and what they name, loaded."""
    entry = _entry(name)
    parsed = params if isinstance(params, msgspec.Struct) else strategy_params(name, params)
    if entry.loads:
        return entry.build(instance or name, parsed, resolved or Resolved())
    return entry.build(instance or name, parsed)
