"""Turtle: Donchian channel breakouts with channel exits and a 2N stop.

System 1 enters on a 20-bar breakout and exits on a 10-bar counter-breakout; System 2 uses
55 and 20 bars; ``system="both"`` runs the two as independent legs and sums their targets.
N is ATR(``atr_period``) at the entry bar; it rides on the signal's ``atr`` field so risk can
size by volatility, and the stop ``stop_n`` * N from the entry close rides on ``stop``.

Per (venue, symbol, interval) series and leg, on each closed bar (channels are those of the
*previous* bar, since a channel that includes the current bar can never be broken by it):

- flat: close > previous entry-channel upper -> long; close < previous entry-channel lower
  -> short (``long_short`` only);
- long: bar low <= stop -> flat; else close < previous exit-channel lower -> flat;
- short mirrored (high >= stop, close > previous exit-channel upper).

An exit may flip straight into an opposite breakout on the same bar. The target position is
(sum of leg sides) * ``units`` * ``qty``; sizing proper (N-units of equity) belongs to risk.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from contracts.events import Bar, Signal, TradingMode
from strategies.indicators import ATR, Donchian
from strategies.params import require_finite
from strategies.series import series_for


class TurtleParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    system: Literal[1, 2, "both"] = 1
    entry1: int = 20
    exit1: Annotated[int, Meta(ge=1)] = 10
    entry2: int = 55
    exit2: Annotated[int, Meta(ge=1)] = 20
    atr_period: Annotated[int, Meta(ge=1)] = 20
    stop_n: Annotated[float, Meta(gt=0, le=20)] = 2.0
    units: Annotated[int, Meta(ge=1)] = 1
    mode: TradingMode = "long_only"
    qty: Annotated[float, Meta(gt=0)] = 1.0

    def __post_init__(self) -> None:
        require_finite(self)
        for entry, exit_, n in ((self.entry1, self.exit1, 1), (self.entry2, self.exit2, 2)):
            if entry <= exit_:
                raise ValueError(f"entry{n} ({entry}) must be above exit{n} ({exit_})")

    def systems(self) -> tuple[tuple[int, int, int], ...]:
        """(system number, entry period, exit period) of each leg."""
        legs = ((1, self.entry1, self.exit1), (2, self.entry2, self.exit2))
        return legs if self.system == "both" else (legs[self.system - 1],)


class _Leg(msgspec.Struct):
    system: int
    entry_period: int
    exit_period: int
    entry: Donchian
    exit: Donchian
    # the previous bar's channels (None while warming up)
    entry_upper: float | None = None
    entry_lower: float | None = None
    exit_upper: float | None = None
    exit_lower: float | None = None
    side: int = 0
    stop: float = 0.0
    n: float = 0.0


class _Series(msgspec.Struct):
    atr: ATR
    legs: list[_Leg]


class TurtleState(msgspec.Struct):
    series: dict[str, _Series] = msgspec.field(default_factory=dict)


class Turtle:
    def __init__(self, name: str, params: TurtleParams) -> None:
        self.name = name
        self.params = params
        self.state = TurtleState()
        # series by (venue, symbol, interval), so a bar needs no key string; reset on restore
        self._series: dict[tuple[str, str, str], _Series] = {}
        self._long_short = params.mode == "long_short"
        p = params
        legs = "+".join(f"s{n}-{e}x{x}" for n, e, x in p.systems())
        self.model_tag = f"turtle-{legs}-atr{p.atr_period}-stop{p.stop_n:g}n"

    def _fresh_series(self) -> _Series:
        legs = [_Leg(n, e, x, Donchian(e), Donchian(x)) for n, e, x in self.params.systems()]
        return _Series(ATR(self.params.atr_period), legs)

    def on_bar(self, bar: Bar) -> list[Signal]:
        ident = (bar.venue, bar.symbol, bar.interval)
        s = self._series.get(ident)
        if s is None:
            s = series_for(self.state.series, self._series, ident, self._fresh_series)
        p = self.params
        high, low, close = bar.high, bar.low, bar.close
        n = s.atr.update(high, low, close)
        changed = False
        before_total = 0
        reasons: list[str] = []
        stop: float | None = None
        for leg in s.legs:
            before = leg.side
            before_total += before
            if before > 0:
                if low <= leg.stop:
                    reasons.append(f"s{leg.system} stop hit: low {low:g} <= {leg.stop:g}")
                    leg.side = 0
                elif leg.exit_lower is not None and close < leg.exit_lower:
                    reasons.append(
                        f"s{leg.system} exit: close {close:g} below {leg.exit_period}-bar low "
                        f"{leg.exit_lower:g}"
                    )
                    leg.side = 0
            elif before < 0:
                if high >= leg.stop:
                    reasons.append(f"s{leg.system} stop hit: high {high:g} >= {leg.stop:g}")
                    leg.side = 0
                elif leg.exit_upper is not None and close > leg.exit_upper:
                    reasons.append(
                        f"s{leg.system} exit: close {close:g} above {leg.exit_period}-bar high "
                        f"{leg.exit_upper:g}"
                    )
                    leg.side = 0
            entry_upper, entry_lower = leg.entry_upper, leg.entry_lower
            if (
                leg.side == 0
                and n is not None
                and entry_upper is not None
                and entry_lower is not None
            ):
                side = 0
                what = ""
                if before <= 0 and close > entry_upper:
                    side = 1
                    what = f"above {leg.entry_period}-bar high {entry_upper:g}"
                elif before >= 0 and self._long_short and close < entry_lower:
                    side = -1
                    what = f"below {leg.entry_period}-bar low {entry_lower:g}"
                if side:
                    leg.side = side
                    leg.n = n
                    leg.stop = close - side * p.stop_n * n
                    stop = leg.stop
                    reasons.append(f"s{leg.system} breakout: close {close:g} {what}, N {n:g}")
            changed = changed or leg.side != before
            # this bar's channels, for the next bar (None until warm: they stay warm)
            if leg.entry.advance(high, low):
                channel = leg.entry.window
                leg.entry_upper, leg.entry_lower = channel.upper, channel.lower
            if leg.exit.advance(high, low):
                channel = leg.exit.window
                leg.exit_upper, leg.exit_lower = channel.upper, channel.lower
        if not changed:
            return []
        total = sum(leg.side for leg in s.legs)
        if total == before_total:
            return []
        if stop is None:
            # an exit only: the remaining legs' stop, if one is still open
            stop = next((leg.stop for leg in s.legs if leg.side), None)
        return [
            Signal(
                ts=bar.close_time,
                strategy=self.name,
                venue=bar.venue,
                symbol=bar.symbol,
                model_tag=self.model_tag,
                target_position=total * p.units * p.qty,
                stop=stop,
                atr=n,
                reason="; ".join(reasons),
            )
        ]

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(self.state)

    def restore(self, data: bytes) -> None:
        self.state = msgspec.msgpack.decode(data, type=TurtleState)
        self._series.clear()
