"""Helpers for the event-driven strategy tests: a feed through the host, and bars of a new
listing, NEW/USDT, counted in minutes from a T0 on a whole minute (``bar(close, index=i)``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import partial

from contracts.events import Event, Signal, SocialSentiment
from services.strategy.host import StrategyDecider
from strategies.registry import build_strategy
from tests import factories
from tests.factories import T0_ON_MINUTE as T0

bar = partial(factories.bar, start=T0, symbol="NEW/USDT")


def sentiment_readings(
    symbol: str, start: int, end: int, every: int, scores: Sequence[float] = (0.5, 0.7, 0.9)
) -> list[SocialSentiment]:
    """A loud crowd on ``symbol`` every ``every`` ns in ``[start, end)``, the score cycling
    through ``scores``: ``min_score`` decides which readings a meme_sentiment instance takes."""
    return [
        SocialSentiment(
            ts=ts,
            source="lunar",
            symbol=symbol,
            score=scores[k % len(scores)],
            mentions=500,
            velocity=3.0,
        )
        for k, ts in enumerate(range(start, end, every))
    ]


def feed(decider: StrategyDecider, items: Iterable[Event]) -> list[Signal]:
    out: list[Signal] = []
    for item in items:
        out.extend(s for s in decider.decide(item, item.ts) if isinstance(s, Signal))
    return out


def run(name: str, params: dict[str, object], items: Sequence[Event]) -> list[Signal]:
    return feed(StrategyDecider(build_strategy(name, params)), items)


def assert_restore_equals_uninterrupted(
    name: str, params: dict[str, object], items: Sequence[Event]
) -> None:
    """Snapshot after every prefix, restore into a fresh instance, finish: same signals."""
    whole = run(name, params, items)
    for cut in range(len(items) + 1):
        first = StrategyDecider(build_strategy(name, params))
        head = feed(first, items[:cut])
        second = StrategyDecider(build_strategy(name, params))
        second.restore(first.snapshot())
        assert head + feed(second, items[cut:]) == whole, f"differs when cut at {cut}"
