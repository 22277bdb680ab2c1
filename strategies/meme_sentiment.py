"""Meme sentiment: buy a symbol the crowd suddenly talks about, with a stop and a target.

A ``SocialSentiment`` reading **qualifies** when score >= ``min_score``, mentions >=
``min_mentions`` and velocity >= ``min_velocity``, the symbol is flat and its cooldown is
over (the reading's ``ts`` is at or after the last exit plus ``cooldown_s``). Readings that
do not qualify change nothing. Long only: a negative crowd is not a trade here.

A qualifying reading is acted on at the close of the next bar of its symbol (any venue; ties
in replay put a bar closing at the reading's time before it, so that bar is not used)
closing within ``max_wait_s`` of the reading; later, the reading lapses. A newer qualifying
reading replaces a pending one.

**Size.** A strategy does not see the account, so the size is a percentage of an *assumed*
equity given as a param: notional = ``equity`` * ``size_pct`` / 100, quantity = notional /
entry close. Keep ``equity`` in line with the capital the instance trades (risk's
``max_order_notional`` and ``max_position`` still cap it); the signal's reason states the
percentage, the assumed equity and the notional.

In position, on each bar of the series it entered on: low <= stop (entry * (1 -
``stop_pct``%)) exits (checked first: a bar spanning both levels counts as a stop), else
high >= target (entry * (1 + ``target_pct``%)) exits; either starts the cooldown.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import msgspec
from msgspec import Meta

from contracts.events import Bar, Event, Signal, SocialSentiment
from strategies.params import require_finite

NS = 1_000_000_000


class MemeSentimentParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    min_score: Annotated[float, Meta(ge=-1, le=1)] = 0.6
    min_mentions: Annotated[int, Meta(ge=0)] = 100
    min_velocity: float = 2.0
    cooldown_s: Annotated[float, Meta(ge=0)] = 3600.0
    equity: Annotated[float, Meta(gt=0)] = 10_000.0
    size_pct: Annotated[float, Meta(gt=0, le=100)] = 2.0
    stop_pct: Annotated[float, Meta(gt=0, lt=100)] = 5.0
    target_pct: Annotated[float, Meta(gt=0)] = 10.0
    max_wait_s: Annotated[float, Meta(gt=0)] = 300.0

    def __post_init__(self) -> None:
        require_finite(self)


class Crowd(msgspec.Struct):
    """One symbol: a pending qualifying reading (``pending`` = its ts, 0 = none), the open
    position (``qty`` > 0) on ``series``, and the end of the cooldown."""

    pending: int = 0
    reading: str = ""
    qty: float = 0.0
    series: str = ""
    entry: float = 0.0
    stop: float = 0.0
    target: float = 0.0
    cooldown_until: int = 0


class MemeSentimentState(msgspec.Struct):
    symbols: dict[str, Crowd] = msgspec.field(default_factory=dict)


class MemeSentiment:
    external = ("sentiment",)
    tunable = False

    def __init__(self, name: str, params: MemeSentimentParams) -> None:
        self.name = name
        self.params = params
        self.state = MemeSentimentState()
        p = params
        self.model_tag = (
            f"meme_sentiment-s{p.min_score:g}-m{p.min_mentions}-v{p.min_velocity:g}"
            f"-{p.size_pct:g}pct-stop{p.stop_pct:g}-tgt{p.target_pct:g}"
        )

    def on_event(self, event: Event) -> Sequence[Event]:
        if not isinstance(event, SocialSentiment):
            return []
        p = self.params
        if event.score < p.min_score or event.mentions < p.min_mentions:
            return []
        if event.velocity < p.min_velocity:
            return []
        crowd = self.state.symbols.get(event.symbol)
        if crowd is None:
            crowd = self.state.symbols[event.symbol] = Crowd()
        if crowd.qty > 0 or event.ts < crowd.cooldown_until:
            return []
        crowd.pending = event.ts
        crowd.reading = (
            f"{event.source}: score {event.score:g}, {event.mentions} mentions, "
            f"velocity {event.velocity:g}"
        )
        return []

    def on_bar(self, bar: Bar) -> list[Signal]:
        crowd = self.state.symbols.get(bar.symbol)
        if crowd is None:
            return []
        if crowd.qty > 0:
            return self._manage(crowd, bar) if crowd.series == f"{bar.venue}|{bar.interval}" else []
        if not crowd.pending or bar.close_time <= crowd.pending:
            return []
        if bar.close_time > crowd.pending + round(self.params.max_wait_s * NS):
            crowd.pending, crowd.reading = 0, ""
            return []
        return [self._enter(crowd, bar)]

    def _enter(self, crowd: Crowd, bar: Bar) -> Signal:
        p = self.params
        notional = p.equity * p.size_pct / 100.0
        crowd.qty = notional / bar.close
        crowd.series = f"{bar.venue}|{bar.interval}"
        crowd.entry = bar.close
        crowd.stop = bar.close * (1.0 - p.stop_pct / 100.0)
        crowd.target = bar.close * (1.0 + p.target_pct / 100.0)
        reason = (
            f"{crowd.reading}; size {p.size_pct:g}% of assumed equity {p.equity:g} = "
            f"{notional:g} notional at {bar.close:g}"
        )
        crowd.pending, crowd.reading = 0, ""
        return self._signal(bar, crowd.qty, crowd, reason)

    def _manage(self, crowd: Crowd, bar: Bar) -> list[Signal]:
        if bar.low <= crowd.stop:
            reason = f"stop hit: low {bar.low:g} <= {crowd.stop:g}"
        elif bar.high >= crowd.target:
            reason = f"target hit: high {bar.high:g} >= {crowd.target:g}"
        else:
            return []
        crowd.qty = 0.0
        crowd.cooldown_until = bar.close_time + round(self.params.cooldown_s * NS)
        return [self._signal(bar, 0.0, crowd, reason)]

    def _signal(self, bar: Bar, target: float, crowd: Crowd, reason: str) -> Signal:
        return Signal(
            ts=bar.close_time,
            strategy=self.name,
            venue=bar.venue,
            symbol=bar.symbol,
            model_tag=self.model_tag,
            target_position=target,
            stop=crowd.stop if target else None,
            target=crowd.target if target else None,
            reason=reason,
        )

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(self.state)

    def restore(self, data: bytes) -> None:
        self.state = msgspec.msgpack.decode(data, type=MemeSentimentState)
