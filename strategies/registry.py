"""Strategies by name, with params parsed and validated from ``key=value`` strings."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import msgspec

from contracts.events import Bar, Event
from strategies.listing_sniper import ListingSniper, ListingSniperParams
from strategies.ma_cross import MaCross, MaCrossParams
from strategies.ma_hmm import MaHmmParams, build_ma_hmm
from strategies.mean_reversion import MeanReversion, MeanReversionParams
from strategies.meme_sentiment import MemeSentiment, MemeSentimentParams
from strategies.momentum import Momentum, MomentumParams
from strategies.promo_watcher import PromoWatcher, PromoWatcherParams
from strategies.rule_engine import RuleEngine, RuleEngineParams
from strategies.trend_follower import TrendFollower, TrendFollowerParams
from strategies.turtle import Turtle, TurtleParams


class Strategy(Protocol):
    name: str

    def on_bar(self, bar: Bar) -> Sequence[Event]: ...

    def snapshot(self) -> bytes: ...

    def restore(self, data: bytes) -> None: ...


class EventStrategy(Strategy, Protocol):
    """A strategy that also reacts to external events. ``external`` names the kinds it
    wants (``listing``, ``sentiment``, ``promo``; ``contracts/subjects.py``); the host then
    consumes those ``ext.>`` subjects too and hands every event that is not a bar to
    ``on_event``. A plain ``Strategy`` has neither and gets bars only."""

    external: tuple[str, ...]

    def on_event(self, event: Event) -> Sequence[Event]: ...


class StrategyError(ValueError):
    """Unknown strategy or bad params; the message is one line for the user."""


class _Entry(msgspec.Struct, frozen=True):
    params: type[msgspec.Struct]
    build: Callable[[str, msgspec.Struct], Strategy]


REGISTRY: dict[str, _Entry] = {
    "ma_cross": _Entry(MaCrossParams, MaCross),
    "ma_hmm": _Entry(MaHmmParams, build_ma_hmm),
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


def build_strategy(
    name: str, params: Mapping[str, object], instance: str | None = None
) -> Strategy:
    entry = REGISTRY.get(name)
    if entry is None:
        raise StrategyError(f"unknown strategy {name!r}; known: {', '.join(sorted(REGISTRY))}")
    try:
        parsed = msgspec.convert(dict(params), entry.params, strict=False)
    except msgspec.ValidationError as exc:
        raise StrategyError(f"strategy {name}: bad params: {exc}") from exc
    return entry.build(instance or name, parsed)
