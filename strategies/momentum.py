"""Momentum breakout: a fast move confirmed by a volume spike, with a stop and a trailing exit.

Per (venue, symbol, interval) series, on each closed bar:

- move = (close - close ``lookback`` bars ago) / close ``lookback`` bars ago, in percent;
- spike = volume >= ``spike_mult`` * the average volume of the ``volume_period`` bars
  before this one (the current bar is not part of its own average);
- flat: move >= ``move_pct`` and spike -> long; move <= -``move_pct`` and spike -> short
  (``long_short`` only);
- long: the stop level is max(entry close * (1 - ``stop_pct``%), highest close since entry
  * (1 - ``trail_pct``%)), the highest close counted up to the previous bar; bar low <= that
  level -> flat. Short mirrored (lowest close, high >= level).

An exit may flip straight into a qualified opposite move on the same bar; it never re-enters
the side it just left on that bar. Signals are emitted only when the target position changes.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from contracts.events import Bar, Signal, TradingMode
from strategies.indicators import SMA
from strategies.params import require_finite
from strategies.series import series_for


class MomentumParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    lookback: Annotated[int, Meta(ge=1)] = 10
    move_pct: Annotated[float, Meta(gt=0, lt=100)] = 2.0
    volume_period: Annotated[int, Meta(ge=1)] = 20
    spike_mult: Annotated[float, Meta(gt=0)] = 2.0
    stop_pct: Annotated[float, Meta(gt=0, lt=100)] = 1.0
    trail_pct: Annotated[float, Meta(gt=0, lt=100)] = 1.5
    mode: TradingMode = "long_only"
    qty: Annotated[float, Meta(gt=0)] = 1.0

    def __post_init__(self) -> None:
        require_finite(self)


class _Series(msgspec.Struct):
    volume: SMA
    closes: list[float] = msgspec.field(default_factory=list)
    pos: int = 0
    avg_volume: float | None = None
    side: int = 0
    entry: float = 0.0
    extreme: float = 0.0


class MomentumState(msgspec.Struct):
    series: dict[str, _Series] = msgspec.field(default_factory=dict)


class Momentum:
    def __init__(self, name: str, params: MomentumParams) -> None:
        self.name = name
        self.params = params
        self.state = MomentumState()
        # series by (venue, symbol, interval), so a bar needs no key string; reset on restore
        self._series: dict[tuple[str, str, str], _Series] = {}
        p = params
        self.model_tag = (
            f"momentum-{p.move_pct:g}pct{p.lookback}-vol{p.spike_mult:g}x{p.volume_period}"
            f"-stop{p.stop_pct:g}-trail{p.trail_pct:g}"
        )

    def _fresh_series(self) -> _Series:
        return _Series(SMA(self.params.volume_period))

    def stop_level(self, s: _Series) -> float:
        """The level a position of ``s`` exits at: the tighter of the stop and the trail."""
        p = self.params
        if s.side > 0:
            return max(s.entry * (1 - p.stop_pct / 100), s.extreme * (1 - p.trail_pct / 100))
        return min(s.entry * (1 + p.stop_pct / 100), s.extreme * (1 + p.trail_pct / 100))

    def on_bar(self, bar: Bar) -> list[Signal]:
        ident = (bar.venue, bar.symbol, bar.interval)
        s = self._series.get(ident)
        if s is None:
            s = series_for(self.state.series, self._series, ident, self._fresh_series)
        p = self.params
        close = bar.close
        # the close ``lookback`` bars ago, then this close takes its slot in the ring
        past: float | None = None
        if len(s.closes) < p.lookback:
            s.closes.append(close)
        else:
            past = s.closes[s.pos]
            s.closes[s.pos] = close
            s.pos = (s.pos + 1) % p.lookback
        avg = s.avg_volume
        s.avg_volume = s.volume.update(bar.volume)

        before = s.side
        reason = ""
        if before != 0:
            level = self.stop_level(s)
            if before > 0 and bar.low <= level:
                reason = f"stop/trail hit: low {bar.low:g} <= {level:g}"
            elif before < 0 and bar.high >= level:
                reason = f"stop/trail hit: high {bar.high:g} >= {level:g}"
            if reason:
                s.side = 0
            elif before > 0:
                s.extreme = max(s.extreme, close)
            else:
                s.extreme = min(s.extreme, close)

        if (
            s.side == 0
            and past is not None
            and avg is not None
            and bar.volume >= avg * p.spike_mult
        ):
            move = (close - past) / past * 100.0
            side = 1 if move >= p.move_pct else -1 if move <= -p.move_pct else 0
            if side < 0 and p.mode == "long_only":
                side = 0
            if side != 0 and side != before:
                s.side = side
                s.entry = s.extreme = close
                entry = (
                    f"{move:+.2f}% in {p.lookback} bars with volume {bar.volume:g} "
                    f">= {p.spike_mult:g} x avg {avg:g}"
                )
                reason = f"{reason}; {entry}" if reason else entry

        if s.side == before:
            return []
        return [
            Signal(
                ts=bar.close_time,
                strategy=self.name,
                venue=bar.venue,
                symbol=bar.symbol,
                model_tag=self.model_tag,
                target_position=p.qty * s.side,
                stop=self.stop_level(s) if s.side else None,
                reason=reason,
            )
        ]

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(self.state)

    def restore(self, data: bytes) -> None:
        self.state = msgspec.msgpack.decode(data, type=MomentumState)
        self._series.clear()
