"""Mean reversion: Bollinger band + RSI entries, exits at the mid band, optional stop.

Per (venue, symbol, interval) series, on each closed bar (after both indicators are warm):

- flat: close < lower band and RSI < ``oversold`` -> long; close > upper band and
  RSI > ``overbought`` -> short (``long_short`` only);
- long: bar low <= stop (``stop_pct`` below the entry close, when set) -> flat; else
  close >= mid band -> flat;
- short mirrored (high >= stop, close <= mid).

An exit may flip straight into the opposite side on the same bar; it never re-enters the
side it just left on that bar. Signals are emitted only when the target position changes.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from contracts.events import Bar, Signal, TradingMode
from strategies.indicators import RSI, BollingerBands
from strategies.params import require_finite
from strategies.series import series_for


class MeanReversionParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    bb_period: Annotated[int, Meta(ge=2)] = 20
    bb_k: Annotated[float, Meta(gt=0, le=10)] = 2.0
    rsi_period: Annotated[int, Meta(ge=1)] = 14
    oversold: Annotated[float, Meta(gt=0, lt=100)] = 30.0
    overbought: Annotated[float, Meta(gt=0, lt=100)] = 70.0
    stop_pct: Annotated[float, Meta(ge=0, lt=100)] = 0.0
    """0 = no stop."""
    mode: TradingMode = "long_only"
    qty: Annotated[float, Meta(gt=0)] = 1.0

    def __post_init__(self) -> None:
        require_finite(self)
        if not self.oversold < self.overbought:
            raise ValueError(
                f"need oversold ({self.oversold:g}) < overbought ({self.overbought:g})"
            )


class _Series(msgspec.Struct):
    bands: BollingerBands
    rsi: RSI
    side: int = 0
    entry: float = 0.0
    stop: float | None = None


class MeanReversionState(msgspec.Struct):
    series: dict[str, _Series] = msgspec.field(default_factory=dict)


class MeanReversion:
    def __init__(self, name: str, params: MeanReversionParams) -> None:
        self.name = name
        self.params = params
        self.state = MeanReversionState()
        # series by (venue, symbol, interval), so a bar needs no key string; reset on restore
        self._series: dict[tuple[str, str, str], _Series] = {}
        p = params
        self.model_tag = f"mean_reversion-bb{p.bb_period}x{p.bb_k:g}-rsi{p.rsi_period}"
        self.model_tag += f"-{p.oversold:g}x{p.overbought:g}"
        if p.stop_pct:
            self.model_tag += f"-stop{p.stop_pct:g}"

    def _fresh_series(self) -> _Series:
        p = self.params
        return _Series(BollingerBands(p.bb_period, p.bb_k), RSI(p.rsi_period))

    def on_bar(self, bar: Bar) -> list[Signal]:
        ident = (bar.venue, bar.symbol, bar.interval)
        s = self._series.get(ident)
        if s is None:
            s = series_for(self.state.series, self._series, ident, self._fresh_series)
        close = bar.close
        bands = s.bands  # its mid/upper/lower fields are this bar's once warm
        warm = bands.advance(close)
        rsi = s.rsi.update(close)
        if not warm or rsi is None:
            return []
        p = self.params
        before = s.side
        reason = ""
        if before > 0:
            if s.stop is not None and bar.low <= s.stop:
                reason = f"stop hit: low {bar.low:g} <= stop {s.stop:g}"
            elif close >= bands.mid:
                reason = f"close {close:g} back at mid band {bands.mid:g}"
            if reason:
                s.side = 0
        elif before < 0:
            if s.stop is not None and bar.high >= s.stop:
                reason = f"stop hit: high {bar.high:g} >= stop {s.stop:g}"
            elif close <= bands.mid:
                reason = f"close {close:g} back at mid band {bands.mid:g}"
            if reason:
                s.side = 0
        if s.side == 0:
            if before <= 0 and close < bands.lower and rsi < p.oversold:
                s.side = 1
                entry = (
                    f"close {close:g} below lower band {bands.lower:g}, "
                    f"RSI {rsi:.1f} < {p.oversold:g}"
                )
                reason = f"{reason}; {entry}" if reason else entry
            elif (
                before >= 0
                and p.mode == "long_short"
                and close > bands.upper
                and rsi > p.overbought
            ):
                s.side = -1
                entry = (
                    f"close {close:g} above upper band {bands.upper:g}, "
                    f"RSI {rsi:.1f} > {p.overbought:g}"
                )
                reason = f"{reason}; {entry}" if reason else entry
        if s.side == before:
            return []
        stop = None
        if s.side != 0:
            s.entry = close
            if p.stop_pct:
                stop = close * (1.0 - s.side * p.stop_pct / 100.0)
        s.stop = stop
        return [
            Signal(
                ts=bar.close_time,
                strategy=self.name,
                venue=bar.venue,
                symbol=bar.symbol,
                model_tag=self.model_tag,
                target_position=p.qty * s.side,
                stop=stop,
                target=bands.mid if s.side != 0 else None,
                reason=reason,
            )
        ]

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(self.state)

    def restore(self, data: bytes) -> None:
        self.state = msgspec.msgpack.decode(data, type=MeanReversionState)
        self._series.clear()
