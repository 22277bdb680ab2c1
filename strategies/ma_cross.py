"""Moving-average crossover: signals on crossings only.

The first bar on which both averages exist and differ fixes the current side without a
signal (a strategy started mid-trend waits for the next crossing). Equal averages keep the previous
side. Long-only maps the short side to flat.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from contracts.events import Bar, Signal, TradingMode
from strategies.indicators import EMA, SMA
from strategies.params import require_finite


class MaCrossParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    kind: Literal["sma", "ema"] = "sma"
    fast: Annotated[int, Meta(ge=1)] = 10
    slow: Annotated[int, Meta(ge=1)] = 30
    mode: TradingMode = "long_only"
    qty: Annotated[float, Meta(gt=0)] = 1.0

    def __post_init__(self) -> None:
        require_finite(self)
        if self.fast >= self.slow:
            raise ValueError(f"fast ({self.fast}) must be below slow ({self.slow})")


class _Leg(msgspec.Struct):
    fast: SMA | EMA
    slow: SMA | EMA
    side: int = 0


class MaCrossState(msgspec.Struct):
    legs: dict[str, _Leg] = msgspec.field(default_factory=dict)


class MaCross:
    def __init__(self, name: str, params: MaCrossParams) -> None:
        self.name = name
        self.params = params
        self.state = MaCrossState()
        # legs by venue, symbol and interval (nested: no key string or tuple to hash per
        # bar); reset on restore
        self._legs: dict[str, dict[str, dict[str, _Leg]]] = {}

    @property
    def model_tag(self) -> str:
        p = self.params
        return f"ma_cross-{p.kind}{p.fast}x{p.slow}"

    def _new_leg(self, venue: str, symbol: str, interval: str) -> _Leg:
        key = f"{venue}|{symbol}|{interval}"
        leg = self.state.legs.get(key)
        if leg is None:
            make = SMA if self.params.kind == "sma" else EMA
            leg = _Leg(make(self.params.fast), make(self.params.slow))
            self.state.legs[key] = leg
        self._legs.setdefault(venue, {}).setdefault(symbol, {})[interval] = leg
        return leg

    def on_bar(self, bar: Bar) -> list[Signal]:
        try:
            leg = self._legs[bar.venue][bar.symbol][bar.interval]
        except KeyError:
            leg = self._new_leg(bar.venue, bar.symbol, bar.interval)
        close = bar.close
        fast = leg.fast.update(close)
        slow = leg.slow.update(close)
        if fast is None or slow is None:
            return []
        side = 1 if fast > slow else -1 if fast < slow else leg.side
        if leg.side == 0:
            leg.side = side
            return []
        if side == leg.side:
            return []
        leg.side = side
        target = self.params.qty * side
        if self.params.mode == "long_only":
            target = max(target, 0.0)
        return [
            Signal(
                ts=bar.close_time,
                strategy=self.name,
                venue=bar.venue,
                symbol=bar.symbol,
                model_tag=self.model_tag,
                target_position=target,
                reason=f"{self.params.kind} {'fast above slow' if side > 0 else 'fast below slow'}",
            )
        ]

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(self.state)

    def restore(self, data: bytes) -> None:
        self.state = msgspec.msgpack.decode(data, type=MaCrossState)
        self._legs.clear()
