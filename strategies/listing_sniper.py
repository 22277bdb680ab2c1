"""Listing sniper: one shot per newly listed symbol, with a stop and staggered take-profits.

A ``ListingAnnouncement`` arms one shot for its symbol (a later announcement of the same
symbol, or a duplicate, is ignored: one shot per symbol for the life of the strategy). The
reference time is the announced ``listing_time`` (the announcement's ``ts`` when not given);
the entry time is the reference plus ``delay_s``. Bars are known when they close; the shot
uses the bars of its symbol closing strictly after the reference time (any venue: the first
series, venue and interval, seen is the one traded, the others are ignored). A bar closing
exactly at the reference time is not used, whether it arrives before or after the
announcement, so live arrival order and replay ties give the same decisions:

- the first such bar's close is the **anchor** (the price when the listing went live);
- from the first bar closing at or after the entry time, each bar is checked, and a bar that
  fails a check is skipped (the shot keeps waiting):
  * spread proxy: (high - low) / close <= ``max_range_pct``% (a bar cannot show the spread,
    its range is the best stand-in for a thin, wild book);
  * price bounds: ``min_price`` <= close <= ``max_price`` (0 = no upper bound);
  * chase: close <= anchor * (1 + ``max_chase_pct``%) (the move already missed);
- the first bar passing all checks enters long ``notional / close`` units at its close, with
  a stop at close * (1 - ``stop_pct``%) and take-profit levels close * (1 + tp%) for each
  tp in ``take_profits``;
- no bar passes before ``max_wait_s`` after the entry time: the shot is given up.

In position, on each bar of the traded series: low <= stop exits everything (checked first:
when a bar spans both, the stop is assumed hit first); otherwise every level not yet reached
that the bar's high reaches scales out 1/n of the entry quantity (n levels), one signal per
bar with the remaining target position; the last level leaves the position flat. Signals are
target positions; each carries the stop and the next level as ``target``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from contracts.events import Bar, Event, ListingAnnouncement, Signal
from strategies.params import require_finite

NS = 1_000_000_000


class ListingSniperParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    notional: Annotated[float, Meta(gt=0)] = 1000.0
    delay_s: Annotated[float, Meta(ge=0)] = 0.0
    max_wait_s: Annotated[float, Meta(gt=0)] = 3600.0
    max_range_pct: Annotated[float, Meta(gt=0)] = 15.0
    min_price: Annotated[float, Meta(ge=0)] = 0.0
    max_price: Annotated[float, Meta(ge=0)] = 0.0
    """0 = no upper bound."""
    max_chase_pct: Annotated[float, Meta(ge=0)] = 25.0
    stop_pct: Annotated[float, Meta(gt=0, lt=100)] = 10.0
    take_profits: str = "10,20,40"

    def __post_init__(self) -> None:
        require_finite(self)
        if self.max_price and self.max_price < self.min_price:
            raise ValueError("max_price must be >= min_price (0 = no upper bound)")
        self.levels()

    def levels(self) -> tuple[float, ...]:
        """The take-profit percentages, e.g. ``"10,20,40"``: > 0, strictly increasing."""
        try:
            levels = tuple(float(p) for p in self.take_profits.split(","))
        except ValueError:
            raise ValueError(
                f"take_profits {self.take_profits!r} must be comma-separated percentages"
            ) from None
        if not all(math.isfinite(p) and p > 0 for p in levels):
            raise ValueError("take_profits must be finite and > 0")
        if any(b <= a for a, b in itertools.pairwise(levels)):
            raise ValueError("take_profits must be strictly increasing")
        return levels


Phase = Literal["waiting", "open", "done"]


class Shot(msgspec.Struct):
    """One symbol's shot: waiting for an entry, open, or done (entered and exited, or given
    up). ``skips`` counts bars that failed a check; ``note`` says why the last one did (or
    why the shot was given up)."""

    source: str
    venue: str
    reference: int
    start: int
    phase: Phase = "waiting"
    series: str = ""
    anchor: float = 0.0
    qty: float = 0.0
    entry: float = 0.0
    stop: float = 0.0
    hits: int = 0
    skips: int = 0
    note: str = ""


class ListingSniperState(msgspec.Struct):
    shots: dict[str, Shot] = msgspec.field(default_factory=dict)


class ListingSniper:
    external = ("listing",)
    tunable = False

    def __init__(self, name: str, params: ListingSniperParams) -> None:
        self.name = name
        self.params = params
        self.state = ListingSniperState()
        self._levels = params.levels()
        p = params
        self.model_tag = (
            f"listing_sniper-d{p.delay_s:g}-stop{p.stop_pct:g}"
            f"-tp{'/'.join(f'{x:g}' for x in self._levels)}"
        )

    def on_event(self, event: Event) -> Sequence[Event]:
        if not isinstance(event, ListingAnnouncement) or event.symbol in self.state.shots:
            return []
        reference = event.listing_time or event.ts
        self.state.shots[event.symbol] = Shot(
            source=event.source,
            venue=event.venue,
            reference=reference,
            start=reference + round(self.params.delay_s * NS),
        )
        return []

    def on_bar(self, bar: Bar) -> list[Signal]:
        shot = self.state.shots.get(bar.symbol)
        if shot is None or shot.phase == "done" or bar.close_time <= shot.reference:
            return []
        series = f"{bar.venue}|{bar.interval}"
        if not shot.series:
            shot.series, shot.anchor = series, bar.close
        elif series != shot.series:
            return []
        if shot.phase == "open":
            return self._manage(shot, bar)
        if bar.close_time < shot.start:
            return []
        if bar.close_time > shot.start + round(self.params.max_wait_s * NS):
            shot.phase = "done"
            shot.note = f"given up: no bar passed the checks within {self.params.max_wait_s:g} s"
            return []
        problem = self._check(shot, bar)
        if problem:
            shot.skips += 1
            shot.note = problem
            return []
        return [self._enter(shot, bar)]

    def _check(self, shot: Shot, bar: Bar) -> str:
        p = self.params
        close = bar.close
        spread = (bar.high - bar.low) / close * 100.0
        if spread > p.max_range_pct:
            return f"range {spread:.2f}% > {p.max_range_pct:g}%"
        if close < p.min_price or (p.max_price and close > p.max_price):
            return f"close {close:g} outside [{p.min_price:g}, {p.max_price or math.inf:g}]"
        chase = (close / shot.anchor - 1.0) * 100.0
        if chase > p.max_chase_pct:
            return f"price up {chase:.2f}% since {shot.anchor:g} > {p.max_chase_pct:g}%"
        return ""

    def _level(self, shot: Shot, index: int) -> float:
        return shot.entry * (1.0 + self._levels[index] / 100.0)

    def _enter(self, shot: Shot, bar: Bar) -> Signal:
        p = self.params
        shot.phase = "open"
        shot.entry = bar.close
        shot.qty = p.notional / bar.close
        shot.stop = bar.close * (1.0 - p.stop_pct / 100.0)
        shot.note = ""
        targets = ", ".join(f"{self._level(shot, i):g}" for i in range(len(self._levels)))
        return self._signal(
            bar,
            shot.qty,
            shot,
            f"listing of {bar.symbol} ({shot.source}, {shot.venue}): enter at {bar.close:g}, "
            f"stop {shot.stop:g}, take-profits {targets}",
        )

    def _manage(self, shot: Shot, bar: Bar) -> list[Signal]:
        n = len(self._levels)
        if bar.low <= shot.stop:
            shot.phase = "done"
            return [self._signal(bar, 0.0, shot, f"stop hit: low {bar.low:g} <= {shot.stop:g}")]
        before = shot.hits
        while shot.hits < n and bar.high >= self._level(shot, shot.hits):
            shot.hits += 1
        if shot.hits == before:
            return []
        remaining = shot.qty * (n - shot.hits) / n
        if shot.hits == n:
            shot.phase = "done"
        reached = ", ".join(f"{self._level(shot, i):g}" for i in range(before, shot.hits))
        return [
            self._signal(
                bar,
                remaining,
                shot,
                f"take-profit {shot.hits}/{n}: high {bar.high:g} reached {reached}",
            )
        ]

    def _signal(self, bar: Bar, target: float, shot: Shot, reason: str) -> Signal:
        following = shot.hits if shot.phase == "open" else None
        return Signal(
            ts=bar.close_time,
            strategy=self.name,
            venue=bar.venue,
            symbol=bar.symbol,
            model_tag=self.model_tag,
            target_position=target,
            stop=shot.stop if target else None,
            target=self._level(shot, following) if following is not None else None,
            reason=reason,
        )

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(self.state)

    def restore(self, data: bytes) -> None:
        self.state = msgspec.msgpack.decode(data, type=ListingSniperState)
