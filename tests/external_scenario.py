"""Helpers for the event-driven strategy tests: hand-built bars and a feed through the host."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from contracts.events import Bar, Event, Signal, SocialSentiment
from services.strategy.host import StrategyDecider
from strategies.registry import build_strategy

VENUE = "test"
MINUTE = 60 * 10**9
T0 = 1_700_000_040 * 10**9 // MINUTE * MINUTE


def bar(
    i: int,
    close: float,
    high: float | None = None,
    low: float | None = None,
    symbol: str = "NEW/USDT",
    interval: str = "1m",
    venue: str = VENUE,
) -> Bar:
    """The bar opening ``i`` minutes after ``T0`` (closing at ``T0 + (i + 1)`` minutes)."""
    open_time = T0 + i * MINUTE
    return Bar(
        ts=open_time + MINUTE,
        venue=venue,
        symbol=symbol,
        interval=interval,
        open_time=open_time,
        close_time=open_time + MINUTE,
        open=close,
        high=close if high is None else high,
        low=close if low is None else low,
        close=close,
        volume=1.0,
    )


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
